"""Sample grids: many small images in one PNG, row-major, views of a prompt side by side."""
from __future__ import annotations

import numpy as np
import PIL.Image
import torch


def _to_uint8(images) -> np.ndarray:
    """Pipeline outputs (np NHWC / pt NCHW in [0, 1], or PIL images) -> uint8 NHWC."""
    if isinstance(images, (list, tuple)) and images and isinstance(images[0], PIL.Image.Image):
        return np.stack([np.asarray(im.convert("RGB")) for im in images])
    if torch.is_tensor(images):
        images = images.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    images = np.asarray(images)
    if images.ndim == 3:  # (N, H, W): masks or single-channel maps
        images = images[..., None]
    if images.dtype != np.uint8:
        images = (np.clip(images.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return images


def grid_image(images, nrow: int, padding: int = 2, background: int = 255) -> PIL.Image.Image:
    """Tile N images into rows of `nrow` (the last row may be short), `padding` px apart."""
    tiles = _to_uint8(images)
    if len(tiles) == 0:
        raise ValueError("no images to tile")
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    n, h, w, c = tiles.shape
    cols = min(nrow, n)
    rows = -(-n // cols)
    canvas = np.full((rows * (h + padding) + padding, cols * (w + padding) + padding, c),
                     background, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        y = padding + (i // cols) * (h + padding)
        x = padding + (i % cols) * (w + padding)
        canvas[y:y + h, x:x + w] = tile
    return PIL.Image.fromarray(canvas)
