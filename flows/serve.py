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


@contextlib.contextmanager
def local_server(port: Optional[int] = None, home: Optional[Path] = None, log: Optional[Path] = None,
                 timeout: float = 120) -> Iterator[tuple[str, subprocess.Popen]]:
    """`prefect server start` on 127.0.0.1 (scheduler included) as a child process; yields
    (api_url, process) and stops it by its pid on exit."""
    port = port or free_port()
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_URL", None)
    if home is not None:
        env["PREFECT_HOME"] = str(home)
    out = open(log, "ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port), "--no-ui"], env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_healthy(url, timeout, proc)
        yield url, proc
    finally:
        stop(proc)
        if log:
            out.close()


def stop(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM the process group (the server's uvicorn and services), SIGKILL if it lingers."""
    import signal

    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(grace)


def serve(config: Path, root: Path, names: Optional[list[str]] = None) -> None:
    """Serve the deployments of `config` (all, or those in `names`) until interrupted."""
    from prefect import serve as prefect_serve

    specs = read_deployments(config)
    if names:
        unknown = sorted(set(names) - {s.name for s in specs})
        if unknown:
            raise DeploymentFileError(f"{config}: no deployment named {', '.join(unknown)} "
                                      f"(have: {', '.join(s.name for s in specs)})")
        specs = [s for s in specs if s.name in names]
    if os.environ.get("PREFECT_API_URL"):
        prefect_serve(*runner_deployments(specs, root))
        return
    with local_server(log=root / ".prefect-server.log") as (url, proc):
        print(f"started a local Prefect server (pid {proc.pid}) at {url}; its log: .prefect-server.log", flush=True)
        os.environ["PREFECT_API_URL"] = url
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: url}):
            prefect_serve(*runner_deployments(specs, root))
