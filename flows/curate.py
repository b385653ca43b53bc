"""Prefect flow of the `curate` stage: metadata filter, then geometry shards in parallel."""
from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger, unmapped

from dreamline import paths
from dreamline.config import Params
from dreamline.sources.objaverse_reader import ObjaverseCache
from dreamline.curation.curate import shards
from tasks import curation
from tasks.common import flatten, gather


@flow(name="curate")
def curate_flow(params: Params, mirror_root: Path | None = paths.MIRROR,
                out_root: Path = paths.CURATED, source: str = "objaverse-mirror") -> dict:
    logger = get_run_logger()
    p = params.curate
    if p.source == "objaverse":   # real Objaverse: the objaverse package's default cache
        mirror_root, source = None, "objaverse"
    started = time.time()
    table = curation.load_and_filter(mirror_root, p.metadata, p.load_workers, p.lvis_only)
    uids = table.column("uid").to_pylist()
    reasons = table.column("meta_reason").to_pylist()
    todo = [u for u, r in zip(uids, reasons) if r is None]
    logger.info("metadata filter: %d candidates, %d pass to geometry checks (%.1fs)",
                len(uids), len(todo), time.time() - started)
    batches = shards(todo, p.shard_size)
    # One reader shared by the shards (threads): object-paths is read once per run, not per
    # shard. Dask workers get a copy of its root and read it once each.
    cache = ObjaverseCache(mirror_root)
    futures = curation.curate_shard.with_options(retries=p.retries, retry_delay_seconds=1).map(
        batches, unmapped(cache), unmapped(p.geometry), unmapped(Path(out_root)))
    rows = flatten(gather(futures, "geometry", len(todo)))
    summary = curation.assemble(table, rows, source, Path(out_root), started)
    logger.info("curate: kept %d of %d (geometry processed %d, reused %d) in %.1fs",
                summary["kept"], summary["candidates"], summary["geometry_processed"],
                summary["geometry_reused"], summary["seconds"])
    return summary
