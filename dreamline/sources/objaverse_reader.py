"""Read an Objaverse cache (real or mirrored): a small reader of the `objaverse` package's
cache layout (0.1.x), with no module-level state.

    <root>/hf-objaverse-v1/object-paths.json.gz      {uid: "glbs/000-NNN/<uid>.glb"}
    <root>/hf-objaverse-v1/metadata/000-NNN.json.gz   {uid: record}
    <root>/hf-objaverse-v1/glbs/000-NNN/<uid>.glb
    <root>/hf-objaverse-v1/lvis-annotations.json.gz   {category: [uid, ...]}

`ObjaverseCache(root)` reads a local mirror in that layout and never touches the network.
`ObjaverseCache(None)` is real Objaverse: the package's default cache (`objaverse.BASE_PATH`,
~/.objaverse), where what is missing is downloaded through the package's public API
(`load_uids`, `load_annotations`, `load_lvis_annotations`, `load_objects`) and then read
by the same code. Every file is confined to the cache (dreamline.paths.confine) before it
is read, stat'ed or downloaded to: an object-paths entry that leads outside the cache is
refused, never followed.
"""
from __future__ import annotations

import gzip
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Iterator

import orjson

from dreamline.paths import UnsafePathError, confine


VERSIONED = "hf-objaverse-v1"  # objaverse 1.0's folder under the cache root

_NOT_NAMES = frozenset(("", ".", ".."))


def _is_name(part: str) -> bool:
    return part not in _NOT_NAMES and "/" not in part and "\\" not in part and "\x00" not in part


def object_path_problem(uid: str, rel: Any) -> str | None:
    """Why an object-paths entry may not be followed, from its text alone: a uid that is
    not a plain file name (it names the curated files), a path that is absolute, climbs out
    of the cache with '..', or has no metadata shard (`glbs/<shard>/<file>`). None when it
    may be followed; symbolic links are checked when the object is read
    (`ObjaverseCache.object_file`)."""
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


def _read_gz_json(path: Path) -> Any:
    # orjson: several times faster than the stdlib at Objaverse's size (800K records).
    return orjson.loads(gzip.decompress(path.read_bytes()))


class ObjaverseCache:
    """One Objaverse cache root: a mirror (`root` given; read only, offline) or real
    Objaverse (`root` None: the package's default cache, downloading what is missing
    through its public API). object-paths is read once per instance (and again only if the
    file changes), so build one instance per task, not one per object."""

    def __init__(self, root: str | os.PathLike | None):
        if root is None:
            import objaverse  # only real Objaverse needs the package

            self.root = Path(objaverse.BASE_PATH)
            self.downloads = True
        else:
            self.root = Path(root)
            self.downloads = False
        self.base = self.root / VERSIONED
        self._paths: dict[str, str] | None = None
        self._paths_key: tuple[str, int, int] | None = None

    def __repr__(self) -> str:
        return f"ObjaverseCache({str(self.root)!r}{', downloads' if self.downloads else ''})"

    # Process pools get the root, not the memo (800K entries at Objaverse's size).
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_paths": None, "_paths_key": None}

    # --- files ---------------------------------------------------------------------------

    def file(self, rel: str, what: str | None = None) -> Path:
        """A file of the cache, resolved and confined to it (a symlink out of the cache,
        or a path that climbs out, is UnsafePathError; nothing outside is touched)."""
        return confine(rel, self.base, what or f"objaverse cache file {rel}")

    def object_paths(self) -> dict[str, str]:
        """uid -> object path inside the cache (`glbs/<shard>/<uid>.glb`), memoised; keyed
        by the file's path, size and mtime, so a changed cache is re-read."""
        path = self.file("object-paths.json.gz")
        if not path.is_file() and self.downloads:
            import objaverse

            objaverse.load_uids()  # downloads object-paths.json.gz into the default cache
        st = path.stat()  # FileNotFoundError for a mirror without one
        key = (str(path), st.st_size, st.st_mtime_ns)
        if self._paths_key != key:
            self._paths, self._paths_key = _read_gz_json(path), key
        return self._paths

    def uids(self) -> list[str]:
        return list(self.object_paths())

    # --- annotations -----------------------------------------------------------------------

    def check_object_paths(self, uids: Iterable[str]) -> tuple[dict[str, list[str]], dict[str, str]]:
        """Uids grouped by the metadata shard that holds them (from object-paths), and the
        uids whose entry may not be followed, with why (see `object_path_problem`; also a
        metadata shard file that leads out of the cache). Neither reads an object."""
        paths = self.object_paths()
        groups: dict[str, list[str]] = defaultdict(list)
        unsafe: dict[str, str] = {}
        for uid in uids:
            rel = paths.get(uid)
            # The usual entry (a plain uid, `glbs/<shard>/<file>` of plain names) inline:
            # this runs for every candidate, 800K at Objaverse's size. Anything else is
            # looked at closely by object_path_problem.
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
                self._shard_file(shard)
            except UnsafePathError as err:
                for uid in groups.pop(shard):
                    unsafe[uid] = str(err)
        return dict(sorted(groups.items())), unsafe

    def uids_by_shard(self, uids: Iterable[str]) -> dict[str, list[str]]:
        """Group uids by the metadata shard that holds them (from object-paths); uids whose
        entry may not be followed (`check_object_paths`) are left out."""
        return self.check_object_paths(uids)[0]

    def _shard_file(self, shard: str) -> Path:
        return self.file(f"metadata/{shard}.json.gz", f"metadata shard {shard}")

    def shard_annotations(self, shard: str, uids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The records of `uids` from one metadata shard (in the order of `uids`; uids the
        shard lacks are left out). A mirror without the shard is FileNotFoundError."""
        uids = list(uids)
        path = self._shard_file(shard)
        if not path.is_file() and self.downloads and uids:
            import objaverse

            objaverse.load_annotations(uids[:1])  # downloads this shard (uids[0] is in it)
        data = _read_gz_json(path)
        return {uid: data[uid] for uid in uids if uid in data}

    def iter_annotation_shards(self, uids: Iterable[str]) -> Iterator[dict[str, dict[str, Any]]]:
        """Annotations one metadata shard at a time, so memory holds one shard of dicts;
        uids whose entry may not be followed are left out."""
        for shard, members in self.uids_by_shard(uids).items():
            yield self.shard_annotations(shard, members)

    def lvis_categories(self) -> dict[str, str]:
        """uid -> LVIS category name (first one listed, if several); {} when the cache has
        no LVIS file (optional) and, for real Objaverse, it cannot be downloaded. A symlink
        out of the cache is an error, not "no LVIS"."""
        path = self.file("lvis-annotations.json.gz")
        if not path.is_file():
            if not self.downloads:
                return {}
            import objaverse

            try:
                objaverse.load_lvis_annotations()  # downloads it into the default cache
            except Exception:
                return {}
            if not path.is_file():
                return {}
        out: dict[str, str] = {}
        for category, members in sorted(_read_gz_json(path).items()):
            for uid in members:
                out.setdefault(uid, category)
        return out

    # --- objects ---------------------------------------------------------------------------

    def object_file(self, uid: str) -> Path:
        """Where one object's GLB is (or would be downloaded to), resolved and confined to
        the cache; UnsafePathError for an entry that leads outside it (nothing there is
        touched), FileNotFoundError for a uid not in object-paths."""
        rel = self.object_paths().get(uid)
        if rel is None:
            raise FileNotFoundError(f"{uid}: not in object-paths")
        problem = object_path_problem(uid, rel)
        if problem is not None:
            raise UnsafePathError(f"object {uid}: {problem}; refused (not read)")
        return confine(rel, self.base, f"object {uid}")

    def load_object(self, uid: str) -> str:
        """Local path of one object's GLB. Confined to the cache first (UnsafePathError,
        before anything looks at or downloads to the path); for real Objaverse a missing
        GLB is downloaded with `objaverse.load_objects`. FileNotFoundError when it is
        missing and cannot be fetched."""
        target = self.object_file(uid)
        if not target.is_file() and self.downloads:
            self._download_object(uid)
        if not target.is_file():
            raise FileNotFoundError(f"{uid}: not in the cache and not downloadable")
        return str(target)

    def _download_object(self, uid: str) -> None:
        import objaverse

        objaverse.load_objects([uid], download_processes=1)
