"""Torch datasets over the render index, joined with captions.

`MultiViewSets` serves MVDream training items: the F views of one view set together, with
their 16-number cameras; `CCMViews` serves SweetDreamer AGP items: one CCM view with its
camera and mask. The background colour is chosen here, at load time (renders keep alpha),
and captions switch at random between the augmented caption and the original text, as
SweetDreamer does.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from dreamline.paths import confine


def _read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.float32) / 255.0


def _join(index: pd.DataFrame, captions: pd.DataFrame, split: str | None) -> pd.DataFrame:
    cols = captions[["uid", "split", "caption", "original_text"]]
    df = index.merge(cols, on="uid", how="inner")
    return df[df["split"] == split] if split else df


class _Base(Dataset):
    def __init__(self, renders_root: str | Path, captions_path: str | Path, split: str | None,
                 background: str = "white", original_text_prob: float = 0.3, suffix: str = "",
                 seed: int = 0):
        if background not in ("white", "black", "random"):
            raise ValueError(f"background must be white, black or random, got {background!r}")
        if not 0.0 <= original_text_prob <= 1.0:
            raise ValueError("original_text_prob must be in [0, 1]")
        self.root = Path(renders_root)
        self.index_path = self.root / "index.parquet"
        index = pd.read_parquet(self.index_path)
        self.views = _join(index, pd.read_parquet(captions_path), split)
        # Every file a row names must lie in the renders folder: refuse a crafted row now,
        # naming it, rather than read outside when an item is drawn.
        for r in self.views.itertuples():
            for column in ("rgba_path", "ccm_path"):
                if hasattr(r, column):
                    self._file(r, column)
        self.background = background
        self.original_text_prob = original_text_prob
        self.suffix = suffix
        self.seed = seed

    def _file(self, row, column: str) -> Path:
        value = row[column] if isinstance(row, pd.Series) else getattr(row, column)
        uid = row["uid"] if isinstance(row, pd.Series) else row.uid
        view = row["view_id"] if isinstance(row, pd.Series) else row.view_id
        return confine(value, self.root, f"{self.index_path}: row uid={uid} view_id={view}, {column}")

    def _rng(self, i: int) -> np.random.Generator:
        # Per-item generator: the same item gives the same background and caption choice
        # for a given seed, whichever worker loads it.
        return np.random.default_rng([self.seed, i])

    def _caption(self, row, rng) -> str:
        text = row.original_text if rng.random() < self.original_text_prob else row.caption
        return text + self.suffix

    def _bg(self, rng) -> np.ndarray:
        if self.background == "random":
            return rng.random(3).astype(np.float32)
        return np.full(3, 1.0 if self.background == "white" else 0.0, np.float32)


class MultiViewSets(_Base):
    """Items: {"images": (F,3,H,W) in [-1,1], "cameras": (F,16), "caption", "uid"}."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        mv = self.views[self.views["kind"] == "mv"].sort_values(["uid", "set", "view_id"])
        self.sets = [g for _, g in mv.groupby(["uid", "set"], sort=True)]

    def __len__(self) -> int:
        return len(self.sets)

    def __getitem__(self, i: int) -> dict:
        views = self.sets[i]
        rng = self._rng(i)
        bg = self._bg(rng)
        images = []
        for r in views.itertuples():
            rgba = _read_png(self._file(r, "rgba_path"))
            rgb = rgba[..., :3] * rgba[..., 3:] + bg * (1.0 - rgba[..., 3:])
            images.append(torch.from_numpy(rgb).permute(2, 0, 1) * 2.0 - 1.0)
        cams = torch.tensor(np.stack(views["c2w"].to_numpy()), dtype=torch.float32)
        first = next(views.itertuples())
        return {"images": torch.stack(images), "cameras": cams,
                "caption": self._caption(first, rng), "uid": first.uid}


class CCMViews(_Base):
    """Items: {"ccm": (3,H,W) in [-1,1], "mask": (H,W) bool, "camera": (16,), "caption", "uid"}.

    Background pixels hold CCM 0 (-1 after scaling), as SweetDreamer's black background;
    the mask says which pixels are object."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.rows = self.views[self.views["kind"] == "agp"].sort_values(["uid", "view_id"]).reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        r = self.rows.iloc[i]
        ccm = _read_png(self._file(r, "ccm_path"))
        mask = _read_png(self._file(r, "rgba_path"))[..., 3] > 0.5
        ccm_t = torch.from_numpy(ccm).permute(2, 0, 1) * 2.0 - 1.0
        return {"ccm": ccm_t, "mask": torch.from_numpy(mask), "camera": torch.tensor(r["c2w"], dtype=torch.float32),
                "caption": self._caption(r, self._rng(i)), "uid": r["uid"]}
