"""mirror -> curate -> caption through their real entry points (`python -m stages.<name>`)."""
from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import trimesh
import yaml

from dreamline.sources.junk import JUNK_KINDS


def manifest(project) -> dict:
    return json.loads((project.root / "data/mirror/dreamline-manifest.json").read_text())


def objects(project) -> pd.DataFrame:
    return pd.read_parquet(project.root / "data/curated/objects.parquet")


def summary(project) -> dict:
    root = project.root / "data/curated"
    return {**json.loads((root / "summary.json").read_text()), **json.loads((root / "run.json").read_text())}


def test_pipeline_rejects_every_junk_kind_and_normalises_kept(project):
    project.stage("mirror")
    project.stage("curate")
    project.stage("caption")
    man = manifest(project)
    df = objects(project)
    assert set(df["uid"]) == set(man), "every candidate has a row"

    junk = df[df["uid"].map(lambda u: man[u]["source"] == "junk")]
    expected = junk["uid"].map(lambda u: man[u]["expected_reason"])
    assert (junk["reject_reason"] == expected).all(), junk[["name", "reject_reason"]]
    assert junk["reject_reason"].nunique() == len(JUNK_KINDS), "each kind has its own reason"

    good = df[df["uid"].map(lambda u: man[u]["source"] != "junk")]
    assert good["kept"].all(), good.loc[~good["kept"], ["name", "reject_reason", "reject_detail"]]
    for row in good.itertuples():
        mesh = trimesh.load(project.root / "data/curated" / row.mesh_path, force="mesh")
        lo, hi = mesh.bounds
        assert abs((hi - lo).max() - 1.0) < 1e-5, row.name
        assert np.allclose((hi + lo) / 2, 0, atol=1e-5), row.name

    caps = pd.read_parquet(project.root / "data/captions/captions.parquet")
    assert sorted(caps["uid"]) == sorted(good["uid"])
    assert caps["caption"].str.len().gt(3).all()
    assert set(caps["split"]) <= {"train", "val", "test"}
    # Captions name what the object is: the category noun of procedural objects.
    proc = caps[caps["uid"].map(lambda u: man[u]["source"] == "procedural")]
    for row in proc.itertuples():
        noun = man[row.uid]["category"]
        assert noun in row.caption or noun.replace("table", "dining table") in row.caption, row.caption


def test_adding_one_object_reprocesses_exactly_one(project):
    project.stage("mirror")
    project.stage("curate")
    assert summary(project)["geometry_processed"] > 10

    # A user drops one more object into the mirror (through the mirror's own writer).
    from dreamline.config import MirrorParams
    from dreamline.sources import mirror

    w = mirror.MirrorWriter.open_existing(project.root / "data/mirror")
    extra = list(mirror.procedural_entries(MirrorParams(categories=("chair",), instances_per_category=2, seed=99)))[1]
    w.add(extra)
    w.finalize()
    project.stage("curate")
    s = summary(project)
    assert s["geometry_processed"] == 1
    assert extra.uid in set(objects(project)["uid"])

    # A geometry parameter re-processes what went through geometry checks, nothing else.
    before = s["geometry_processed"] + s["geometry_reused"]
    project.set_params({"curate": {"geometry": {"scene_gap": 0.06}}})
    project.stage("curate")
    s = summary(project)
    assert s["geometry_processed"] == before and s["geometry_reused"] == 0

    # Metadata parameters do not touch geometry work.
    project.set_params({"curate": {"geometry": {"scene_gap": 0.06}, "metadata": {"min_faces": 40}}})
    project.stage("curate")
    assert summary(project)["geometry_processed"] == 0


def _snapshot(project) -> dict:
    root = project.root / "data/curated"
    df = objects(project).drop(columns=[])
    meshes = {p.name: p.read_bytes() for p in sorted((root / "meshes").glob("*.glb"))}
    return {"table": df, "meshes": meshes,
            "files": sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()),
            "summary": (root / "summary.json").read_bytes()}


def test_killed_curation_resumes_to_identical_outputs(project, tmp_path_factory, prefect_api_url):
    from conftest import make_project

    project.stage("mirror")
    project.stage("curate")
    unbroken = _snapshot(project)

    # A second project run that is killed with SIGKILL mid-way through geometry shards: right
    # after its third object record lands (tests/kill_after_write.py), however fast or slow
    # the machine, with the other shard thread wherever it happens to be.
    other = make_project(tmp_path_factory.mktemp("killed"), prefect_api_url)
    other.stage("mirror")
    import signal
    import subprocess
    import sys

    from conftest import REPO

    killed = subprocess.run([sys.executable, str(REPO / "tests/kill_after_write.py"),
                             r"(^|/)data/curated/records/[^/]+\.json$", "3", "-m", "stages.curate"],
                            cwd=other.root, env=other.env(), capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
    records = other.root / "data/curated/records"
    assert not (other.root / "data/curated/objects.parquet").exists(), "killed before the index"
    done_before = len(list(records.glob("*.json")))
    assert done_before == 3, done_before
    # What else a kill can leave: a temp file mid-write, a mesh whose record never landed.
    (records / ".half.json.tmp").write_text("{")
    other.stage("curate")
    resumed = _snapshot(other)
    s = summary(other)
    assert s["geometry_reused"] == done_before and s["geometry_processed"] > 0, s
    pd.testing.assert_frame_equal(unbroken["table"], resumed["table"])
    assert unbroken["meshes"] == resumed["meshes"]
    assert unbroken["files"] == resumed["files"]
    assert unbroken["summary"] == resumed["summary"]


def test_invalid_parameter_fails_fast_naming_the_key(project):
    project.set_params({"curate": {"geometry": {"scene_gap": -1}}})
    started = time.time()
    proc = project.stage("curate", check=False)
    assert proc.returncode == 2
    assert "curate.geometry.scene_gap" in proc.stderr
    assert time.time() - started < 20
    assert not (project.root / "data/curated").exists()

    project.set_params({"caption": {"captioner_type": "templte"}})
    proc = project.stage("caption", check=False)
    assert proc.returncode == 2 and "captioner_type" in proc.stderr and "templte" in proc.stderr


def test_caption_stage_with_image_captioner(project):
    """The research-scale captioner through the real entry point, on a tiny random BLIP."""
    from test_image_captioner import save_tiny_blip

    model_dir = save_tiny_blip(project.root / "models")
    project.set_params({"mirror": {"categories": ["chair", "mug"], "packaged_meshes": 1, "junk_per_kind": 0}})
    params = yaml.safe_load((project.root / "params.yaml").read_text())
    params["caption"]["captioner_type"] = "image"
    params["caption"]["captioner"] = {"model_path": str(model_dir), "n_views": 2, "resolution": 32,
                                      "max_new_tokens": 4}
    (project.root / "params.yaml").write_text(yaml.safe_dump(params))
    project.stage("mirror")
    project.stage("curate")
    project.stage("caption")
    caps = pd.read_parquet(project.root / "data/captions/captions.parquet")
    assert len(caps) == 3 and (caps["captioner"] == "image").all()
    assert caps["caption"].str.split().str.len().ge(1).all()
    # Cached by key: a rerun captions nothing.
    out = project.stage("caption").stdout
    assert "'captioned': 0" in out
