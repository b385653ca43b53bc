from dreamline.captioning.base import CaptionInput, category_noun, clean_name, original_text
from dreamline.captioning.split import assign_split
from dreamline.captioning.template import TemplateCaptioner, describe
from dreamline.captioning.configs import TemplateCaptionerParams
from dreamline.config import SplitParams


def item(uid="a" * 32, **kw):
    base = dict(name="red_chair_v2 FINAL", tags=("chair", "red", "wooden", "four-legged"), category="chair")
    base.update(kw)
    return CaptionInput(uid=uid, **base)


def test_clean_name_and_original_text():
    assert clean_name("red_chair_v2 FINAL") == "red chair"
    assert clean_name("OfficeChair.001") == "office chair"
    assert category_noun("car_(automobile)") == "car"
    assert original_text(item()) == "red chair, wooden, four legged"


def test_template_uses_true_facts_with_variety():
    cap = TemplateCaptioner(TemplateCaptionerParams(variety=6))
    items = [item(uid=f"{i:032x}") for i in range(60)]
    texts = cap.caption(items)
    assert all("chair" in t and "red" in t for t in texts)
    assert len(set(texts)) >= 4
    assert cap.caption(items) == texts  # deterministic
    assert describe(item(tags=("animal", "farm"), category="cow", colour="blue"))["attr"] is None
    t = TemplateCaptioner(TemplateCaptionerParams(variety=1)).caption_one(
        item(tags=("elephant",), category="elephant", colour="orange"))
    assert t.startswith("an orange elephant"), t
    assert TemplateCaptioner(TemplateCaptionerParams(suffix=", 3d asset")).caption_one(item()).endswith(", 3d asset")


def test_split_is_deterministic_stable_and_proportional():
    p = SplitParams(val_fraction=0.1, test_fraction=0.2, seed=3)
    uids = [f"{i:032x}" for i in range(5000)]
    splits = [assign_split(u, p) for u in uids]
    assert splits == [assign_split(u, p) for u in uids]
    share = {s: splits.count(s) / len(uids) for s in ("train", "val", "test")}
    assert abs(share["val"] - 0.1) < 0.02 and abs(share["test"] - 0.2) < 0.02
    assert [assign_split(u, SplitParams(seed=4)) for u in uids[:200]] != splits[:200]
