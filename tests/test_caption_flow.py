"""The caption flow in-process (Prefect test server): resume after a kill, reuse by key."""
import pandas as pd
import pytest

from conftest import write_test_meshes
from dreamline.config import CurateParams, MirrorParams, Params
from dreamline.curation.curate import run_curation
from dreamline.sources.mirror import build_mirror


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cap")
    write_test_meshes(tmp / "meshes", ["cow.off"])
    build_mirror(MirrorParams(categories=("chair", "mug", "tree"), instances_per_category=3,
                              packaged_meshes=1, packaged_meshes_dir=str(tmp / "meshes"),
                              junk_per_kind=0), tmp / "mirror")
    run_curation(tmp / "mirror", CurateParams(), tmp / "curated")
    return tmp / "curated"


def test_caption_flow_resumes_from_parts_to_identical_table(curated, tmp_path, prefect_api_url):
    from dreamline.captioning import captions as cap
    from flows.caption import caption_flow

    params = Params()
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    s = caption_flow(params, curated_root=curated, out_root=out_a, shard_size=3)
    assert s["captioned"] == 10 and s["reused"] == 0
    full = pd.read_parquet(out_a / "captions.parquet")
    assert not list((out_a / "parts").glob("*"))

    # What a run killed after its first shard leaves behind: one part and a half-written file.
    first = full.iloc[:3]
    cap.write_part(out_b, first["key"].tolist(), first["caption"].tolist())
    (out_b / "parts" / ".x.parquet.tmp").write_bytes(b"PAR1")
    s = caption_flow(params, curated_root=curated, out_root=out_b, shard_size=3)
    assert s["captioned"] == 7 and s["reused"] == 3
    pd.testing.assert_frame_equal(full, pd.read_parquet(out_b / "captions.parquet"))
    assert not list((out_b / "parts").glob("*"))

    # A captioner setting changes the key of every object: all are captioned again.
    changed = Params.model_validate({"caption": {"captioner": {"variety": 2}}})
    s = caption_flow(changed, curated_root=curated, out_root=out_a, shard_size=3)
    assert s["captioned"] == 10
