"""`python -m flows.with_server -- CMD`: one local Prefect server for a whole command (what
scripts/run_pipeline.sh wraps `dvc repro` in), its URL in the command's environment, the
command's exit code, and the server stopped however the command ends."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import httpx
import pytest

from conftest import REPO

# The command: reports the URL it was given and whether a server answers there.
REPORT_URL = ("import os, sys, httpx\n"
              "url = os.environ.get('PREFECT_API_URL')\n"
              "print('url', url, flush=True)\n"
              "if len(sys.argv) > 1: print('health', httpx.get(url + '/health', timeout=10).status_code, flush=True)\n"
              "sys.exit(3)\n")
# The command: says it is ready, then exits 5 on SIGINT / SIGTERM (printing which).
WAIT_FOR_SIGNAL = ("import os, signal, sys, time\n"
                   "def stop(n, f):\n"
                   "    print('got', n, flush=True); sys.exit(5)\n"
                   "signal.signal(signal.SIGINT, stop); signal.signal(signal.SIGTERM, stop)\n"
                   "print('ready', os.environ['PREFECT_API_URL'], flush=True)\n"
                   "time.sleep(120); sys.exit(1)\n")
STARTED = re.compile(r"server \(pid (\d+)\) at (\S+),")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def _wrapper(*cmd: str) -> list[str]:
    return [sys.executable, "-m", "flows.with_server", "--", *cmd]


def _assert_stopped(server_pid: int, url: str) -> None:
    with pytest.raises(ProcessLookupError):       # reaped by the wrapper: no zombie either
        os.kill(server_pid, 0)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/health", timeout=2)


def test_the_command_gets_the_servers_url_and_its_exit_code_comes_back(tmp_path):
    proc = subprocess.run(_wrapper(sys.executable, "-c", REPORT_URL, "check"), cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, (proc.stdout, proc.stderr[-3000:])
    started = STARTED.search(proc.stderr)
    assert started, proc.stderr[-3000:]
    server_pid, url = int(started.group(1)), started.group(2)
    assert proc.stdout.splitlines() == [f"url {url}", "health 200"]   # the server answered the command
    assert url.startswith("http://127.0.0.1:") and url.endswith("/api")
    assert (tmp_path / ".prefect-server.log").is_file()
    _assert_stopped(server_pid, url)


def test_with_prefect_api_url_set_it_only_runs_the_command(tmp_path):
    given = "http://127.0.0.1:9/api"
    proc = subprocess.run(_wrapper(sys.executable, "-c", REPORT_URL), cwd=tmp_path, env=_env(PREFECT_API_URL=given),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3 and proc.stdout.splitlines() == [f"url {given}"], (proc.stdout, proc.stderr)
    assert not STARTED.search(proc.stderr) and not (tmp_path / ".prefect-server.log").exists()


def test_a_command_that_cannot_start_is_exit_127_and_no_command_is_a_usage_error(tmp_path):
    env = _env(PREFECT_API_URL="http://127.0.0.1:9/api")
    proc = subprocess.run(_wrapper(str(tmp_path / "no-such-program")), cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 127 and "cannot run" in proc.stderr, proc.stderr
    proc = subprocess.run(_wrapper(), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "flows.with_server" in proc.stderr, proc.stderr


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT"])
def test_a_signal_to_the_wrapper_reaches_the_command_then_the_server_stops(tmp_path, how):
    """Without a terminal (its own session), SIGINT is passed on like SIGTERM; the wrapper
    waits for the command, exits with its code and stops the server."""
    wrapper = subprocess.Popen(_wrapper(sys.executable, "-c", WAIT_FOR_SIGNAL), cwd=tmp_path, env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        ready = wrapper.stdout.readline()            # once the server is healthy and the command runs
        assert ready.startswith("ready http://127.0.0.1:"), ready + wrapper.stderr.read()[-3000:]
        os.kill(wrapper.pid, getattr(signal, how))
        out, err = wrapper.communicate(timeout=120)
    finally:
        if wrapper.poll() is None:
            os.killpg(wrapper.pid, signal.SIGKILL)
            wrapper.wait()
    assert wrapper.returncode == 5, (out, err[-3000:])
    assert out.splitlines() == [f"got {int(getattr(signal, how))}"], out
    started = STARTED.search(err)
    assert started and started.group(2) == ready.split()[1], err[-3000:]
    _assert_stopped(int(started.group(1)), started.group(2))
