"""Prefect flow of the `caption` stage: captions per kept object, reused by key. The image
captioner (a BLIP model) runs on `compute.device` at `compute.precision`; a precision other
than fp32 is folded into its captions' keys (fp32 keys stay what they were)."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, unmapped

from dreamline import paths
from dreamline.captioning import captions as cap
from dreamline.config import Params
from tasks.captioning import caption_shard
from tasks.common import compute_target, gather


@flow(name="caption")
def caption_flow(params: Params, curated_root: Path = paths.CURATED,
                 out_root: Path = paths.CAPTIONS, shard_size: int = 64) -> dict:
    logger = get_run_logger()
    p = params.caption
    started = time.time()
    objects = pd.read_parquet(Path(curated_root) / "objects.parquet")
    items = cap.caption_inputs(objects, Path(curated_root))
    mesh_sha = dict(zip(objects["uid"], objects["mesh_sha256"]))
    resolved, device, precision = None, "cpu", "fp32"
    if p.captioner_type == "image":      # the captioner that runs a model
        resolved, precision = compute_target(params.compute.device, params.compute.precision)
        device = str(resolved)
    keys = [cap.caption_key(it, mesh_sha.get(it.uid), p) for it in items]
    if precision != "fp32":
        keys = [hashlib.sha256(f"{k}:{precision}".encode()).hexdigest()[:32] for k in keys]
    cache = cap.load_caption_cache(Path(out_root))
    todo = [i for i, k in enumerate(keys) if k not in cache]
    logger.info("caption: %d kept objects, %d cached, %d to caption with %r",
                len(items), len(items) - len(todo), len(todo), p.captioner_type)
    batches = [todo[i: i + shard_size] for i in range(0, len(todo), shard_size)]
    item_batches = [[items[i] for i in b] for b in batches]
    key_batches = [[keys[i] for i in b] for b in batches]
    if p.captioner_type == "image" and params.execution.task_runner == "thread":
        # One OpenGL context and one model per process: in threads, shards run in sequence.
        futures = []
        for ib, kb in zip(item_batches, key_batches):
            futures.append(caption_shard.submit(ib, kb, p, Path(out_root), device, precision))
            futures[-1].wait()
    else:
        futures = caption_shard.map(item_batches, key_batches, unmapped(p), unmapped(Path(out_root)),
                                    unmapped(device), unmapped(precision))
    for b, texts in zip(batches, gather(futures, "caption", len(todo))):
        cache.update({keys[i]: t for i, t in zip(b, texts)})
    table = cap.caption_table(items, [cache[k] for k in keys], keys, p)
    cap.finish(Path(out_root), table)
    dt = time.time() - started
    summary = {"objects": len(items), "captioned": len(todo), "reused": len(items) - len(todo),
               "splits": table["split"].value_counts().to_dict(), "seconds": round(dt, 3)}
    logger.info("caption: %s", summary)
    if resolved is not None:             # where the model ran: untracked (.dvcignore), not an input
        from dreamline.device import describe
        from dreamline.runinfo import record_run

        record_run(Path(out_root), "caption", {k: summary[k] for k in ("captioned", "reused", "seconds")}
                   | describe(resolved, precision))
    return summary
