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

from dreamline.paths import UnsafePathError, confine


VERSIONED = "hf-objaverse-v1"  # objaverse 1.0's folder under the cache root

_ORIGINAL_LOADER = objaverse._load_object_paths
_memo: dict[str, Any] = {"key": None, "paths": None}


def _memoised_object_paths() -> dict[str, str]:
    """objaverse 0.1.7 re-reads object-paths.json.gz on every API call (about a second at
    Objaverse's size); reading annotations shard by shard would pay that 160 times. The
    memo is keyed by the file's path, size and mtime, so a changed mirror is re-read."""
    path = str(_mirror_file("object-paths.json.gz"))
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


def _mirror_file(rel: str, what: str | None = None) -> Path:
    """A file of the cache, confined to it (a symlink out of the cache is refused)."""
    return confine(rel, objaverse._VERSIONED_PATH, what or f"objaverse cache file {rel}")


_NOT_NAMES = frozenset(("", ".", ".."))


def _is_name(part: str) -> bool:
    return part not in _NOT_NAMES and "/" not in part and "\\" not in part and "\x00" not in part


def object_path_problem(uid: str, rel: Any) -> str | None:
    """Why an object-paths entry may not be followed, from its text alone: a uid that is not a plain file name (it names the curated files), a
    path that is absolute, climbs out of the cache with '..', or has no metadata shard
    (`glbs/<shard>/<file>`). None when it may be followed; symbolic links are checked when
    the object is read (`object_file`)."""
    if not isinstance(uid, str) or not _is_name(uid):
        return f"uid {uid!r} is not a plain file name"
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        return f"object path {rel!r} is not a path"
    if rel.startswith("/"):
        return f"object path {rel!r} is absolute, outside the mirror"
    parts = rel.split("/")
    depth = 0
    for part in parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return f"object path {rel!r} climbs out of the mirror with '..'"
        elif part not in ("", "."):
            depth += 1
    if len(parts) < 3 or not _is_name(parts[1]) or not _is_name(parts[-1]):
        return f"object path {rel!r} is not glbs/<shard>/<file>"
    return None


def check_object_paths(uids: list[str]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Uids grouped by the metadata shard that holds them (from object-paths), and the uids
    whose entry may not be followed, with why (see `object_path_problem`; also a metadata
    shard file that leads out of the cache). Neither reads an object."""
    paths = objaverse._load_object_paths()
    groups: dict[str, list[str]] = defaultdict(list)
    unsafe: dict[str, str] = {}
    for uid in uids:
        rel = paths.get(uid)
        # The usual entry (a plain uid, `glbs/<shard>/<file>` of plain names) inline: this
        # runs for every candidate, 800K at Objaverse's size. Anything else is looked at
        # closely by object_path_problem.
        parts = rel.split("/") if isinstance(rel, str) and isinstance(uid, str) else ()
        if (len(parts) == 3 and _NOT_NAMES.isdisjoint(parts) and uid not in _NOT_NAMES
                and "/" not in uid and "\\" not in uid and "\x00" not in uid
                and "\\" not in rel and "\x00" not in rel):
            groups[parts[1]].append(uid)
            continue
        problem = object_path_problem(uid, rel)
        if problem is not None:
            unsafe[uid] = problem
        else:
            groups[rel.split("/")[1]].append(uid)
    for shard in list(groups):
        try:
            _mirror_file(f"metadata/{shard}.json.gz", f"metadata shard {shard}")
        except UnsafePathError as err:
            for uid in groups.pop(shard):
                unsafe[uid] = str(err)
    return dict(sorted(groups.items())), unsafe


def uids_by_shard(uids: list[str]) -> dict[str, list[str]]:
    """Group uids by the metadata shard that holds them (from object-paths); uids whose
    entry may not be followed (`check_object_paths`) are left out."""
    return check_object_paths(uids)[0]


def iter_annotation_shards(uids: list[str]) -> Iterator[dict[str, dict[str, Any]]]:
    """Annotations one metadata shard at a time, so memory holds one shard of dicts."""
    for _, members in uids_by_shard(uids).items():
        yield objaverse.load_annotations(members)


def load_lvis_categories() -> dict[str, str]:
    """uid -> LVIS category name (first one listed, if several)."""
    _mirror_file("lvis-annotations.json.gz")  # a symlink out of the cache is an error, not "no LVIS"
    out: dict[str, str] = {}
    try:
        lvis = objaverse.load_lvis_annotations()
    except Exception:  # the LVIS file is optional in a cache; a missing one would download
        return out
    for category, members in sorted(lvis.items()):
        for uid in members:
            out.setdefault(uid, category)
    return out


def object_file(uid: str) -> Path:
    """Where one object's GLB is (or would be downloaded to), resolved and confined to the
    cache; UnsafePathError for an entry that leads outside it (nothing there is touched)."""
    rel = objaverse._load_object_paths().get(uid)
    if rel is None:
        raise FileNotFoundError(f"{uid}: not in object-paths")
    problem = object_path_problem(uid, rel)
    if problem is not None:
        raise UnsafePathError(f"object {uid}: {problem}; refused (not read)")
    return confine(rel, objaverse._VERSIONED_PATH, f"object {uid}")


def load_object(uid: str) -> str:
    """Local path of one object's GLB; raises if it is missing and cannot be fetched, and
    UnsafePathError, before the objaverse package looks at (or downloads to) the path,
    when its object-paths entry leads outside the cache."""
    target = object_file(uid)
    paths = objaverse.load_objects([uid], download_processes=1)
    if uid not in paths or not target.is_file():
        raise FileNotFoundError(f"{uid}: not in the cache and not downloadable")
    return str(target)
