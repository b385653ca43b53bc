"""Prefect flow of the `render` stage: multi-view RGB, depth, normals, masks and CCMs."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, unmapped

from dreamline import paths
from dreamline.config import Params
from dreamline.rendering.index import assemble_index
from tasks.common import flatten, gather


@flow(name="render")
def render_flow(params: Params, curated_root: Path = paths.CURATED,
                out_root: Path = paths.RENDERS, target: str | None = None) -> dict:
    from tasks.rendering import RENDER_JOB, render_shard

    target = target or RENDER_JOB
    logger = get_run_logger()
    p = params.render
    started = time.time()
    objects = pd.read_parquet(Path(curated_root) / "objects.parquet")
    kept = objects[objects["kept"]].sort_values("uid")
    objects_file = Path(curated_root) / "objects.parquet"
    todo = [(r.uid, str(paths.confine(r.mesh_path, curated_root, f"{objects_file}: row uid={r.uid}, mesh_path")),
             r.mesh_sha256) for r in kept.itertuples()]
    batches = [todo[i: i + p.shard_size] for i in range(0, len(todo), p.shard_size)]
    # Each shard renders in child processes of its own (per-object time-out), so shards
    # run side by side up to the task runner's worker count.
    futures = render_shard.with_options(retries=p.retries, retry_delay_seconds=1).map(
        batches, unmapped(p), unmapped(Path(out_root)), unmapped(target))
    results = flatten(gather(futures, "render", len(todo)))
    summary = assemble_index(results, Path(out_root), os.environ.get("PYOPENGL_PLATFORM", p.backend),
                             {uid for uid, *_ in todo})
    processed = sum(1 for r in results if r.get("processed"))
    dt = time.time() - started
    summary.update({"processed": processed, "reused": len(results) - processed - summary["failed"],
                    "seconds": round(dt, 2),
                    "views_per_s": round(summary["views"] / dt, 1) if processed else None})
    logger.info("render: %s", summary)
    return summary
