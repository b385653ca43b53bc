from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from dreamline.config import RenderParams
from dreamline.isolation import IsolatedRunner
from dreamline.rendering.views import failed_result, finished_result
from tasks.common import run_logger

RENDER_JOB = "dreamline.rendering.views:object_job"


@task(name="render-shard", cache_policy=NO_CACHE)
def render_shard(objects: list[tuple[str, str, str]], p: RenderParams, out_root: Path,
                 target: str = RENDER_JOB) -> list[dict]:
    """Render (uid, mesh path, mesh sha256) triples in a child process, `p.timeout_s` each.

    Objects already rendered with the same key are answered here without a child. A mesh
    that raises, hangs or kills the renderer becomes a failure row; the rest go on.
    """
    results = {uid: finished_result(uid, sha, p, out_root) for uid, _, sha in objects}
    jobs = [{"uid": uid, "mesh_path": str(path), "mesh_sha256": sha}
            for uid, path, sha in objects if results[uid] is None]
    if jobs:
        runner = IsolatedRunner(target, {"params": p.model_dump(mode="json"), "out_root": str(out_root)},
                                timeout_s=p.timeout_s,
                                on_failure=lambda job, reason: failed_result(job["uid"], reason))
        for job, result in zip(jobs, runner.run(jobs)):
            results[job["uid"]] = result
        if runner.restarts:
            run_logger().warning("render shard: %d render process(es) replaced after a hang or crash",
                                     runner.restarts)
    return [results[uid] for uid, _, _ in objects]
