"""Candidates for curation: every uid with its annotation fields, read from the objaverse
cache layout (dreamline.sources.objaverse_reader). Kept apart from the geometry code so
loader processes import only what they need."""
from __future__ import annotations

import gc
from pathlib import Path

import pyarrow as pa

from dreamline.curation.metadata_filter import PATH_PROBLEM, records_to_table
from dreamline.sources.objaverse_reader import ObjaverseCache


def _load_annotation_group(cache: ObjaverseCache, groups: list[tuple[str, list[str]]]) -> pa.Table:
    # Annotation dicts hold no reference cycles, yet allocating millions of them triggers
    # a full collection per shard that walks every object the imports left alive: measured
    # at a third of the load time at 800K records. Nothing to collect, so don't.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return records_to_table(cache.shard_annotations(shard, members) for shard, members in groups)
    finally:
        if was_enabled:
            gc.enable()


# Below this many candidates a process pool costs more than it saves.
PARALLEL_LOAD_MIN = 20_000


def load_candidates(mirror_root: str | Path | ObjaverseCache | None, workers: int = 1,
                    lvis_only: bool = False) -> pa.Table:
    """All uids with their annotations (columnar), LVIS category and `path_problem` (why
    the object's object-paths entry may not be followed; null for the others).

    `mirror_root`: a mirror in the objaverse cache layout, None for real Objaverse (the
    package's default cache, downloading what is missing), or an ObjaverseCache.
    Annotations are read one metadata shard at a time (so memory holds one shard of
    dicts), in `workers` processes when there are many. `lvis_only`: only uids with an LVIS
    category (nothing else is read or downloaded).
    """
    cache = mirror_root if isinstance(mirror_root, ObjaverseCache) else ObjaverseCache(mirror_root)
    uids = cache.uids()
    lvis = cache.lvis_categories()
    if lvis_only:
        uids = [u for u in uids if u in lvis]
    # Entries whose path leads out of the cache get no annotation read and no geometry
    # work: they become `unsafe_path` rejects (metadata_filter.filter_metadata).
    by_shard, unsafe = cache.check_object_paths(uids)
    groups = list(by_shard.items())
    if workers > 1 and len(uids) >= PARALLEL_LOAD_MIN:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # Round-robin keeps the workers' loads even; spawn, because the caller may have threads.
        parts = [groups[i::workers] for i in range(workers)]
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            tables = list(pool.map(_load_annotation_group, [cache] * workers, parts))
        table = pa.concat_tables(tables)
    else:
        table = _load_annotation_group(cache, groups)
    missing = sorted(set(uids) - set(table.column("uid").to_pylist()))
    if missing:  # listed in object-paths but without an annotation record
        stub = pa.table({"uid": missing}).cast(pa.schema([("uid", pa.string())]))
        table = pa.concat_tables([table, stub], promote_options="default")
    table_uids = table.column("uid").to_pylist()
    table = table.append_column("lvis_category", pa.array([lvis.get(u) for u in table_uids], pa.string()))
    return table.append_column(PATH_PROBLEM, pa.array([unsafe.get(u) for u in table_uids], pa.string()))
