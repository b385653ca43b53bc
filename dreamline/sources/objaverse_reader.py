"""Read an Objaverse cache (real or mirrored) through the `objaverse` package API only.

The same code reads real Objaverse when `root` is None (the package's own ~/.objaverse
cache, downloading what is missing) and a local mirror when `root` points at one.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

import objaverse
import orjson



VERSIONED = "hf-objaverse-v1"  # objaverse 1.0's folder under the cache root

_ORIGINAL_LOADER = objaverse._load_object_paths
_memo: dict[str, Any] = {"key": None, "paths": None}


def _memoised_object_paths() -> dict[str, str]:
    """objaverse 0.1.7 re-reads object-paths.json.gz on every API call (about a second at
    Objaverse's size); reading annotations shard by shard would pay that 160 times. The
    memo is keyed by the file's path, size and mtime, so a changed mirror is re-read."""
    path = os.path.join(objaverse._VERSIONED_PATH, "object-paths.json.gz")
    try:
        st = os.stat(path)
        key = (path, st.st_size, st.st_mtime_ns)
    except FileNotFoundError:
        return _ORIGINAL_LOADER()  # the package downloads it (real Objaverse)
    if _memo["key"] != key:
        _memo["paths"], _memo["key"] = _ORIGINAL_LOADER(), key
    return _memo["paths"]


class _FastJson:
    """Stands in for the `json` module inside objaverse: orjson parses the metadata shards
    several times faster than the stdlib, which dominates reading Objaverse-sized metadata.
    Anything else is the stdlib's."""

    @staticmethod
    def load(fp):
        return orjson.loads(fp.read())

    loads = staticmethod(orjson.loads)

    def __getattr__(self, name):
        return getattr(json, name)


def use_objaverse_root(root: str | Path | None) -> None:
    """Point the objaverse package at a cache root (None: its default ~/.objaverse).

    objaverse computes `_VERSIONED_PATH` at import, so that is what is set (patching
    BASE_PATH has no effect). Process-wide and idempotent, so concurrent tasks and Dask
    workers can each call it.
    """
    base = Path(objaverse.BASE_PATH) if root is None else Path(root)
    objaverse._VERSIONED_PATH = str(base / VERSIONED)
    objaverse._load_object_paths = _memoised_object_paths
    objaverse.json = _FastJson()


def uids_by_shard(uids: list[str]) -> dict[str, list[str]]:
    """Group uids by the metadata shard that holds them (from object-paths)."""
    paths = objaverse._load_object_paths()
    groups: dict[str, list[str]] = defaultdict(list)
    for uid in uids:
        groups[paths[uid].split("/")[1]].append(uid)
    return dict(sorted(groups.items()))


def iter_annotation_shards(uids: list[str]) -> Iterator[dict[str, dict[str, Any]]]:
    """Annotations one metadata shard at a time, so memory holds one shard of dicts."""
    for _, members in uids_by_shard(uids).items():
        yield objaverse.load_annotations(members)


def load_lvis_categories() -> dict[str, str]:
    """uid -> LVIS category name (first one listed, if several)."""
    out: dict[str, str] = {}
    try:
        lvis = objaverse.load_lvis_annotations()
    except Exception:  # the LVIS file is optional in a cache; a missing one would download
        return out
    for category, members in sorted(lvis.items()):
        for uid in members:
            out.setdefault(uid, category)
    return out


def load_object(uid: str) -> str:
    """Local path of one object's GLB; raises if it is missing and cannot be fetched."""
    paths = objaverse.load_objects([uid], download_processes=1)
    if uid not in paths or not Path(paths[uid]).exists():
        raise FileNotFoundError(f"{uid}: not in the cache and not downloadable")
    return paths[uid]
