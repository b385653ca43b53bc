"""Per-object isolation of the renderer: a hang or a crash costs only that object."""
import time
from pathlib import Path

import pytest
import trimesh

from dreamline.config import RenderParams
from dreamline.isolation import IsolatedRunner
from tasks.rendering import render_shard

FAULTY = "render_faults:faulty_object_job"


def _objects(tmp_path: Path, n: int) -> list[tuple[str, str, str]]:
    out = []
    for i in range(n):
        mesh = trimesh.creation.box(extents=(0.5 + 0.1 * i, 0.6, 0.4))
        path = tmp_path / f"m{i}.glb"
        mesh.export(path)
        out.append((f"obj{i}", str(path), f"sha{i}"))
    return out


def test_hang_and_crash_cost_only_themselves(tmp_path, monkeypatch):
    objects = _objects(tmp_path, 5)
    monkeypatch.setenv("DREAMLINE_TEST_HANG", "obj1")
    monkeypatch.setenv("DREAMLINE_TEST_CRASH", "obj3")
    p = RenderParams(resolution=24, mv_sets=1, agp_views=1, timeout_s=4.0)
    out = tmp_path / "renders"
    started = time.time()
    results = render_shard.fn(objects, p, out, target=FAULTY)
    assert time.time() - started < 60  # the hang was cut off, not waited out
    by_uid = {r["uid"]: r for r in results}
    assert [r["uid"] for r in results] == [o[0] for o in objects]
    assert by_uid["obj1"]["error"].startswith("timeout: no result after 4s")
    assert "crashed" in by_uid["obj3"]["error"] and "SIGSEGV" in by_uid["obj3"]["error"]
    for uid in ("obj0", "obj2", "obj4"):  # before, between and after the faults
        assert by_uid[uid]["error"] is None and by_uid[uid]["processed"]
        assert (out / "objects" / uid / "done.json").exists()
    assert not (out / "objects" / "obj1").exists() and not (out / "objects" / "obj3").exists()

    # Without the faults, a rerun renders exactly the two failed objects.
    monkeypatch.delenv("DREAMLINE_TEST_HANG")
    monkeypatch.delenv("DREAMLINE_TEST_CRASH")
    again = render_shard.fn(objects, p, out, target=FAULTY)
    assert [r["uid"] for r in again if r["processed"]] == ["obj1", "obj3"]
    assert all(r["error"] is None for r in again)


def test_exception_in_job_is_a_recorded_failure_not_a_restart(tmp_path):
    objects = _objects(tmp_path, 2)
    Path(objects[0][1]).write_bytes(b"not a glb")
    p = RenderParams(resolution=24, mv_sets=1, agp_views=0)
    results = render_shard.fn(objects, p, tmp_path / "r")
    assert results[0]["error"] and not results[0]["processed"]
    assert results[1]["error"] is None and results[1]["processed"]


def test_worker_that_cannot_start_raises_with_the_reason():
    runner = IsolatedRunner("dreamline.no_such_module:job", timeout_s=5)
    with pytest.raises(RuntimeError, match="failed to start: ModuleNotFoundError"):
        list(runner.run([{"x": 1}]))
