"""Training-view renderer: per view, lit RGBA, depth, mask, world normals and the CCM.

Camera convention: see dreamline.rendering.cameras (OpenGL, c2w, vertical fov).

Geometry buffers are rasterised, not ray traced (SweetDreamer only needs coarse geometry),
as UNLIT flat colours of copies of the mesh whose vertex colours carry the value:

* CCM: each vertex coloured with its canonical coordinate (p - lo) / (hi - lo), per axis
  (anisotropic, each axis fills [0, 1] for this object, as SweetDreamer does). OpenGL
  interpolates vertex attributes perspective-correctly, i.e. as the barycentric weights
  of the 3D point the pixel centre sees; the canonical coordinate is affine over a
  triangle, so the interpolated colour IS the canonical coordinate of that point. The
  only loss is the 8-bit colour buffer: values come back rounded to multiples of 1/255
  (error <= 0.5/255, the accepted tolerance is 1/255). Vertex colours are uploaded as
  float32, so they add no quantisation of their own.
* Normals: a face-split copy (no shared vertices) whose three corners all carry the
  face's unit normal encoded as (n + 1) / 2; decoded as 2c - 1 and renormalised.

This relies on a renderer without multisampling. pyrender's OSMesa platform draws straight
into a single-sample buffer, so edge pixels are never blended with the background; under
EGL pyrender resolves a 4x multisampled buffer and silhouette CCM values are wrong by up to
0.75 (see shared/PLATFORM.md). ``ViewRenderer`` refuses to run on any platform but OSMesa
unless told otherwise.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import trimesh

from dreamline.rendering.cameras import Camera

# PyOpenGL fixes its platform at first import: the entry points (stages/_common.py,
# scripts/env.sh, the CLI, tests/conftest.py) set PYOPENGL_PLATFORM before pyrender loads.

_AMBIENT = (0.35, 0.35, 0.35)
_LIGHT_INTENSITY = 2.5
_DEFAULT_GREY = (0.7, 0.7, 0.7, 1.0)


@dataclass
class ViewBuffers:
    camera: Camera
    # HxWx4 uint8, lit colour, not premultiplied by a background; alpha = coverage
    # (binary without multisampling), background (0, 0, 0, 0). Material transparency is
    # not carried into alpha.
    rgba: np.ndarray
    depth: np.ndarray   # HxW float32, -z_cam in world units, 0 on background
    mask: np.ndarray    # HxW bool, foreground
    normal: np.ndarray  # HxWx3 float32, world-space unit normals, 0 on background
    ccm: np.ndarray     # HxWx3 float32 in [0, 1], canonical coordinates, 0 on background


def ccm_normaliser(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis (lo, hi) of the mesh's bounding box, the frame the CCM is expressed in."""
    lo, hi = (np.asarray(b, dtype=np.float64) for b in mesh.bounds)
    return lo, hi


def to_canonical(points: np.ndarray, normaliser: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    lo, hi = normaliser
    span = np.asarray(hi, dtype=np.float64) - lo
    # A flat axis (a card) has no extent to stretch; it maps to 0 rather than dividing by 0.
    span = np.where(span > 1e-12, span, 1.0)
    return (np.asarray(points, dtype=np.float64) - lo) / span


def _flat_material():
    import pyrender

    return pyrender.MetallicRoughnessMaterial(baseColorFactor=[1.0, 1.0, 1.0, 1.0])


def _ccm_mesh(mesh: trimesh.Trimesh, normaliser):
    import pyrender

    colours = np.ones((len(mesh.vertices), 4), dtype=np.float32)
    colours[:, :3] = to_canonical(mesh.vertices, normaliser)
    prim = pyrender.Primitive(positions=np.asarray(mesh.vertices, dtype=np.float32),
                              indices=np.asarray(mesh.faces, dtype=np.uint32),
                              color_0=colours, material=_flat_material())
    return pyrender.Mesh([prim])


def _normal_mesh(mesh: trimesh.Trimesh):
    import pyrender

    positions = np.asarray(mesh.vertices, dtype=np.float32)[mesh.faces].reshape(-1, 3)
    colours = np.ones((len(positions), 4), dtype=np.float32)
    colours[:, :3] = np.repeat((np.asarray(mesh.face_normals) + 1.0) / 2.0, 3, axis=0)
    prim = pyrender.Primitive(positions=positions,
                              indices=np.arange(len(positions), dtype=np.uint32).reshape(-1, 3),
                              color_0=colours, material=_flat_material())
    return pyrender.Mesh([prim])


def _lit_mesh(mesh: trimesh.Trimesh):
    import pyrender

    kind = getattr(mesh.visual, "kind", None)
    material = None if kind in ("vertex", "face", "texture") else pyrender.MetallicRoughnessMaterial(
        baseColorFactor=list(_DEFAULT_GREY))
    # Face-split (smooth=False): assets often share vertices across hard edges, and averaged
    # normals would shade boxes like blobs.
    return pyrender.Mesh.from_trimesh(mesh, material=material, smooth=False)


def _clip_planes(mesh_corners: np.ndarray, camera: Camera) -> tuple[float, float]:
    """Near/far planes hugging the mesh's box, for depth-buffer precision."""
    cam = camera.w2c[:3, :3] @ mesh_corners.T + camera.w2c[:3, 3:4]
    z = -cam[2]
    far = float(z.max())
    if far <= 0.0:
        far = 1.0  # the object is behind the camera: any valid planes render nothing
    near = float(z.min())
    near = 0.9 * near if near > 0.0 else 1e-3 * far
    return max(near, 1e-4), far * 1.01 + 1e-4


class ViewRenderer:
    """One OSMesa context reused for every object and view at a fixed resolution."""

    def __init__(self, width: int, height: int | None = None, *, allow_multisample: bool = False):
        platform = os.environ.get("PYOPENGL_PLATFORM", "")
        if platform != "osmesa" and not allow_multisample:
            raise RuntimeError(
                f"PYOPENGL_PLATFORM={platform!r}: CCM/normal buffers are only exact on the "
                "single-sample OSMesa backend; set PYOPENGL_PLATFORM=osmesa before OpenGL is "
                "imported, or pass allow_multisample=True to accept blended silhouettes")
        import pyrender

        self.width = int(width)
        self.height = int(self.width if height is None else height)
        self._renderer = pyrender.OffscreenRenderer(self.width, self.height)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.delete()
            self._renderer = None

    def __enter__(self) -> "ViewRenderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def render(self, mesh: trimesh.Trimesh, cameras: Sequence[Camera],
               normaliser: tuple[np.ndarray, np.ndarray] | None = None,
               double_sided: bool = False) -> list[ViewBuffers]:
        """All buffers for each camera.

        `double_sided` draws back faces too (open surfaces); it applies to every pass so
        coverage agrees between them. A back face seen that way reports its own normal,
        which points away from the camera.
        """
        import pyrender
        from pyrender.constants import RenderFlags

        if self._renderer is None:
            raise RuntimeError("renderer is closed")
        if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
            raise ValueError("render needs a triangle mesh with faces")
        normaliser = ccm_normaliser(mesh) if normaliser is None else normaliser

        lit, ccm_m, nrm_m = _lit_mesh(mesh), _ccm_mesh(mesh, normaliser), _normal_mesh(mesh)
        for prim in lit.primitives:
            # A GLB's own doubleSided flag would make lit coverage differ from the flat passes.
            prim.material.doubleSided = double_sided
        scene = pyrender.Scene(bg_color=[0.0, 0.0, 0.0, 0.0], ambient_light=list(_AMBIENT))
        for m in (lit, ccm_m, nrm_m):
            scene.add(m)
        pcam = pyrender.PerspectiveCamera(yfov=math.radians(45.0), znear=0.1, zfar=10.0,
                                          aspectRatio=self.width / self.height)
        cam_node = scene.add(pcam, pose=np.eye(4))
        # A headlight follows the camera, so every side gets lit the same way.
        scene.add(pyrender.DirectionalLight(color=np.ones(3), intensity=_LIGHT_INTENSITY),
                  parent_node=cam_node)
        corners = trimesh.bounds.corners(mesh.bounds)
        cull = RenderFlags.SKIP_CULL_FACES if double_sided else RenderFlags.NONE

        def only(visible):
            for m in (lit, ccm_m, nrm_m):
                m.is_visible = m is visible

        views = []
        for camera in cameras:
            if (camera.width, camera.height) != (self.width, self.height):
                raise ValueError(f"camera is {camera.width}x{camera.height}, renderer "
                                 f"{self.width}x{self.height}; use Camera.resized")
            pcam.yfov = math.radians(camera.fov_deg)
            pcam.znear, pcam.zfar = _clip_planes(corners, camera)
            scene.set_pose(cam_node, camera.c2w)

            only(lit)
            # On OSMesa pyrender reads the window buffer back as RGB whatever the flags;
            # RGBA matters only on framebuffer platforms, where alpha is then overwritten
            # below anyway.
            rgb, _ = self._renderer.render(scene, flags=RenderFlags.RGBA | cull)
            only(ccm_m)
            ccm_rgb, depth = self._renderer.render(scene, flags=RenderFlags.FLAT | cull)
            only(nrm_m)
            nrm_rgb, _ = self._renderer.render(scene, flags=RenderFlags.FLAT | cull)

            depth = np.ascontiguousarray(depth, dtype=np.float32)
            mask = depth > 0.0
            ccm = ccm_rgb.astype(np.float32) / 255.0
            ccm[~mask] = 0.0
            normal = nrm_rgb.astype(np.float32) * (2.0 / 255.0) - 1.0
            length = np.linalg.norm(normal, axis=-1, keepdims=True)
            normal = np.where(mask[..., None] & (length > 1e-6), normal / np.maximum(length, 1e-6),
                              0.0).astype(np.float32)
            rgba = np.zeros((self.height, self.width, 4), dtype=np.uint8)
            rgba[..., :3] = rgb[..., :3]
            # Single-sample rasterisation: coverage is all or nothing, so it is the mask.
            rgba[..., 3] = np.where(mask, 255, 0)
            views.append(ViewBuffers(camera=camera, rgba=rgba,
                                     depth=depth, mask=mask, normal=normal, ccm=ccm))
        return views


def render_object(mesh: trimesh.Trimesh, cameras: Sequence[Camera], resolution: int | None = None,
                  normaliser: tuple[np.ndarray, np.ndarray] | None = None,
                  double_sided: bool = False) -> list[ViewBuffers]:
    """Render every buffer for each camera with one offscreen renderer.

    `resolution` (square) overrides the cameras' own size; without it all cameras must
    share one size.
    """
    cameras = list(cameras)
    if not cameras:
        return []
    if resolution is not None:
        cameras = [c.resized(resolution) for c in cameras]
    sizes = {(c.width, c.height) for c in cameras}
    if len(sizes) != 1:
        raise ValueError(f"cameras have different sizes {sorted(sizes)}; pass resolution")
    (width, height), = sizes
    with ViewRenderer(width, height) as renderer:
        return renderer.render(mesh, cameras, normaliser=normaliser, double_sided=double_sided)
