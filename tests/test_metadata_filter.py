import numpy as np

from dreamline.config import MetadataFilterParams
from dreamline.curation.metadata_filter import filter_metadata, records_to_table, unreadable_names
from dreamline.sources.annotations import make_record, make_uid


def rec(name="Red chair", **kw):
    base = dict(tags=["chair", "red"], categories=["furniture-home"], face_count=500, vertex_count=300)
    base.update(kw)
    return make_record(make_uid(name, sorted(kw.items()).__repr__()), name, **base)


def reasons(records):
    shard = {r["uid"]: r for r in records}
    table = filter_metadata(records_to_table([shard]), MetadataFilterParams())
    got = dict(zip(table.column("uid").to_pylist(), table.column("meta_reason").to_pylist()))
    return [got[r["uid"]] for r in records]


def test_each_rule_and_its_priority():
    records = [
        rec(),
        rec(license="by-nc"),
        rec(age_restricted=True),
        rec(animation_count=2),
        rec(tags=["chair", "LowPoly"]),
        rec(face_count=0, vertex_count=5000),
        rec(face_count=10),
        rec(face_count=10_000_000),
        rec(name="untitled"),
        rec(name="Ã¤Ã¶ stuff"),
        rec(name="   "),
        rec(name="1234_5678"),
        rec(name="\x00bad"),
        # Several faults: the first in RULE_ORDER wins.
        rec(name="", license="by-nc", tags=["scan"]),
    ]
    assert reasons(records) == [
        None, "license", "age_restricted", "animated", "blocked_tag", "point_cloud",
        "too_few_faces", "too_many_faces", "unreadable_name", "unreadable_name",
        "unreadable_name", "unreadable_name", "unreadable_name", "unreadable_name",
    ]


def test_malformed_records_are_rejected_not_crashed():
    good = rec()
    broken = [dict(good, uid=make_uid(i)) for i in range(4)]
    broken[0]["faceCount"] = "many"
    broken[1]["tags"] = "chair"
    del broken[2]["license"]
    broken[3]["name"] = None
    shard = {r["uid"]: r for r in broken}
    shard["notadict"] = ["x"]
    table = filter_metadata(records_to_table([shard]), MetadataFilterParams())
    assert set(table.column("meta_reason").to_pylist()) == {"malformed_record"}


def test_names_in_other_scripts_are_readable():
    import pandas as pd

    names = pd.Series(["Chaise longue", "Стул", "椅子", "Mug v2", "model_001", "", None])
    assert unreadable_names(names).tolist() == [False, False, False, False, True, True, True]


def test_category_blocklist_and_allow_age_restricted():
    p = MetadataFilterParams(category_blocklist=("furniture-home",), allow_age_restricted=True)
    shard = {r["uid"]: r for r in [rec(), rec(age_restricted=True, categories=["food-drink"])]}
    table = filter_metadata(records_to_table([shard]), p)
    assert table.column("meta_reason").to_pylist() == ["blocked_category", None]


def test_filter_is_columnar_over_many_records():
    rng = np.random.default_rng(0)
    records = [rec(name=f"chair {i}", face_count=int(f)) for i, f in enumerate(rng.integers(1, 400_000, 2000))]
    out = reasons(records)
    faces = np.array([r["faceCount"] for r in records])
    expected = np.where(faces < 50, "too_few_faces", np.where(faces > 200_000, "too_many_faces", None))
    assert out == expected.tolist()
