"""A local mirror in the exact cache layout of the `objaverse` package (0.1.x).

    <root>/hf-objaverse-v1/object-paths.json.gz      {uid: "glbs/000-NNN/<uid>.glb"}
    <root>/hf-objaverse-v1/metadata/000-NNN.json.gz   {uid: record}, all 160 shards
    <root>/hf-objaverse-v1/glbs/000-NNN/<uid>.glb
    <root>/hf-objaverse-v1/lvis-annotations.json.gz   {category: [uid, ...]}
    <root>/dreamline-manifest.json                    what each uid is (tests, not curation)

The objaverse package's public API reads the first four offline (tests/test_mirror.py);
curation reads them with dreamline.sources.objaverse_reader.ObjaverseCache, a reader of
this layout that confines every path to the mirror. The manifest records what
the generator meant (kind, expected reject reason) so tests can check curation against it.
All writes are atomic and deterministic (gzip mtime 0), and unchanged files are not
rewritten, so rebuilding with one more object touches that object's files and the indexes.
"""
from __future__ import annotations

import gzip
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import trimesh

from dreamline.atomic import write_bytes_atomic
from dreamline.config import MirrorParams
from dreamline.sources import annotations as ann
from dreamline.sources.junk import JUNK_KINDS
from dreamline.sources.objaverse_reader import VERSIONED
from dreamline.sources.packaged import available, load_packaged
from dreamline.sources.procedural import PALETTE, build_object, colour_rgba, paint

N_SHARDS = 160  # objaverse 1.0 has metadata shards 000-000 .. 000-159
MANIFEST = "dreamline-manifest.json"


def shard_of(uid: str) -> str:
    i = int(uid[:6], 16) % N_SHARDS
    return f"{i // 1000:03d}-{i % 1000:03d}"


@dataclass
class MirrorEntry:
    uid: str
    record: dict[str, Any]
    glb: bytes | None
    lvis: str | None
    manifest: dict[str, Any]


def _gz_json(obj: Any, level: int = 6) -> bytes:
    raw = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
    return gzip.compress(raw, compresslevel=level, mtime=0)


def _glb_bytes(mesh: trimesh.Trimesh) -> bytes:
    return trimesh.exchange.gltf.export_glb(trimesh.Scene(mesh))


_NAME_STYLES = ("{Colour} {Cat}", "{cat}_{i:02d}", "{Material} {cat}", "{Cat} model",
                "{cat} v{i}", "My {cat}", "{Cat} ({colour})")


def procedural_entries(p: MirrorParams) -> Iterator[MirrorEntry]:
    for category in p.categories:
        for i in range(p.instances_per_category):
            # Per-object seeding: adding instances or categories leaves the others unchanged.
            uid = ann.make_uid(p.seed, "procedural", category, i)
            rng = np.random.default_rng(int(uid[:12], 16))
            obj = build_object(category, rng)
            style = _NAME_STYLES[int(rng.integers(len(_NAME_STYLES)))]
            name = style.format(Colour=obj.colour.title(), colour=obj.colour, Cat=category.title(),
                                cat=category, Material=obj.material.title(), i=i + 1)
            tags = [category, obj.colour, obj.material, *obj.attributes]
            glb = _glb_bytes(obj.mesh)
            record = ann.make_record(
                uid, name, tags=tags, categories=[ann.CATEGORY_OF[category]],
                face_count=len(obj.mesh.faces), vertex_count=len(obj.mesh.vertices),
                description=f"A {obj.material} {obj.colour} {category}, {', '.join(obj.attributes)}.",
                license=str(rng.choice(["by", "by-sa", "cc0"])), file_size=len(glb), rng=rng,
            )
            yield MirrorEntry(uid, record, glb, ann.LVIS_NAME[category], {
                "source": "procedural", "kind": "object", "category": category,
                "colour": obj.colour, "expected_reason": None,
            })


def packaged_entries(p: MirrorParams) -> Iterator[MirrorEntry]:
    for entry, path in available(p.packaged_meshes_dir, p.packaged_meshes):
        uid = ann.make_uid(p.seed, "packaged", entry.file)
        rng = np.random.default_rng(int(uid[:12], 16))
        mesh = load_packaged(path)
        colour = str(rng.choice(list(PALETTE)))
        paint(mesh, colour_rgba(colour))
        glb = _glb_bytes(mesh)
        record = ann.make_record(
            uid, entry.name, tags=[*entry.tags, colour], categories=[ann.CATEGORY_OF[entry.category]],
            face_count=len(mesh.faces), vertex_count=len(mesh.vertices),
            description=f"{entry.name} (real mesh from the CGAL data set).", license="cc0",
            file_size=len(glb), rng=rng,
        )
        yield MirrorEntry(uid, record, glb, entry.lvis, {
            "source": "packaged", "kind": "object", "category": entry.lvis, "colour": colour,
            "file": entry.file, "expected_reason": None,
        })


def junk_entries(p: MirrorParams) -> Iterator[MirrorEntry]:
    for kind, make in JUNK_KINDS.items():
        for i in range(p.junk_per_kind):
            uid = ann.make_uid(p.seed, "junk", kind, i)
            rng = np.random.default_rng(int(uid[:12], 16))
            junk = make(rng)
            faces = junk.face_count if junk.face_count is not None else _face_count(junk.glb)
            record = ann.make_record(
                uid, junk.name, tags=junk.tags,
                categories=[ann.CATEGORY_OF.get(junk.category, "art-abstract")],
                face_count=faces, vertex_count=faces // 2 + 3 if faces else 2000,
                description="", license="by", file_size=len(junk.glb or b""), rng=rng,
            )
            record.update(junk.record_overrides)
            yield MirrorEntry(uid, record, junk.glb, None, {
                "source": "junk", "kind": kind, "category": junk.category, "colour": None,
                "expected_reason": junk.expected_reason,
            })


def _face_count(glb: bytes) -> int:
    """Faces in a GLB the generator wrote (junk whose record lies sets face_count itself)."""
    import io

    scene = trimesh.load(io.BytesIO(glb), file_type="glb", force="scene")
    return int(sum(len(g.faces) for g in scene.geometry.values() if hasattr(g, "faces")))


def default_entries(p: MirrorParams) -> Iterator[MirrorEntry]:
    yield from procedural_entries(p)
    yield from packaged_entries(p)
    yield from junk_entries(p)


class MirrorWriter:
    """Writes entries into the objaverse layout; indexes are written by `finalize`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.base = self.root / VERSIONED
        self.paths: dict[str, str] = {}
        self.shards: dict[str, dict[str, Any]] = defaultdict(dict)
        self.lvis: dict[str, list[str]] = defaultdict(list)
        self.manifest: dict[str, Any] = {}
        self.written = 0

    @classmethod
    def open_existing(cls, root: str | Path) -> "MirrorWriter":
        """Load an existing mirror's indexes so entries can be added to it."""
        w = cls(root)
        w.paths = json.loads(gzip.decompress((w.base / "object-paths.json.gz").read_bytes()))
        for shard_file in (w.base / "metadata").glob("*.json.gz"):
            w.shards[shard_file.name[: -len(".json.gz")]] = json.loads(gzip.decompress(shard_file.read_bytes()))
        lvis = json.loads(gzip.decompress((w.base / "lvis-annotations.json.gz").read_bytes()))
        w.lvis.update({k: list(v) for k, v in lvis.items()})
        w.manifest = json.loads((w.root / MANIFEST).read_text())
        return w

    def add(self, e: MirrorEntry) -> None:
        rel = f"glbs/{shard_of(e.uid)}/{e.uid}.glb"
        self.paths[e.uid] = rel
        self.shards[shard_of(e.uid)][e.uid] = e.record
        if e.lvis and e.uid not in self.lvis[e.lvis]:
            self.lvis[e.lvis].append(e.uid)
        self.manifest[e.uid] = e.manifest
        target = self.base / rel
        if e.glb is None:
            target.unlink(missing_ok=True)
        elif not target.exists() or target.read_bytes() != e.glb:
            write_bytes_atomic(target, e.glb)
            self.written += 1

    def add_all(self, entries: Iterable[MirrorEntry]) -> None:
        for e in entries:
            self.add(e)

    def finalize(self, level: int = 6) -> None:
        (self.base / "metadata").mkdir(parents=True, exist_ok=True)
        for i in range(N_SHARDS):
            # load_annotations() with no uids reads every shard: all must exist.
            sid = f"{i // 1000:03d}-{i % 1000:03d}"
            _write_if_changed(self.base / "metadata" / f"{sid}.json.gz",
                              _gz_json(self.shards.get(sid, {}), level))
        _write_if_changed(self.base / "lvis-annotations.json.gz",
                          _gz_json({k: sorted(v) for k, v in self.lvis.items()}, level))
        _write_if_changed(self.root / MANIFEST,
                          json.dumps(self.manifest, indent=1, sort_keys=True).encode())
        # object-paths last: a reader that sees it sees a complete mirror.
        _write_if_changed(self.base / "object-paths.json.gz", _gz_json(self.paths, level))


def _write_if_changed(path: Path, data: bytes) -> None:
    if not path.exists() or path.read_bytes() != data:
        write_bytes_atomic(path, data)


def prune(root: Path, keep: set[str]) -> int:
    """Remove GLBs of uids no longer in the mirror (after params shrink it)."""
    removed = 0
    for glb in (root / VERSIONED / "glbs").glob("*/*.glb"):
        if glb.stem not in keep:
            glb.unlink()
            removed += 1
    return removed


def annotation_only_records(n: int, seed: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """Objaverse-sized annotation-only content for benchmarks: varied, some junk."""
    rng = np.random.default_rng(seed)
    cats = list(ann.CATEGORY_NAMES)
    words = ["chair", "car", "tree", "house", "sword", "robot", "lamp", "shoe", "gun", "cup",
             "lowpoly", "scan", "photogrammetry", "game-asset", "pbr", "free", "sci-fi"]
    licenses = ["by", "by", "by", "by-sa", "cc0", "by-nc", "by-nd", "by-nc-sa"]
    faces = rng.lognormal(9.0, 1.6, size=n).astype(np.int64)
    for i in range(n):
        uid = ann.make_uid(seed, "bench", i)
        k = int(rng.integers(0, 6))
        tags = [words[j] for j in rng.choice(len(words), size=k, replace=False)]
        rec = ann.make_record(
            uid, f"{tags[0] if tags else 'model'} {i}", tags=tags,
            categories=[cats[int(rng.integers(len(cats)))]], face_count=int(faces[i]),
            vertex_count=int(faces[i] // 2), description="benchmark record",
            license=licenses[int(rng.integers(len(licenses)))],
            animation_count=int(rng.random() < 0.05), age_restricted=bool(rng.random() < 0.01),
            rng=rng,
        )
        yield uid, rec


def write_annotation_only(root: str | Path, n: int, seed: int = 0) -> int:
    w = MirrorWriter(root)
    for uid, rec in annotation_only_records(n, seed):
        w.paths[uid] = f"glbs/{shard_of(uid)}/{uid}.glb"
        w.shards[shard_of(uid)][uid] = rec
        w.manifest[uid] = {"source": "bench"}
    w.manifest = {"annotation_only": True, "records": n}
    w.finalize(level=1)
    return n


def build_mirror(p: MirrorParams, root: str | Path) -> dict[str, Any]:
    """Write the default mirror (or an annotation-only one) and return a summary."""
    root = Path(root)
    if p.annotation_only_records:
        n = write_annotation_only(root, p.annotation_only_records, p.seed)
        return {"objects": n, "annotation_only": True, "glbs_written": 0}
    w = MirrorWriter(root)
    w.add_all(default_entries(p))
    w.finalize()
    removed = prune(root, set(w.paths))
    kinds: dict[str, int] = defaultdict(int)
    for m in w.manifest.values():
        kinds[m["source"]] += 1
    return {"objects": len(w.paths), "glbs_written": w.written, "glbs_removed": removed,
            "by_source": dict(kinds)}
