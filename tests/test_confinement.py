"""Paths that come from data or params never lead outside their folder (issue 17).

A mirror's object-paths entry that climbs out of the mirror, is absolute, or goes through a
symbolic link out of it becomes an `unsafe_path` reject and the file it names is never
opened or stat'ed; render-index / objects-table / eval rows naming a file outside their
output folder are refused naming the row; path-valued params must stay inside the project
or under `paths.allowed_roots`.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import textwrap
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import make_project
from dreamline.config import CurateParams, MirrorParams, ParamsError, parse_params
from dreamline.paths import UnsafePathError, confine, param_path

# --------------------------------------------------------------------------- the watch
# Folders this process must not touch while a test runs, and what touched them: every
# open (the "open" audit event covers builtins.open, io.open and os.open), directory
# listing, and os.stat (which follows symlinks; objaverse calls it through os.path.exists).

_WATCHED: list[str] = []
_TOUCHED: list[tuple[str, str]] = []


def _in_watched(path) -> bool:
    try:
        text = os.fsdecode(path)
    except TypeError:  # a file descriptor
        return False
    full = os.path.abspath(text)
    for candidate in (full, os.path.realpath(full)):
        if any(candidate == w or candidate.startswith(w + os.sep) for w in _WATCHED):
            return True
    return False


def _audit(event: str, args: tuple) -> None:
    if _WATCHED and event in ("open", "os.listdir", "os.scandir") and args and _in_watched(args[0]):
        _TOUCHED.append((event, os.fsdecode(args[0])))


sys.addaudithook(_audit)  # cannot be removed; inert while nothing is watched


@pytest.fixture
def watch(monkeypatch):
    """watch(folder): from now on, record anything that opens, lists or stats inside it."""
    real_stat = os.stat

    def stat(path, *a, **k):
        if _WATCHED and _in_watched(path):
            _TOUCHED.append(("os.stat", os.fsdecode(path)))
        return real_stat(path, *a, **k)

    def no_download(url, *a, **k):
        _TOUCHED.append(("download", url))
        raise OSError("network access attempted")

    def no_connect(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(urllib.request, "urlretrieve", no_download)
    monkeypatch.setattr(socket.socket, "connect", no_connect)

    def arm(folder: Path) -> list[tuple[str, str]]:
        probe = next(p for p in Path(folder).rglob("*") if p.is_file())
        _WATCHED.append(os.path.realpath(folder))
        # The watch itself works: a deliberate open and stat are seen, then forgotten.
        before = len(_TOUCHED)
        with open(probe, "rb"):
            pass
        os.path.exists(probe)
        assert {e for e, _ in _TOUCHED[before:]} >= {"open", "os.stat"}, _TOUCHED[before:]
        del _TOUCHED[before:]
        return _TOUCHED

    yield arm
    _WATCHED.clear()
    _TOUCHED.clear()


# --------------------------------------------------------------------------- confine

def test_confine_resolves_inside_and_refuses_every_way_out(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a/b").mkdir(parents=True)
    outside.mkdir()
    (root / "a/b/f.txt").write_text("in")
    (outside / "secret.txt").write_text("out")
    (root / "a/inner").symlink_to("b")                       # relative, stays inside
    (root / "a/abs_inner").symlink_to(root / "a/b")          # absolute, stays inside
    (root / "a/out").symlink_to(outside)                     # absolute, leaves
    (root / "a/up").symlink_to("../../outside")              # relative, leaves
    (root / "loop").symlink_to("loop")

    assert confine("a/b/f.txt", root, "x") == (root / "a/b/f.txt").resolve()
    assert confine("a/inner/f.txt", root, "x") == (root / "a/b/f.txt").resolve()
    assert confine("a/abs_inner/../b/f.txt", root, "x") == (root / "a/b/f.txt").resolve()
    assert confine(root / "a/b/f.txt", root, "x") == (root / "a/b/f.txt").resolve()
    assert confine("a/b/../../a/b/missing.txt", root, "x") == (root / "a/b/missing.txt").resolve()
    for bad, why in [("../outside/secret.txt", "climbs out"), ("a/b/../../../outside/secret.txt", "climbs out"),
                     (str(outside / "secret.txt"), "absolute"), ("a/out/secret.txt", "symbolic link"),
                     ("a/up/secret.txt", "climbs out"), ("loop/x", "symbolic links"),
                     ("a/inner/../../..", "climbs out"), ("a\x00b", "NUL")]:
        with pytest.raises(UnsafePathError) as err:
            confine(bad, root, "the thing")
        assert "the thing" in str(err.value) and why in str(err.value), (bad, str(err.value))
    # relative_to: a path written relative to the working directory, checked against a root.
    assert confine(os.path.relpath(root / "a/b/f.txt"), root, "x", relative_to=".") == (root / "a/b/f.txt").resolve()


# --------------------------------------------------------------------------- the mirror

def _craft_unsafe_entries(mirror_root: Path, outside: Path) -> dict[str, str]:
    """Add four entries that would be kept as normal chairs if followed: a path climbing out
    with '..', an absolute path, a GLB that is a symlink out of the mirror, and a uid that
    would name files outside data/curated. Returns {uid: kind}."""
    from dreamline.sources import mirror

    w = mirror.MirrorWriter.open_existing(mirror_root)
    donor = next(u for u, m in sorted(w.manifest.items())
                 if m.get("source") == "procedural" and m.get("category") == "chair")
    base = mirror_root / "hf-objaverse-v1"
    glb = (base / w.paths[donor]).read_bytes()
    outside.mkdir(parents=True, exist_ok=True)
    uids = {"f" * 31 + "1": "traversal", "f" * 31 + "2": "absolute", "f" * 31 + "3": "symlink",
            "../escape": "uid"}
    for uid, kind in uids.items():
        record = {**w.shards[w.paths[donor].split("/")[1]][donor], "uid": uid, "name": f"Crafted chair {kind}"}
        w.shards["000-001"][uid] = record
        w.manifest[uid] = {"source": "crafted", "kind": kind}
    (outside / "trav.glb").write_bytes(glb)
    (outside / "abs.glb").write_bytes(glb)
    (outside / "link.glb").write_bytes(glb)
    t, a, s, n = uids
    w.paths[t] = "glbs/000-001/" + os.path.relpath(outside / "trav.glb", base / "glbs/000-001")
    assert ".." in w.paths[t] and not w.paths[t].startswith("/")
    w.paths[a] = str(outside / "abs.glb")
    w.paths[s] = f"glbs/000-001/{s}.glb"
    (base / "glbs/000-001").mkdir(parents=True, exist_ok=True)
    (base / w.paths[s]).symlink_to(outside / "link.glb")
    w.paths[n] = "glbs/000-001/escape.glb"
    (base / w.paths[n]).write_bytes(glb)  # inside the mirror: the uid is what is unsafe
    w.finalize()
    return uids


def _check_unsafe_rejects(curated: Path, uids: dict[str, str], outside: Path) -> None:
    df = pd.read_parquet(curated / "objects.parquet").set_index("uid")
    crafted = df.loc[list(uids)]
    assert not crafted["kept"].any()
    assert (crafted["reject_reason"] == "unsafe_path").all(), crafted[["reject_reason", "reject_detail"]]
    assert (crafted["reject_stage"] == "path").all()
    assert crafted["sha256"].isna().all() and crafted["mesh_path"].isna().all()
    for uid, kind in uids.items():
        detail = crafted.loc[uid, "reject_detail"]
        expected = {"traversal": "climbs out", "absolute": "absolute", "symlink": "symbolic link",
                    "uid": "not a plain file name"}[kind]
        assert expected in detail, (kind, detail)
    summary = json.loads((curated / "summary.json").read_text())
    assert summary["reject_reasons"]["unsafe_path"] == len(uids)
    # The donor and every other object are curated as before.
    assert df.loc[~df.index.isin(list(uids)), "kept"].sum() == summary["kept"] > 0
    meshes = {p.name for p in (curated / "meshes").iterdir()}
    assert meshes == {f"{u}.glb" for u in df.index[df["kept"]]}
    assert not any(p.name.startswith("escape") for p in curated.parent.rglob("*") if "mirror" not in p.parts)
    assert sorted(p.name for p in outside.iterdir()) == ["abs.glb", "link.glb", "trav.glb"]


@pytest.fixture
def crafted_mirror(tmp_path):
    from dreamline.sources.mirror import build_mirror

    build_mirror(MirrorParams(categories=("chair", "mug"), instances_per_category=2, packaged_meshes=0,
                              packaged_meshes_dir=str(tmp_path / "no-meshes"), junk_per_kind=0),
                 tmp_path / "mirror")
    outside = tmp_path / "outside"
    uids = _craft_unsafe_entries(tmp_path / "mirror", outside)
    return tmp_path / "mirror", outside, uids


def test_unsafe_mirror_paths_are_rejected_and_never_touched(crafted_mirror, tmp_path, watch):
    from dreamline.curation.curate import run_curation

    mirror_root, outside, uids = crafted_mirror
    touched = watch(outside)
    run_curation(mirror_root, CurateParams(), tmp_path / "curated")
    assert touched == [], f"curation touched files outside the mirror: {touched}"
    _check_unsafe_rejects(tmp_path / "curated", uids, outside)
    touched.clear()  # the checks themselves looked outside

    # A second run reuses nothing of them and still touches nothing outside.
    run_curation(mirror_root, CurateParams(), tmp_path / "curated")
    assert touched == []
    _check_unsafe_rejects(tmp_path / "curated", uids, outside)


def test_reader_refuses_unsafe_entries_before_objaverse_sees_them(crafted_mirror, watch, monkeypatch):
    from dreamline.sources.objaverse_reader import ObjaverseCache

    mirror_root, outside, uids = crafted_mirror
    touched = watch(outside)
    cache = ObjaverseCache(mirror_root)
    # As for real Objaverse, where a missing GLB is downloaded (objaverse.load_objects):
    # the download is a spy that must never be asked.
    cache.downloads = True
    seen = []
    monkeypatch.setattr(cache, "_download_object", seen.append)
    for uid in uids:
        with pytest.raises(UnsafePathError, match="refused"):
            cache.load_object(uid)
    assert seen == [] and touched == []
    groups, unsafe = cache.check_object_paths(cache.uids())
    assert set(unsafe) == set(uids) - {"f" * 31 + "3"}  # the symlink is found when it would be read
    assert not (set(uids) & {u for g in groups.values() for u in g}) - {"f" * 31 + "3"}
    # uids_by_shard does not trip over an entry with no shard component.
    paths = cache.object_paths()
    monkeypatch.setattr(cache, "object_paths", lambda: {**paths, "x": "x.glb", "y": 3})
    assert "x" not in {u for g in cache.uids_by_shard(list(paths) + ["x", "y"]).values() for u in g}


def test_mirror_index_files_that_are_symlinks_out_of_the_mirror_are_refused(crafted_mirror, watch):
    from dreamline.sources.objaverse_reader import ObjaverseCache

    mirror_root, outside, _ = crafted_mirror
    base = mirror_root / "hf-objaverse-v1"
    ov = ObjaverseCache(mirror_root)
    uids = ov.uids()
    by_shard, _ = ov.check_object_paths(uids)
    shard = next(s for s in by_shard if s != "000-001")
    (base / f"metadata/{shard}.json.gz").rename(outside / "shard.json.gz")
    (base / f"metadata/{shard}.json.gz").symlink_to(outside / "shard.json.gz")
    (base / "lvis-annotations.json.gz").rename(outside / "lvis.json.gz")
    (base / "lvis-annotations.json.gz").symlink_to(outside / "lvis.json.gz")
    touched = watch(outside)
    groups, unsafe = ov.check_object_paths(uids)
    assert shard not in groups and all(f"metadata shard {shard}" in unsafe[u] for u in by_shard[shard])
    with pytest.raises(UnsafePathError, match="lvis-annotations"):
        ov.lvis_categories()
    assert touched == []


def test_curate_stage_rejects_unsafe_paths_through_its_entry_point(tmp_path, prefect_api_url):
    """The real `python -m stages.curate`, with an audit hook in the stage process."""
    proj = tmp_path / "proj"
    proj.mkdir()
    project = make_project(proj, prefect_api_url)
    project.stage("mirror")
    outside = tmp_path / "outside"
    uids = _craft_unsafe_entries(proj / "data/mirror", outside)
    log = tmp_path / "touched.txt"
    wrapper = textwrap.dedent(f"""
        import os, runpy, sys
        watched, log = {str(outside.resolve())!r}, {str(log)!r}

        def inside(p):
            try:
                p = os.path.abspath(os.fsdecode(p))
            except TypeError:
                return False
            return any(c == watched or c.startswith(watched + os.sep) for c in (p, os.path.realpath(p)))

        def note(what, p):
            with open(log, "a") as f:  # the log is not in the watched folder
                f.write(f"{{what}} {{os.fsdecode(p)}}\\n")

        def audit(event, args):
            if event in ("open", "os.listdir", "os.scandir") and args and inside(args[0]):
                note(event, args[0])

        real_stat = os.stat
        def stat(p, *a, **k):
            if inside(p):
                note("os.stat", p)
            return real_stat(p, *a, **k)

        os.stat = stat
        sys.addaudithook(audit)
        sys.argv = ["stages.curate"]
        runpy.run_module("stages.curate", run_name="__main__", alter_sys=True)
    """)
    project.run(sys.executable, "-c", wrapper)
    assert not log.exists(), log.read_text()
    _check_unsafe_rejects(proj / "data/curated", uids, outside)


# --------------------------------------------------------------------------- rows of DVC outputs

def _png(path: Path, value: int = 200) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 4), value, np.uint8)).save(path)


@pytest.fixture
def renders(tmp_path):
    """A tiny render output (one object, one mv set and one agp view) plus captions, and a
    PNG outside it that crafted rows point at."""
    root = tmp_path / "renders"
    rows = []
    for kind, n in (("mv", 4), ("agp", 1)):
        for v in range(n):
            rel = f"objects/u1/{kind}_{v}"
            _png(root / f"{rel}_rgba.png")
            _png(root / f"{rel}_ccm.png", 100)
            rows.append({"uid": "u1", "kind": kind, "set": 0, "view_id": v, "rgba_path": f"{rel}_rgba.png",
                         "ccm_path": f"{rel}_ccm.png", "c2w": list(np.eye(4).reshape(-1))})
    pd.DataFrame(rows).to_parquet(root / "index.parquet")
    captions = tmp_path / "captions.parquet"
    outside = tmp_path / "outside"
    _png(outside / "secret.png", 7)
    return root, captions, outside


def _captions(path: Path, split: str) -> None:
    pd.DataFrame([{"uid": "u1", "split": split, "caption": "a box", "original_text": "box"}]).to_parquet(path)


def _craft_row(root: Path, outside: Path, how: str, column: str = "rgba_path", kind: str = "mv") -> None:
    index = pd.read_parquet(root / "index.parquet")
    target = {"traversal": "../outside/secret.png", "absolute": str(outside / "secret.png"),
              "symlink": f"objects/u1/link_{column}.png"}[how]
    if how == "symlink":
        (root / target).symlink_to(outside / "secret.png")
    row = index.index[(index["kind"] == kind) & (index["view_id"] == 0)][0]
    index.loc[row, column] = target
    index.to_parquet(root / "index.parquet")


@pytest.mark.parametrize("how", ["traversal", "absolute", "symlink"])
def test_render_index_rows_stay_in_the_renders_folder(renders, how, watch):
    from dreamline.rendering.dataset import CCMViews, MultiViewSets
    from dreamline.training.data import load_views

    root, captions, outside = renders
    _captions(captions, "train")
    assert len(load_views(root, captions, 4)) == 5            # the honest table loads
    assert len(MultiViewSets(root, captions, "train")[0]["images"]) == 4
    _craft_row(root, outside, how)
    _craft_row(root, outside, how, "ccm_path", "agp")
    touched = watch(outside)
    for call in (lambda: load_views(root, captions, 4),
                 lambda: load_views(root, captions, 4, kinds=("agp",), with_ccm=True),
                 lambda: MultiViewSets(root, captions, "train"), lambda: CCMViews(root, captions, "train")):
        with pytest.raises(UnsafePathError) as err:
            call()
        msg = str(err.value)
        assert "index.parquet" in msg and "uid=u1" in msg and "view_id=0" in msg and "_path" in msg, msg
    assert touched == []


def test_dreambooth_identity_rows_and_images_stay_inside(renders, tmp_path, watch):
    from dreamline.training.dreambooth import default_identity, load_identity_images

    root, captions, outside = renders
    _captions(captions, "test")
    default_identity(root, captions, tmp_path / "identity")
    assert len(list((tmp_path / "identity").iterdir())) == 4
    _craft_row(root, outside, "traversal")
    touched = watch(outside)
    with pytest.raises(UnsafePathError, match="uid=u1 .*rgba_path"):
        default_identity(root, captions, tmp_path / "identity2")
    # A symlink in the identity-images folder that points out of it is refused too.
    (tmp_path / "identity" / "zz.png").symlink_to(outside / "secret.png")
    with pytest.raises(UnsafePathError, match="zz.png"):
        load_identity_images(tmp_path / "identity", 8)
    assert touched == []


def test_caption_inputs_refuse_a_mesh_path_outside_the_curated_folder(tmp_path):
    from dreamline.captioning.captions import caption_inputs

    curated = tmp_path / "curated"
    (curated / "meshes").mkdir(parents=True)
    (curated / "meshes/u1.glb").write_bytes(b"glb")
    row = {"uid": "u1", "kept": True, "tags": ["chair"], "name": "Chair", "lvis_category": "chair",
           "colour": "red", "description": "", "mesh_path": "meshes/u1.glb"}
    items = caption_inputs(pd.DataFrame([row]), curated)
    assert items[0].mesh_path == (curated / "meshes/u1.glb").resolve()
    with pytest.raises(UnsafePathError, match="objects.parquet: row uid=u2, mesh_path"):
        caption_inputs(pd.DataFrame([row, {**row, "uid": "u2", "mesh_path": "../../etc/passwd"}]), curated)


def test_report_embeds_nothing_named_from_outside_its_inputs(tmp_path, monkeypatch, watch):
    from dreamline.evaluation.report import build_report

    monkeypatch.chdir(tmp_path)
    data = Path("data")
    (data / "distill/red-chair").mkdir(parents=True)
    _png(data / "eval/grids/red-chair.png")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    _png(outside / "secret.png", 7)
    real = {"n_units": 1, "n_captions": 2, "R@1": 1.0, "R@1_ci95": [None, None], "R@5": 1.0}
    (data / "eval/metrics.json").write_text(json.dumps(
        {"evaluator": "e", "feature_net": "f", "r_precision": {"real_test": real}}))
    asset = {"asset": "data/distill/red-chair", "prompt": "a red chair", "grid": "data/eval/grids/red-chair.png"}

    def build(a):
        (data / "eval/assets.json").write_text(json.dumps([a]))
        return build_report(data / "eval/metrics.json", data / "eval/assets.json", data / "distill",
                            data / "models", None, Path("dvc.lock"), data / "report/index.html")

    assert "data:image/png;base64" in build(asset).read_text()
    (outside / "secret.mp4").write_bytes(b"\0\0\0\x08secret")
    touched = watch(outside)
    for bad in ({**asset, "grid": str(outside / "secret.png")},
                {**asset, "grid": "data/eval/../../" + os.path.relpath(outside / "secret.png", tmp_path)},
                {**asset, "asset": str(outside)}):
        with pytest.raises(UnsafePathError, match="assets.json"):
            build(bad)
    # The turntables the asset cards embed: a link out of the asset folder is refused too.
    for name in ("turntable.mp4", "turntable.gif"):
        link = data / "distill/red-chair" / name
        link.symlink_to(outside / "secret.mp4")
        with pytest.raises(UnsafePathError, match=f"assets.json.*{name}"):
            build(asset)
        link.unlink()
    assert touched == []


def test_asset_folders_refuse_a_symlink_out_of_the_asset_root(tmp_path):
    from dreamline.evaluation.evaluate import asset_folders

    root = tmp_path / "distill"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (root / "red-chair").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePathError, match="red-chair"):
        asset_folders(root)


# --------------------------------------------------------------------------- params

PATH_KEYS = [
    ({"train_mv": {"base_model": "{p}"}}, "train_mv.base_model"),
    ({"train_depth": {"base_model": "{p}"}}, "train_depth.base_model"),
    ({"train_caa": {"depth_model": "{p}"}}, "train_caa.depth_model"),
    ({"texture": {"model": "{p}"}}, "texture.model"),
    ({"evaluate": {"evaluator": "{p}"}}, "evaluate.evaluator"),
    ({"evaluate": {"image_quality": {"models": {"mine": "{p}"}}}}, "evaluate.image_quality.models.mine"),
    ({"dreambooth": {"images": "{p}"}}, "dreambooth.images"),
    ({"distill": {"guidance": {"mv-sds": {"model": "{p}"}}}}, "distill.guidance.mv-sds.model"),
    ({"distill": {"representation_type": "gaussians",
                  "representation": {"init": "points", "init_points": "{p}"}}}, "distill.representation.init_points"),
    ({"caption": {"captioner_type": "image", "captioner": {"model_path": "{p}"}}}, "caption.captioner.model_path"),
    ({"mirror": {"packaged_meshes_dir": "{p}"}}, "mirror.packaged_meshes_dir"),
    ({"evaluate": {"image_quality": {"inception_weights": "{p}"}}}, "evaluate.image_quality.inception_weights"),
    ({"evaluate_studies": {"image_quality": {"inception_weights": "{p}"}}},
     "evaluate_studies.image_quality.inception_weights"),
    ({"texture": {"inception_weights": "{p}"}}, "texture.inception_weights"),
]


def _fill(raw, value: str):
    if isinstance(raw, dict):
        return {k: _fill(v, value) for k, v in raw.items()}
    return raw.replace("{p}", value) if isinstance(raw, str) else raw


@pytest.fixture
def places(tmp_path):
    proj, outside = tmp_path / "proj", tmp_path / "models"
    (proj / "data/models/mine").mkdir(parents=True)
    (outside / "mine").mkdir(parents=True)
    (proj / "linked").symlink_to(outside / "mine")
    return proj, outside


@pytest.mark.parametrize("raw, key", PATH_KEYS, ids=[k for _, k in PATH_KEYS])
def test_path_params_stay_in_the_project_unless_allowed(raw, key, places):
    proj, outside = places
    parse_params(_fill(raw, "data/models/mine"), "params.yaml", project_root=proj)
    parse_params(_fill(raw, str(proj / "data/models/mine")), "params.yaml", project_root=proj)
    for value in (str(outside / "mine"), "../models/mine", "linked", "data/../../models/mine"):
        with pytest.raises(ParamsError) as err:
            parse_params(_fill(raw, value), "params.yaml", project_root=proj)
        msg = str(err.value)
        assert key in msg and "paths.allowed_roots" in msg and repr(value) in msg, msg
        # Listing the external folder admits it (the symlink's target lies under it too).
        allowed = {**_fill(raw, value), "paths": {"allowed_roots": [str(outside)]}}
        parse_params(allowed, "params.yaml", project_root=proj)


def test_allowed_roots_must_be_absolute_and_home_is_expanded(places, monkeypatch):
    proj, outside = places
    with pytest.raises(ParamsError, match="paths.*must be an absolute path"):
        parse_params({"paths": {"allowed_roots": ["models"]}}, "params.yaml", project_root=proj)
    monkeypatch.setenv("HOME", str(outside))
    raw = {"caption": {"captioner_type": "image", "captioner": {"model_path": "~/mine"}}}
    with pytest.raises(ParamsError, match="caption.captioner.model_path"):
        parse_params(raw, "params.yaml", project_root=proj)
    parse_params({**raw, "paths": {"allowed_roots": ["~"]}}, "params.yaml", project_root=proj)
    with pytest.raises(UnsafePathError, match="my.key"):
        param_path("/", "my.key", proj)


def test_committed_params_have_no_path_outside_the_project():
    import yaml

    raw = yaml.safe_load(Path("params.yaml").read_text())
    assert raw["paths"] == {"allowed_roots": []}
    parse_params(raw, "params.yaml", project_root=Path.cwd())


def test_a_stage_refuses_a_params_path_outside_the_project_with_exit_2(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    project = make_project(proj, None)
    project.set_params({"train_mv": {"base_model": str(tmp_path / "elsewhere")}})
    proc = project.stage("train_mv", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "train_mv.base_model" in proc.stderr and "paths.allowed_roots" in proc.stderr
