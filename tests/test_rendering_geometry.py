"""Geometry of the render stage's core: the camera convention, and buffers that agree with
it to the pixel (projection, depth, CCM, normals, cross-view warping)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import trimesh
from scipy import ndimage

from dreamline.rendering.cameras import (Camera, agp_views, framing_distance, intrinsics,
                                         look_at, mvdream_view_set, orbit_c2w)
from dreamline.rendering.renderer import ccm_normaliser, render_object, to_canonical
from dreamline.rendering.reprojection import overlap_psnr, project, unproject, warp
from dreamline.sources.procedural import build_object

# 8-bit colour buffer: the CCM comes back rounded to multiples of 1/255.
CCM_TOL = 1.0 / 255.0 + 1e-5


def _unit(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    mesh = mesh.copy()
    mesh.apply_translation(-mesh.bounds.mean(axis=0))
    mesh.apply_scale(1.0 / mesh.extents.max())
    return mesh


def _radius(mesh: trimesh.Trimesh) -> float:
    return float(np.linalg.norm(mesh.vertices, axis=1).max())


@pytest.fixture(scope="module")
def chair() -> trimesh.Trimesh:
    return _unit(build_object("chair", np.random.default_rng(0)).mesh)


@pytest.fixture(scope="module")
def box() -> trimesh.Trimesh:
    # Off-centre and unequal sides, so a mirrored axis or swapped u/v cannot go unnoticed.
    m = trimesh.creation.box(extents=(0.6, 0.4, 0.3))
    m.apply_translation((0.15, -0.1, 0.05))
    return m


def _interior(mask: np.ndarray) -> np.ndarray:
    return ndimage.binary_erosion(mask, iterations=1)


# --- convention -------------------------------------------------------------------------

def test_orbit_convention():
    d = 2.5
    c2w = orbit_c2w(0.0, 0.0, d)
    np.testing.assert_allclose(c2w[:3, 3], [0, 0, d], atol=1e-12)
    np.testing.assert_allclose(-c2w[:3, 2], [0, 0, -1], atol=1e-12)  # looks down -Z
    np.testing.assert_allclose(c2w[:3, 1], [0, 1, 0], atol=1e-12)    # +Y up
    np.testing.assert_allclose(c2w[:3, 0], [1, 0, 0], atol=1e-12)    # +X right

    side = orbit_c2w(90.0, 0.0, d)
    np.testing.assert_allclose(side[:3, 3], [d, 0, 0], atol=1e-12)
    np.testing.assert_allclose(-side[:3, 2], [-1, 0, 0], atol=1e-12)

    high = orbit_c2w(0.0, 30.0, d)
    assert high[1, 3] == pytest.approx(d * 0.5)
    assert np.linalg.norm(high[:3, 3]) == pytest.approx(d)
    for pose in (c2w, side, high, orbit_c2w(123.0, -40.0, 1.7), orbit_c2w(10.0, 90.0, 1.0)):
        r = pose[:3, :3]
        np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0)  # right-handed, no mirror


def test_intrinsics_and_projection_convention():
    cam = Camera.orbit(0.0, 0.0, 3.0, 40.0, 80, 60)
    K = cam.K
    f = 30.0 / math.tan(math.radians(20.0))
    np.testing.assert_allclose(K, [[f, 0, 40], [0, f, 30], [0, 0, 1]])
    np.testing.assert_allclose(intrinsics(40.0, 80, 60), K)
    np.testing.assert_allclose(cam.w2c @ cam.c2w, np.eye(4), atol=1e-12)
    np.testing.assert_array_equal(cam.flat16(), cam.c2w.astype(np.float32).ravel())
    assert cam.flat16()[3] == pytest.approx(cam.c2w[0, 3])  # row-major: translation x

    uv, z = project(np.array([[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 6.0]]), cam)
    np.testing.assert_allclose(uv[0], [40, 30])           # origin at the image centre
    assert uv[1, 0] > 40 and uv[1, 1] == pytest.approx(30)  # +X world is to the right
    assert uv[2, 1] < 30 and uv[2, 0] == pytest.approx(40)  # +Y world is up (smaller v)
    np.testing.assert_allclose(z[:3], 3.0)                 # depth along the axis
    assert z[3] < 0 and np.all(np.isnan(uv[3]))            # behind the camera
    # Top edge of the vertical fov maps to v = 0.
    top = cam.c2w[:3, :3] @ np.array([0, math.tan(math.radians(20.0)), -1.0]) + cam.position
    np.testing.assert_allclose(project(top, cam)[0], [40, 0], atol=1e-9)

    depth = np.full((60, 80), 2.0)
    pts = unproject(depth, cam)
    uv_back, z_back = project(pts, cam)
    u, v = np.meshgrid(np.arange(80) + 0.5, np.arange(60) + 0.5)
    np.testing.assert_allclose(uv_back[..., 0], u, atol=1e-9)
    np.testing.assert_allclose(uv_back[..., 1], v, atol=1e-9)
    np.testing.assert_allclose(z_back, 2.0, atol=1e-12)


def test_look_at_straight_down_is_defined():
    c2w = look_at((0, 2, 0))
    assert np.all(np.isfinite(c2w))
    np.testing.assert_allclose(-c2w[:3, 2], [0, -1, 0], atol=1e-12)


# --- rendered buffers against the cameras ------------------------------------------------

def test_box_corners_land_where_rendered(box):
    # Non-square, so a focal length taken from the wrong side cannot go unnoticed.
    cam = Camera.orbit(30.0, 20.0, framing_distance(40.0, 0.9), 40.0, 112, 80)
    (view,) = render_object(box, [cam])
    assert view.mask.shape == (80, 112)
    corners = trimesh.bounds.corners(box.bounds)
    uv, z = project(corners, cam)

    # The silhouette of a box is the hull of its projected corners: the mask's extreme
    # columns and rows are the pixels holding the extreme corners.
    rows = np.flatnonzero(view.mask.any(axis=1))
    cols = np.flatnonzero(view.mask.any(axis=0))
    assert abs(cols[0] - math.floor(uv[:, 0].min())) <= 1
    assert abs(cols[-1] - math.floor(uv[:, 0].max())) <= 1
    assert abs(rows[0] - math.floor(uv[:, 1].min())) <= 1
    assert abs(rows[-1] - math.floor(uv[:, 1].max())) <= 1

    # The nearest corner is visible: the pixel whose depth shows the point closest to it
    # is the pixel it projects to.
    k = int(np.argmin(z))
    pts = unproject(view.depth, cam)
    dist = np.linalg.norm(np.nan_to_num(pts, nan=1e9) - corners[k], axis=-1)
    i, j = np.unravel_index(np.argmin(dist), dist.shape)
    assert abs(j - math.floor(uv[k, 0])) <= 1 and abs(i - math.floor(uv[k, 1])) <= 1
    assert view.depth[i, j] == pytest.approx(z[k], abs=0.02)

    # The centre of the front (+Z) face: the rendered depth at its pixel is its depth.
    front = np.array([0.15, -0.1, 0.05 + 0.15])
    (fuv,), (zf,) = project(front[None], cam)
    j, i = np.floor(fuv).astype(int)
    assert view.mask[i, j]
    assert view.depth[i, j] == pytest.approx(zf, abs=5e-3)


def test_buffers_are_consistent(chair):
    cams = agp_views(np.random.default_rng(1), 2, _radius(chair), resolution=64)
    for view in render_object(chair, cams):
        m = view.mask
        assert m.any() and not m.all()
        assert view.rgba.dtype == np.uint8 and view.rgba.shape == (64, 64, 4)
        np.testing.assert_array_equal(view.rgba[..., 3], np.where(m, 255, 0))
        assert not view.rgba[~m].any()                       # transparent, nothing baked in
        assert view.rgba[m, :3].max() > 0
        assert view.depth.dtype == np.float32 and np.all(view.depth[m] > 0)
        assert not view.depth[~m].any() and not view.ccm[~m].any() and not view.normal[~m].any()
        np.testing.assert_allclose(np.linalg.norm(view.normal[m], axis=-1), 1.0, atol=1e-5)
        assert view.ccm.min() >= 0.0 and view.ccm.max() <= 1.0
        # Culled back faces: every visible normal faces the camera.
        rays = unproject(view.depth, view.camera) - view.camera.position
        assert np.all(np.einsum("ijk,ijk->ij", rays, view.normal)[m] < 0)


def test_ccm_equals_canonical_coords_of_unprojected_depth(chair, box):
    lo, hi = ccm_normaliser(chair)
    canon = to_canonical(chair.vertices, (lo, hi))
    np.testing.assert_allclose(canon.min(axis=0), 0.0, atol=1e-12)  # anisotropic:
    np.testing.assert_allclose(canon.max(axis=0), 1.0, atol=1e-12)  # every axis fills [0, 1]

    cases = [(chair, c) for c in agp_views(np.random.default_rng(2), 2, _radius(chair),
                                           resolution=80)]
    # Close and wide-angle at a grazing angle: strong perspective, so screen-space affine
    # interpolation would be far off; only perspective-correct interpolation passes.
    cases.append((box, Camera.orbit(70.0, 25.0, 0.8 * framing_distance(60.0, 0.8), 60.0, 80)))
    for mesh, cam in cases:
        (view,) = render_object(mesh, [cam])
        inner = _interior(view.mask)
        assert inner.sum() > 300
        expected = to_canonical(unproject(view.depth, cam), ccm_normaliser(mesh))
        err = np.abs(expected - view.ccm)[inner]
        assert err.max() <= CCM_TOL, f"CCM error {err.max() * 255:.3f}/255"


def test_box_normals_are_face_axes(box):
    cam = Camera.orbit(35.0, 25.0, framing_distance(45.0, 0.9), 45.0, 80)
    (view,) = render_object(box, [cam])
    inner = _interior(view.mask)
    pts = unproject(view.depth, cam)[inner]
    lo, hi = box.bounds
    # Which face each pixel sees: the face plane its 3D point lies on.
    dist = np.concatenate([np.abs(pts - lo), np.abs(pts - hi)], axis=1)
    face = np.argmin(dist, axis=1)
    axes = np.concatenate([-np.eye(3), np.eye(3)])
    expected = axes[face]
    dots = np.einsum("ij,ij->i", view.normal[inner], expected)
    assert dots.min() > 0.99
    seen = set(np.unique(face))
    assert seen == {3, 4, 5}  # +X, +Y, +Z: the faces toward a camera at front-right, above
    for f in seen:
        assert (face == f).sum() > 50


def test_warp_to_neighbour_view(chair):
    d = framing_distance(40.0, _radius(chair))
    dst_cam, src_cam = Camera.orbit(0.0, 20.0, d, 40.0, 96), Camera.orbit(30.0, 20.0, d, 40.0, 96)
    dst, src = render_object(chair, [dst_cam, src_cam])

    same, valid = warp(dst.rgba, dst.depth, dst_cam, dst.depth, dst_cam, depth_tol=1e-4)
    np.testing.assert_array_equal(valid, dst.mask)
    assert overlap_psnr(same, dst.rgba, valid) == math.inf

    results = {}
    for name, cam in (("right", src_cam), ("wrong", Camera.orbit(40.0, 20.0, d, 40.0, 96))):
        out, ok = warp(src.ccm, src.depth, cam, dst.depth, dst_cam, depth_tol=0.01)
        results[name] = (overlap_psnr(out, dst.ccm, ok), ok.sum() / dst.mask.sum())
    psnr, overlap = results["right"]
    # Nearest sampling is off by up to half a pixel; on a unit object 96 px wide that is
    # ~1/80 of a (stretched) CCM axis at worst.
    assert psnr > 38.0 and overlap > 0.8
    wrong_psnr, wrong_overlap = results["wrong"]
    assert wrong_psnr < psnr - 10.0 and wrong_overlap < 0.5 * overlap

    out, ok = warp(src.ccm, src.depth, src_cam, dst.depth, dst_cam, depth_tol=0.01,
                   mode="bilinear")
    assert ok.sum() > 0.5 * dst.mask.sum()
    assert overlap_psnr(out, dst.ccm, ok) > 48.0  # bilinear removes the half-pixel error


# --- samplers -------------------------------------------------------------------------

def test_mvdream_view_set_shares_everything_but_azimuth():
    for seed in range(20):
        cams = mvdream_view_set(np.random.default_rng(seed), radius=0.8, resolution=32)
        assert len(cams) == 4
        az = np.array([c.azimuth_deg for c in cams])
        np.testing.assert_allclose(np.mod(np.diff(az), 360.0), 90.0, atol=1e-9)
        first = cams[0]
        assert 15.0 <= first.fov_deg <= 60.0 and 0.0 <= first.elevation_deg <= 30.0
        base = framing_distance(first.fov_deg, 0.8)
        assert 0.9 * base <= first.distance <= 1.1 * base
        for c in cams:
            assert (c.fov_deg, c.elevation_deg, c.distance) == (
                first.fov_deg, first.elevation_deg, first.distance)
            np.testing.assert_allclose(c.c2w, orbit_c2w(c.azimuth_deg, c.elevation_deg,
                                                        c.distance))
            np.testing.assert_allclose(np.linalg.norm(c.position), c.distance)


def test_agp_views_ranges():
    cams = agp_views(np.random.default_rng(3), 50, radius=0.8)
    assert len(cams) == 50
    base = framing_distance(45.0, 0.8)
    for c in cams:
        assert c.fov_deg == 45.0 and -10.0 <= c.elevation_deg <= 45.0
        assert 0.9 * base <= c.distance <= 1.1 * base
    assert len({round(c.azimuth_deg, 6) for c in cams}) == 50


def test_object_fits_at_framing_distance(chair):
    r = _radius(chair)
    cams = []
    for seed in range(3):
        cams += mvdream_view_set(np.random.default_rng(seed), r, dist_scale=(1.0, 1.0),
                                 resolution=64)
    cams.append(Camera.orbit(45.0, 89.0, framing_distance(15.0, r), 15.0, 64))
    for view in render_object(chair, cams):
        m = view.mask
        assert m.sum() > 100
        assert not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())
    # The check can fail: too close, the chair leaves the frame.
    cam = Camera.orbit(0.0, 10.0, 0.5 * framing_distance(40.0, r), 40.0, 64)
    (close,) = render_object(chair, [cam])
    assert close.mask[0].any() or close.mask[-1].any()
