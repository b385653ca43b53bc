"""Vectorised metadata filter over Objaverse annotation records.

Records become one columnar pyarrow table (only the fields the filter and captions use),
then every rule is a whole-column operation. The reject reason of a row is the first rule
in RULE_ORDER that it breaks; kept rows have a null reason.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from dreamline.config import MetadataFilterParams

SCHEMA = pa.schema([
    ("uid", pa.string()),
    ("name", pa.string()),
    ("tags", pa.list_(pa.string())),
    ("categories", pa.list_(pa.string())),
    ("license", pa.string()),
    ("face_count", pa.int64()),
    ("vertex_count", pa.int64()),
    ("animation_count", pa.int64()),
    ("age_restricted", pa.bool_()),
    ("description", pa.string()),
])

# Candidates whose object-paths entry leads outside the cache (absolute, `..` out of it,
# a uid that is not a file name) carry why in this column; they are rejected as
# UNSAFE_PATH before any metadata rule, and nothing at that path is ever read.
PATH_PROBLEM = "path_problem"
UNSAFE_PATH = "unsafe_path"

RULE_ORDER = (
    "malformed_record", "unreadable_name", "license", "age_restricted", "animated",
    "blocked_tag", "blocked_category", "point_cloud", "too_few_faces", "too_many_faces",
)

# Names that say nothing about the object: empty, control characters, mojibake (UTF-8
# read as Latin-1), no letters at all, or a generic exporter default.
_CONTROL = r"[\x00-\x08\x0b-\x1f\x7f]"
_MOJIBAKE = r"(?:Ã.|Â.|â€)"
_GENERIC = r"^(untitled|model|object|mesh|default|scene|export|new|sketchfab)?[\s_\-.]*(model|object|mesh|scene)?[\s_\-.]*\d*$"


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _slugs(items: Any) -> list[str] | None:
    if not isinstance(items, list):
        return None
    out = []
    for t in items:
        if isinstance(t, dict) and isinstance(t.get("slug") or t.get("name"), str):
            out.append((t.get("slug") or t.get("name")).lower())
        else:
            return None
    return out


def records_to_table(shards: Iterable[dict[str, dict[str, Any]]]) -> pa.Table:
    """Flatten annotation dicts (one shard at a time) into a columnar table.

    A record missing a field or with a wrong type gets nulls there; the filter rejects it
    as malformed_record rather than crashing the run.
    """
    batches = []
    for shard in shards:
        cols: dict[str, list] = {f.name: [] for f in SCHEMA}
        for uid, r in shard.items():
            r = r if isinstance(r, dict) else {}
            cols["uid"].append(uid)
            name = r.get("name")
            cols["name"].append(name if isinstance(name, str) else None)
            cols["tags"].append(_slugs(r.get("tags")))
            cols["categories"].append(_slugs(r.get("categories")))
            lic = r.get("license")
            cols["license"].append(lic if isinstance(lic, str) else None)
            cols["face_count"].append(_int(r.get("faceCount")))
            cols["vertex_count"].append(_int(r.get("vertexCount")))
            cols["animation_count"].append(_int(r.get("animationCount")))
            age = r.get("isAgeRestricted")
            cols["age_restricted"].append(age if isinstance(age, bool) else None)
            desc = r.get("description")
            cols["description"].append(desc if isinstance(desc, str) else "")
        batches.append(pa.table(cols, schema=SCHEMA))
    if not batches:
        return SCHEMA.empty_table()
    return pa.concat_tables(batches)


def _any_in(lists: pa.ChunkedArray, blocked: tuple[str, ...], n: int) -> np.ndarray:
    if not blocked:
        return np.zeros(n, dtype=bool)
    lists = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
    flat = pc.list_flatten(lists)
    parents = pc.list_parent_indices(lists).to_numpy()
    hit = pc.is_in(flat, value_set=pa.array([b.lower() for b in blocked])).to_numpy(zero_copy_only=False)
    out = np.zeros(n, dtype=bool)
    out[parents[hit]] = True
    return out


def unreadable_names(names: pd.Series) -> np.ndarray:
    s = names.fillna("")
    stripped = s.str.strip()
    bad = stripped.eq("")
    bad |= s.str.contains(_CONTROL, regex=True)
    bad |= s.str.contains(_MOJIBAKE, regex=True)
    bad |= ~stripped.str.contains(r"[^\W\d_]", regex=True)  # no letter in any script
    bad |= stripped.str.match(_GENERIC, case=False)
    return bad.to_numpy()


def rule_masks(table: pa.Table, p: MetadataFilterParams) -> dict[str, np.ndarray]:
    n = table.num_rows

    def col(name):
        return table.column(name)

    faces = col("face_count").to_numpy(zero_copy_only=False)
    verts = col("vertex_count").to_numpy(zero_copy_only=False)
    anim = col("animation_count").to_numpy(zero_copy_only=False)
    faces_f = np.nan_to_num(faces.astype(float), nan=-1)
    malformed = (
        col("name").is_null().to_numpy(zero_copy_only=False)
        | col("tags").is_null().to_numpy(zero_copy_only=False)
        | col("categories").is_null().to_numpy(zero_copy_only=False)
        | col("license").is_null().to_numpy(zero_copy_only=False)
        | col("age_restricted").is_null().to_numpy(zero_copy_only=False)
        | np.isnan(faces.astype(float)) | np.isnan(anim.astype(float))
    )
    tags = pc.fill_null(col("tags"), pa.scalar([], pa.list_(pa.string())))
    cats = pc.fill_null(col("categories"), pa.scalar([], pa.list_(pa.string())))
    lic = col("license").to_pandas().fillna("")
    return {
        "malformed_record": malformed,
        "unreadable_name": unreadable_names(col("name").to_pandas()),
        "license": ~lic.isin(p.license_allowlist).to_numpy(),
        "age_restricted": (col("age_restricted").to_pandas().fillna(False).astype(bool).to_numpy()
                           & (not p.allow_age_restricted)),
        "animated": np.nan_to_num(anim.astype(float), nan=0) > p.max_animation_count,
        "blocked_tag": _any_in(tags, p.tag_blocklist, n),
        "blocked_category": _any_in(cats, p.category_blocklist, n),
        "point_cloud": (faces_f == 0) & (np.nan_to_num(verts.astype(float), nan=0) > 0),
        "too_few_faces": faces_f < p.min_faces,
        "too_many_faces": faces_f > p.max_faces,
    }


def filter_metadata(table: pa.Table, p: MetadataFilterParams) -> pa.Table:
    """The input table plus `meta_reason` (null where every rule passes; UNSAFE_PATH where
    the table's PATH_PROBLEM column says the object's path may not be followed)."""
    masks = rule_masks(table, p)
    reason = np.full(table.num_rows, None, dtype=object)
    for rule in reversed(RULE_ORDER):  # earlier rules overwrite later ones
        reason[masks[rule]] = rule
    if PATH_PROBLEM in table.column_names:
        reason[table.column(PATH_PROBLEM).is_valid().to_numpy(zero_copy_only=False)] = UNSAFE_PATH
    return table.append_column("meta_reason", pa.array(reason, type=pa.string()))
