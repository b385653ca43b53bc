"""The DVC pipeline as one Prefect flow: each stage a task, run in `dvc dag` order.

DVC decides whether a stage is stale (`dvc repro --single-item <stage>` is a no-op when its
deps, params and code are unchanged) and records what ran in dvc.lock; Prefect shows each
stage's progress, logs and failure, retries the stages that are safe to retry, and ends
in one clear state. The deployments in prefect.yaml (nightly curation refresh, weekly
evaluation, full pipeline on demand) all run this flow with different targets.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from prefect import flow, get_run_logger, task
from prefect.context import TaskRunContext
from prefect.states import Completed, Failed

# Retries per stage, for failures that may pass on a second attempt (a worker killed for
# memory, a GL driver crash, a network error while downloading). Only stages that keep
# their finished work across a failed attempt get them: curate/caption/render keep
# per-object records, training and distillation resume from their checkpoints, mirror
# downloads what is missing. evaluate and report start over on every attempt and fail
# deterministically when they fail at all, so a retry would only repeat the failure.
RETRIES: dict[str, int] = {
    "mirror": 2, "curate": 2, "caption": 2, "render": 2,
    "train_base": 1, "train_mv": 1, "train_mv_3d": 1, "train_agp": 1, "dreambooth": 1,
    "distill": 1, "ablation": 1, "train_evaluator": 1,
    "train_depth": 1, "train_caa": 1,
    "evaluate": 0, "evaluate_studies": 0, "texture": 0, "report": 0, "report_studies": 0,
}
# A stage exits 2 for invalid params or a missing input model: never worth a retry.
NOT_RETRYABLE_EXIT = {2}
RETRY_DELAY_S = 10
OUTPUT_TAIL = 40


class StageFailed(RuntimeError):
    def __init__(self, stage: str, returncode: int, tail: str, attempt: int = 1):
        self.stage, self.returncode, self.attempt = stage, returncode, attempt
        super().__init__(f"stage {stage} exited {returncode} (attempt {attempt}):\n{tail}")


def _retry_condition(_task, _task_run, state) -> bool:
    exc = state.data
    return not (isinstance(exc, StageFailed) and exc.returncode in NOT_RETRYABLE_EXIT)


def stage_family(stage: str) -> str:
    """`distill@red-chair` -> `distill` (foreach and matrix instances share a policy)."""
    return stage.split("@", 1)[0]


def plan_stages(order: list[str], edges: list[tuple[str, str]], targets: Optional[list[str]],
                upstream: bool = True) -> list[str]:
    """The stages to run, in `order` (a topological order): the targets, plus everything they
    depend on when `upstream`. A target may name a stage family (`distill`) for all its
    instances. `edges` are (stage, dependency) pairs, as DVC's graph has them."""
    if not targets:
        return list(order)
    wanted: set[str] = set()
    for target in targets:
        matches = [s for s in order if s == target or stage_family(s) == target]
        if not matches:
            raise ValueError(f"{target!r} is not a stage of dvc.yaml (stages: {', '.join(order)})")
        wanted.update(matches)
    if upstream:
        deps: dict[str, set[str]] = {}
        for stage, dep in edges:
            deps.setdefault(stage, set()).add(dep)
        stack = list(wanted)
        while stack:
            for dep in deps.get(stack.pop(), ()):
                if dep not in wanted:
                    wanted.add(dep)
                    stack.append(dep)
    return [s for s in order if s in wanted]


def dag(root: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Stage names in `dvc dag` order (ties broken by their order in dvc.yaml) and the edges."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph
        position = {s.name: i for i, s in enumerate(repo.index.stages)}
        names = nx.relabel_nodes(graph, {s: s.name for s in graph.nodes})
    # DVC's edges point from a stage to what it depends on; run dependencies first.
    order = list(nx.lexicographical_topological_sort(names.reverse(), key=lambda s: f"{position[s]:06d}"))
    return order, list(names.edges)


def command_exit_code(lines: list[str], dvc_rc: int) -> int:
    """The stage command's own exit code (dvc itself exits 255 whatever the command's was)."""
    for line in reversed(lines):
        found = re.search(r"failed to run: .*, exited with (-?\d+)", line)
        if found:
            return int(found.group(1))
    return dvc_rc


def _dvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def _stream(cmd: list[str], cwd: Path, logger) -> tuple[int, list[str]]:
    """Run `cmd`, forwarding its output line by line to the run log."""
    lines: list[str] = []
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        lines.append(line)
        logger.info(line)
    return proc.wait(), lines


@task(retry_condition_fn=_retry_condition)
def repro_stage(stage: str, root: Path) -> str:
    """`dvc repro --single-item <stage>`: 'ran' or 'up to date'; StageFailed on a non-zero exit."""
    logger = get_run_logger()
    rc, lines = _stream(_dvc("repro", "--single-item", stage), root, logger)
    if rc != 0:
        ctx = TaskRunContext.get()
        attempt = ctx.task_run.run_count if ctx and ctx.task_run else 1
        raise StageFailed(stage, command_exit_code(lines, rc), "\n".join(lines[-OUTPUT_TAIL:]), attempt)
    return "ran" if any(f"Running stage '{stage}'" in line for line in lines) else "up to date"


@task(name="dvc push", task_run_name="dvc push", retries=2, retry_delay_seconds=30)
def push(stages: list[str], root: Path) -> int:
    """`dvc push` of these stages' outputs (content-addressed: a repeated push is harmless)."""
    rc, lines = _stream(_dvc("push", *stages), root, get_run_logger())
    if rc != 0:
        raise RuntimeError("dvc push failed:\n" + "\n".join(lines[-OUTPUT_TAIL:]))
    return rc


def default_remote(root: Path) -> Optional[str]:
    proc = subprocess.run(_dvc("remote", "default"), cwd=root, capture_output=True, text=True)
    name = proc.stdout.strip()
    return name if proc.returncode == 0 and name else None


@flow(name="dvc-pipeline", log_prints=True)
def pipeline(targets: Optional[list[str]] = None, upstream: bool = True, push_to_remote: Optional[bool] = None,
             root: str = ".", retries: Optional[dict[str, int]] = None):
    """Run the DVC pipeline stage by stage (all stages, or `targets` and, with `upstream`,
    what they need). `push_to_remote`: None pushes when a default DVC remote is configured,
    True requires one, False never pushes. `retries` overrides RETRIES per stage family."""
    logger = get_run_logger()
    root_path = Path(root).resolve()
    order, edges = dag(root_path)
    try:
        stages = plan_stages(order, edges, targets, upstream)
    except ValueError as err:
        return Failed(message=str(err))
    remote = default_remote(root_path)
    if push_to_remote and remote is None:
        return Failed(message="push_to_remote=True but no default DVC remote is configured "
                              "(dvc remote add -d <name> <url>)")
    policy = {**RETRIES, **(retries or {})}
    logger.info("plan (%d stages): %s", len(stages), " -> ".join(stages))
    outcome: dict[str, str] = {}
    started = time.time()
    for stage in stages:
        n = policy.get(stage_family(stage), 0)
        run = repro_stage.with_options(name="dvc repro", task_run_name=stage, retries=n,
                                       retry_delay_seconds=RETRY_DELAY_S)
        state = run(stage, root_path, return_state=True)
        if not state.is_completed():
            not_run = stages[len(outcome) + 1:]
            exc = state.result(raise_on_failure=False)
            if isinstance(exc, StageFailed):       # the attempt the task run itself counted
                why, attempts = f"exit {exc.returncode}", f"{exc.attempt} attempt(s)"
            else:
                why, attempts = (state.message or state.type.value), f"up to {n + 1} attempt(s)"
            return Failed(message=f"stage {stage} failed ({why}) after {attempts}; "
                                  f"{len(outcome)} stage(s) finished before it, {len(not_run)} not run"
                                  + (f": {', '.join(not_run)}" if not_run else ""))
        outcome[stage] = state.result()
    pushed = False
    if remote is not None and push_to_remote is not False:
        push(stages, root_path)
        pushed = True
    ran = [s for s, what in outcome.items() if what == "ran"]
    summary = {"stages": outcome, "ran": ran, "pushed_to": remote if pushed else None,
               "seconds": round(time.time() - started, 1)}
    return Completed(message=f"{len(ran)} of {len(stages)} stage(s) ran, {len(stages) - len(ran)} up to date"
                             + (f"; pushed to DVC remote {remote!r}" if pushed else ""), data=summary)


if __name__ == "__main__":
    pipeline(targets=sys.argv[1:] or None)
