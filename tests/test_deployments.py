"""prefect.yaml for real: a `prefect server` on 127.0.0.1, a process work pool, `prefect deploy`,
a triggered deployment run picked up by `prefect worker start --run-once`, and the DVC data
it changed (stages in dvc.lock, outputs pushed to the default local remote)."""
from __future__ import annotations

import json
import shutil
import sys
import time

import httpx
import pandas as pd
import pytest
import yaml

from conftest import REPO, make_project
from flows.pipeline import plan_stages
from flows.serve import local_server, read_deployments


def _dvc_project(tmp_path):
    proj = make_project(tmp_path / "proj", api_url=None)
    proj.run("git", "init", "-q")
    proj.run(sys.executable, "-m", "dvc", "init", "-q")
    shutil.copy2(REPO / ".dvc/config", proj.root / ".dvc/config")   # the repo's default remote
    return proj


def test_nightly_curation_deployment_runs_on_a_process_worker(tmp_path):
    proj = _dvc_project(tmp_path)
    remote = proj.root / "dvc-remote"
    assert not (proj.root / "dvc.lock").exists() and not remote.exists()
    prefect = (sys.executable, "-m", "prefect")
    with local_server(home=tmp_path / "prefect-home", log=tmp_path / "server.log") as (api, server):
        proj.api_url = api
        proj.run(*prefect, "work-pool", "create", "dreamline", "--type", "process")
        out = proj.run(*prefect, "--no-prompt", "deploy", "--all", timeout=180).stdout
        assert "nightly-curation" in out, out

        deployment = httpx.get(f"{api}/deployments/name/dvc-pipeline/nightly-curation").json()
        assert deployment["work_pool_name"] == "dreamline"
        assert deployment["parameters"] == {"targets": ["caption", "render"], "upstream": True,
                                            "push_to_remote": True}
        assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 2 * * *"]
        weekly = httpx.get(f"{api}/deployments/name/dvc-pipeline/weekly-evaluation").json()
        assert [s["schedule"]["cron"] for s in weekly["schedules"]] == ["0 4 * * 0"]

        run = proj.run(*prefect, "deployment", "run", "dvc-pipeline/nightly-curation").stdout
        flow_run_id = next(line.split()[-1] for line in run.splitlines() if "UUID" in line)
        worker = proj.run(*prefect, "worker", "start", "--pool", "dreamline", "--run-once", timeout=900)

        state = httpx.get(f"{api}/flow_runs/{flow_run_id}").json()["state"]
        assert state["type"] == "COMPLETED", (state, worker.stdout[-4000:], worker.stderr[-4000:])
        assert "4 of 4 stage(s) ran" in state["message"] and "pushed to DVC remote 'local'" in state["message"]
        tasks = httpx.post(f"{api}/task_runs/filter",
                           json={"flow_runs": {"id": {"any_": [flow_run_id]}}}).json()
        names = {t["name"]: t["state"]["type"] for t in tasks}
        assert names == {"mirror": "COMPLETED", "curate": "COMPLETED", "caption": "COMPLETED",
                         "render": "COMPLETED", "dvc push": "COMPLETED"}
    assert server.poll() is not None                              # stopped by its pid
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{api}/health", timeout=2)

    # The data changed: the four stages are locked, their outputs exist and are in the remote.
    lock = yaml.safe_load((proj.root / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"mirror", "curate", "caption", "render"}
    assert len(pd.read_parquet(proj.root / "data/renders/index.parquet")) > 0
    status = json.loads(proj.run(sys.executable, "-m", "dvc", "status", "--cloud", "--json").stdout)
    assert status == {}, status                                    # nothing missing from the remote
    assert any(remote.rglob("*.dir"))


def test_pipeline_stops_at_a_failed_stage_without_retrying_a_params_error(tmp_path, prefect_api_url):
    """A stage exiting 2 (invalid params) is not retried; the flow fails naming it and what did not run."""
    from flows.pipeline import pipeline

    proj = _dvc_project(tmp_path)
    raw = yaml.safe_load((proj.root / "params.yaml").read_text())
    raw["curate"]["metadata"]["min_faces"] = -5                    # out of range: curate exits 2
    (proj.root / "params.yaml").write_text(yaml.safe_dump(raw))
    started = time.time()
    state = pipeline(targets=["caption"], root=str(proj.root), return_state=True)
    assert state.is_failed()
    assert state.message.startswith("stage mirror failed") or state.message.startswith("stage curate failed"), \
        state.message
    assert "(exit 2) after 1 attempt(s)" in state.message and "not run: " in state.message and "caption" in state.message
    assert time.time() - started < 120                             # no 10 s retry delays were spent


def test_plan_follows_the_dag_and_refuses_unknown_targets():
    order = ["mirror", "curate", "caption", "render", "train_base", "distill@a", "distill@b", "evaluate"]
    edges = [("curate", "mirror"), ("caption", "curate"), ("render", "curate"), ("train_base", "render"),
             ("train_base", "caption"), ("distill@a", "train_base"), ("distill@b", "train_base"),
             ("evaluate", "distill@a"), ("evaluate", "distill@b")]
    assert plan_stages(order, edges, None) == order
    assert plan_stages(order, edges, ["caption", "render"]) == ["mirror", "curate", "caption", "render"]
    assert plan_stages(order, edges, ["evaluate"], upstream=False) == ["evaluate"]
    assert plan_stages(order, edges, ["distill"], upstream=False) == ["distill@a", "distill@b"]
    with pytest.raises(ValueError, match="'rendr' is not a stage"):
        plan_stages(order, edges, ["rendr"])


def test_prefect_yaml_deployments_are_what_the_issue_asks_for():
    specs = {s.name: s for s in read_deployments(REPO / "prefect.yaml")}
    assert set(specs) == {"nightly-curation", "weekly-evaluation", "main-run", "studies", "full-pipeline"}
    # The main run and the studies name stages that exist; together they cover every stage.
    import flows.pipeline as pipeline_module
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        graph = repo.index.graph
        order = [s.addressing for s in graph.nodes]
        edges = [(a.addressing, b.addressing) for a, b in graph.edges]
    runs = [set(pipeline_module.plan_stages(order, edges, specs[n].parameters["targets"])) for n in ("main-run", "studies")]
    assert runs[0] | runs[1] == set(order) and "report_studies" not in runs[0] and "ablation@sds-red-chair" not in runs[0]
    assert all(s.entrypoint == "flows/pipeline.py:pipeline" for s in specs.values())
    assert specs["full-pipeline"].schedules == []
    raw = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert {d["work_pool"]["name"] for d in raw["deployments"]} == {"dreamline"}


def test_a_transient_stage_failure_is_retried_and_the_run_completes(tmp_path, prefect_api_url, monkeypatch):
    """A stage that crashes once (exit 1) passes on its retry; nothing after it is lost."""
    import flows.pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "RETRY_DELAY_S", 0)
    root = tmp_path / "repo"
    root.mkdir()
    (root / "flaky.py").write_text(
        "import pathlib, sys\n"
        "marker = pathlib.Path('crashed-once')\n"
        "if not marker.exists():\n"
        "    marker.write_text('1'); sys.exit(1)\n"
        "pathlib.Path('out.txt').write_text('done')\n")
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "flaky": {"cmd": f"{sys.executable} flaky.py", "deps": ["flaky.py"], "outs": ["out.txt"]},
        "after": {"cmd": f"{sys.executable} -c \"open('after.txt','w').write(open('out.txt').read())\"",
                  "deps": ["out.txt"], "outs": ["after.txt"]}}}))
    for cmd in (("git", "init", "-q"), (sys.executable, "-m", "dvc", "init", "-q")):
        import subprocess

        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    state = pipeline_module.pipeline(root=str(root), retries={"flaky": 1}, return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["stages"] == {"flaky": "ran", "after": "ran"}
    assert (root / "after.txt").read_text() == "done"
    state = pipeline_module.pipeline(root=str(root), return_state=True)     # DVC: nothing stale now
    assert state.result()["ran"] == [] and "0 of 2 stage(s) ran" in state.message


def test_serve_builds_the_same_deployments_from_prefect_yaml(tmp_path):
    from flows.serve import runner_deployments

    deployments = {d.name: d for d in runner_deployments(read_deployments(REPO / "prefect.yaml"), REPO)}
    nightly = deployments["nightly-curation"]
    assert nightly.parameters == {"root": str(REPO), "targets": ["caption", "render"], "upstream": True,
                                  "push_to_remote": True}
    assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
    assert deployments["full-pipeline"].schedules == []
    bad = tmp_path / "prefect.yaml"
    bad.write_text("deployments:\n  - name: x\n    entrypoint: flows/pipeline.py:pipeline\n"
                   "    schedules:\n      - interval: 60\n")
    from conftest import Project

    proc = Project(REPO, None).run(sys.executable, "-m", "flows.cli", "serve", "--config", str(bad), check=False)
    assert proc.returncode == 2 and "only cron schedules" in proc.stderr


def _serve_repo(tmp_path):
    """A repo with prefect.yaml's deployments and a one-stage dvc.yaml; the env to serve it in."""
    import os
    import subprocess

    root = tmp_path / "repo"
    shutil.copytree(REPO / "flows", root / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "prefect.yaml", root / "prefect.yaml")
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"hello": {
        "cmd": f"{sys.executable} -c \"open('hello.txt','w').write('hi')\"", "outs": ["hello.txt"]}}}))
    for cmd in (("git", "init", "-q"), (sys.executable, "-m", "dvc", "init", "-q")):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PYTHONPATH=str(root))
    return root, env


def _start_serve(root, env, ceiling: float = 180):
    """`dreamline serve -d full-pipeline` in its own session; returns (process, server pid, api)
    once the deployment is registered, i.e. prefect's runner is serving."""
    import re
    import subprocess

    serve = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "-d", "full-pipeline"], cwd=root,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    first = serve.stdout.readline()                     # printed once the server is healthy
    found = re.search(r"pid (\d+)\) at (\S+);", first)
    if not found:
        _end(serve)
        raise AssertionError(first + serve.stdout.read()[-3000:])
    server_pid, api = int(found.group(1)), found.group(2)
    import threading

    serve.output = []                                   # drained, so a full pipe never blocks serve
    threading.Thread(target=lambda: serve.output.extend(serve.stdout), daemon=True).start()
    deadline = time.monotonic() + ceiling
    while httpx.get(f"{api}/deployments/name/dvc-pipeline/full-pipeline").status_code != 200:
        if time.monotonic() > deadline or serve.poll() is not None:
            _end(serve)
            raise AssertionError("serve did not register the deployment:\n" + "".join(serve.output)[-3000:])
        time.sleep(0.5)
    return serve, server_pid, api


def _end(serve) -> None:
    """SIGKILL what is left of serve's session (clean-up only, never what a test checks)."""
    import os
    import signal

    try:
        os.killpg(serve.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    serve.wait()


def _living(pgid: int) -> list[int]:
    """Processes of the group `pgid` that have not exited (a zombie waiting for init to reap
    it has exited: os.kill(pid, 0) still finds it, so /proc is read on Linux)."""
    import os
    from pathlib import Path

    proc = Path("/proc")
    if not (proc / "self/stat").exists():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [pgid]
    out = []
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in "ZX":    # state, ppid, pgrp
            out.append(int(stat.parent.name))
    return out


def _wait_server_gone(server_pid: int, ceiling: float = 60) -> float:
    """Seconds until the server and every process of its group have exited; fails after
    `ceiling` (a bound for a stuck machine, not what the test measures)."""
    import os
    import signal

    started = time.monotonic()
    while _living(server_pid):
        if time.monotonic() - started > ceiling:
            left = _living(server_pid)
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            raise AssertionError(f"the server's processes {left} outlived serve by {ceiling:.0f} s")
        time.sleep(0.2)
    return time.monotonic() - started


def test_dreamline_serve_without_a_server_runs_a_triggered_deployment(tmp_path):
    """`dreamline serve` with no PREFECT_API_URL: starts its own server, serves prefect.yaml's
    deployments, runs a triggered one, and on Ctrl-C stops the server it started."""
    import os
    import signal
    import subprocess

    root, env = _serve_repo(tmp_path)
    serve, server_pid, api = _start_serve(root, env)
    try:
        run = subprocess.run([sys.executable, "-m", "prefect", "deployment", "run", "dvc-pipeline/full-pipeline"],
                             cwd=root, env={**env, "PREFECT_API_URL": api}, capture_output=True, text=True,
                             check=True).stdout
        flow_run_id = next(line.split()[-1] for line in run.splitlines() if "UUID" in line)
        state, deadline = {}, time.monotonic() + 300
        while time.monotonic() < deadline:
            state = httpx.get(f"{api}/flow_runs/{flow_run_id}").json()["state"] or {}
            if state.get("type") in ("COMPLETED", "FAILED", "CRASHED"):
                break
            time.sleep(0.5)
        assert state.get("type") == "COMPLETED", state
        assert (root / "hello.txt").read_text() == "hi" and "1 of 1 stage(s) ran" in state["message"]

        os.killpg(serve.pid, signal.SIGINT)                        # Ctrl-C at serve's terminal
        try:
            serve.wait(180)
        except subprocess.TimeoutExpired:
            raise AssertionError("serve did not end within 180 s of Ctrl-C") from None
    finally:
        if serve.poll() is None:
            _end(serve)
    _wait_server_gone(server_pid)                                  # the server it started is gone
    with pytest.raises(ProcessLookupError):
        os.killpg(server_pid, 0)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{api}/health", timeout=2)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_dreamline_serve_ended_by_a_signal_takes_its_server_with_it(tmp_path, how):
    """SIGTERM unwinds serve like Ctrl-C; SIGKILL (the OOM killer, `kill -9`) gives serve no
    chance to clean up, and the server still ends (its watchdog sees its parent go)."""
    import os
    import signal

    root, env = _serve_repo(tmp_path)
    serve, server_pid, api = _start_serve(root, env)
    try:
        os.kill(serve.pid, getattr(signal, how))
        if how == "SIGTERM":
            serve.wait(180)
            # It ended itself (0, 1, or 130 when the interrupt unwound it), not by the signal (-15).
            assert serve.returncode in (0, 1, 130), serve.returncode
        else:
            serve.wait(60)
            assert serve.returncode == -signal.SIGKILL
    finally:
        if serve.poll() is None:
            _end(serve)
    _wait_server_gone(server_pid)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{api}/health", timeout=2)


def test_a_stage_failing_every_time_is_retried_then_reported_with_its_attempts(tmp_path, prefect_api_url,
                                                                                monkeypatch):
    """Exit 1 is worth retrying: 1 + retries attempts run (each counted by the task run), then the flow fails."""
    import subprocess

    import flows.pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "RETRY_DELAY_S", 0)
    root = tmp_path / "repo"
    root.mkdir()
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"broken": {
        "cmd": f"{sys.executable} -c \"open('tries.txt','a').write('x'); raise SystemExit(1)\"", "outs": ["out.txt"]}}}))
    for cmd in (("git", "init", "-q"), (sys.executable, "-m", "dvc", "init", "-q")):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    state = pipeline_module.pipeline(root=str(root), retries={"broken": 2}, return_state=True)
    assert state.is_failed() and "stage broken failed (exit 1) after 3 attempt(s)" in state.message, state.message
    assert (root / "tries.txt").read_text() == "xxx"
