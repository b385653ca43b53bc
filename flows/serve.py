"""Serving prefect.yaml's deployments without a Prefect server or a work pool.

`dreamline serve` reads the same prefect.yaml that `prefect deploy` reads (one source of the
names, schedules and parameters), starts a local Prefect server when no PREFECT_API_URL is
set, and serves the deployments from this process: scheduled and on-demand runs execute here.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import yaml


@dataclass
class DeploymentSpec:
    name: str
    entrypoint: str
    parameters: dict = field(default_factory=dict)
    schedules: list[dict] = field(default_factory=list)   # {cron, timezone}
    description: str = ""


class DeploymentFileError(ValueError):
    pass


def read_deployments(path: Path) -> list[DeploymentSpec]:
    """The deployments of a prefect.yaml; a malformed entry names the file and the deployment."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise DeploymentFileError(f"{path}: {err}") from None
    out = []
    for i, dep in enumerate(raw.get("deployments") or []):
        where = f"{path}: deployments[{i}]"
        if not isinstance(dep, dict) or not dep.get("name") or not dep.get("entrypoint"):
            raise DeploymentFileError(f"{where}: needs a name and an entrypoint")
        schedules = []
        for s in dep.get("schedules") or []:
            if not isinstance(s, dict) or "cron" not in s:
                raise DeploymentFileError(f"{where} ({dep['name']}): only cron schedules are served, got {s!r}")
            schedules.append({"cron": s["cron"], "timezone": s.get("timezone", "UTC")})
        out.append(DeploymentSpec(dep["name"], dep["entrypoint"], dict(dep.get("parameters") or {}), schedules,
                                  " ".join(str(dep.get("description", "")).split())))
    if not out:
        raise DeploymentFileError(f"{path}: no deployments")
    return out


def runner_deployments(specs: list[DeploymentSpec], root: Path):
    """RunnerDeployments for `prefect.serve`, their flows loaded from the entrypoints under `root`."""
    from prefect.flows import load_flow_from_entrypoint
    from prefect.schedules import Cron

    deployments = []
    for spec in specs:
        file, _, func = spec.entrypoint.partition(":")
        flow = load_flow_from_entrypoint(f"{root / file}:{func}")
        deployments.append(flow.to_deployment(
            name=spec.name, parameters={"root": str(root), **spec.parameters}, description=spec.description,
            schedules=[Cron(s["cron"], timezone=s["timezone"]) for s in spec.schedules] or None))
    return deployments


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout: float, proc: Optional[subprocess.Popen] = None) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode} before it was healthy")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"prefect server at {url} not healthy after {timeout:.0f} s")


# The server runs as `python -c _SERVER_LAUNCHER LIFELINE_FD PARENT_PID GRACE prefect-args...`:
# one process that is `prefect server start` (workers=1 runs uvicorn and the services in that
# process: no children) plus a watchdog thread. The watchdog holds the read end of a pipe whose
# only write end stays in the parent; the kernel closes it however the parent ends (exit,
# Ctrl-C, SIGTERM, SIGKILL, OOM), so EOF on it - or the parent pid changing, if a forked child
# of the parent still held the write end - means the parent is gone. The server then SIGTERMs
# its own process group (itself and anything it started there), and SIGKILLs it after GRACE.
_SERVER_LAUNCHER = r"""
import os, select, signal, sys, threading, time
fd, parent, grace = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
if sys.platform.startswith("linux"):
    try:  # the kernel's own parent-death signal too: no wait for the watchdog's next tick
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass
def watch():
    while os.getppid() == parent:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready and not os.read(fd, 64):
            break
    try:
        os.killpg(0, signal.SIGTERM)
        time.sleep(grace)
    finally:
        os.killpg(0, signal.SIGKILL)
threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()
import runpy
sys.argv = ["prefect", *sys.argv[4:]]
runpy.run_module("prefect", run_name="__main__", alter_sys=True)
"""


@contextlib.contextmanager
def local_server(port: Optional[int] = None, home: Optional[Path] = None, log: Optional[Path] = None,
                 timeout: float = 120, grace: float = 20) -> Iterator[tuple[str, subprocess.Popen]]:
    """`prefect server start` on 127.0.0.1 (scheduler included) as a child process; yields
    (api_url, process) and stops it on exit.

    The server never outlives this process. On POSIX it runs in its own session (a Ctrl-C at
    the terminal reaches only this process, which then stops it in order) with a watchdog
    that stops it when this process ends in any way, SIGKILL included (see _SERVER_LAUNCHER);
    on Linux PR_SET_PDEATHSIG signals it at once as well. PDEATHSIG fires when the *thread*
    that started the server ends, so enter this context from the thread that outlives the
    server (the main thread in `dreamline serve`). Elsewhere (Windows) the server is stopped
    on exit only: a parent killed outright leaves it running."""
    port = port or free_port()
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_URL", None)
    if home is not None:
        env["PREFECT_HOME"] = str(home)
    args = ["server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"]
    out = open(log, "ab") if log else subprocess.DEVNULL
    lifeline = None
    try:
        if os.name == "posix":
            read_end, lifeline = os.pipe()        # both non-inheritable: no other child holds them
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-c", _SERVER_LAUNCHER, str(read_end), str(os.getpid()), str(grace), *args],
                    env=env, stdout=out, stderr=subprocess.STDOUT, pass_fds=(read_end,), start_new_session=True)
            finally:
                os.close(read_end)
        else:
            proc = subprocess.Popen([sys.executable, "-m", "prefect", *args], env=env, stdout=out,
                                    stderr=subprocess.STDOUT,
                                    creationflags=getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0))
        url = f"http://127.0.0.1:{port}/api"
        try:
            wait_healthy(url, timeout, proc)
            yield url, proc
        finally:
            stop(proc, grace)
    finally:
        if lifeline is not None:
            os.close(lifeline)
        if log:
            out.close()


def stop(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM the server's process group (uvicorn, services, anything they started), SIGKILL
    what lingers after `grace` seconds; returns once the server process has been reaped."""
    import signal

    if os.name != "posix":
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return
    if proc.returncode is not None:     # reaped already: its pid (and group id) may be reused
        return
    # Until it is reaped below, the server's pid - its group's id - cannot be reused.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


# How long serve may take to shut down after Ctrl-C / SIGTERM before it exits anyway: prefect's
# runner pauses schedules and cancels runs through the API on the way out, which on a loaded
# 2-core machine was seen to take more than 180 s (a fresh-clone test run beside `dvc repro`).
SHUTDOWN_GRACE_S = 30.0


@contextlib.contextmanager
def interrupts_end_within(grace: float = SHUTDOWN_GRACE_S) -> Iterator[None]:
    """Within: Ctrl-C and SIGTERM raise KeyboardInterrupt, so `finally` clean-up runs, and the
    process ends at most `grace` seconds later even if that clean-up hangs; a second signal
    ends it at once. Ending by os._exit skips clean-up, but not the local server's: its
    watchdog stops it when this process's end of the pipe closes. Only the main thread
    receives signals; elsewhere this does nothing."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = threading.Event()

    def interrupt(signum, frame):
        if fired.is_set():
            os._exit(128 + signum)
        fired.set()
        deadline = threading.Timer(grace, os._exit, args=(128 + signum,))
        deadline.daemon = True
        deadline.start()
        raise KeyboardInterrupt(f"signal {signum}")

    # A handler of our own for SIGINT also keeps asyncio.run from installing its own, which
    # would wait for every task to finish cancelling before raising.
    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def serve(config: Path, root: Path, names: Optional[list[str]] = None) -> None:
    """Serve the deployments of `config` (all, or those in `names`) until interrupted
    (Ctrl-C or SIGTERM). A local server this starts is stopped however serve ends."""
    from prefect import serve as prefect_serve

    specs = read_deployments(config)
    if names:
        unknown = sorted(set(names) - {s.name for s in specs})
        if unknown:
            raise DeploymentFileError(f"{config}: no deployment named {', '.join(unknown)} "
                                      f"(have: {', '.join(s.name for s in specs)})")
        specs = [s for s in specs if s.name in names]
    # prefect's Runner installs its own SIGTERM handler while it runs (it stops the runner and
    # raises SystemExit): that unwinds through local_server's clean-up too.
    with interrupts_end_within():
        if os.environ.get("PREFECT_API_URL"):
            prefect_serve(*runner_deployments(specs, root))
            return
        with local_server(log=root / ".prefect-server.log") as (url, proc):
            print(f"started a local Prefect server (pid {proc.pid}) at {url}; its log: .prefect-server.log",
                  flush=True)
            os.environ["PREFECT_API_URL"] = url
            from prefect.settings import PREFECT_API_URL, temporary_settings

            with temporary_settings({PREFECT_API_URL: url}):
                prefect_serve(*runner_deployments(specs, root))
