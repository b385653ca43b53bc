"""Task runners chosen by params.execution: threads in the stage process, or Dask processes."""
from __future__ import annotations

import contextlib
import os

from prefect.task_runners import ThreadPoolTaskRunner

from dreamline.config import ExecutionParams


def task_runner_for(ex: ExecutionParams):
    if ex.task_runner == "thread":
        return ThreadPoolTaskRunner(max_workers=ex.workers)
    from prefect_dask import DaskTaskRunner

    if ex.dask_address:
        return DaskTaskRunner(address=ex.dask_address)
    # Processes, one thread each: torch, GL and the GIL-bound parts of trimesh scale by
    # process; the nanny also pins OMP/MKL/OpenBLAS to one thread per worker.
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs={
        "n_workers": ex.workers, "threads_per_worker": 1, "processes": True,
        "dashboard_address": None})


def with_runner(flow, ex: ExecutionParams):
    """`flow` running its tasks on the runner `ex` names."""
    return flow.with_options(task_runner=task_runner_for(ex))


@contextlib.contextmanager
def shared_api_server(ex: ExecutionParams):
    """Without a configured Prefect API, one temporary server that Dask workers share.

    Prefect's ephemeral mode starts a server per process: every local Dask worker would
    spend ~10 s starting its own and report its task runs there. Starting it here first and
    exporting its URL lets the workers (spawned later, inheriting the environment) use it.
    """
    if ex.task_runner != "dask" or os.environ.get("PREFECT_API_URL"):
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = SubprocessASGIServer()
    server.start(timeout=90)
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield
    finally:
        del os.environ["PREFECT_API_URL"]
        server.stop()
