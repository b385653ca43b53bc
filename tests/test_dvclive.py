"""Training curves through DVCLive (dreamline.training.common): what training_record writes
into a model folder, byte for byte a function of the curve, wherever the stage runs."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

from dreamline.training.common import training_record, write_dvclive

CURVE = "step,loss,lr\n1,0.5,1e-05\n2,0.25000000000000006,2e-05\n3,0.125,3e-05\n"


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _result(curve: Path, seconds: float, resumed_from):
    return SimpleNamespace(curve=curve, step=3, loss=0.125, seconds=seconds, samples_per_s=1.0 + seconds,
                           resumed_from=resumed_from)


def test_training_record_logs_the_curve_through_dvclive(tmp_path, monkeypatch):
    # A git repository with no commit and no .dvc: Live() on its own would raise (empty
    # repo) or `dvc init` it; the curve is written all the same, and the repo left alone.
    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    (tmp_path / "curve.csv").write_text(CURVE)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    record = training_record(_result(tmp_path / "curve.csv", 3.2, None), a)
    assert record == {"steps": 3, "final_loss": 0.125}
    training_record(_result(tmp_path / "curve.csv", 7.9, 2), b)          # other timings, resumed
    training_record(_result(tmp_path / "curve.csv", 1.0, None), a, "dvclive_ablation")
    assert not (tmp_path / ".dvc").exists() and not (tmp_path / "dvc.yaml").exists()

    files = _files(a)
    assert sorted(files) == ["dvclive/metrics.json", "dvclive/plots/metrics/train/loss.tsv",
                             "dvclive/plots/metrics/train/lr.tsv", "dvclive_ablation/metrics.json",
                             "dvclive_ablation/plots/metrics/train/loss.tsv",
                             "dvclive_ablation/plots/metrics/train/lr.tsv", "run.json"]
    assert files["dvclive/plots/metrics/train/loss.tsv"] == b"step\tloss\n1\t0.5\n2\t0.25000000000000006\n3\t0.125\n"
    assert files["dvclive/plots/metrics/train/lr.tsv"] == b"step\tlr\n1\t1e-05\n2\t2e-05\n3\t3e-05\n"
    assert json.loads(files["dvclive/metrics.json"]) == {"train": {"loss": 0.125, "lr": 3e-05}, "step": 3}
    # Timings and the resume point only in the untracked run.json; the DVCLive files are equal.
    other = _files(b)
    assert {k: v for k, v in other.items() if k != "run.json"} == {
        k: v for k, v in files.items() if k.startswith("dvclive/")}
    run = json.loads(files["run.json"])
    assert set(run) == {"training", "training_ablation"} and json.loads(other["run.json"])["training"]["resumed_from"] == 2


def test_write_dvclive_replaces_an_older_log(tmp_path):
    folder = tmp_path / "dvclive"
    write_dvclive([{"step": s, "loss": 1.0 / s, "temperature": 0.07} for s in range(1, 6)], folder)
    write_dvclive([{"step": 1, "loss": 0.5, "temperature": 0.1}], folder)
    assert (folder / "plots/metrics/train/loss.tsv").read_text() == "step\tloss\n1\t0.5\n"
    assert json.loads((folder / "metrics.json").read_text()) == {"train": {"loss": 0.5, "temperature": 0.1},
                                                                "step": 1}
