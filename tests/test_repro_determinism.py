"""Every DVC output is a pure function of its inputs: `dvc repro -f` of a stage writes the
same bytes again (same md5 in dvc.lock), so nothing downstream reruns.

The training stage's twin of this test is in tests/test_training_stages.py (it needs the
rendered tiny corpus that module builds)."""
from __future__ import annotations

import sys

import pytest
import yaml

from conftest import make_project
from tiny_models import tiny_distill_project


def dvc(project, *args):
    return project.run(sys.executable, "-m", "dvc", *args, timeout=600)


def locked_outs(project, stage: str) -> dict[str, str]:
    lock = yaml.safe_load((project.root / "dvc.lock").read_text())["stages"][stage]
    return {o["path"]: o["md5"] for o in lock["outs"]}


def init_dvc(project) -> None:
    project.run("git", "init", "-q")
    dvc(project, "init", "-q")
    dvc(project, "config", "core.analytics", "false")


@pytest.mark.slow
def test_forced_distill_rerun_writes_identical_outputs(tmp_path, prefect_api_url):
    project = make_project(tmp_path, prefect_api_url)
    project.set_params({"distill": {**tiny_distill_project(project), "prompts": {"red-chair": "a red chair"}}})
    init_dvc(project)
    stage = "distill@red-chair"
    out = dvc(project, "repro", "--single-item", stage).stdout
    assert f"Running stage '{stage}'" in out
    first = locked_outs(project, stage)
    # The run's timings went to the untracked run.json, beside the tracked outputs.
    assert (project.root / "data/distill/red-chair/run.json").is_file()

    out = dvc(project, "repro", "-f", "--single-item", stage).stdout
    assert f"Running stage '{stage}'" in out
    assert locked_outs(project, stage) == first
    assert "up to date" in dvc(project, "status", stage).stdout


def test_a_model_digest_ignores_the_untracked_run_json(tmp_path):
    """distill's key and summary name the priors by content as DVC sees it: a retrained,
    byte-identical model (only run.json's wall time differs) keeps its digest."""
    from dreamline.distill.run import model_digest

    folder = tmp_path / "mv"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet/weights.safetensors").write_bytes(b"weights")
    (folder / "run.json").write_text('{"training": {"seconds": 1.0}}')
    before = model_digest(folder)
    (folder / "run.json").write_text('{"training": {"seconds": 2.5}}')
    assert model_digest(folder) == before
    (folder / "unet/weights.safetensors").write_bytes(b"weights2")
    assert model_digest(folder) != before
