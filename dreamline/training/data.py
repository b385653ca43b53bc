"""Renders and captions preloaded as tensors at the training resolution.

The embedded default's whole training set is a few thousand 32 px views (tens of MB), so
it is read once and batches are gathered by index: no PNG decoding in the step loop, and a
batch is a pure function of (seed, step), which is what makes resumed runs exact.

Downsampling (renders are stored at render.resolution, training runs at its own):
* RGBA is area-averaged with colour premultiplied by alpha, so silhouettes blend with
  whatever background a batch composites under them, not with the render's black.
* CCMs are averaged over foreground pixels only and a pixel is foreground when at least
  half of its area is; a plain average would invent coordinates off the surface.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from dreamline.paths import confine


class TrainingDataError(ValueError):
    """The renders or captions cannot give the batches a training stage needs."""


@dataclass
class ViewTable:
    """One row per view of the chosen kind and split, image tensors aligned with the rows."""
    rows: pd.DataFrame          # uid, view_id, kind, set, c2w, caption, original_text, split
    rgba: torch.Tensor          # (N, 4, R, R), colour premultiplied by alpha, in [0, 1]
    ccm: torch.Tensor | None    # (N, 3, R, R) in [-1, 1], background -1
    cameras: torch.Tensor       # (N, 16) camera-to-world, row-major

    def __len__(self) -> int:
        return len(self.rows)

    def rgb(self, idx: torch.Tensor | np.ndarray, background: torch.Tensor) -> torch.Tensor:
        """Views composited over `background` (3,) or (B, 3), scaled to [-1, 1]."""
        rgba = self.rgba[torch.as_tensor(idx)]
        bg = background.reshape(-1, 3, 1, 1)
        return (rgba[:, :3] + (1.0 - rgba[:, 3:]) * bg) * 2.0 - 1.0


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.float32) / 255.0


def _area(x: torch.Tensor, size: int) -> torch.Tensor:
    return x if x.shape[-1] == size else F.adaptive_avg_pool2d(x, size)


def _downsample_rgba(rgba: np.ndarray, size: int) -> torch.Tensor:
    t = torch.from_numpy(rgba).permute(2, 0, 1)
    premult = torch.cat([t[:3] * t[3:], t[3:]])
    return _area(premult[None], size)[0]


def _downsample_ccm(ccm: np.ndarray, mask: np.ndarray, size: int) -> torch.Tensor:
    c = torch.from_numpy(ccm).permute(2, 0, 1)[None]
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    cover = _area(m, size)
    mean = _area(c * m, size) / cover.clamp_min(1e-6)
    return torch.where(cover >= 0.5, mean * 2.0 - 1.0, torch.full_like(mean, -1.0))[0]


def view_file(root: Path, row, column: str, index_path: Path | str) -> Path:
    """A file named by a render-index row, confined to the renders folder: a row whose path
    leads outside it (`..`, absolute, a symlink out) is refused, naming the row, unread."""
    return confine(getattr(row, column), root,
                   f"{index_path}: row uid={row.uid} kind={row.kind} set={row.set} "
                   f"view_id={row.view_id}, {column}")


def load_views(renders_root: str | Path, captions_path: str | Path, resolution: int, *,
               kinds: tuple[str, ...] = ("mv", "agp"), splits: tuple[str, ...] = ("train",),
               with_ccm: bool = False) -> ViewTable:
    root = Path(renders_root)
    index_path = root / "index.parquet"
    if not index_path.exists():
        raise TrainingDataError(f"{index_path}: no render index (run the render stage first)")
    if not Path(captions_path).exists():
        raise TrainingDataError(f"{captions_path}: no captions (run the caption stage first)")
    index = pd.read_parquet(index_path)
    captions = pd.read_parquet(captions_path)[["uid", "split", "caption", "original_text"]]
    rows = index.merge(captions, on="uid", how="inner")
    rows = rows[rows["kind"].isin(kinds) & rows["split"].isin(splits)]
    rows = rows.sort_values(["uid", "kind", "set", "view_id"]).reset_index(drop=True)
    if rows.empty:
        raise TrainingDataError(f"no {'/'.join(kinds)} views in split(s) {'/'.join(splits)} under {root}")
    rgba, ccm = [], []
    for r in rows.itertuples():
        image = _png(view_file(root, r, "rgba_path", index_path))
        rgba.append(_downsample_rgba(image, resolution))
        if with_ccm:
            ccm.append(_downsample_ccm(_png(view_file(root, r, "ccm_path", index_path)),
                                       image[..., 3] > 0.5, resolution))
    cameras = torch.tensor(np.stack(rows["c2w"].to_numpy()), dtype=torch.float32)
    return ViewTable(rows, torch.stack(rgba), torch.stack(ccm) if with_ccm else None, cameras)


def view_sets(table: ViewTable, num_views: int) -> np.ndarray:
    """(S, F) row indices of the MVDream sets that have exactly `num_views` views."""
    mv = table.rows[table.rows["kind"] == "mv"]
    sets = [g.index.to_numpy() for _, g in mv.groupby(["uid", "set"], sort=True) if len(g) == num_views]
    if not sets:
        raise TrainingDataError(f"no view sets of {num_views} views (render.mv_views_per_set?)")
    return np.stack(sets)


class TextBank:
    """Every text a run can feed the model, encoded once by the frozen text encoder."""

    def __init__(self, texts: list[str], encode):
        self.texts = sorted(set(texts) | {""})
        self.position = {t: i for i, t in enumerate(self.texts)}
        states, mask = encode(self.texts)
        self.states = states
        self.mask = mask

    def lookup(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        idx = torch.tensor([self.position[t] for t in texts])
        return self.states[idx], None if self.mask is None else self.mask[idx]


def choose_captions(rows: pd.DataFrame, rng: np.random.Generator, original_text_prob: float,
                    dropout: float, suffix: str = "") -> list[str]:
    """Per row: augmented caption or original text (SweetDreamer/MVDream), then dropout to ""."""
    out = []
    for r in rows.itertuples():
        text = (r.original_text if rng.random() < original_text_prob else r.caption) + suffix
        out.append("" if rng.random() < dropout else text)
    return out


def all_texts(rows: pd.DataFrame, suffixes: tuple[str, ...] = ("",)) -> list[str]:
    base = list(rows["caption"]) + list(rows["original_text"])
    return [t + s for t in base for s in suffixes]
