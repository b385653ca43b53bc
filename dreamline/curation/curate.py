"""Curation: every candidate gets a row; kept objects get a normalised GLB.

Work on an object is keyed by the sha256 of its file, the geometry parameters and the
code that checks and normalises it (dreamline.lineage.code). A per-object record (written atomically after its mesh) holds the key and
the verdict, so a rerun re-does only objects whose key changed and a killed run resumes
where it stopped. objects.parquet is assembled from the records last.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa

from dreamline.atomic import clean_temp_files, write_bytes_atomic, write_json_atomic, write_parquet_atomic
from dreamline.config import CurateParams, GeometryParams
from dreamline.curation.geometry import check_and_normalise
from dreamline.curation.candidates import load_candidates
from dreamline.curation.metadata_filter import PATH_PROBLEM, UNSAFE_PATH, filter_metadata
from dreamline.paths import UnsafePathError
from dreamline.sources.objaverse_reader import ObjaverseCache

# What decides an object's verdict and GLB: a change to any file this function can run
# redoes every object; other edits redo none.
GEOMETRY_CODE = "dreamline.curation.curate:curate_object"

STAT_COLUMNS = {
    "n_faces": pa.int64(), "n_vertices": pa.int64(), "extent_x": pa.float64(),
    "extent_y": pa.float64(), "extent_z": pa.float64(), "scale": pa.float64(),
    "thickness_ratio": pa.float64(), "degenerate_fraction": pa.float64(),
    "n_components": pa.int64(), "n_clusters": pa.int64(), "colour": pa.string(),
}


@dataclass(frozen=True)
class CuratedLayout:
    root: Path

    @property
    def meshes(self) -> Path:
        return self.root / "meshes"

    @property
    def records(self) -> Path:
        return self.root / "records"

    @property
    def table(self) -> Path:
        return self.root / "objects.parquet"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def run_stats(self) -> Path:
        # How this run went (processed vs reused, seconds): differs between a fresh and an
        # incremental run with identical results, so it is .dvcignore'd, not an output.
        return self.root / "run.json"

    def mesh(self, uid: str) -> Path:
        return self.meshes / f"{uid}.glb"

    def record(self, uid: str) -> Path:
        return self.records / f"{uid}.json"


def geometry_key(sha256: str, p: GeometryParams) -> str:
    from dreamline.lineage.code import code_digest

    blob = json.dumps([sha256, p.model_dump(mode="json"), code_digest(GEOMETRY_CODE)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def curate_object(uid: str, cache: ObjaverseCache | str | Path | None, p: GeometryParams,
                  layout: CuratedLayout) -> dict[str, Any]:
    """Geometry-check and normalise one object, reusing a finished record with the same key.
    `cache`: an ObjaverseCache, or its root (None: real Objaverse)."""
    if not isinstance(cache, ObjaverseCache):
        cache = ObjaverseCache(cache)
    try:
        path = cache.load_object(uid)  # confined to the cache before anything looks at the path
        data = Path(path).read_bytes()
    except UnsafePathError as err:  # e.g. a symlink in the mirror that points out of it
        return {"uid": uid, "reject_reason": UNSAFE_PATH, "reject_detail": str(err)[:300],
                "processed": False}
    except Exception as err:  # missing locally and not downloadable
        return {"uid": uid, "reject_reason": "missing_file", "reject_detail": str(err)[:200],
                "processed": False}
    sha = hashlib.sha256(data).hexdigest()
    key = geometry_key(sha, p)
    rec_path = layout.record(uid)
    if rec_path.exists():
        try:
            rec = json.loads(rec_path.read_text())
        except json.JSONDecodeError:
            rec = {}
        if rec.get("key") == key and (rec.get("reject_reason") or layout.mesh(uid).exists()):
            return {**rec, "processed": False}
    verdict = check_and_normalise(data, p)
    rec = {"uid": uid, "sha256": sha, "key": key, "reject_reason": verdict.reason,
           "reject_detail": verdict.detail, **verdict.stats}
    if verdict.glb is not None:
        write_bytes_atomic(layout.mesh(uid), verdict.glb)
        rec["mesh_sha256"] = hashlib.sha256(verdict.glb).hexdigest()
    else:
        layout.mesh(uid).unlink(missing_ok=True)
    write_json_atomic(rec_path, rec)
    return {**rec, "processed": True}


def curate_shard(uids: Iterable[str], mirror_root, p: GeometryParams, out_root: str | Path) -> list[dict]:
    """`mirror_root`: the cache root (None: real Objaverse) or an ObjaverseCache to share,
    whose object-paths is then read once for all the shards it is passed to."""
    layout = CuratedLayout(Path(out_root))
    # One reader for the shard: object-paths is read once, not once per object.
    cache = mirror_root if isinstance(mirror_root, ObjaverseCache) else ObjaverseCache(mirror_root)
    return [curate_object(uid, cache, p, layout) for uid in uids]


def shards(items: list[str], size: int) -> list[list[str]]:
    return [items[i: i + size] for i in range(0, len(items), size)]


def assemble(candidates: pa.Table, geometry_rows: list[dict], source: str,
             out_root: str | Path, started: float | None = None) -> dict[str, Any]:
    """Write objects.parquet (every candidate) and summary.json; prune stale outputs."""
    layout = CuratedLayout(Path(out_root))
    df = candidates.to_pandas()
    geo = pd.DataFrame(geometry_rows) if geometry_rows else pd.DataFrame({"uid": []})
    df = df.merge(geo, on="uid", how="left", suffixes=("", "_geo"))
    meta_reason = df["meta_reason"]
    geo_reason = df["reject_reason"] if "reject_reason" in df else pd.Series(None, index=df.index)
    df["reject_reason"] = meta_reason.where(meta_reason.notna(), geo_reason)
    # "path": the object's object-paths entry leads out of the mirror (found from its text
    # before the metadata rules, or from a symbolic link when the object was to be read).
    df["reject_stage"] = np.where(df["reject_reason"] == UNSAFE_PATH, "path",
                                  np.where(meta_reason.notna(), "metadata",
                                           np.where(df["reject_reason"].notna(), "geometry", None)))
    df["kept"] = df["reject_reason"].isna()
    df["source"] = source
    df["mesh_path"] = np.where(df["kept"], "meshes/" + df["uid"] + ".glb", None)
    for col, typ in STAT_COLUMNS.items():
        if col not in df:
            df[col] = None
    for col in ("sha256", "key", "mesh_sha256", "reject_detail"):
        if col not in df:
            df[col] = None
    if PATH_PROBLEM in df:
        unsafe = df[PATH_PROBLEM].notna()
        df.loc[unsafe, "reject_detail"] = df.loc[unsafe, PATH_PROBLEM].str.slice(0, 300)
    flags = [(r.get("processed", False), r.get("reject_reason")) for r in geometry_rows]
    processed = sum(1 for done, _ in flags if done)
    reused = sum(1 for done, why in flags if not done and why not in ("missing_file", UNSAFE_PATH))
    df = df.drop(columns=[c for c in ("processed", "meta_reason", PATH_PROBLEM) if c in df])
    df["reject_detail"] = df["reject_detail"].fillna("").astype(str)
    df = df.sort_values("uid").reset_index(drop=True)
    kept = set(df.loc[df["kept"], "uid"])
    present = set(df["uid"])
    removed = 0
    for glb in layout.meshes.glob("*.glb") if layout.meshes.exists() else []:
        if glb.stem not in kept:
            glb.unlink()
            removed += 1
    for rec in layout.records.glob("*.json") if layout.records.exists() else []:
        if rec.stem not in present:
            rec.unlink()
    clean_temp_files(layout.root)
    write_parquet_atomic(layout.table, _typed(df))
    reasons = df.loc[~df["kept"], "reject_reason"].value_counts().sort_index()
    summary = {
        "candidates": int(len(df)),
        "kept": int(df["kept"].sum()),
        "rejected": int((~df["kept"]).sum()),
        "reject_reasons": {str(k): int(v) for k, v in reasons.items()},
    }
    write_json_atomic(layout.summary, summary)
    run = {"geometry_processed": processed, "geometry_reused": reused, "meshes_removed": removed}
    if started is not None:
        run["seconds"] = round(time.time() - started, 3)
    write_json_atomic(layout.run_stats, run)
    return {**summary, **run}


def _typed(df: pd.DataFrame) -> pa.Table:
    schema_fields = [
        ("uid", pa.string()), ("source", pa.string()), ("name", pa.string()),
        ("sha256", pa.string()), ("kept", pa.bool_()), ("reject_reason", pa.string()),
        ("reject_stage", pa.string()), ("reject_detail", pa.string()),
        ("mesh_path", pa.string()), ("mesh_sha256", pa.string()), ("key", pa.string()),
        ("lvis_category", pa.string()), ("tags", pa.list_(pa.string())),
        ("categories", pa.list_(pa.string())), ("license", pa.string()),
        ("description", pa.string()), ("face_count", pa.int64()),
        ("vertex_count", pa.int64()), ("animation_count", pa.int64()),
        ("age_restricted", pa.bool_()),
        *STAT_COLUMNS.items(),
    ]
    schema = pa.schema(schema_fields)
    cols = {}
    for name, typ in schema_fields:
        values = df[name].tolist()
        values = [None if (v is None or (isinstance(v, float) and np.isnan(v))) else v for v in values]
        cols[name] = pa.array(values, type=typ)
    return pa.table(cols, schema=schema)


def run_curation(mirror_root, p: CurateParams, out_root, source: str = "objaverse-mirror") -> dict:
    """Library entry point without an orchestrator (notebooks, tests of the pure path)."""
    started = time.time()
    table = filter_metadata(load_candidates(mirror_root, p.load_workers, p.lvis_only), p.metadata)
    todo = [u for u, r in zip(table.column("uid").to_pylist(), table.column("meta_reason").to_pylist()) if r is None]
    rows = curate_shard(todo, mirror_root, p.geometry, out_root)
    return assemble(table, rows, source, out_root, started)
