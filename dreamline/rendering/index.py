"""Assemble the render index from finished per-object results (pure + atomic writes)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from dreamline.atomic import clean_temp_files, write_json_atomic, write_parquet_atomic


INDEX_COLUMNS = ["uid", "view_id", "kind", "set", "azimuth_deg", "elevation_deg", "distance",
                 "fov_deg", "width", "height", "c2w", "rgba_path", "ccm_path", "normal_path",
                 "arrays_path", "coverage"]


def assemble_index(results: list[dict[str, Any]], out_root: Path, backend: str,
                   keep_uids: set[str]) -> dict[str, Any]:
    out_root = Path(out_root)
    rows = [r for res in results if not res.get("error") for r in res["rows"]]
    # Fixed column order: rows reused from done.json come back with sorted keys, and the
    # index must be byte-identical whether objects were rendered now or earlier.
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    if len(index):
        index = index.sort_values(["uid", "view_id"]).reset_index(drop=True)
    failures = pd.DataFrame([{"uid": r["uid"], "error": r["error"]} for r in results if r.get("error")],
                            columns=["uid", "error"])
    objects = out_root / "objects"
    removed = 0
    for folder in objects.iterdir() if objects.exists() else []:
        if folder.name not in keep_uids:
            shutil.rmtree(folder)
            removed += 1
    clean_temp_files(out_root)
    index["backend"] = backend
    write_parquet_atomic(out_root / "failures.parquet", failures)
    write_parquet_atomic(out_root / "index.parquet", index)
    summary = {"objects": int(index["uid"].nunique()) if len(index) else 0, "views": int(len(index)),
               "failed": int(len(failures)), "backend": backend,
               "views_by_kind": index["kind"].value_counts().sort_index().to_dict() if len(index) else {}}
    write_json_atomic(out_root / "summary.json", summary)
    return {**summary, "object_dirs_removed": removed}
