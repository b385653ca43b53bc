"""Textureless (geo) versions of the render stage's views, shaded as distilled assets are.

The evaluate stage scores an asset's shape by rendering it with white albedo under a
headlight (`render_asset`, shading "textureless": ambient + (1 - ambient) * max(0, n . l),
the light at the camera) and ranking those renders against the captions. The same shading
applied to a real object's world normals gives what its shape alone looks like, which is
used twice:
* the evaluator trains on these views besides the colour ones (params
  `evaluator.textureless_views`), so it can read a shape without its colour: trained on
  colour alone it ranks every pale, colourless render among the white objects' captions;
* the evaluate stage's geo ceiling row: the real test objects' own textureless renders.

With the light at the camera, the direction to the light at a pixel is minus that pixel's
ray direction whatever the depth, so normals, intrinsics and pose are all it needs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from dreamline.rendering.cameras import intrinsics
from dreamline.rendering.reprojection import pixel_centres

# fixed_views' headlight (dreamline.distill.sampling), which render_asset lights assets with.
AMBIENT = 0.3


def ray_directions(c2w: np.ndarray, fov_deg: float, width: int, height: int) -> np.ndarray:
    """HxWx3 world-space unit directions from the camera through each pixel centre
    (dreamline.rendering.cameras' conventions: the camera looks down -z, v points down)."""
    K = intrinsics(fov_deg, width, height)
    u, v = pixel_centres(width, height)
    d = np.stack([(u - K[0, 2]) / K[0, 0], -(v - K[1, 2]) / K[1, 1], -np.ones_like(u)], axis=-1)
    d = d @ np.asarray(c2w, dtype=np.float64)[:3, :3].T
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


def headlight_shading(normal: np.ndarray, c2w: np.ndarray, fov_deg: float, ambient: float = AMBIENT) -> np.ndarray:
    """HxW grey level of white albedo under a light at the camera: ambient + (1 - ambient) *
    max(0, n . -d). `normal`: HxWx3 world normals (renormalised here; zero where empty)."""
    h, w = normal.shape[:2]
    n = normal / np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-6)
    lambert = np.clip((n * -ray_directions(c2w, fov_deg, w, h)).sum(-1), 0.0, 1.0)
    return (ambient + (1.0 - ambient) * lambert).astype(np.float32)


def textureless_views(root: Path, rows: pd.DataFrame, resolution: int, ambient: float = AMBIENT,
                      index_path: Path | str | None = None) -> torch.Tensor:
    """(N, 3, R, R) in [0, 1] over white: each row's view (a render-index row: normal_path,
    rgba_path, c2w, fov_deg) shaded textureless at the render's resolution, then area-averaged
    to `resolution` with the shade premultiplied by coverage, as the colour views are."""
    from dreamline.training.data import view_file

    root = Path(root)
    index_path = index_path or root / "index.parquet"
    out = []
    for r in rows.itertuples():
        normal = np.asarray(Image.open(view_file(root, r, "normal_path", index_path)), dtype=np.float32)
        alpha = np.asarray(Image.open(view_file(root, r, "rgba_path", index_path)), dtype=np.float32)[..., 3] / 255.0
        shade = headlight_shading(normal[..., :3] * (2.0 / 255.0) - 1.0,
                                  np.asarray(r.c2w, dtype=np.float64).reshape(4, 4), float(r.fov_deg), ambient)
        premult = torch.from_numpy(np.stack([shade * alpha, alpha]))[None]
        if premult.shape[-1] != resolution:
            premult = F.adaptive_avg_pool2d(premult, resolution)
        grey = premult[0, 0] + (1.0 - premult[0, 1])
        out.append(grey.expand(3, -1, -1))
    return torch.stack(out).contiguous()
