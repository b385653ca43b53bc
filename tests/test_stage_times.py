"""Per-stage wall times: every stage process appends one JSON line to logs/stage_times.jsonl
(stages/_common.py), never inside data/ and never failing the stage; scripts/stage_times.py
prints each stage's latest run."""
from __future__ import annotations

import importlib.util
import json
import time
from datetime import datetime, timezone

import yaml

from conftest import REPO, make_project
from stages._common import STAGE_TIMES, record_stage_time


def _stage_times_script():
    spec = importlib.util.spec_from_file_location("stage_times", REPO / "scripts/stage_times.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_run_appends_one_line_with_its_time_and_exit_code(tmp_path):
    log = tmp_path / "logs/stage_times.jsonl"                     # its folder is made
    before = time.time()
    record_stage_time("distill", ["--prompt", "a_cat"], "params.yaml", before - 2.5, 0, str(log))
    record_stage_time("curate", [], "p.yaml", before, 2, str(log))
    first, second = [json.loads(line) for line in log.read_text().splitlines()]
    assert set(first) == {"stage", "argv", "params", "started", "seconds", "rc", "ok"}
    assert (first["stage"], first["argv"], first["params"], first["rc"], first["ok"]) == \
        ("distill", ["--prompt", "a_cat"], "params.yaml", 0, True)
    assert 2.5 <= first["seconds"] < 60
    started = datetime.fromisoformat(first["started"])
    assert started.utcoffset().total_seconds() == 0 and abs(started.timestamp() - (before - 2.5)) < 0.01
    assert (second["stage"], second["rc"], second["ok"]) == ("curate", 2, False)


def test_a_log_that_cannot_be_written_never_fails_the_stage(tmp_path, capsys):
    (tmp_path / "logs").write_text("a file where the folder should be")
    record_stage_time("mirror", [], "params.yaml", time.time(), 0, str(tmp_path / "logs/stage_times.jsonl"))
    record_stage_time("mirror", [], "params.yaml", time.time(), 0, str(tmp_path))   # a folder: not writable
    err = capsys.readouterr().err
    assert err.count("stage mirror: could not record its time in") == 2, err


def test_a_stage_process_appends_its_time_at_the_project_root(tmp_path, prefect_api_url, monkeypatch):
    """The real `python -m stages.mirror`, then a curate that stops on invalid params (exit 2):
    two lines in <root>/logs/stage_times.jsonl, nothing of the log in data/."""
    monkeypatch.delenv("DREAMLINE_STAGE_TIMES")                  # the default place
    project = make_project(tmp_path, prefect_api_url)
    started = datetime.now(timezone.utc)
    project.stage("mirror")
    raw = yaml.safe_load((project.root / "params.yaml").read_text())
    raw["curate"]["metadata"]["min_faces"] = -5
    (project.root / "params.yaml").write_text(yaml.safe_dump(raw))
    assert project.stage("curate", check=False).returncode == 2
    lines = [json.loads(line) for line in (project.root / STAGE_TIMES).read_text().splitlines()]
    assert [(r["stage"], r["argv"], r["rc"], r["ok"]) for r in lines] == [("mirror", [], 0, True),
                                                                        ("curate", [], 2, False)]
    assert all(datetime.fromisoformat(r["started"]) >= started.replace(microsecond=0) for r in lines)
    assert 0 < lines[1]["seconds"] < lines[0]["seconds"]         # curate stopped before any work
    assert not [p for p in (project.root / "data").rglob("*") if "stage_times" in p.name]


def test_the_script_and_the_stages_agree_on_the_log():
    assert _stage_times_script().LOG == STAGE_TIMES


LOG = [
    {"stage": "mirror", "argv": [], "params": "params.yaml", "started": "2026-12-01T08:00:00.000+00:00",
     "seconds": 5.0, "rc": 0, "ok": True},                                   # an older run of mirror
    {"stage": "mirror", "argv": [], "params": "params.yaml", "started": "2026-12-01T09:00:00.000+00:00",
     "seconds": 10.0, "rc": 0, "ok": True},
    {"stage": "curate", "argv": [], "params": "params.yaml", "started": "2026-12-01T09:00:12.500+00:00",
     "seconds": 30.0, "rc": 0, "ok": True},
    {"stage": "distill", "argv": ["--prompt", "a_cat"], "params": "params.yaml",
     "started": "2026-12-01T09:01:00.000+00:00", "seconds": 60.0, "rc": 1, "ok": False},
]


def _write_log(path):
    lines = [json.dumps(r) for r in LOG]
    lines.insert(2, '{"stage": "caption", "started": "2026-12-01T09:00:11')   # a line cut short
    path.write_text("\n".join(lines) + "\n")


def test_stage_times_prints_each_stages_latest_run_and_the_total(tmp_path, capsys):
    _write_log(tmp_path / "times.jsonl")
    script = _stage_times_script()
    assert script.main(["--log", str(tmp_path / "times.jsonl")]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "stage                     seconds   share",
        "mirror                       10.0   10.0%",
        "curate                       30.0   30.0%",
        "distill --prompt a_cat       60.0   60.0%  failed (exit 1)",
        "total                       100.0  100.0%",
    ]
    assert "1 unreadable line(s) left out" in err

    assert script.main(["--log", str(tmp_path / "times.jsonl"), "--since", "2026-12-01T09:00:10Z"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "stage                     seconds   share",
        "curate                       30.0   33.3%",
        "distill --prompt a_cat       60.0   66.7%  failed (exit 1)",
        "total                        90.0  100.0%",
    ]
    # a time without a zone is UTC; a time with one is compared as such
    script.main(["--log", str(tmp_path / "times.jsonl"), "--since", "2026-12-01T10:01:00+01:00"])
    assert capsys.readouterr().out.splitlines()[1:] == [
        "distill --prompt a_cat       60.0  100.0%  failed (exit 1)", "total                        60.0  100.0%"]
    script.main(["--log", str(tmp_path / "times.jsonl"), "--since", "2026-12-01T09:30:00"])
    assert capsys.readouterr().out == "no stage ran since 2026-12-01T09:30:00+00:00\n"


def test_stage_times_without_a_log_says_so(tmp_path, capsys):
    assert _stage_times_script().main(["--log", str(tmp_path / "none.jsonl")]) == 0
    assert "no stage times yet" in capsys.readouterr().err
