"""Test setup: offline, isolated Prefect home, one Prefect server for the whole session."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml

_HOME = tempfile.mkdtemp(prefix="dreamline-test-")
for key, value in {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
    "PREFECT_HOME": os.path.join(_HOME, "prefect"), "HF_HOME": os.path.join(_HOME, "hf"),
    "MESA_SHADER_CACHE_DIR": os.path.join(_HOME, "mesa"), "PYOPENGL_PLATFORM": "osmesa",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    # stage processes run with cwd=REPO too: their timing lines go here, not to REPO/logs
    "DREAMLINE_STAGE_TIMES": os.path.join(_HOME, "stage_times.jsonl"),
}.items():
    os.environ[key] = value

import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CODE = ("dreamline", "flows", "tasks", "stages", "dvc.yaml", "params.yaml", "pyproject.toml", "prefect.yaml",
        ".dvcignore")


@pytest.fixture(scope="session")
def prefect_api_url():
    """A Prefect server shared by flows run in-process and by stage subprocesses."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield PREFECT_API_URL.value()


def write_test_meshes(folder: Path, names: list[str]) -> None:
    """Small real-format stand-ins for the CGAL meshes: OFF files of distorted spheres."""
    import trimesh

    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        m = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
        m.vertices *= np.array([1.0 + 0.3 * i, 0.8, 1.2])
        m.apply_translation((5.0 * i, -2.0, 3.0))  # arbitrary frame: curation must normalise
        (folder / name).write_text(trimesh.exchange.off.export_off(m))


SMALL_PARAMS = {
    "mirror": {"instances_per_category": 1, "packaged_meshes": 3,
               "packaged_meshes_dir": ".cache/cgal/meshes", "junk_per_kind": 1},
    "curate": {"shard_size": 8},
}


def deep_update(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_update(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


class Project:
    """A copy of the project's code in a temp dir, with small params, run like a user would."""

    def __init__(self, root: Path, api_url: str | None):
        self.root = root
        self.api_url = api_url

    def set_params(self, extra: dict) -> None:
        """The repo's params, made small for tests, with `extra` on top."""
        raw = yaml.safe_load((REPO / "params.yaml").read_text())
        raw = deep_update(deep_update(raw, SMALL_PARAMS), extra)
        (self.root / "params.yaml").write_text(yaml.safe_dump(raw))

    def env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.root)
        if self.api_url:
            env["PREFECT_API_URL"] = self.api_url
        return env

    def run(self, *args: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(args), cwd=self.root, env=self.env(), capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
        return proc

    def stage(self, name: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", f"stages.{name}", check=check)


def make_project(tmp: Path, api_url: str | None, extra: dict | None = None) -> Project:
    for item in CODE:
        src = REPO / item
        if src.is_dir():
            shutil.copytree(src, tmp / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, tmp / item)
    write_test_meshes(tmp / ".cache/cgal/meshes", ["bunny00.off", "elephant.off", "camel.off"])
    proj = Project(tmp, api_url)
    proj.set_params(extra or {})
    return proj


@pytest.fixture
def project(tmp_path, prefect_api_url) -> Project:
    return make_project(tmp_path, prefect_api_url)
