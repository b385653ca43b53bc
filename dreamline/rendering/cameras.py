"""Cameras for the render stage: the one place the camera convention is defined.

Convention (OpenGL / pyrender), used by every module that touches cameras:

* World: right-handed, +Y up, the object's front facing +Z, units are the object's own
  (normalised objects are centred at the origin with longest side 1).
* Camera frame: +X right, +Y up, the camera looks down its -Z. A pose is the
  camera-to-world matrix ``c2w`` (4x4): its columns are the camera's right, up and
  backward axes in world coordinates and its position. ``w2c`` is its inverse.
* Depth is the distance along the viewing axis, ``-z_cam`` (> 0 in front of the camera),
  in world units; it is not the Euclidean distance to the camera centre.
* Image: pixel (row i, column j) covers [j, j+1) x [i, i+1) with its centre at
  (j + 0.5, i + 0.5); u grows to the right, v grows downwards (row order of the arrays).
* Intrinsics ``K`` (pixels): square pixels, ``f = (H / 2) / tan(fov_y / 2)`` where the
  field of view is VERTICAL, principal point at the image centre (W / 2, H / 2). A point
  at camera coordinates (x, y, z), z < 0, lands at
  ``u = cx + f * x / -z`` and ``v = cy - f * y / -z``; i.e. ``K @ [x, -y, -z]`` in the
  OpenCV sense (flip Y and Z to go between the two conventions).
* Orbit angles: azimuth 0 puts the camera on the +Z axis (the object's front); increasing
  azimuth swings it toward +X (counter-clockwise seen from above). Elevation > 0 puts it
  above the XZ plane, looking down.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_UP = np.array([0.0, 1.0, 0.0])


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """c2w for a camera at `eye` looking at `target`, rolled so that `up` points up."""
    eye = np.asarray(eye, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    up = np.asarray(up, dtype=np.float64)
    back = eye - target
    norm = np.linalg.norm(back)
    if norm < 1e-12:
        raise ValueError("look_at: eye and target coincide")
    back /= norm
    right = np.cross(up, back)
    if np.linalg.norm(right) < 1e-8:
        # Looking straight along `up` leaves the roll undefined. Pick the roll that keeps
        # the object's front (+Z) at the bottom of the image when looking down, so that
        # views at the poles stay continuous with nearby front views.
        helper = np.array([0.0, 0.0, -1.0]) if abs(back[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
        right = np.cross(helper, back)
    right /= np.linalg.norm(right)
    cam_up = np.cross(back, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, cam_up, back, eye
    return c2w


def focal_px(fov_deg: float, height: int) -> float:
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg}")
    return 0.5 * height / math.tan(math.radians(fov_deg) / 2.0)


def intrinsics(fov_deg: float, width: int, height: int) -> np.ndarray:
    """3x3 K in pixels for a VERTICAL field of view, principal point at the image centre."""
    f = focal_px(fov_deg, height)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def orbit_c2w(azimuth_deg: float, elevation_deg: float, distance: float,
              target=(0.0, 0.0, 0.0)) -> np.ndarray:
    """c2w of a camera on a sphere of radius `distance` about `target`, looking at it."""
    if distance <= 0.0:
        raise ValueError(f"distance must be positive, got {distance}")
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    offset = distance * np.array([math.cos(el) * math.sin(az), math.sin(el),
                                  math.cos(el) * math.cos(az)])
    target = np.asarray(target, dtype=np.float64)
    return look_at(target + offset, target, _UP)


def framing_distance(fov_deg: float, radius: float, aspect: float = 1.0) -> float:
    """Distance at which a sphere of `radius` about the look-at point just fits the view.

    The sphere is tangent to the narrower of the two view cones, so nothing inside it
    leaves the frame from any viewing direction. `aspect` is width / height.
    """
    if radius <= 0.0:
        raise ValueError(f"radius must be positive, got {radius}")
    half_y = math.radians(fov_deg) / 2.0
    half_x = math.atan(aspect * math.tan(half_y))
    return radius / math.sin(min(half_x, half_y))


@dataclass(frozen=True)
class Camera:
    c2w: np.ndarray
    fov_deg: float
    width: int
    height: int
    # Orbit parameters the pose was made from, kept for prompts and bookkeeping; the
    # geometry is defined by c2w alone.
    azimuth_deg: float = float("nan")
    elevation_deg: float = float("nan")
    distance: float = float("nan")

    def __post_init__(self):
        c2w = np.asarray(self.c2w, dtype=np.float64)
        if c2w.shape != (4, 4):
            raise ValueError(f"c2w must be 4x4, got {c2w.shape}")
        object.__setattr__(self, "c2w", c2w)

    @classmethod
    def orbit(cls, azimuth_deg: float, elevation_deg: float, distance: float,
              fov_deg: float, width: int, height: int | None = None) -> "Camera":
        return cls(orbit_c2w(azimuth_deg, elevation_deg, distance), float(fov_deg), int(width),
                   int(width if height is None else height), float(azimuth_deg),
                   float(elevation_deg), float(distance))

    def resized(self, width: int, height: int | None = None) -> "Camera":
        """The same pose and field of view at another resolution."""
        return Camera(self.c2w, self.fov_deg, int(width), int(width if height is None else height),
                      self.azimuth_deg, self.elevation_deg, self.distance)

    @property
    def K(self) -> np.ndarray:
        return intrinsics(self.fov_deg, self.width, self.height)

    @property
    def w2c(self) -> np.ndarray:
        # Rigid inverse: exact orthonormal transpose rather than a general inversion.
        r, t = self.c2w[:3, :3], self.c2w[:3, 3]
        w2c = np.eye(4)
        w2c[:3, :3] = r.T
        w2c[:3, 3] = -r.T @ t
        return w2c

    @property
    def position(self) -> np.ndarray:
        return self.c2w[:3, 3].copy()

    def flat16(self) -> np.ndarray:
        """The 16 entries of c2w in row-major order (the model's camera conditioning)."""
        return self.c2w.reshape(16).astype(np.float32)


def _uniform(rng: np.random.Generator, lo_hi) -> float:
    lo, hi = float(lo_hi[0]), float(lo_hi[1])
    if hi < lo:
        raise ValueError(f"empty range {lo_hi}")
    return float(rng.uniform(lo, hi)) if hi > lo else lo


def mvdream_view_set(rng: np.random.Generator, radius: float, n_views: int = 4,
                     fov_range=(15.0, 60.0), elev_range=(0.0, 30.0), dist_scale=(0.9, 1.1),
                     resolution: int = 256) -> list[Camera]:
    """MVDream's training views: `n_views` azimuths evenly spaced from a random start,
    sharing one field of view, elevation and distance (a multiple of the framing distance
    of the object's bounding sphere of `radius`)."""
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    fov = _uniform(rng, fov_range)
    elev = _uniform(rng, elev_range)
    dist = framing_distance(fov, radius) * _uniform(rng, dist_scale)
    start = float(rng.uniform(0.0, 360.0))
    return [Camera.orbit((start + k * 360.0 / n_views) % 360.0, elev, dist, fov, resolution)
            for k in range(n_views)]


def agp_views(rng: np.random.Generator, n: int, radius: float, fov: float = 45.0,
              elev_range=(-10.0, 45.0), dist_scale=(0.9, 1.1),
              resolution: int = 256) -> list[Camera]:
    """SweetDreamer's CCM views: independent random azimuth, elevation and distance each."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    base = framing_distance(fov, radius)
    cams = []
    for _ in range(n):
        az = float(rng.uniform(0.0, 360.0))
        el = _uniform(rng, elev_range)
        cams.append(Camera.orbit(az, el, base * _uniform(rng, dist_scale), fov, resolution))
    return cams
