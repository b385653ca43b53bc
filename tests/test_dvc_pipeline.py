"""`dvc repro` of the data stages (mirror -> curate -> caption, render); a second repro is a no-op.

The training stages run through their entry points in tests/test_training_stages.py;
here the targets stop before them so the default training budgets do not run."""
import sys

import pandas as pd


def dvc(project, *args):
    return project.run(sys.executable, "-m", "dvc", *args)


DATA_STAGES = ("caption", "render")


def test_dvc_repro_then_noop(project):
    project.run("git", "init", "-q")
    dvc(project, "init", "-q")
    dvc(project, "config", "core.analytics", "false")
    out = dvc(project, "repro", *DATA_STAGES).stdout
    for stage in ("mirror", "curate", "caption"):
        assert f"Running stage '{stage}'" in out
    caps = pd.read_parquet(project.root / "data/captions/captions.parquet")
    assert len(caps) > 10
    assert (project.root / "dvc.lock").exists()
    again = dvc(project, "repro", *DATA_STAGES).stdout
    assert "Running stage" not in again and "up to date" in again
    assert "up to date" in dvc(project, "status", *DATA_STAGES).stdout

    # Changing a caption key reruns only the caption stage.
    project.set_params({"caption": {"captioner": {"variety": 3}}})
    out = dvc(project, "repro", *DATA_STAGES).stdout
    assert "Running stage 'caption'" in out and "Running stage 'curate'" not in out
