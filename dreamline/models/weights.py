"""Model folders load safetensors weights only.

A model folder may come from anywhere (a download, a colleague, a DVC remote). Weights in
pickle formats (`pytorch_model.bin`, `diffusion_pytorch_model.bin`, `*.pt`, `*.ckpt`) can
run code when loaded, so a folder whose weights exist only in those formats is refused
with a message before diffusers / transformers see it, and every loader is asked for
`use_safetensors=True` so that it never falls back to a pickle beside a safetensors file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SAFE = {"use_safetensors": True}


class UnsafeWeightsError(ValueError):
    """A model folder whose weights are only in a format that can run code on load."""


def require_safetensors(folder: str | Path, key: str | None = None) -> Path:
    """Raise UnsafeWeightsError when some component of `folder` (the folder itself or a
    subfolder, as diffusers lays out pipelines) has pickle weights and no safetensors."""
    folder = Path(folder)
    where = f"{key}: " if key else ""
    dirs = [folder, *sorted(p for p in folder.iterdir() if p.is_dir())] if folder.is_dir() else []
    for d in dirs:
        files = [f for f in d.iterdir() if f.is_file()]
        pickles = sorted(f.name for f in files if f.suffix.lower() in PICKLE_SUFFIXES)
        if pickles and not any(f.suffix == ".safetensors" for f in files):
            raise UnsafeWeightsError(
                f"{where}{d}: weights only as {', '.join(pickles)} (pickle formats, which can run code "
                f"when loaded); dreamline loads safetensors weights only. Convert them once where you "
                f"trust the file (e.g. load and `save_pretrained(..., safe_serialization=True)`), or "
                f"download the model's .safetensors files")
    return folder


def load_pretrained(cls, folder: str | Path, key: str | None = None, **kwargs: Any):
    """`cls.from_pretrained(folder, use_safetensors=True, **kwargs)` after the check above."""
    require_safetensors(folder, key)
    return cls.from_pretrained(str(folder), **SAFE, **kwargs)
