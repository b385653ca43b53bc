"""The Gaussian splatting representation and its pure-torch rasteriser (CPU, small sizes)."""
from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from dreamline.representations.configs import GaussianParams
from dreamline.rendering.cameras import Camera
from dreamline.representations.base import (REPRESENTATIONS, Cameras, Lighting, background_images,
                                            grid_points, orientation_penalty)
from dreamline.representations.gaussians import GaussianSplats, quat_to_rotmat, rasterise

torch.set_num_threads(1)


def cameras(*cams: Camera) -> Cameras:
    return Cameras.from_numpy(np.stack([c.c2w for c in cams]), [c.fov_deg for c in cams],
                              cams[0].height, cams[0].width)


def splats(means, scales, rgb, opacity=0.999, quats=None, seed=0, **params) -> GaussianSplats:
    """A model holding exactly the given Gaussians."""
    means = torch.as_tensor(means, dtype=torch.float32).reshape(-1, 3)
    n = len(means)
    model = GaussianSplats(GaussianParams(num_points=n, **params), torch.Generator().manual_seed(seed))
    scales = torch.as_tensor(scales, dtype=torch.float32).expand(n, 3)
    rgb = torch.as_tensor(rgb, dtype=torch.float32).expand(n, 3).clamp(1e-4, 1 - 1e-4)
    opacity = torch.as_tensor(opacity, dtype=torch.float32).reshape(-1, 1).expand(n, 1)
    with torch.no_grad():
        model.means.copy_(means)
        model.log_scales.copy_(scales.log())
        model.colour_logits.copy_(torch.log(rgb / (1 - rgb)))
        model.opacity_logits.copy_(torch.log(opacity / (1 - opacity)))
        if quats is not None:
            model.quats.copy_(torch.as_tensor(quats, dtype=torch.float32))
    return model


def random_splats(n: int, seed: int, **params) -> GaussianSplats:
    """A model with anisotropic, rotated Gaussians (so that every parameter matters)."""
    g = torch.Generator().manual_seed(seed)
    model = GaussianSplats(GaussianParams(num_points=n, **params), g)
    with torch.no_grad():
        model.log_scales.copy_(math.log(0.04) + 0.5 * torch.randn(n, 3, generator=g))
        model.quats.copy_(torch.randn(n, 4, generator=g))
        model.opacity_logits.copy_(torch.randn(n, 1, generator=g))
    return model


def pixel_of(cam: Camera, point) -> tuple[float, float, float]:
    """(u, v, depth) of a world point through the camera's K and w2c (OpenGL -> OpenCV flip)."""
    x, y, z = (cam.w2c @ np.append(np.asarray(point, dtype=np.float64), 1.0))[:3]
    uvw = cam.K @ np.array([x, -y, -z])
    return uvw[0] / uvw[2], uvw[1] / uvw[2], -z


def test_registered():
    assert REPRESENTATIONS.get("gaussians") is GaussianSplats


# ------------------------------------------------------------------------- projection

def test_single_gaussian_projects_to_expected_pixel():
    point = (0.12, -0.07, 0.05)
    cam = Camera.orbit(35.0, 20.0, 2.0, 40.0, 40, 32)     # non-square: width 40, height 32
    model = splats(point, 0.02, (1.0, 0.0, 0.0))
    with torch.no_grad():
        out = model.render(cameras(cam), "albedo", None, torch.zeros(1, 3, 32, 40))
    u, v, depth = pixel_of(cam, point)
    opacity = out.opacity[0, 0]
    row, col = divmod(int(opacity.argmax()), opacity.shape[1])
    assert abs(col + 0.5 - u) <= 1.0 and abs(row + 0.5 - v) <= 1.0
    assert opacity[row, col] > 0.5
    # Depth is alpha-weighted, not normalised.
    assert float(out.depth[0, 0, row, col] / opacity[row, col]) == pytest.approx(depth, rel=1e-4)
    assert out.rgb.shape == (1, 3, 32, 40) and out.normal.shape == (1, 3, 32, 40)


def test_behind_the_camera_contributes_nothing():
    cam = Camera.orbit(0.0, 0.0, 1.0, 40.0, 16)
    model = splats([(0.0, 0.0, 1.5), (0.0, 0.0, 1.0 - 0.005)], 0.2, (1.0, 1.0, 1.0))
    with torch.no_grad():
        out = model.render(cameras(cam), "albedo", None, torch.zeros(1, 3, 16, 16))
    assert float(out.opacity.abs().max()) == 0.0


def reference_render(model: GaussianSplats, cam: Camera):
    """A direct per-pixel implementation in the OpenCV frame, for comparison."""
    d = torch.float64
    w2c = torch.as_tensor(cam.w2c, dtype=d)
    k = torch.as_tensor(cam.K, dtype=d)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=d))
    r_cv = flip @ w2c[:3, :3]
    means = model.means.detach().to(d)
    p = (means @ w2c[:3, :3].T + w2c[:3, 3]) @ flip.T                     # OpenCV camera coords
    rot = quat_to_rotmat(model.quats.detach().to(d))
    s = model.log_scales.detach().to(d).exp()
    cov = rot @ torch.diag_embed(s ** 2) @ rot.transpose(-1, -2)
    opacity = torch.sigmoid(model.opacity_logits.detach().to(d))[:, 0]
    albedo = torch.sigmoid(model.colour_logits.detach().to(d))
    f = k[0, 0]
    rows = []
    for x, y, z, c3, o in zip(p[:, 0], p[:, 1], p[:, 2], cov, opacity):
        jac = torch.tensor([[f / z, 0, -f * x / z ** 2], [0, f / z, -f * y / z ** 2]], dtype=d)
        c2 = jac @ r_cv @ c3 @ r_cv.T @ jac.T + 0.3 * torch.eye(2, dtype=d)
        centre = torch.stack([f * x / z + k[0, 2], f * y / z + k[1, 2]])
        rows.append((z, centre, torch.linalg.inv(c2), o))
    order = sorted(range(len(rows)), key=lambda i: float(rows[i][0]))
    jj, ii = torch.meshgrid(torch.arange(cam.width, dtype=d) + 0.5, torch.arange(cam.height, dtype=d) + 0.5,
                            indexing="xy")
    pix = torch.stack([jj, ii], dim=-1)                                    # (H, W, 2)
    trans = torch.ones(cam.height, cam.width, dtype=d)
    weights = torch.zeros(cam.height, cam.width, len(rows), dtype=d)
    for i in order:
        z, centre, conic, o = rows[i]
        delta = pix - centre
        alpha = (o * torch.exp(-0.5 * torch.einsum("hwi,ij,hwj->hw", delta, conic, delta))).clamp(max=0.99)
        alpha = torch.where(alpha >= 1 / 255, alpha, torch.zeros_like(alpha))
        weights[..., i] = alpha * trans
        trans = trans * (1 - alpha)
    rgb = weights @ albedo
    depth = weights @ p[:, 2]
    return weights, rgb, depth


def test_matches_a_direct_reference_including_orientation():
    cam = Camera.orbit(-50.0, 25.0, 1.8, 45.0, 12, 10)
    model = random_splats(12, seed=3)
    with torch.no_grad():
        model.log_scales.add_(1.0)                                        # overlapping splats
        model.opacity_logits.add_(2.0)
        out = model.double().render(cameras(cam), "albedo", None, torch.zeros(1, 3, 10, 12))
    weights, rgb, depth = reference_render(model, cam)
    assert torch.allclose(out.rgb[0].permute(1, 2, 0), rgb, atol=1e-6)
    assert torch.allclose(out.depth[0, 0], depth, atol=1e-6)
    assert torch.allclose(out.opacity[0, 0], weights.sum(-1), atol=1e-6)

    # The orientation penalty is orientation_penalty over the per-pixel weights, with the
    # rendered per-Gaussian normals (camera-facing) and the pixel rays.
    rot = quat_to_rotmat(model.quats.detach())
    axis = rot[torch.arange(12), :, model.log_scales.detach().argmin(-1)]
    to_mean = model.means.detach() - torch.as_tensor(cam.position)
    normals = torch.where((axis * to_mean).sum(-1, keepdim=True) > 0, -axis, axis)
    _, dirs = cameras(cam).rays()
    expected = orientation_penalty(weights, normals.expand(10, 12, 12, 3), dirs[0].double())
    assert float(out.orientation) == pytest.approx(float(expected), rel=1e-4, abs=1e-12)


def test_tiling_does_not_change_the_image():
    model = random_splats(300, seed=1)
    cams = cameras(Camera.orbit(10.0, 10.0, 1.5, 50.0, 24), Camera.orbit(200.0, -20.0, 1.2, 50.0, 24))
    with torch.no_grad():
        rot, scales, opacity = model.rotations(), model.scales(), model.opacity()
        feats = model._features(cams.c2w, rot, scales, "albedo", None)
        args = (model.means, rot, scales, opacity, feats, cams.c2w, cams.focal(), 24, 24)
        dense = rasterise(*args, tile=24)
        for tile in (4, 7):
            tiled = rasterise(*args, tile=tile)
            for a, b in zip(dense, tiled):
                assert torch.allclose(a, b, atol=1e-5)


def test_chunked_and_recomputed_render_matches(monkeypatch):
    import dreamline.representations.gaussians as gaussians

    cams = cameras(Camera.orbit(0.0, 15.0, 1.5, 45.0, 16), Camera.orbit(90.0, 5.0, 1.5, 45.0, 16))
    results = []
    for chunk, grad in ((10 ** 9, 10 ** 9), (20000, 0)):                 # one chunk; many, checkpointed
        monkeypatch.setattr(gaussians, "CHUNK_PAIRS", chunk)
        monkeypatch.setattr(gaussians, "GRAD_PAIRS", grad)
        model = random_splats(150, seed=6)
        out = model.render(cams, "albedo", None, torch.ones(2, 3, 16, 16))
        (out.rgb.square().sum() + out.depth.sum() + out.orientation).backward()
        results.append((out.rgb.detach(), model.means.grad, model.log_scales.grad, model.quats.grad))
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-5)


# --------------------------------------------------------------------------- shading

def test_big_opaque_gaussian_shows_albedo_then_background():
    cam = Camera.orbit(0.0, 0.0, 2.0, 40.0, 32)
    albedo = (0.8, 0.3, 0.1)
    # Flat towards the camera, so that its normal (the shortest axis) faces the light.
    model = splats((0.0, 0.0, 0.0), torch.tensor([0.25, 0.25, 0.02]), albedo)
    bg = torch.tensor([0.0, 0.2, 1.0]).reshape(1, 3, 1, 1).expand(1, 3, 32, 32)
    with torch.no_grad():
        out = model.render(cameras(cam), "albedo", None, bg)
    centre = out.rgb[0, :, 15:17, 15:17].mean(dim=(1, 2))
    assert torch.allclose(centre, torch.tensor(albedo), atol=0.03)
    assert torch.allclose(out.rgb[0, :, 0, 0], bg[0, :, 0, 0])
    assert float(out.opacity[0, 0, 0, 0]) == 0.0 and float(out.depth[0, 0, 0, 0]) == 0.0

    light = Lighting(cameras(cam).positions.clone())                      # a headlight
    black = torch.zeros(1, 3, 32, 32)
    with torch.no_grad():
        grey = model.render(cameras(cam), "textureless", light, black).rgb
        model.colour_logits.fill_(-3.0)
        grey_dark_albedo = model.render(cameras(cam), "textureless", light, black).rgb
        lit = model.render(cameras(cam), "lambertian", light, black).rgb
    assert torch.allclose(grey, grey_dark_albedo)
    centre = grey[0, :, 16, 16]
    assert float(centre.min()) > 0.8 and float(centre.max() - centre.min()) < 1e-6
    assert float(lit[0, :, 16, 16].max()) < 0.1                           # dark albedo, lit
    with pytest.raises(ValueError, match="needs a light"):
        model.render(cameras(cam), "lambertian", None, black)


# ------------------------------------------------------------------------- gradients

def test_gradients_reach_every_parameter_group():
    model = random_splats(200, seed=2)
    cams = cameras(Camera.orbit(0.0, 15.0, 1.5, 45.0, 16), Camera.orbit(120.0, 5.0, 1.5, 45.0, 16))
    _, dirs = cams.rays()
    bg = background_images("mlp", 2, 16, 16, torch.Generator(), dirs=dirs, mlp=model.background)
    out = model.render(cams, "lambertian", Lighting(cams.positions * 2), bg)
    target = torch.rand(out.rgb.shape, generator=torch.Generator().manual_seed(0))
    ((out.rgb - target) ** 2).mean().backward()
    groups = {g["name"]: g["params"] for g in model.param_groups()}
    assert set(groups) == {"position", "scale", "rotation", "opacity", "colour", "background"}
    for name, params in groups.items():
        grads = [p.grad for p in params]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name


def test_finite_differences_agree_with_autograd():
    cams = cameras(Camera.orbit(20.0, 10.0, 1.5, 45.0, 12))
    model = random_splats(40, seed=4).double()
    bg = torch.full((1, 3, 12, 12), 0.5, dtype=torch.float64)
    weights = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def loss() -> torch.Tensor:
        out = model.render(cams, "lambertian", Lighting(cams.positions.double() * 2), bg)
        return (out.rgb * weights).sum() + out.depth.sum()

    loss().backward()
    # The Gaussian nearest the camera surely shows; check its colour and its position.
    g = int((model.means.detach() - cams.positions.double()).norm(dim=-1).argmin())
    for param, idx in ((model.colour_logits, (g, 1)), (model.means, (g, 0)), (model.log_scales, (g, 2))):
        eps = 1e-6
        with torch.no_grad():
            param[idx] += eps
            up = float(loss())
            param[idx] -= 2 * eps
            down = float(loss())
            param[idx] += eps
        numeric = (up - down) / (2 * eps)
        assert float(param.grad[idx]) == pytest.approx(numeric, rel=1e-4, abs=1e-7)
        assert abs(numeric) > 1e-6


def test_a_few_adam_steps_fit_a_target_render():
    cams = cameras(Camera.orbit(0.0, 10.0, 1.5, 45.0, 16), Camera.orbit(90.0, 10.0, 1.5, 45.0, 16))
    teacher = random_splats(150, seed=8)
    with torch.no_grad():
        teacher.colour_logits.copy_(torch.tensor([2.0, -2.0, -2.0]))           # red
        target = teacher.render(cams, "albedo", None, torch.ones(2, 3, 16, 16)).rgb
    student = random_splats(150, seed=8)
    opt = torch.optim.Adam(student.param_groups())
    losses = []
    for step in range(30):
        out = student.render(cams, "albedo", None, torch.ones(2, 3, 16, 16))
        loss = ((out.rgb - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        student.post_step(step)
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


# ----------------------------------------------------------------------------- order

def test_nearer_gaussian_dominates_whatever_the_array_order():
    front, back = (0.0, 0.0, 0.3), (0.0, 0.0, -0.3)
    rgb = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])               # front red, back blue
    cams = cameras(Camera.orbit(0.0, 0.0, 2.0, 40.0, 16), Camera.orbit(180.0, 0.0, 2.0, 40.0, 16))
    renders = []
    for means, colours in (([front, back], rgb), ([back, front], rgb.flip(0))):
        with torch.no_grad():
            renders.append(splats(means, 0.15, colours).render(cams, "albedo", None, torch.ones(2, 3, 16, 16)))
    assert torch.allclose(renders[0].rgb, renders[1].rgb) and torch.allclose(renders[0].depth, renders[1].depth)
    out = renders[0]
    seen_from_front, seen_from_back = out.rgb[0, :, 8, 8], out.rgb[1, :, 8, 8]
    assert seen_from_front[0] > 0.9 and seen_from_front[2] < 0.1
    assert seen_from_back[2] > 0.9 and seen_from_back[0] < 0.1
    mean_depth = float(out.depth[0, 0, 8, 8] / out.opacity[0, 0, 8, 8])
    assert 1.7 < mean_depth < 1.8                                         # mostly the front one's 1.7


# ----------------------------------------------------------------- determinism, export

def test_same_seed_same_model_and_render():
    a = GaussianSplats(GaussianParams(num_points=256), torch.Generator().manual_seed(7))
    b = GaussianSplats(GaussianParams(num_points=256), torch.Generator().manual_seed(7))
    c = GaussianSplats(GaussianParams(num_points=256), torch.Generator().manual_seed(8))
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    assert not torch.equal(a.means, c.means)
    assert float(a.means.detach().norm(dim=-1).max()) <= 0.3 + 1e-6             # init sphere radius
    cams = cameras(Camera.orbit(30.0, 20.0, 1.6, 40.0, 16))
    with torch.no_grad():
        ra = a.render(cams, "albedo", None, torch.ones(1, 3, 16, 16))
        rb = b.render(cams, "albedo", None, torch.ones(1, 3, 16, 16))
    assert torch.equal(ra.rgb, rb.rgb) and torch.equal(ra.ccm, rb.ccm)
    assert 0.0 <= float(ra.ccm.min()) and float(ra.ccm.max()) <= 1.0


def test_density_on_grid():
    centre = (0.1, -0.2, 0.15)
    # The last two poke out of the grid's far and near faces.
    model = splats([centre, (-0.3, 0.3, -0.3), (0.58, 0.0, 0.57), (-0.59, -0.5, 0.0)],
                   torch.tensor([[0.05, 0.08, 0.03], [0.04, 0.04, 0.04], [0.06, 0.03, 0.05], [0.03, 0.03, 0.03]]),
                   (0.5, 0.5, 0.5), opacity=0.7,
                   quats=torch.tensor([[0.9, 0.1, -0.3, 0.2], [1.0, 0, 0, 0], [0.5, 0.5, 0.1, 0.0], [1.0, 0, 0, 0]]))
    r = 24
    grid = model.density_on_grid(r)
    assert grid.shape == (r, r, r) and grid.dtype == np.float32
    pts = grid_points(r, model.bound)
    at = tuple(int(i) for i in ((torch.tensor(centre) + model.bound) / (2 * model.bound) * r).long())
    assert grid[at] > 0.5 * 0.7
    assert grid[0, 0, r - 1] == 0.0 and grid[r - 1, r - 1, r - 1] == 0.0
    # Against the untruncated sum: only the 3-sigma tails (< 1.2% of opacity) may differ.
    inv = torch.linalg.inv(quat_to_rotmat(model.quats.detach()) @ torch.diag_embed(model.scales().detach() ** 2)
                           @ quat_to_rotmat(model.quats.detach()).transpose(-1, -2))
    d = pts.reshape(-1, 1, 3) - model.means.detach()
    full = (0.7 * torch.exp(-0.5 * torch.einsum("pgi,gij,pgj->pg", d, inv, d))).sum(-1).reshape(r, r, r)
    assert np.abs(grid - full.numpy()).max() < 0.012


def test_albedo_at_and_ply_arrays():
    model = splats([(0.2, 0.0, 0.0), (-0.2, 0.0, 0.0)], 0.05, torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.1, 0.9]]))
    rgb = model.albedo_at(torch.tensor([[0.21, 0.0, 0.0], [-0.19, 0.01, 0.0], [0.0, 0.55, 0.0]]))
    assert torch.allclose(rgb[0], torch.tensor([0.9, 0.1, 0.1]), atol=1e-3)
    assert torch.allclose(rgb[1], torch.tensor([0.1, 0.1, 0.9]), atol=1e-3)
    assert rgb.shape == (3, 3) and float(rgb.min()) >= 0.0 and float(rgb.max()) <= 1.0

    arrays = random_splats(50, seed=5).ply_arrays()
    shapes = {k: v.shape for k, v in arrays.items()}
    assert shapes == {"means": (50, 3), "log_scales": (50, 3), "quats": (50, 4),
                      "opacity_logit": (50, 1), "rgb": (50, 3)}
    assert np.allclose(np.linalg.norm(arrays["quats"], axis=1), 1.0, atol=1e-5)
    assert arrays["rgb"].min() >= 0.0 and arrays["rgb"].max() <= 1.0


def test_post_step_clamps_scales_and_positions():
    model = splats([(0.0, 0.0, 2.0), (0.1, -5.0, 0.0)], torch.tensor([[1.0, 0.01, 0.01], [0.01, 0.01, 0.01]]),
                   (0.5, 0.5, 0.5), max_scale=0.1, bound=0.5)
    model.post_step(0)
    assert float(model.scales().detach().max()) == pytest.approx(0.1, rel=1e-5)
    assert float(model.means.detach().abs().max()) == pytest.approx(0.5)


# ------------------------------------------------------------------------------- init

def test_init_box_and_points(tmp_path):
    box = GaussianSplats(GaussianParams(num_points=500, init="box", init_radius=0.2),
                         torch.Generator().manual_seed(0))
    assert 0.15 < float(box.means.detach().abs().max()) <= 0.2
    assert torch.allclose(box.albedo(), torch.full((500, 3), 0.5), atol=0.1)

    rng = np.random.default_rng(0)
    cloud = np.concatenate([rng.uniform(-0.4, 0.4, (100, 3)), rng.uniform(0, 1, (100, 3))], axis=1)
    path = tmp_path / "cloud.npy"
    np.save(path, cloud.astype(np.float32))
    few = GaussianSplats(GaussianParams(num_points=60, init="points", init_points=str(path)),
                         torch.Generator().manual_seed(0))
    exact = "donot_use_mm_for_euclid_dist"
    xyz = torch.as_tensor(cloud[:, :3], dtype=torch.float32)
    dist, nearest = torch.cdist(few.means.detach(), xyz, compute_mode=exact).min(-1)
    assert float(dist.max()) < 1e-6 and len(set(nearest.tolist())) == 60   # a subset, no repeats
    assert torch.allclose(few.albedo().detach(), torch.as_tensor(cloud[nearest.numpy(), 3:], dtype=torch.float32),
                          atol=1e-3)

    many = GaussianSplats(GaussianParams(num_points=250, init="points", init_points=str(path)),
                          torch.Generator().manual_seed(0))
    dist = torch.cdist(many.means.detach(), xyz, compute_mode=exact).min(-1).values
    assert many.means.shape == (250, 3) and float(dist.max()) < 0.02      # repeats, jittered

    np.save(tmp_path / "xyz.npy", cloud[:, :3])
    plain = GaussianSplats(GaussianParams(num_points=100, init="points", init_points=str(tmp_path / "xyz.npy")),
                           torch.Generator().manual_seed(0))
    assert torch.allclose(plain.albedo(), torch.full((100, 3), 0.5), atol=0.1)


def test_init_points_from_ply(tmp_path):
    import trimesh

    rng = np.random.default_rng(1)
    colours = np.tile(np.array([[255, 0, 0, 255]], dtype=np.uint8), (40, 1))
    trimesh.PointCloud(rng.uniform(-0.3, 0.3, (40, 3)), colors=colours).export(tmp_path / "cloud.ply")
    model = GaussianSplats(GaussianParams(num_points=40, init="points", init_points=str(tmp_path / "cloud.ply")),
                           torch.Generator().manual_seed(0))
    albedo = model.albedo().detach()
    assert float(albedo[:, 0].min()) > 0.95 and float(albedo[:, 1].max()) < 0.05

    # A 3DGS point_cloud.ply (binary, colours as SH band 0): f_dc = (rgb - 0.5) / 0.2821.
    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
    rows = np.zeros(30, dtype=[(n, "<f4") for n in names])
    rows["x"] = rng.uniform(-0.3, 0.3, 30)
    for i, c in enumerate((0.2, 0.5, 0.8)):
        rows[f"f_dc_{i}"] = (c - 0.5) / 0.28209479
    header = "ply\nformat binary_little_endian 1.0\nelement vertex 30\n"
    header += "".join(f"property float {n}\n" for n in names) + "end_header\n"
    (tmp_path / "point_cloud.ply").write_bytes(header.encode() + rows.tobytes())
    model = GaussianSplats(GaussianParams(num_points=30, init="points", init_points=str(tmp_path / "point_cloud.ply")),
                           torch.Generator().manual_seed(0))
    assert torch.allclose(model.means[:, 0].detach().sort().values, torch.as_tensor(np.sort(rows["x"])), atol=1e-6)
    assert torch.allclose(model.albedo().detach(), torch.tensor([0.2, 0.5, 0.8]).expand(30, 3), atol=1e-3)


def test_init_errors(tmp_path):
    missing = tmp_path / "nowhere" / "cloud.npy"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        GaussianSplats(GaussianParams(init="points", init_points=str(missing)), torch.Generator())
    with pytest.raises(ValueError, match="init_points"):
        GaussianSplats(GaussianParams(init="points"), torch.Generator())
    np.save(tmp_path / "bad.npy", np.zeros((5, 4)))
    with pytest.raises(ValueError, match="bad.npy"):
        GaussianSplats(GaussianParams(init="points", init_points=str(tmp_path / "bad.npy")), torch.Generator())


def test_gsplat_requested_without_gsplat_is_a_clear_error():
    if importlib.util.find_spec("gsplat") is not None:
        pytest.skip("gsplat is installed")
    with pytest.raises(RuntimeError, match="gsplat"):
        GaussianSplats(GaussianParams(num_points=8, rasteriser="gsplat"), torch.Generator())
    # auto falls back to the torch rasteriser on CPU.
    model = GaussianSplats(GaussianParams(num_points=8, rasteriser="auto"), torch.Generator())
    with torch.no_grad():
        out = model.render(cameras(Camera.orbit(0.0, 0.0, 1.5, 40.0, 8)), "albedo", None, torch.ones(1, 3, 8, 8))
    assert out.extras["rasteriser"] == "torch"


@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("gsplat") is None,
                    reason="needs CUDA and gsplat (the GPU host with its wheel)")
def test_gsplat_and_the_torch_rasteriser_agree_on_a_small_scene():
    """The same Gaussians through gsplat and through the pure-torch splatter, on CUDA: colour,
    coverage and depth agree where both see the scene (the two differ only in tile and
    anti-aliasing details)."""
    torch.manual_seed(0)
    models = {}
    for name in ("torch", "gsplat"):
        m = GaussianSplats(GaussianParams(num_points=256, init_radius=0.3, initial_scale=0.04, rasteriser=name),
                           torch.Generator().manual_seed(0)).cuda()
        models[name] = m
    cams = cameras(*(Camera.orbit(az, 20.0, 1.6, 40.0, 64) for az in (0.0, 120.0, 240.0))).to("cuda")
    light = Lighting(cams.positions * 1.0, ambient=0.3, diffuse=0.7)
    with torch.no_grad():
        outs = {n: m.render(cams, "lambertian", light, torch.ones(3, 3, 64, 64, device="cuda"))
                for n, m in models.items()}
    a, b = outs["torch"], outs["gsplat"]
    assert a.extras["rasteriser"] == "torch" and b.extras["rasteriser"] == "gsplat"
    assert (a.opacity - b.opacity).abs().mean() < 0.02
    assert (a.rgb - b.rgb).abs().mean() < 0.02
    covered = (a.opacity > 0.5) & (b.opacity > 0.5)
    assert covered.sum() > 100
    depth_a, depth_b = a.depth / a.opacity.clamp_min(1e-6), b.depth / b.opacity.clamp_min(1e-6)
    assert (depth_a - depth_b)[covered].abs().mean() < 0.02
