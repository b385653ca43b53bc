"""benchmarks/generalisation.py: its prompt list and seen/unseen check, and a whole run on a
tiny project (tiny priors, fake renders and captions, an evaluator with untrained heads)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import REPO, make_project
from tiny_models import save_tiny_priors

GUIDANCE = {name: {"model": f"data/models/{m}"} for name, m in
            (("sds", "base"), ("ism", "base"), ("mv-sds", "mv"), ("agp", "agp"))}
TINY = {
    "distill": {"prompts": {"red-chair": "a red chair", "blue-mug": "a blue mug"}, "guidance": GUIDANCE,
                "representation": {"resolution": 8, "samples_per_ray": 8}, "steps": 3, "resolution": 8,
                "threads": 1, "export": {"mesh_resolution": 12, "view_resolution": 16, "turntable_frames": 3}},
    "evaluate": {"resolution": 32, "azimuths": 4, "real_views_per_object": 2, "bootstrap": 50, "threads": 1},
}
TEST_CAPTIONS = {"t0": "a purple stool", "t1": "an orange bottle", "t2": "a white house"}
# (uid, caption, original text, category, mesh colour) of the train split.
TRAIN = [("r0", "a red chair", "chair, red, wooden", "chair", "red"),
         ("r1", "a blue mug", "mug, blue", "mug", "blue"),
         ("r2", "a yellow car, four-wheeled", "my car", "car_(automobile)", "yellow"),
         ("r3", "a tall lamp", "lamp model", "lamp", "purple"),        # its colour in the metadata only
         ("r4", "a green dining table", "table v2", "dining_table", "green")]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("generalisation", REPO / "benchmarks" / "generalisation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module            # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def fake_data(root: Path) -> None:
    """data/captions/captions.parquet (train and test rows) and data/renders with 2 mv views
    of each test object."""
    rows = [{"uid": u, "split": "train", "caption": c, "original_text": o, "category": cat, "mesh_colour": col}
            for u, c, o, cat, col in TRAIN]
    index = []
    for i, (uid, caption) in enumerate(TEST_CAPTIONS.items()):
        rows.append({"uid": uid, "split": "test", "caption": caption, "original_text": caption,
                     "category": caption.split()[-1], "mesh_colour": caption.split()[1]})
        folder = root / "data/renders/objects" / uid
        folder.mkdir(parents=True)
        for v in range(2):
            img = np.zeros((32, 32, 4), np.uint8)
            img[8:24, 6 + 2 * v:26, :3], img[8:24, 6 + 2 * v:26, 3] = (60 * i, 200 - 50 * i, 90), 255
            Image.fromarray(img).save(folder / f"mv0_{v}.png")
            index.append({"uid": uid, "view_id": v, "kind": "mv", "set": 0, "c2w": np.eye(4).reshape(-1).tolist(),
                          "rgba_path": f"objects/{uid}/mv0_{v}.png"})
    pd.DataFrame(index).to_parquet(root / "data/renders/index.parquet")
    (root / "data/captions").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(root / "data/captions/captions.parquet")


def test_prompt_list_and_the_seen_check(tmp_path, monkeypatch):
    g = load_benchmark()
    prompts = g.default_prompts()
    cats, cols = g.categories_and_colours()
    assert len(prompts) >= 10 and {p.kind for p in prompts} == set(g.KINDS)
    assert all(p.category in cats and p.colour in cols for p in prompts)
    assert "a scarlet seat" in [p.text for p in prompts] and len(g.unique_by_slug(prompts)) == len(prompts)
    # A combination names its category and colour; a paraphrase avoids at least one of them.
    for p in prompts:
        ws = g.words(p.text)
        assert (p.category in ws and p.colour in ws) == (p.kind == "combination"), p

    fake_data(tmp_path)
    file = tmp_path / "prompts.txt"
    file.write_text("# comment\n\nparaphrase\ta scarlet seat\tchair\tred\na green mug\na yellow car\n"
                    "new combination\ta purple lamp\nparaphrase\tan azure coffee cup\tmug\tblue\n"
                    "combination\ta green table\n")
    prompts = g.read_prompts(file)
    assert [(p.kind, p.category, p.colour) for p in prompts] == [
        ("paraphrase", "chair", "red"), ("combination", "mug", "green"), ("combination", "car", "yellow"),
        ("combination", "lamp", "purple"), ("paraphrase", "mug", "blue"), ("combination", "table", "green")]
    check = {c["prompt"]: c for c in g.seen_check(prompts, tmp_path / "data/captions/captions.parquet")}
    assert check["a scarlet seat"]["train_text"] == 1 and check["a scarlet seat"]["unseen"] is False
    assert check["a scarlet seat"]["novel_words"] == ["scarlet", "seat"]
    assert check["a green mug"] == {**check["a green mug"], "train_text": 0, "train_metadata": 0, "unseen": True}
    # The LVIS noun "car_(automobile)" and "dining_table" count as car and table.
    assert check["a yellow car"]["train_metadata"] == 1 and check["a yellow car"]["unseen"] is False
    assert check["a green table"]["train_text"] == 1 and check["a green table"]["train_metadata"] == 1
    # Absent from every text, present in the metadata: not labelled unseen.
    assert (check["a purple lamp"]["train_text"], check["a purple lamp"]["train_metadata"]) == (0, 1)
    assert check["a purple lamp"]["unseen"] is False
    assert check["an azure coffee cup"]["novel_words"] == ["azure", "coffee", "cup"]
    assert check["an azure coffee cup"]["unseen"] is False            # a blue mug was shown

    bad = tmp_path / "bad.txt"
    bad.write_text("fantasy\ta red chair\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        g.read_prompts(bad)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):                                   # assets never go under data/
        g.main(["--out", "data/x", "--params", str(REPO / "params.yaml")])


@pytest.mark.slow
def test_generalisation_run_on_a_tiny_project(tmp_path, prefect_api_url, monkeypatch):
    from dreamline.evaluation.evaluator import LiTEvaluator, LiTHeads
    import torch

    (tmp_path / "proj").mkdir()
    root = make_project(tmp_path / "proj", prefect_api_url, TINY).root
    raw = yaml.safe_load((root / "params.yaml").read_text())   # two prompts, not the default eight
    raw["distill"]["prompts"] = TINY["distill"]["prompts"]
    raw["ablation"]["prompts"] = ["red-chair"]
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    fake_data(root)
    save_tiny_priors(root / "data/models")
    torch.manual_seed(0)
    LiTEvaluator(LiTHeads(1280, 384, 32), image_size=64, name="lit-test").save(root / "data/models/evaluator")
    (tmp_path / "prompts.txt").write_text("paraphrase\ta scarlet seat\tchair\tred\ncombination\ta green mug\n")

    g = load_benchmark()
    monkeypatch.chdir(root)
    monkeypatch.setenv("PREFECT_API_URL", prefect_api_url)
    out, result = tmp_path / "assets", tmp_path / "generalisation.json"
    args = ["--prompts-file", str(tmp_path / "prompts.txt"), "--out", str(out), "--params", "params.yaml",
            "--steps", "2", "--set", "export.turntable_frames=2", "--json", str(result)]
    assert g.main(args) == 0
    r = json.loads(result.read_text())
    n = len(TEST_CAPTIONS) + len(TINY["distill"]["prompts"]) + 2
    assert r["captions"] == {"n_captions": n, "n_test_captions": 3, "n_distill_prompts": 2, "n_benchmark_prompts": 2}
    assert set(r["caption_texts"]) == set(TEST_CAPTIONS.values()) | {"a red chair", "a blue mug", "a scarlet seat",
                                                                     "a green mug"}
    rows = {row["prompt"]: row for row in r["assets"]}
    assert set(rows) == {"a scarlet seat", "a green mug"}
    assert (rows["a scarlet seat"]["kind"], rows["a scarlet seat"]["unseen"]) == ("paraphrase", False)
    assert (rows["a green mug"]["kind"], rows["a green mug"]["unseen"]) == ("combination", True)
    for row in rows.values():
        assert row["steps"] == 2 and Path(row["asset"]).parent == out        # distilled there, not in data/
        for kind in ("colour", "geo"):
            assert len(row[f"ranks_{kind}"]) == TINY["evaluate"]["azimuths"]
            assert all(1 <= x <= n for x in row[f"ranks_{kind}"])
            assert 1 <= row[f"{kind}_median_rank"] <= n and 0 <= row[f"{kind}_R@1"] <= row[f"{kind}_R@5"] <= 1
    # The paraphrase is also ranked by its meaning: "a red chair" among the captions less itself.
    scarlet = rows["a scarlet seat"]
    assert scarlet["meaning"] == "a red chair" and "embeddings" not in scarlet
    for kind in ("colour", "geo"):
        assert len(scarlet[f"meaning_ranks_{kind}"]) == TINY["evaluate"]["azimuths"]
        assert all(1 <= x <= n - 1 for x in scarlet[f"meaning_ranks_{kind}"])
        assert 0 <= scarlet[f"meaning_{kind}_R@1"] <= scarlet[f"meaning_{kind}_R@5"] <= 1
    assert "meaning" not in rows["a green mug"]     # a combination is its own plain wording
    assert not (root / "data/distill").exists()
    assert r["summary"]["all"]["n_assets"] == 2 and set(r["summary"]) == {"all", "paraphrase", "combination",
                                                                         "combination:unseen",
                                                                         "paraphrase:by meaning"}
    assert r["summary"]["paraphrase:by meaning"]["n_assets"] == 1
    assert 0 <= r["summary"]["all"]["colour_R@1"] <= r["summary"]["all"]["colour_R@5"] <= 1
    assert [c["unseen"] for c in r["seen_check"]] == [False, True] and r["evaluator"] == "lit-test"
    assert r["overrides"]["steps"] == 2 and r["distill"]["steps"] == 2 and "--steps 2" in r["command"]
    assert len(r["params_sha256"]) == 64 and isinstance(r["seconds"], float)

    summary = out / "a-green-mug" / "summary.json"
    assert json.loads(summary.read_text())["export"]["turntable_frames"] == 2        # --set passed through
    stamp = summary.stat().st_mtime_ns

    # Again: the assets are up to date (same distill key), only evaluated; the same ranks.
    assert g.main(args) == 0
    assert summary.stat().st_mtime_ns == stamp
    again = json.loads(result.read_text())
    assert [a["ranks_colour"] for a in again["assets"]] == [a["ranks_colour"] for a in r["assets"]]

    # --score-only with another evaluator: nothing distilled (even with other settings), the
    # same assets scored by that evaluator, which the JSON names.
    torch.manual_seed(1)
    LiTEvaluator(LiTHeads(1280, 384, 32), image_size=64, name="lit-other").save(tmp_path / "other")
    other = tmp_path / "other.json"
    assert g.main([*args[:-1], str(other), "--score-only", "--steps", "3", "--evaluator", str(tmp_path / "other")]) == 0
    assert summary.stat().st_mtime_ns == stamp
    scored = json.loads(other.read_text())
    assert scored["evaluator"] == "lit-other" and scored["score_only"] is True and scored["distill"] is None
    assert [a["distill_key"] for a in scored["assets"]] == [a["distill_key"] for a in r["assets"]]
    assert [a["ranks_colour"] for a in scored["assets"]] != [a["ranks_colour"] for a in r["assets"]]
    empty = tmp_path / "empty"
    assert g.main(["--prompts-file", str(tmp_path / "prompts.txt"), "--out", str(empty), "--score-only",
                   "--json", str(tmp_path / "x.json")]) == 2
