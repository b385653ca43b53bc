"""The mirror is a real objaverse cache: the package's public API reads it with no network,
and dreamline's reader of the cache layout (ObjaverseCache) reads the same thing."""
import ast
import gzip
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trimesh

from dreamline.config import MirrorParams
from dreamline.sources.objaverse_reader import ObjaverseCache
from dreamline.sources.mirror import N_SHARDS, build_mirror, write_annotation_only

from conftest import write_test_meshes

REPO = Path(__file__).resolve().parent.parent

RECORD_KEYS = {"uri", "uid", "name", "tags", "categories", "license", "faceCount", "vertexCount",
               "animationCount", "description", "isAgeRestricted", "archives", "viewerUrl",
               "thumbnails", "user", "publishedAt"}


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mirror")
    write_test_meshes(tmp / "meshes", ["bunny00.off", "cow.off"])
    p = MirrorParams(instances_per_category=2, packaged_meshes=2, packaged_meshes_dir=str(tmp / "meshes"))
    summary = build_mirror(p, tmp / "root")
    return tmp / "root", p, summary


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("network access attempted")
    monkeypatch.setattr(socket.socket, "connect", refuse)


def _run_with_home(home: Path, script: str) -> dict:
    """Run `script` in a fresh interpreter whose HOME is `home`, so that the objaverse
    package's BASE_PATH (computed at import from '~') is `home`/.objaverse; no attribute of
    the package is touched. The script prints one JSON line last."""
    env = {**os.environ, "HOME": str(home),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=str(REPO), env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# Inside the child: any attempt at the network fails the run (name lookups included).
_NO_NETWORK = """
    import socket
    def refuse(*a, **k):
        raise AssertionError("network access attempted")
    socket.socket.connect = refuse
    socket.getaddrinfo = refuse
"""


def test_objaverse_api_reads_the_mirror_offline(mirror, tmp_path):
    """~/.objaverse -> the mirror: the package's public API reads it with sockets refused,
    and the candidates table read through dreamline's reader (of the mirror, and of the
    package's default cache) is the one the API's annotations give."""
    root, p, summary = mirror
    (tmp_path / ".objaverse").symlink_to(root.resolve(), target_is_directory=True)
    out = _run_with_home(tmp_path, _NO_NETWORK + f"""
    import json, os
    import objaverse
    import pyarrow as pa
    from dreamline.curation.candidates import load_candidates
    from dreamline.curation.metadata_filter import PATH_PROBLEM, records_to_table

    root = {str(root)!r}
    assert objaverse.BASE_PATH == os.path.expanduser("~/.objaverse"), objaverse.BASE_PATH
    uids = objaverse.load_uids()
    everything = objaverse.load_annotations()  # reads all 160 shards, downloads none
    some = objaverse.load_annotations(uids[:5])
    manifest = json.load(open(os.path.join(root, "dreamline-manifest.json")))
    present = [u for u in uids if manifest[u]["kind"] != "missing_file"]
    paths = objaverse.load_objects(present[:10])
    meshes_ok = all(os.path.realpath(v).startswith(os.path.realpath(root)) for v in paths.values())
    lvis = objaverse.load_lvis_annotations()

    # The candidates table, from the public API alone (what curation read before it read
    # the cache layout itself) ...
    first = {{}}
    for category, members in sorted(lvis.items()):
        for uid in members:
            first.setdefault(uid, category)
    expected = records_to_table([{{u: everything[u] for u in uids if u in everything}}])
    expected = expected.append_column("lvis_category", pa.array(
        [first.get(u) for u in expected.column("uid").to_pylist()], pa.string()))
    expected = expected.append_column(PATH_PROBLEM, pa.nulls(expected.num_rows, pa.string()))
    # ... and through the reader: of the mirror, and of the package's default cache.
    key = [("uid", "ascending")]
    of_mirror = load_candidates(root)
    of_default = load_candidates(None)
    print(json.dumps({{
        "uids": uids, "everything": sorted(everything), "some": some, "objects": len(paths),
        "object_paths": sorted(paths.values()), "meshes_in_mirror": meshes_ok,
        "lvis": sorted(lvis), "mirror_equals_api": of_mirror.sort_by(key).equals(expected.sort_by(key)),
        "default_equals_mirror": of_default.equals(of_mirror), "rows": of_mirror.num_rows,
    }}))
    """)
    uids = out["uids"]
    assert len(uids) == summary["objects"] == 12 * 2 + 2 + 15
    assert out["everything"] == sorted(uids)
    assert set(out["some"]) == set(uids[:5])
    for r in out["some"].values():
        assert RECORD_KEYS <= set(r)
        assert len(r["uid"]) == 32 and all(c in "0123456789abcdef" for c in r["uid"])
        assert all({"name", "slug"} <= set(t) for t in r["tags"] + r["categories"])
    assert out["objects"] == 10 and out["meshes_in_mirror"]
    for path in out["object_paths"]:
        assert trimesh.load(path, force="scene") is not None
    assert {"chair", "mug", "snowman", "rabbit", "cow"} <= set(out["lvis"])
    assert out["rows"] == len(uids)
    assert out["mirror_equals_api"], "the reader's candidates differ from the objaverse API's"
    assert out["default_equals_mirror"], "ObjaverseCache(None) reads ~/.objaverse differently"
    assert len(list((root / "hf-objaverse-v1/metadata").glob("*.json.gz"))) == N_SHARDS


def test_real_objaverse_downloads_through_the_public_api(mirror, tmp_path):
    """ObjaverseCache(None) on an empty ~/.objaverse: what is missing is downloaded by the
    package's own functions (urllib served from the mirror, as if it were Hugging Face) into
    its default cache, then read; the candidates equal the mirror's and a GLB arrives."""
    root, _, _ = mirror
    (tmp_path / ".objaverse").mkdir()
    manifest = json.loads((root / "dreamline-manifest.json").read_text())
    present = sorted(u for u, m in manifest.items() if m["kind"] != "missing_file")
    missing = sorted(u for u, m in manifest.items() if m["kind"] == "missing_file")
    out = _run_with_home(tmp_path, _NO_NETWORK + f"""
    import json, os, shutil, urllib.error, urllib.request
    import objaverse
    from dreamline.curation.candidates import load_candidates
    from dreamline.sources.objaverse_reader import ObjaverseCache

    hub = os.path.join({str(root)!r}, "hf-objaverse-v1")
    prefix = "https://huggingface.co/datasets/allenai/objaverse/resolve/main/"
    fetched = []
    def urlretrieve(url, filename):  # a stand-in for Hugging Face, served from the mirror
        assert url.startswith(prefix), url
        src = os.path.join(hub, url[len(prefix):])
        if not os.path.isfile(src):
            raise urllib.error.HTTPError(url, 404, "not found", None, None)
        fetched.append(url[len(prefix):])
        shutil.copyfile(src, filename)
    urllib.request.urlretrieve = urlretrieve

    table = load_candidates(None)
    cache = ObjaverseCache(None)
    glb = cache.load_object({present[0]!r})
    try:
        cache.load_object({missing[0]!r})
        missing_error = None
    except Exception as err:
        missing_error = type(err).__name__
    print(json.dumps({{"fetched": fetched, "glb": glb, "root": str(cache.root), "missing_error": missing_error,
                      "equal": table.equals(load_candidates({str(root)!r}))}}))
    """)
    assert out["root"] == str(tmp_path / ".objaverse")
    assert out["equal"]
    fetched = out["fetched"]
    assert fetched[0] == "object-paths.json.gz" and "lvis-annotations.json.gz" in fetched
    assert any(f.startswith("metadata/") for f in fetched)
    assert Path(out["glb"]).read_bytes() == (root / "hf-objaverse-v1" / fetched[-1]).read_bytes()
    assert Path(out["glb"]).is_relative_to(tmp_path / ".objaverse")
    assert out["missing_error"] == "HTTPError"  # asked for, not found: curation's missing_file


def test_procedural_objects_are_canonically_oriented(mirror):
    root, p, _ = mirror
    manifest = json.loads((root / "dreamline-manifest.json").read_text())
    cache = ObjaverseCache(root)
    for uid, m in manifest.items():
        if m["source"] != "procedural" or m["category"] not in ("chair", "tree", "snowman", "lamp"):
            continue
        mesh = trimesh.load(cache.load_object(uid), force="mesh")
        ext = mesh.extents
        # Upright things are taller (Y) than deep, and stand on y >= 0.
        assert ext[1] >= 0.8 * ext[2], (m["category"], ext)
        assert mesh.bounds[0][1] > -0.05


def test_mirror_is_deterministic_and_incremental(mirror, tmp_path):
    root, p, _ = mirror
    again = build_mirror(p, root)
    assert again["glbs_written"] == 0, "rebuilding with the same params rewrites nothing"
    other = tmp_path / "other"
    build_mirror(p, other)
    for f in sorted((root / "hf-objaverse-v1").rglob("*.*")):
        rel = f.relative_to(root)
        assert (other / rel).read_bytes() == f.read_bytes(), rel
    bigger = p.model_copy(update={"instances_per_category": 3})
    s = build_mirror(bigger, other)
    assert s["glbs_written"] == 12


def test_annotation_only_mirror(tmp_path, no_network):
    write_annotation_only(tmp_path, 3000, seed=1)
    cache = ObjaverseCache(tmp_path)
    uids = cache.uids()
    assert len(uids) == 3000
    shards = list(cache.iter_annotation_shards(uids))
    assert sum(len(s) for s in shards) == 3000
    raw = json.loads(gzip.decompress((tmp_path / "hf-objaverse-v1/object-paths.json.gz").read_bytes()))
    assert not (tmp_path / "hf-objaverse-v1" / raw[uids[0]]).exists()


def test_parallel_candidate_loading_matches_serial(tmp_path, monkeypatch):
    from dreamline.curation import candidates

    write_annotation_only(tmp_path, 2000, seed=2)
    serial = candidates.load_candidates(tmp_path, workers=1)
    monkeypatch.setattr(candidates, "PARALLEL_LOAD_MIN", 100)
    parallel = candidates.load_candidates(tmp_path, workers=2)
    key = [("uid", "ascending")]
    assert serial.sort_by(key).equals(parallel.sort_by(key))
    assert serial.num_rows == 2000


def _objaverse_assignments(source: str) -> list[str]:
    """`objaverse.<name> = ...` (also augmented, annotated, `del`, and `setattr(objaverse,
    ...)`) for every name the objaverse module is bound to by an import in `source`."""
    tree = ast.parse(source)
    names = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
             for a in node.names if a.name == "objaverse"}
    if not names:
        return []

    def is_module(node) -> bool:
        return isinstance(node, ast.Name) and node.id in names

    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        flat = []
        while targets:
            t = targets.pop()
            if isinstance(t, (ast.Tuple, ast.List)):
                targets.extend(t.elts)
            else:
                flat.append(t)
        found += [f"line {t.lineno}: {ast.unparse(t)}" for t in flat
                  if isinstance(t, ast.Attribute) and is_module(t.value)]
        if (isinstance(node, ast.Call) and node.args and is_module(node.args[0])
                and ((isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr"))
                     or (isinstance(node.func, ast.Attribute) and node.func.attr in ("setattr", "delattr")))):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_no_code_assigns_to_the_objaverse_module():
    """The package is used through its public API (or not at all): nothing in the
    repository patches its attributes, process-wide or in a test."""
    assert _objaverse_assignments("import objaverse as ov\nov._VERSIONED_PATH = 'x'\n"
                                  "setattr(ov, 'json', None)\nm.setattr(ov, 'a', 1)\n") != []
    bad = {}
    for folder in ("dreamline", "flows", "tasks", "stages", "benchmarks", "scripts", "tests"):
        for path in sorted((REPO / folder).rglob("*.py")):
            hits = _objaverse_assignments(path.read_text())
            if hits:
                bad[str(path.relative_to(REPO))] = hits
    assert bad == {}
