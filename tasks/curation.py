from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from dreamline.config import GeometryParams, MetadataFilterParams
from dreamline.curation import curate
from dreamline.curation.metadata_filter import filter_metadata


@task(name="load-and-filter-metadata", cache_policy=NO_CACHE)
def load_and_filter(mirror_root: Path | None, p: MetadataFilterParams, workers: int,
                    lvis_only: bool = False) -> pa.Table:
    return filter_metadata(curate.load_candidates(mirror_root, workers, lvis_only), p)


@task(name="curate-shard", cache_policy=NO_CACHE)
def curate_shard(uids: list[str], mirror_root, p: GeometryParams, out_root: Path) -> list[dict]:
    """`mirror_root`: a cache root (None: real Objaverse) or a shared ObjaverseCache."""
    return curate.curate_shard(uids, mirror_root, p, out_root)


@task(name="assemble-objects-table", cache_policy=NO_CACHE)
def assemble(table: pa.Table, rows: list[dict], source: str, out_root: Path, started: float) -> dict:
    return curate.assemble(table, rows, source, out_root, started)
