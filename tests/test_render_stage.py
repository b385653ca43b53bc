"""`python -m stages.render` after curation: views on disk, index rows, incremental, failures."""
import json

import numpy as np
import pandas as pd
from PIL import Image

from dreamline.rendering.cameras import Camera
from dreamline.rendering.reprojection import unproject
from dreamline.rendering.renderer import ccm_normaliser, to_canonical
from dreamline.rendering.views import load_mesh

SMALL = {"mirror": {"categories": ["chair", "car", "lamp"], "packaged_meshes": 1, "junk_per_kind": 0},
         "render": {"resolution": 48, "mv_sets": 1, "agp_views": 2}}


def test_render_stage_end_to_end(project):
    project.set_params(SMALL)
    project.stage("mirror")
    project.stage("curate")
    project.stage("render")
    root = project.root / "data/renders"
    objects = pd.read_parquet(project.root / "data/curated/objects.parquet")
    kept = objects[objects["kept"]]
    index = pd.read_parquet(root / "index.parquet")
    assert len(index) == len(kept) * (4 + 2)
    assert set(index["kind"]) == {"mv", "agp"} and (index["backend"] == "osmesa").all()

    # MVDream sets: 4 azimuths 90 degrees apart sharing fov, elevation and distance.
    for _, views in index[index["kind"] == "mv"].groupby("uid"):
        az = np.sort(views["azimuth_deg"].to_numpy())
        assert np.allclose(np.diff(az), 90.0, atol=1e-6)
        assert views["fov_deg"].nunique() == 1 and views["distance"].nunique() == 1
    assert (index.loc[index["kind"] == "agp", "fov_deg"] == 45.0).all()

    # Stored CCM agrees with stored depth unprojected through the stored camera.
    row = index.iloc[0]
    arrays = np.load(root / row["arrays_path"])
    k = list(arrays["view_id"]).index(row["view_id"])
    cam = Camera(np.array(row["c2w"]).reshape(4, 4), row["fov_deg"], row["width"], row["height"])
    pts = unproject(arrays["depth"][k], cam)
    mask = arrays["depth"][k] > 0
    mesh = load_mesh(project.root / "data/curated" / kept.set_index("uid").loc[row["uid"], "mesh_path"])
    expected = to_canonical(pts[mask], ccm_normaliser(mesh))
    ccm = np.asarray(Image.open(root / row["ccm_path"]), dtype=np.float64)[mask] / 255.0
    assert np.median(np.abs(ccm - expected)) <= 1.0 / 255
    rgba = np.asarray(Image.open(root / row["rgba_path"]))
    assert rgba.shape == (48, 48, 4) and ((rgba[..., 3] > 0) == mask).all()

    # Training datasets: view sets together with cameras and captions joined by uid.
    from dreamline.rendering.dataset import CCMViews, MultiViewSets

    project.stage("caption")
    caps = project.root / "data/captions/captions.parquet"
    mv = MultiViewSets(root, caps, split=None, background="random", suffix=", 3d asset")
    assert len(mv) == len(kept)
    item = mv[0]
    assert item["images"].shape == (4, 3, 48, 48) and item["cameras"].shape == (4, 16)
    assert -1.0 <= float(item["images"].min()) and float(item["images"].max()) <= 1.0
    assert item["caption"].endswith(", 3d asset") and mv[0]["caption"] == item["caption"]
    agp = CCMViews(root, caps, split=None)
    assert len(agp) == 2 * len(kept)
    c = agp[0]
    assert c["ccm"].shape == (3, 48, 48) and c["mask"].any() and (c["ccm"][:, ~c["mask"]] == -1).all()
    train = MultiViewSets(root, caps, split="train")
    assert len(train) <= len(mv)

    # The same renders from a local Dask cluster of 2 worker processes (prefect-dask).
    fresh = (root / "index.parquet").read_bytes()
    first_png = (root / row["ccm_path"]).read_bytes()
    import shutil

    shutil.rmtree(root)
    project.set_params({**SMALL, "execution": {"task_runner": "dask", "workers": 2},
                        "render": {**SMALL["render"], "shard_size": 2}})
    out = project.stage("render").stdout
    assert f"'processed': {len(kept)}" in out
    assert (root / "index.parquet").read_bytes() == fresh
    assert (root / row["ccm_path"]).read_bytes() == first_png
    project.set_params(SMALL)

    # Rerun renders nothing; a broken mesh costs only itself.
    out = project.stage("render").stdout
    assert "'processed': 0" in out
    victim = kept.iloc[0]
    (project.root / "data/curated" / victim["mesh_path"]).write_bytes(b"not a glb")
    (root / "objects" / victim["uid"] / "done.json").unlink()
    out = project.stage("render").stdout
    assert "'processed': 0" in out and "'failed': 1" in out
    failures = pd.read_parquet(root / "failures.parquet")
    assert failures["uid"].tolist() == [victim["uid"]]
    summary = json.loads((root / "summary.json").read_text())
    assert summary["objects"] == len(kept) - 1


def test_index_is_identical_for_fresh_and_reused_objects(tmp_path):
    from dreamline.rendering.index import assemble_index

    row = {"uid": "u", "view_id": "agp0", "kind": "agp", "set": -1, "azimuth_deg": 1.0,
           "elevation_deg": 2.0, "distance": 3.0, "fov_deg": 45.0, "width": 8, "height": 8,
           "c2w": [0.0] * 16, "rgba_path": "a", "ccm_path": "b", "normal_path": "c",
           "arrays_path": "d", "coverage": 0.5}
    fresh, reused = tmp_path / "fresh", tmp_path / "reused"
    assemble_index([{"uid": "u", "rows": [row]}], fresh, "osmesa", {"u"})
    assemble_index([{"uid": "u", "rows": [dict(sorted(row.items()))]}], reused, "osmesa", {"u"})
    assert (fresh / "index.parquet").read_bytes() == (reused / "index.parquet").read_bytes()
