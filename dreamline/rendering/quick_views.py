"""Small offscreen previews of a normalised GLB, for captioners that look at the object.

Normalised meshes are centred at the origin with +Y up and their front facing +Z, so a
camera orbit around the origin at a fixed elevation sees every object the same way; azimuth 0
is the front view. This is a preview renderer (flat shading, one headlight, no shadows), not
the training-view renderer.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

# PyOpenGL picks its platform once, at first import: the entry points set
# PYOPENGL_PLATFORM (osmesa on headless machines) before anything pulls OpenGL in.
from dreamline.rendering.cameras import orbit_c2w

YFOV_DEG = 40.0
# Default camera distance for a unit-size object (longest side 1) when no mesh is at hand.
DEFAULT_DISTANCE = 2.0
_MARGIN = 1.05  # keeps silhouettes off the image border
_AMBIENT = (0.35, 0.35, 0.35)
_LIGHT_INTENSITY = 2.5


def orbit_cameras(n_views: int, elevation_deg: float, distance: float = DEFAULT_DISTANCE) -> list[np.ndarray]:
    """Poses on a circle around the origin at azimuths 0, 360/n, ...

    Azimuth 0 puts the camera on the +Z axis (the object's front); increasing azimuth turns
    the camera towards +X, i.e. counter-clockwise seen from above (+Y).
    """
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    return [orbit_c2w(360.0 * k / n_views, elevation_deg, distance) for k in range(n_views)]


def _load_scene(glb_path: Path):
    """(pyrender scene with the meshes placed, radius of the bounding sphere about the origin)."""
    import pyrender
    import trimesh

    tm = trimesh.load(str(glb_path), force="scene")
    scene = pyrender.Scene(bg_color=[1.0, 1.0, 1.0, 1.0], ambient_light=list(_AMBIENT))
    radius = 0.0
    for node in tm.graph.nodes_geometry:
        pose, geom_name = tm.graph[node]
        geom = tm.geometry[geom_name]
        # Point clouds and paths have no surface to shade; normalised assets are meshes.
        if not isinstance(geom, trimesh.Trimesh) or len(geom.faces) == 0:
            continue
        # Flat shading: normalised GLBs often share vertices across hard edges, and
        # averaged normals would round boxes into blobs.
        scene.add(pyrender.Mesh.from_trimesh(geom, smooth=False), pose=pose)
        pts = trimesh.transform_points(geom.vertices, pose)
        radius = max(radius, float(np.linalg.norm(pts, axis=1).max()))
    if radius == 0.0:
        raise ValueError(f"{glb_path}: no triangle mesh to render")
    return scene, radius


def render_views(glb_path, n_views: int, resolution: int, elevation_deg: float,
                 distance: float | None = None) -> list[np.ndarray]:
    """Render `n_views` orbit views of a GLB as HxWx3 uint8 RGB on a white background.

    Without `distance`, the camera backs off just far enough for the bounding sphere about
    the origin to fit the field of view, so thin objects still fill the frame.
    """
    import pyrender

    glb_path = Path(glb_path)
    if not glb_path.is_file():
        raise FileNotFoundError(f"mesh not found: {glb_path}")
    scene, radius = _load_scene(glb_path)
    half_fov = math.radians(YFOV_DEG) / 2.0
    if distance is None:
        distance = _MARGIN * radius / math.sin(half_fov)
    # Tight clip planes keep depth precision; a caller-given distance may sit inside the object.
    znear = max(1e-3, 0.5 * (distance - radius))
    camera = pyrender.PerspectiveCamera(yfov=math.radians(YFOV_DEG), aspectRatio=1.0,
                                        znear=znear, zfar=distance + radius + 1.0)
    poses = orbit_cameras(n_views, elevation_deg, distance)
    cam_node = scene.add(camera, pose=poses[0])
    # A headlight parented to the camera lights whichever side is being viewed.
    scene.add(pyrender.DirectionalLight(color=np.ones(3), intensity=_LIGHT_INTENSITY),
              parent_node=cam_node)

    renderer = pyrender.OffscreenRenderer(resolution, resolution)
    try:
        views = []
        for pose in poses:
            scene.set_pose(cam_node, pose)
            color, _ = renderer.render(scene)
            views.append(np.ascontiguousarray(color[..., :3], dtype=np.uint8))
        return views
    finally:
        renderer.delete()
