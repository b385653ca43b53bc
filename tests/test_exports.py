"""Exporters: marching-cubes meshes, GLB, Gaussian PLY, turntables, PNG/CSV, atomic writes."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import trimesh
from PIL import Image
from plyfile import PlyData

from dreamline.representations.export import (
    GAUSSIAN_PLY_PROPERTIES,
    SH_C0,
    EmptyMeshError,
    marching_cubes_mesh,
    mp4_frame_size,
    read_gaussian_ply,
    write_gaussian_ply,
    write_glb,
    write_loss_curve_csv,
    write_png,
    write_turntable,
)

R, BOUND, RADIUS = 32, 0.6, 0.3
CELL = 2 * BOUND / R
RED, BLUE = np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0])


def cell_centres(res: int = R, bound: float = BOUND) -> np.ndarray:
    """(res, res, res, 3) world positions of the cell centres, indexed [x, y, z]."""
    c = -bound + (np.arange(res) + 0.5) * (2 * bound / res)
    return np.stack(np.meshgrid(c, c, c, indexing="ij"), axis=-1)


def sphere_density(radius: float = RADIUS) -> np.ndarray:
    return 20.0 * (radius - np.linalg.norm(cell_centres(), axis=-1))


def colour_by_x_sign(vertices: np.ndarray) -> np.ndarray:
    return np.where(vertices[:, :1] > 0, RED, BLUE)


@pytest.fixture(scope="module")
def sphere() -> trimesh.Trimesh:
    return marching_cubes_mesh(sphere_density(), BOUND, 0.0, colour_fn=colour_by_x_sign)


def assert_no_temp_files(folder) -> None:
    assert not [p.name for p in folder.rglob("*") if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- meshes


def test_sphere_mesh_geometry(sphere):
    radii = np.linalg.norm(sphere.vertices, axis=1)
    assert np.all(np.abs(radii - RADIUS) < CELL / 2)
    assert sphere.is_watertight
    outward = np.einsum("ij,ij->i", sphere.vertex_normals, sphere.vertices)
    assert outward.mean() > 0
    assert sphere.volume > 0
    lo, hi = sphere.bounds
    assert np.all(lo >= -RADIUS - CELL) and np.all(hi <= RADIUS + CELL)
    # the sphere is near its analytic volume: vertices land where they should, not merely near
    assert sphere.volume == pytest.approx(4 / 3 * np.pi * RADIUS**3, rel=0.03)


def test_sphere_vertex_colours(sphere):
    colours = np.asarray(sphere.visual.vertex_colors)
    assert colours.dtype == np.uint8 and colours.shape == (len(sphere.vertices), 4)
    expected = np.where(sphere.vertices[:, :1] > 0, [255, 0, 0], [0, 0, 255])
    np.testing.assert_array_equal(colours[:, :3], expected)
    assert np.all(colours[:, 3] == 255)


def test_vertices_map_exactly_to_world_coordinates():
    # A plane x = x0 lying between two cell centres: marching cubes interpolates linearly,
    # so a density linear in x puts every vertex exactly on the plane.
    x0 = 0.1
    density = x0 - cell_centres()[..., 0]
    mesh = marching_cubes_mesh(density, BOUND, 0.0)
    on_plane = np.abs(mesh.vertices[:, 0] - x0) < 1e-5
    caps = np.isclose(np.abs(mesh.vertices), BOUND, atol=1e-5).any(axis=1)
    assert on_plane.sum() > 0 and np.all(on_plane | caps)


def test_glb_round_trip(sphere, tmp_path):
    path = write_glb(sphere, tmp_path / "mesh.glb")
    assert path == tmp_path / "mesh.glb" and path.read_bytes()[:4] == b"glTF"
    loaded = trimesh.load(path, force="mesh", process=False)
    assert len(loaded.vertices) == len(sphere.vertices)
    np.testing.assert_allclose(loaded.bounds, sphere.bounds, atol=1e-6)
    assert loaded.visual.kind == "vertex"
    np.testing.assert_array_equal(np.asarray(loaded.visual.vertex_colors), sphere.visual.vertex_colors)
    assert_no_temp_files(tmp_path)


def test_boundary_touching_density_is_closed():
    # A box filling everything but the top of the grid in x, and a sphere sticking out of a face.
    cube = 1.0 - cell_centres()[..., 0]            # dense wherever x < 1, i.e. the whole grid
    cube[-1] = -1.0                                # ... except the last slab, so it crosses
    poking = 20.0 * (0.3 - np.linalg.norm(cell_centres() - [0.5, 0.0, 0.0], axis=-1))
    for density in (cube, poking):
        mesh = marching_cubes_mesh(density, BOUND, 0.0)
        assert mesh.is_watertight and mesh.volume > 0
        # caps lie on the box faces, never outside the box
        assert np.all(np.abs(mesh.vertices) <= BOUND + 1e-6)
    assert np.isclose(mesh.vertices[:, 0].max(), BOUND, atol=1e-6)


@pytest.mark.parametrize("fill", [-1.0, 1.0])
def test_field_without_crossing_raises(fill):
    with pytest.raises(EmptyMeshError, match=r"threshold 0\.5") as info:
        marching_cubes_mesh(np.full((8, 8, 8), fill), 1.0, 0.5)
    assert isinstance(info.value, ValueError)
    assert "max density" in str(info.value) and "min density" in str(info.value)


def test_non_finite_field_raises():
    density = sphere_density()
    density[0, 0, 0] = np.nan
    with pytest.raises(EmptyMeshError, match="non-finite"):
        marching_cubes_mesh(density, BOUND, 0.0)


# --------------------------------------------------------------------------- Gaussians


@pytest.fixture
def gaussians() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    n = 50
    quats = rng.normal(size=(n, 4))
    return {
        "means": rng.normal(size=(n, 3)).astype(np.float32),
        "log_scales": rng.normal(-3, 1, size=(n, 3)).astype(np.float32),
        "quats_wxyz": (quats / np.linalg.norm(quats, axis=1, keepdims=True)).astype(np.float32),
        "opacity_logit": rng.normal(size=n).astype(np.float32),
        "rgb": rng.uniform(size=(n, 3)).astype(np.float32),
    }


def test_gaussian_ply_round_trip(gaussians, tmp_path):
    path = write_gaussian_ply(tmp_path / "point_cloud.ply", **gaussians)
    back = read_gaussian_ply(path)
    assert set(back) == set(gaussians)
    for name in ("means", "log_scales", "quats_wxyz", "opacity_logit"):
        assert back[name].dtype == np.float32
        np.testing.assert_array_equal(back[name], gaussians[name])
    np.testing.assert_allclose(back["rgb"], gaussians["rgb"], atol=1e-6)
    assert_no_temp_files(tmp_path)


def test_gaussian_ply_layout(gaussians, tmp_path):
    path = write_gaussian_ply(tmp_path / "point_cloud.ply", **gaussians)
    header = path.read_bytes().split(b"end_header\n")[0].decode("ascii").splitlines()
    assert header[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 50"]
    properties = [line.split() for line in header if line.startswith("property")]
    assert [p[2] for p in properties] == list(GAUSSIAN_PLY_PROPERTIES)
    assert len(properties) == 62 and all(p[1] == "float" for p in properties)
    assert GAUSSIAN_PLY_PROPERTIES[:9] == ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2")
    assert GAUSSIAN_PLY_PROPERTIES[9] == "f_rest_0" and GAUSSIAN_PLY_PROPERTIES[53] == "f_rest_44"
    assert GAUSSIAN_PLY_PROPERTIES[54:] == (
        "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")

    vertex = PlyData.read(str(path))["vertex"]
    assert vertex.count == 50
    for name in ("nx", "ny", "nz", "f_rest_0", "f_rest_44"):
        assert np.all(vertex[name] == 0)
    # what a viewer does with the DC coefficients
    f_dc = np.stack([vertex[f"f_dc_{i}"] for i in range(3)], axis=1)
    np.testing.assert_allclose(0.5 + SH_C0 * f_dc, gaussians["rgb"], atol=1e-6)
    np.testing.assert_array_equal(vertex["rot_0"], gaussians["quats_wxyz"][:, 0])
    np.testing.assert_array_equal(vertex["opacity"], gaussians["opacity_logit"])


def test_gaussian_ply_rejects_bad_shapes(gaussians, tmp_path):
    gaussians["quats_wxyz"] = gaussians["quats_wxyz"][:, :3]
    with pytest.raises(ValueError, match="quats_wxyz"):
        write_gaussian_ply(tmp_path / "bad.ply", **gaussians)
    assert not (tmp_path / "bad.ply").exists()


# --------------------------------------------------------------------------- images


def test_gif_turntable(tmp_path):
    frames = [np.full((24, 32, 3), 40 * i, dtype=np.uint8) for i in range(5)]
    path = write_turntable(frames, tmp_path / "turntable.gif", fps=10)
    with Image.open(path) as gif:
        assert gif.n_frames == 5
        assert gif.size == (32, 24)
        assert gif.info["duration"] == 100 and gif.info["loop"] == 0
    assert_no_temp_files(tmp_path)


def test_turntable_rejects_other_formats(tmp_path):
    frames = [np.zeros((8, 8, 3), dtype=np.uint8)]
    with pytest.raises(ValueError, match=".gif or .mp4"):
        write_turntable(frames, tmp_path / "turntable.avi")


def turntable_frames(h: int, w: int, n: int = 6) -> list[np.ndarray]:
    """A red square turning into view over white, plus a few noisy pixels in a corner."""
    rng = np.random.default_rng(3)
    frames = []
    for i in range(n):
        f = np.full((h, w, 3), 255, dtype=np.uint8)
        f[h // 4: 3 * h // 4, (i * w) // (2 * n): (i * w) // (2 * n) + w // 2] = (200, 30, 30)
        f[:2, :2] = rng.integers(0, 256, (2, 2, 3))
        frames.append(f)
    return frames


def decode_mp4(path):
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    return meta, [np.frombuffer(f, dtype=np.uint8).reshape(h, w, 3) for f in reader]


def test_mp4_turntable_is_a_pure_function_of_the_frames(tmp_path):
    frames = turntable_frames(64, 64)
    a = write_turntable(frames, tmp_path / "a" / "turntable.mp4", fps=12)
    b = write_turntable(frames, tmp_path / "b" / "turntable.mp4", fps=12)
    data = a.read_bytes()
    assert data == b.read_bytes() and data[4:8] == b"ftyp"
    assert b"Lavf" not in data                      # bit-exact muxer: no version string
    assert data.index(b"moov") < data.index(b"mdat")  # faststart: plays while it loads
    meta, decoded = decode_mp4(a)
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p") and meta["fps"] == 12
    # 64 px frames are scaled up 4x (nearest neighbour) so 4:2:0 chroma keeps their colours.
    assert meta["size"] == (256, 256) and mp4_frame_size(64, 64) == (256, 256) and len(decoded) == len(frames)
    for frame, back in zip(frames, decoded):
        assert np.abs(back[::4, ::4].astype(int) - frame.astype(int))[4:-4, 4:-4].max() <= 12
    assert write_turntable(frames[::-1], tmp_path / "c.mp4", fps=12).read_bytes() != data
    assert write_turntable(frames, tmp_path / "d.mp4", fps=24).read_bytes() != data
    assert_no_temp_files(tmp_path)


@pytest.mark.parametrize("h, w, size", [(15, 17, (270, 306)), (2, 3, (256, 384)), (301, 400, (302, 400))])
def test_mp4_turntable_of_odd_or_tiny_frames_has_an_even_size(tmp_path, h, w, size):
    frames = turntable_frames(h, w, n=3)
    assert mp4_frame_size(h, w) == size
    meta, decoded = decode_mp4(write_turntable(frames, tmp_path / "t.mp4", fps=5))
    assert meta["size"] == size[::-1] and len(decoded) == 3 and decoded[0].shape == (*size, 3)


def test_mp4_without_ffmpeg_says_use_gif(tmp_path, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *a: None if name == "imageio_ffmpeg" else real_find_spec(name, *a),
    )
    with pytest.raises(RuntimeError, match=r"imageio-ffmpeg.*\.gif"):
        write_turntable([np.zeros((8, 8, 3), dtype=np.uint8)], tmp_path / "turntable.mp4")
    assert not (tmp_path / "turntable.mp4").exists()


def test_png_uint8_and_float(tmp_path):
    rgba = np.random.default_rng(1).integers(0, 256, size=(6, 7, 4), dtype=np.uint8)
    with Image.open(write_png(rgba, tmp_path / "rgba.png")) as im:
        np.testing.assert_array_equal(np.asarray(im), rgba)
    ramp = np.linspace(0, 1, 6 * 7 * 3).reshape(6, 7, 3)
    with Image.open(write_png(ramp, tmp_path / "ramp.png")) as im:
        back = np.asarray(im)
    assert back.dtype == np.uint8 and back.shape == (6, 7, 3)
    assert back[0, 0, 0] == 0 and back[-1, -1, -1] == 255
    with pytest.raises(ValueError):
        write_png(np.zeros((4, 4, 2), dtype=np.uint8), tmp_path / "bad.png")


def test_loss_curve_csv(tmp_path):
    rows = [{"step": 0, "loss": 1.5}, {"step": 1, "loss": 0.75}]
    path = write_loss_curve_csv(rows, tmp_path / "loss.csv")
    with open(path, newline="") as f:
        assert list(csv.DictReader(f)) == [{"step": "0", "loss": "1.5"}, {"step": "1", "loss": "0.75"}]


def test_writes_create_missing_parents_and_leave_no_temp_files(tmp_path, gaussians, sphere):
    deep = tmp_path / "a" / "b" / "c"
    outputs = [
        write_png(np.zeros((4, 4, 3), dtype=np.uint8), deep / "image.png"),
        write_loss_curve_csv([{"step": 0}], deep / "csv" / "loss.csv"),
        write_glb(sphere, deep / "glb" / "mesh.glb"),
        write_gaussian_ply(deep / "ply" / "point_cloud.ply", **gaussians),
        write_turntable([np.zeros((4, 4, 3), dtype=np.uint8)] * 2, deep / "gif" / "t.gif"),
        write_turntable([np.zeros((4, 4, 3), dtype=np.uint8)] * 2, deep / "mp4" / "t.mp4"),
    ]
    assert all(p.is_file() and p.stat().st_size > 0 for p in outputs)
    # overwriting goes through the same temp-and-rename path
    write_png(np.ones((4, 4, 3), dtype=np.uint8), deep / "image.png")
    assert_no_temp_files(tmp_path)
