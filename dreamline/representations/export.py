"""Exports of trained representations: meshes (GLB), 3D Gaussians (PLY), turntables, PNGs, CSVs.

Pure functions on numpy arrays; torch is deliberately not imported so the exporters stay usable
from light processes (evaluation, tests) and take CPU tensors through duck typing only.

Every writer builds the whole file in memory first and hands the bytes to
`write_bytes_atomic`, so a run killed mid-export leaves either the old file or the new one,
never a truncated one that a resumed run would mistake for finished work.
"""
from __future__ import annotations

import csv
import importlib.util
import io
from pathlib import Path
from typing import Callable

import numpy as np
import trimesh

from dreamline.atomic import write_bytes_atomic

# Degree-0 real spherical-harmonic constant: 1 / (2 sqrt(pi)).
SH_C0 = 0.28209479177387814
# The INRIA layout stores SH degree 3: 15 rest coefficients per colour channel.
N_SH_REST = 45
GAUSSIAN_PLY_PROPERTIES: tuple[str, ...] = (
    ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2")
    + tuple(f"f_rest_{i}" for i in range(N_SH_REST))
    + ("opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
)


class EmptyMeshError(ValueError):
    """The density field gives no surface at the threshold; callers record it instead of crashing."""


# --------------------------------------------------------------------------- helpers


def _to_numpy(x) -> np.ndarray:
    # Accept CPU torch tensors (even ones that require grad) without importing torch.
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _to_uint8(image) -> np.ndarray:
    image = _to_numpy(image)
    if image.dtype == np.uint8:
        return image
    if np.issubdtype(image.dtype, np.floating):
        return (np.clip(np.nan_to_num(image), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise TypeError(f"expected uint8 or float image in [0, 1], got dtype {image.dtype}")


def _check_image(image: np.ndarray, channels: tuple[int, ...]) -> None:
    if image.ndim != 3 or image.shape[2] not in channels:
        raise ValueError(f"expected an HxWxC image with C in {channels}, got shape {image.shape}")


# --------------------------------------------------------------------------- meshes


def _pad_below_threshold(density: np.ndarray, threshold: float) -> np.ndarray:
    """Surround the grid with one layer of cells below the threshold, so every surface closes.

    Each pad cell mirrors its neighbour inside the grid about the threshold (t - |v - t|): the
    iso-crossing then falls exactly halfway between the two cell centres, i.e. on the box face,
    so caps are flat and lie on [-bound, bound] instead of bulging outside it.
    """
    grid = density.astype(np.float64)
    edge = np.pad(grid, 1, mode="edge")
    margin = max(1e-6, 1e-5 * abs(threshold))  # keeps pad cells strictly below t in float32
    padded = threshold - np.maximum(np.abs(edge - threshold), margin)
    padded[1:-1, 1:-1, 1:-1] = grid
    return padded.astype(np.float32)


def _check_crosses(density: np.ndarray, threshold: float) -> None:
    if not np.all(np.isfinite(density)):
        raise EmptyMeshError(
            f"density has {int(np.sum(~np.isfinite(density)))} non-finite values; "
            f"no surface extracted at threshold {threshold}"
        )
    lo, hi = float(density.min()), float(density.max())
    if not lo < threshold < hi:
        raise EmptyMeshError(
            f"density never crosses threshold {threshold}: min density {lo:.6g}, "
            f"max density {hi:.6g} (field is {'empty' if hi <= threshold else 'full'})"
        )


def _drop_degenerate_faces(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    # Faces whose corners were merged into fewer than three vertices; removing them is a pure
    # edge collapse, so (unlike dropping thin-but-valid triangles) it cannot open holes.
    f = mesh.faces
    keep = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    if not keep.all():
        mesh.update_faces(keep)
        mesh.remove_unreferenced_vertices()
    return mesh


def _vertex_colours(colour_fn: Callable, vertices: np.ndarray) -> np.ndarray:
    rgb = _to_numpy(colour_fn(vertices.astype(np.float32))).astype(np.float64)
    if rgb.shape != (len(vertices), 3):
        raise ValueError(f"colour_fn must return ({len(vertices)}, 3), got {rgb.shape}")
    rgba = np.full((len(vertices), 4), 255, dtype=np.uint8)
    rgba[:, :3] = (np.clip(np.nan_to_num(rgb), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return rgba


def marching_cubes_mesh(
    density: np.ndarray,
    bound: float,
    threshold: float,
    colour_fn: Callable[[np.ndarray], np.ndarray] | None = None,
) -> trimesh.Trimesh:
    """Closed, outward-facing iso-surface {density = threshold} of a grid over [-bound, bound]^3.

    `density[i, j, k]` is sampled at the centre of cell (i, j, k) (x, y, z order), i.e. at
    -bound + (i + 0.5) * 2 * bound / R along each axis. `colour_fn(vertices float32 (M, 3))`
    returns (M, 3) RGB in [0, 1], stored as uint8 RGBA vertex colours.
    Raises EmptyMeshError if the field never crosses the threshold.
    """
    from skimage.measure import marching_cubes  # heavy import, only needed here

    density = _to_numpy(density)
    if density.ndim != 3:
        raise ValueError(f"density must be a 3D grid, got shape {density.shape}")
    threshold = float(threshold)
    _check_crosses(density, threshold)

    cell = 2.0 * float(bound) / np.asarray(density.shape, dtype=np.float64)
    verts, faces, _, _ = marching_cubes(
        _pad_below_threshold(density, threshold), level=threshold, allow_degenerate=False
    )
    # Padded index j is grid index j - 1, whose centre is at -bound + (j - 0.5) * cell.
    vertices = (verts.astype(np.float64) - 0.5) * cell - float(bound)

    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=True)
    mesh = _drop_degenerate_faces(mesh)
    if len(mesh.faces) == 0:
        raise EmptyMeshError(f"only degenerate faces at threshold {threshold}")
    # The padding makes the surface closed, so the sign of its volume tells the winding;
    # this keeps normals outward whatever skimage's gradient_direction convention is.
    if mesh.volume < 0:
        mesh.invert()
    if colour_fn is not None:
        mesh.visual = trimesh.visual.ColorVisuals(
            mesh, vertex_colors=_vertex_colours(colour_fn, mesh.vertices)
        )
    return mesh


def write_glb(mesh: trimesh.Trimesh, path: str | Path) -> Path:
    """Binary glTF; vertex colours travel as COLOR_0."""
    data = mesh.export(file_type="glb")
    return write_bytes_atomic(path, data)


# --------------------------------------------------------------------------- 3D Gaussians


def _gaussian_columns(means, log_scales, quats_wxyz, opacity_logit, rgb) -> dict[str, np.ndarray]:
    means = _to_numpy(means).astype(np.float32).reshape(-1, 3)
    n = len(means)
    shapes = {"log_scales": 3, "quats_wxyz": 4, "rgb": 3}
    arrays = {"log_scales": log_scales, "quats_wxyz": quats_wxyz, "rgb": rgb}
    for name, width in shapes.items():
        arrays[name] = _to_numpy(arrays[name]).astype(np.float64)
        if arrays[name].shape != (n, width):
            raise ValueError(f"{name} must be ({n}, {width}), got {arrays[name].shape}")
    opacity = _to_numpy(opacity_logit).astype(np.float32)
    if opacity.size != n:
        raise ValueError(f"opacity_logit must have {n} values, got shape {opacity.shape}")

    # Viewers compute colour as 0.5 + C0 * f_dc; invert that in float64 for a tight round trip.
    f_dc = (arrays["rgb"] - 0.5) / SH_C0
    columns = {"x": means[:, 0], "y": means[:, 1], "z": means[:, 2]}
    columns.update({f"f_dc_{i}": f_dc[:, i] for i in range(3)})
    columns["opacity"] = opacity.reshape(n)
    columns.update({f"scale_{i}": arrays["log_scales"][:, i] for i in range(3)})
    columns.update({f"rot_{i}": arrays["quats_wxyz"][:, i] for i in range(4)})
    return columns


def write_gaussian_ply(path: str | Path, means, log_scales, quats_wxyz, opacity_logit, rgb) -> Path:
    """3D Gaussians as the INRIA gaussian-splatting `point_cloud.ply` (binary little-endian).

    Properties, all float32: x y z, nx ny nz (zeros), f_dc_0..2, f_rest_0..44 (zeros; SH degree 3
    so viewers that expect 45 rest coefficients load it), opacity (logit), scale_0..2 (log),
    rot_0..3 (quaternion w, x, y, z).
    """
    from plyfile import PlyData, PlyElement

    columns = _gaussian_columns(means, log_scales, quats_wxyz, opacity_logit, rgb)
    n = len(columns["x"])
    vertex = np.zeros(n, dtype=[(name, "<f4") for name in GAUSSIAN_PLY_PROPERTIES])
    for name, values in columns.items():
        vertex[name] = values
    buffer = io.BytesIO()
    PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<").write(buffer)
    return write_bytes_atomic(path, buffer.getvalue())


def read_gaussian_ply(path: str | Path) -> dict[str, np.ndarray]:
    """Inverse of write_gaussian_ply (ignores f_rest, so it also reads lower-degree files)."""
    from plyfile import PlyData

    vertex = PlyData.read(str(path))["vertex"].data

    def stack(names: list[str]) -> np.ndarray:
        return np.stack([np.asarray(vertex[name], dtype=np.float64) for name in names], axis=1)

    f_dc = stack([f"f_dc_{i}" for i in range(3)])
    return {
        "means": stack(["x", "y", "z"]).astype(np.float32),
        "log_scales": stack([f"scale_{i}" for i in range(3)]).astype(np.float32),
        "quats_wxyz": stack([f"rot_{i}" for i in range(4)]).astype(np.float32),
        "opacity_logit": np.asarray(vertex["opacity"], dtype=np.float32),
        "rgb": (0.5 + SH_C0 * f_dc).astype(np.float32),
    }


# --------------------------------------------------------------------------- images and video


def _gif_bytes(frames: list[np.ndarray], fps: int) -> bytes:
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    # GIF delays are in centiseconds; PIL takes milliseconds. loop=0 repeats forever.
    images[0].save(
        buffer, format="GIF", save_all=True, append_images=images[1:],
        duration=max(10, round(1000.0 / fps)), loop=0,
    )
    return buffer.getvalue()


# H.264 turntables: frames are scaled up by a whole factor (nearest neighbour, so every output
# pixel is a copy of a frame pixel) until the shorter side reaches MP4_MIN_SIDE, which keeps
# 4:2:0 chroma from smearing small renders; odd sides are then padded by repeating the edge
# (yuv420p needs even width and height).
MP4_MIN_SIDE = 256
# Everything that could vary between two encodings of the same frames is fixed: one thread,
# bit-exact codec and muxer (no encoder version string, zero creation times), no metadata or
# chapters copied, no audio/subtitle/data streams, the moov atom first (plays while loading).
MP4_ENCODE_FLAGS = (
    "-map", "0:v:0", "-map_metadata", "-1", "-map_chapters", "-1", "-an", "-sn", "-dn",
    "-c:v", "libx264", "-preset", "medium", "-crf", "18", "-pix_fmt", "yuv420p",
    "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709", "-color_range", "tv",
    "-threads", "1", "-flags", "+bitexact", "-fflags", "+bitexact", "-movflags", "+faststart",
)


def mp4_frame_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) of the MP4 frames made from height x width turntable frames."""
    scale = max(1, -(-MP4_MIN_SIDE // min(height, width)))
    h, w = height * scale, width * scale
    return h + h % 2, w + w % 2


def _mp4_frames(frames: list[np.ndarray]) -> np.ndarray:
    video = np.stack(frames)
    h, w = video.shape[1:3]
    out_h, out_w = mp4_frame_size(h, w)
    scale = out_h // h
    if scale > 1:
        video = video.repeat(scale, axis=1).repeat(scale, axis=2)
    return np.pad(video, ((0, 0), (0, out_h - video.shape[1]), (0, out_w - video.shape[2]), (0, 0)), mode="edge")


def _yuv420p_bt709(video: np.ndarray) -> bytes:
    """(N, H, W, 3) uint8 RGB, H and W even, as raw planar 4:2:0 BT.709 limited-range bytes.
    Converted here in float64 elementwise arithmetic (the same bits on every machine) rather
    than by ffmpeg's swscale, whose SIMD paths may differ between CPUs."""
    rgb = video.astype(np.float64) / 255.0
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    cb = (b - y) / 1.8556
    cr = (r - y) / 1.5748
    n, h, w = y.shape

    def half(plane):   # 2x2 mean: chroma at the centre of each block
        return plane.reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4))

    def quantise(plane, offset, scale):
        return np.clip(np.rint(offset + scale * plane), 0, 255).astype(np.uint8)

    planes = (quantise(y, 16.0, 219.0), quantise(half(cb), 128.0, 224.0), quantise(half(cr), 128.0, 224.0))
    # Frame after frame, each its Y, then Cb, then Cr plane.
    return np.concatenate([p.reshape(n, -1) for p in planes], axis=1).tobytes()


def _mp4_bytes(frames: list[np.ndarray], fps: int) -> bytes:
    import subprocess
    import tempfile

    if importlib.util.find_spec("imageio_ffmpeg") is None:
        raise RuntimeError(
            "writing .mp4 needs imageio-ffmpeg (a dreamline dependency: pip install imageio-ffmpeg); "
            "write the turntable as .gif instead"
        )
    import imageio_ffmpeg

    video = _mp4_frames(frames)
    n, h, w = video.shape[:3]
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{w}x{h}", "-framerate", str(fps),
           "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709", "-color_range", "tv",
           "-i", "pipe:0", *MP4_ENCODE_FLAGS, "-f", "mp4"]
    # The mp4 muxer seeks back (sample tables, faststart), so it writes a real file first.
    with tempfile.TemporaryDirectory(prefix="dreamline-mp4-") as tmp:
        out = Path(tmp) / "turntable.mp4"
        done = subprocess.run([*cmd, str(out)], input=_yuv420p_bt709(video), capture_output=True, timeout=600)
        if done.returncode != 0 or not out.is_file():
            raise RuntimeError(f"ffmpeg could not encode the turntable ({n} frames of {w}x{h}, exit "
                               f"{done.returncode}): {done.stderr.decode(errors='replace')[-2000:]}")
        return out.read_bytes()


def write_turntable(frames: list[np.ndarray], path: str | Path, fps: int = 12) -> Path:
    """Frames (HxWx3 uint8, or float in [0, 1]) as a looping .gif, or as an H.264 .mp4
    (yuv420p, `mp4_frame_size`, encoded by imageio-ffmpeg's ffmpeg) whose bytes depend on the
    frames and fps only."""
    if not frames:
        raise ValueError("no frames to write")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    frames = [_to_uint8(frame) for frame in frames]
    for frame in frames:
        _check_image(frame, (3,))
        if frame.shape != frames[0].shape:
            raise ValueError(f"frames differ in shape: {frames[0].shape} vs {frame.shape}")

    suffix = Path(path).suffix.lower()
    if suffix == ".gif":
        data = _gif_bytes(frames, fps)
    elif suffix == ".mp4":
        data = _mp4_bytes(frames, fps)
    else:
        raise ValueError(f"turntable must be .gif or .mp4, got {path}")
    return write_bytes_atomic(path, data)


def write_png(image: np.ndarray, path: str | Path) -> Path:
    """HxWx3 or HxWx4 image, uint8 or float in [0, 1]."""
    from PIL import Image

    image = _to_uint8(image)
    _check_image(image, (3, 4))
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return write_bytes_atomic(path, buffer.getvalue())


def write_loss_curve_csv(rows: list[dict], path: str | Path) -> Path:
    """One row per logged step; columns are the first row's keys (later rows may omit some)."""
    if not rows:
        raise ValueError("no rows to write: the header comes from the first row")
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)  # a key missing from the header raises: better than a silent drop
    return write_bytes_atomic(path, text.getvalue().encode())
