"""Caption table for curated objects (pure: DataFrame in, DataFrame out)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from dreamline.atomic import clean_temp_files, write_parquet_atomic
from dreamline.captioning import image, template  # noqa: F401 (the implementations register)
from dreamline.captioning.base import CAPTIONERS, CaptionInput, original_text
from dreamline.captioning.split import assign_split
from dreamline.config import CaptionParams
from dreamline.paths import confine

COLUMNS = ["uid", "split", "original_text", "caption", "captioner", "name", "category", "mesh_colour", "key"]


def caption_inputs(objects: pd.DataFrame, curated_root: Path) -> list[CaptionInput]:
    kept = objects[objects["kept"]].sort_values("uid")
    out = []
    for r in kept.itertuples(index=False):
        tags = tuple(r.tags) if r.tags is not None else ()
        out.append(CaptionInput(
            uid=r.uid, name=r.name or "", tags=tags, category=r.lvis_category,
            colour=r.colour, description=r.description or "",
            # Confined to the curated folder: a row naming a mesh elsewhere is refused.
            mesh_path=confine(r.mesh_path, curated_root,
                              f"{Path(curated_root) / 'objects.parquet'}: row uid={r.uid}, mesh_path"),
        ))
    return out


def build_captioner(p: CaptionParams):
    # Importing a captioner is cheap: heavy models (transformers) load on first use.
    return CAPTIONERS.get(p.captioner_type)(p.captioner_config(), seed=p.seed)


def caption_table(items: list[CaptionInput], captions: list[str], keys: list[str],
                  p: CaptionParams) -> pd.DataFrame:
    rows = [{
        "uid": it.uid,
        "split": assign_split(it.uid, p.split),
        "original_text": original_text(it),
        "caption": cap,
        "captioner": p.captioner_type,
        "name": it.name,
        "category": it.category,
        "mesh_colour": it.colour,
        "key": key,
    } for it, cap, key in zip(items, captions, keys)]
    return pd.DataFrame(rows, columns=COLUMNS)


def caption_key(item: CaptionInput, mesh_sha256: str | None, p: CaptionParams) -> str:
    """What a caption depends on: the object's text and mesh, the captioner settings and
    the captioner's code."""
    from dreamline.lineage.code import code_digest

    blob = json.dumps([item.uid, item.name, list(item.tags), item.category, item.colour,
                       mesh_sha256, p.captioner_type, p.captioner_config().model_dump(mode="json"),
                       p.seed, code_digest(CAPTIONERS.get(p.captioner_type).__module__)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def load_caption_cache(out_root: Path) -> dict[str, str]:
    """key -> caption from the last finished table and from parts of an unfinished run."""
    cache: dict[str, str] = {}
    frames = []
    table = Path(out_root) / "captions.parquet"
    if table.exists():
        frames.append(pd.read_parquet(table, columns=["key", "caption"]))
    for part in sorted((Path(out_root) / "parts").glob("*.parquet")):
        frames.append(pd.read_parquet(part, columns=["key", "caption"]))
    for f in frames:
        cache.update(zip(f["key"], f["caption"]))
    return cache


def write_part(out_root: Path, keys: list[str], captions: list[str]) -> None:
    name = hashlib.sha256("".join(keys).encode()).hexdigest()[:24]
    write_parquet_atomic(Path(out_root) / "parts" / f"{name}.parquet",
                         pd.DataFrame({"key": keys, "caption": captions}))


def finish(out_root: Path, table: pd.DataFrame) -> None:
    write_parquet_atomic(Path(out_root) / "captions.parquet", table)
    for part in (Path(out_root) / "parts").glob("*.parquet"):
        part.unlink()
    clean_temp_files(out_root)
