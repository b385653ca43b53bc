"""Textureless views of real renders are shaded as distilled assets' geo renders are: a sphere's
normal map, written as the render stage writes it, comes out as the representations' own
`shade(..., "textureless")` gives it under the evaluation headlight."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dreamline.evaluation.textureless import AMBIENT, headlight_shading, ray_directions, textureless_views
from dreamline.rendering.cameras import Camera
from dreamline.representations.base import Cameras, Lighting, shade

RADIUS, FOV, SIZE = 0.5, 40.0, 48


def sphere_view(azimuth: float, elevation: float):
    """(camera, hit points HxWx3 (NaN off the sphere), world normals) of a ray-traced sphere."""
    cam = Camera.orbit(azimuth, elevation, 1.8, FOV, SIZE)
    d = ray_directions(cam.c2w, FOV, SIZE, SIZE)
    o = cam.position
    b = d @ o
    disc = b * b - (o @ o - RADIUS ** 2)
    t = -b - np.sqrt(np.where(disc > 0, disc, np.nan))
    points = o + t[..., None] * d
    return cam, points, points / RADIUS


def write_view(root, uid: str, cam: Camera, normals: np.ndarray) -> dict:
    """The render stage's files for one view: normal PNG as (n + 1) / 2, RGBA with coverage."""
    hit = np.isfinite(normals[..., 0])
    folder = root / "objects" / uid
    folder.mkdir(parents=True, exist_ok=True)
    n8 = np.where(hit[..., None], np.round((np.nan_to_num(normals) + 1.0) / 2.0 * 255.0), 0).astype(np.uint8)
    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 200, hit * 255
    Image.fromarray(n8).save(folder / "v_normal.png")
    Image.fromarray(rgba).save(folder / "v_rgba.png")
    return {"uid": uid, "view_id": "v", "kind": "mv", "set": 0, "normal_path": f"objects/{uid}/v_normal.png",
            "rgba_path": f"objects/{uid}/v_rgba.png", "c2w": cam.c2w.reshape(16), "fov_deg": FOV}


@pytest.mark.parametrize("azimuth,elevation", [(0.0, 0.0), (135.0, 30.0)])
def test_real_view_shading_matches_the_assets_textureless_shading(tmp_path, azimuth, elevation):
    cam, points, normals = sphere_view(azimuth, elevation)
    hit = np.isfinite(points[..., 0])
    rows = pd.DataFrame([write_view(tmp_path, "sphere", cam, normals)])
    grey = textureless_views(tmp_path, rows, SIZE)[0]
    assert grey.shape == (3, SIZE, SIZE) and torch.equal(grey[0], grey[2])
    assert torch.all(grey[0][torch.from_numpy(~hit)] == 1.0)              # white background

    # What render_asset's "textureless" mode gives the same surface: the light at the camera.
    cams = Cameras.from_numpy(cam.c2w[None], FOV, SIZE)
    light = Lighting(cams.positions, ambient=AMBIENT, diffuse=1.0 - AMBIENT)
    p = torch.from_numpy(np.nan_to_num(points)).float()[None]
    n = torch.from_numpy(np.nan_to_num(normals)).float()[None]
    expected = shade(torch.zeros_like(p), n, p, light, "textureless")[0, ..., 0].numpy()
    # 8-bit normals: a few thousandths of error in the shade.
    np.testing.assert_allclose(grey[0].numpy()[hit], expected[hit], atol=0.02)
    assert expected[hit].min() < 0.6 and expected[hit].max() > 0.99          # the shading varies


def test_headlight_shading_limits():
    cam = Camera.orbit(30.0, 20.0, 2.0, FOV, 8)
    d = ray_directions(cam.c2w, FOV, 8, 8)
    assert np.allclose(np.linalg.norm(d, axis=-1), 1.0)
    assert np.allclose(headlight_shading(-d, cam.c2w, FOV), 1.0, atol=1e-6)      # facing the light
    assert np.allclose(headlight_shading(d, cam.c2w, FOV), AMBIENT)              # facing away
    side = np.cross(d, np.array([0.0, 1.0, 0.0]))
    assert np.allclose(headlight_shading(side, cam.c2w, FOV, ambient=0.2), 0.2, atol=1e-6)   # grazing


def test_downsampling_averages_coverage_over_white(tmp_path):
    """A view at a higher resolution than asked is area-averaged with the shade premultiplied by
    coverage: a half-covered output pixel is half way between its shade and white."""
    cam, _, normals = sphere_view(0.0, 0.0)
    rows = pd.DataFrame([write_view(tmp_path, "sphere", cam, normals)])
    full = textureless_views(tmp_path, rows, SIZE)[0, 0]
    half = textureless_views(tmp_path, rows, SIZE // 2)[0, 0]
    alpha = torch.from_numpy(np.isfinite(normals[..., 0]).astype(np.float32))
    shade_full = torch.where(alpha > 0, full, torch.zeros_like(full))
    expected = (torch.nn.functional.avg_pool2d((shade_full * alpha)[None, None], 2)
                + 1.0 - torch.nn.functional.avg_pool2d(alpha[None, None], 2))[0, 0]
    torch.testing.assert_close(half, expected, atol=1e-5, rtol=0)
