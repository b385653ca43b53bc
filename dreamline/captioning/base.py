"""What every captioner sees and returns; implementations register by name."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dreamline.captioning.configs import CAPTIONERS  # noqa: F401 (re-export)


@dataclass(frozen=True)
class CaptionInput:
    uid: str
    name: str
    tags: tuple[str, ...] = ()
    category: str | None = None  # LVIS-style category, if annotated
    colour: str | None = None  # dominant colour measured on the mesh
    description: str = ""
    mesh_path: Path | None = None  # the normalised GLB, for captioners that look


class Captioner:
    """Turns objects into augmented captions (one per object, same order)."""

    name: str = "base"

    def __init__(self, config, seed: int = 0):
        # Every registered captioner is built as cls(config_block, seed=...).
        self.config = config
        self.seed = seed

    def caption(self, items: list[CaptionInput]) -> list[str]:
        raise NotImplementedError


_VERSION = re.compile(r"\b(v\d+|final|copy|lowres|hires|new|old|wip|fbx|obj|glb)\b", re.I)


def clean_name(name: str) -> str:
    """'red_chair_v2 FINAL' -> 'red chair'; camelCase split; digits and exporter noise dropped."""
    s = re.sub(r"([a-z])([A-Z])", r"\1 \2", name or "")
    s = re.sub(r"[_\-.()\[\]]+", " ", s)
    s = _VERSION.sub(" ", s)
    s = re.sub(r"\b\d+\b", " ", s)
    return re.sub(r"\s+", " ", s).strip().lower()


def category_noun(category: str | None) -> str | None:
    """LVIS names to plain nouns: 'car_(automobile)' -> 'car', 'dining_table' -> 'dining table'."""
    if not category:
        return None
    return re.sub(r"_?\(.*?\)", "", category).replace("_", " ").strip() or None


def original_text(item: CaptionInput) -> str:
    name = clean_name(item.name)
    tags = [t.replace("-", " ") for t in item.tags if t and t.replace("-", " ") not in name]
    return ", ".join([name, *tags]) if tags else name
