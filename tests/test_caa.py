"""Correspondences through depth and MVDiffusion's correspondence-aware attention (CAA)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamline.config import UNetParams
from dreamline.texturing.caa import CAAModel, CorrespondenceAwareAttention, unet_feature_sizes
from dreamline.texturing.correspondence import correspondences
from dreamline.models.unet import build_unet
from dreamline.rendering.cameras import Camera
from dreamline.rendering.reprojection import unproject

RADIUS = 0.4


def sphere_depth(cam: Camera, radius: float = RADIUS) -> np.ndarray:
    """Exact depth (-z_cam) of a sphere at the origin, 0 where the ray misses it."""
    K = cam.K
    u, v = np.meshgrid(np.arange(cam.width) + 0.5, np.arange(cam.height) + 0.5)
    d_cam = np.stack([(u - K[0, 2]) / K[0, 0], -(v - K[1, 2]) / K[1, 1], -np.ones_like(u)], -1)
    d = d_cam @ cam.c2w[:3, :3].T
    norm = np.linalg.norm(d, axis=-1, keepdims=True)
    d = d / norm
    o = cam.c2w[:3, 3]
    b = d @ o
    disc = b ** 2 - (o @ o - radius ** 2)
    t = -b - np.sqrt(np.maximum(disc, 0.0))
    return np.where(disc > 0, t / norm[..., 0], 0.0)


def orbit(n: int, size: int) -> list[Camera]:
    return [Camera.orbit(360.0 * i / n, 20.0, 1.5, 40.0, size) for i in range(n)]


def test_correspondences_land_on_the_same_surface_point_and_respect_occlusion():
    cams = orbit(4, 32)
    depths = [sphere_depth(c) for c in cams]
    corr = correspondences(depths, cams, 32, 32, depth_tol=0.02)
    assert corr.target.shape == (4, 3, 32, 32, 2) and corr.others[1] == [0, 2, 3]
    for i in range(4):
        src = unproject(depths[i], cams[i])
        for k, l in enumerate(corr.others[i]):
            ok = corr.valid[i, k].numpy()
            if (l - i) % 4 == 2:                          # opposite views: checked below
                continue
            assert ok.sum() > 30                          # 90 deg apart: some overlap, never all
            assert ok.sum() < 0.9 * np.isfinite(src[..., 0]).sum()
            tgt = unproject(depths[l], cams[l])
            uv = corr.target[i, k].numpy()
            cols, rows = np.floor(uv[ok][:, 0]).astype(int), np.floor(uv[ok][:, 1]).astype(int)
            # The target pixel sees (within a pixel's footprint) the point the source pixel sees.
            gap = np.linalg.norm(tgt[rows, cols] - src[ok], axis=-1)
            assert np.nanmax(gap) < 0.05
    # Opposite views of a sphere share (almost) nothing: the far side is occluded.
    opp = correspondences([depths[0], depths[2]], [cams[0], cams[2]], 32, 32, depth_tol=0.02)
    fg = (depths[0] > 0).sum()
    assert opp.valid[0, 0].sum() < 0.03 * fg
    # A coarser grid reads depth at its pixel centres.
    assert correspondences(depths, cams, 8, 8, 0.05).valid.shape == (4, 3, 8, 8)
    with pytest.raises(ValueError, match="at least 2 views"):
        correspondences(depths[:1], cams[:1], 8, 8, 0.05)


def _tiny_unet():
    torch.manual_seed(0)
    p = UNetParams(block_out_channels=(32, 64), attention=(False, True), layers_per_block=1,
                   attention_head_dim=32, norm_num_groups=32)
    return build_unet(p, in_channels=4, sample_size=16, cross_attention_dim=32).eval()


def _by_size(unet, cams, depths, size):
    return {hw: correspondences(depths, cams, hw[0], hw[1], depth_tol=0.05)
            for hw in unet_feature_sizes(unet, size, size)}


def test_zero_initialised_caa_leaves_the_frozen_base_unchanged_and_only_caa_trains():
    unet = _tiny_unet()
    cams = orbit(4, 64)
    depths = [sphere_depth(c) for c in cams]
    by_size = _by_size(unet, cams, depths, 16)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 4, 16, 16, generator=g)                     # 2 objects x 4 views
    t = torch.tensor([500] * 8)
    ctx = torch.randn(8, 5, 32, generator=g)
    with torch.no_grad():
        base = unet(x, t, encoder_hidden_states=ctx).sample
    caa = CAAModel.for_unet(unet)
    unet.requires_grad_(False)
    handles = caa.attach(unet)
    with torch.no_grad(), caa.correspondences(by_size, num_views=4):
        same = unet(x, t, encoder_hidden_states=ctx).sample
    assert torch.equal(same, base)                                 # bit for bit

    with caa.correspondences(by_size, num_views=4):
        loss = unet(x, t, encoder_hidden_states=ctx).sample.square().mean()
    loss.backward()
    assert all(p.grad is None for p in unet.parameters())
    assert all(b.to_out.weight.grad.abs().sum() > 0 for b in caa.blocks)

    with torch.no_grad():
        for b in caa.blocks:
            b.to_out.weight.normal_(0, 0.05)
        with caa.correspondences(by_size, num_views=4):
            moved = unet(x, t, encoder_hidden_states=ctx).sample
        outside = unet(x, t, encoder_hidden_states=ctx).sample    # no geometry in scope: the base
    assert (moved - base).abs().max() > 1e-4
    assert torch.equal(outside, base)
    for h in handles:
        h.remove()


def test_caa_carries_information_only_along_correspondences():
    torch.manual_seed(0)
    cams = orbit(4, 64)
    depths = [sphere_depth(c) for c in cams]
    corr = correspondences(depths, cams, 16, 16, depth_tol=0.05)
    block = CorrespondenceAwareAttention(32, heads=2, kernel=3, norm_groups=1)
    with torch.no_grad():
        block.to_out.weight.normal_(0, 0.1)
        block.to_out.bias.normal_(0, 0.1)
    x = torch.randn(4, 32, 16, 16)
    y = block(x, corr, num_views=4)
    # Pixels with no valid correspondence in any other view (background, unseen parts) are unchanged.
    none = ~corr.valid.any(1)                                      # (4, 16, 16)
    assert none.any() and (~none).any()
    assert torch.equal(y.permute(0, 2, 3, 1)[none], x.permute(0, 2, 3, 1)[none])
    assert (y - x).permute(0, 2, 3, 1)[~none].abs().amax(-1).min() > 0
    # Changing view 1 changes view 0 only at pixels linked to view 1; view 2 (opposite, all
    # occluded) changes nothing in view 0.
    for other, expect_change in ((1, True), (2, False)):
        x2 = x.clone()
        x2[other] += torch.randn(32, 16, 16)
        y2 = block(x2, corr, num_views=4)
        linked = corr.valid[0, corr.others[0].index(other)]
        changed = (y2[0] - y[0]).abs().amax(0) > 0
        assert bool(changed.any()) == expect_change and not (changed & ~linked).any()


def test_caa_save_load_round_trip(tmp_path):
    caa = CAAModel(block_channels=(32, 64), heads=2)
    with torch.no_grad():
        caa.blocks[1].to_out.weight.normal_()
    caa.save_pretrained(tmp_path / "caa")
    back = CAAModel.from_pretrained(tmp_path / "caa")
    assert back.config.heads == 2 and len(back.blocks) == 5
    for a, b in zip(caa.state_dict().values(), back.state_dict().values()):
        assert torch.equal(a, b)


def test_depth_input_starts_as_the_base_and_depth_is_normalised_per_view():
    from dreamline.models.codec import PixelUnshuffleCodec
    from dreamline.texturing.depth import add_depth_input, depth_channels, depth_condition, normalise_depth

    d = np.zeros((2, 8, 8))
    d[0, 2:6, 2:6] = np.linspace(1.0, 2.0, 16).reshape(4, 4)
    n = normalise_depth(d)
    assert n[0].max() == 1.0 and n[0][d[0] > 0].min() == -1.0 and (n[0][d[0] == 0] == -1).all()
    assert (n[1] == -1).all()                                          # no foreground: all far
    assert torch.allclose(normalise_depth(d * 7.0), n)                 # scale-free, as SD's depth2img
    codec = PixelUnshuffleCodec(factor=2)
    assert depth_condition(d, codec).shape == (2, depth_channels(codec), 4, 4)

    unet = _tiny_unet()
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 5, 32, generator=g)
    t = torch.tensor([10, 900])
    with torch.no_grad():
        base = unet(x, t, encoder_hidden_states=ctx).sample
        add_depth_input(unet, 4)
        widened = unet(torch.cat([x, torch.randn(2, 4, 16, 16, generator=g)], 1), t, encoder_hidden_states=ctx).sample
    assert unet.config.in_channels == 8 and unet.config.out_channels == 4
    assert torch.equal(widened, base)


def _tiny_mvdiffusion(caa: bool = True):
    from tiny_models import TINY, tiny_text
    from diffusers import DDIMScheduler

    from dreamline.models.codec import PixelUnshuffleCodec
    from dreamline.texturing.depth import add_depth_input
    from dreamline.texturing.pipeline import MVDiffusionPipeline

    text_encoder, tokenizer = tiny_text()
    torch.manual_seed(0)
    unet = add_depth_input(build_unet(TINY, in_channels=12, sample_size=8, cross_attention_dim=16), 4).eval()
    pipe = MVDiffusionPipeline(unet=unet, vae=PixelUnshuffleCodec(factor=2), text_encoder=text_encoder,
                               tokenizer=tokenizer, scheduler=DDIMScheduler(prediction_type="v_prediction"),
                               caa=CAAModel.for_unet(unet, norm_groups=8) if caa else None, max_tokens=8,
                               depth_tol=0.05)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_mvdiffusion_pipeline_zero_caa_equals_independent_views_and_round_trips(tmp_path):
    from dreamline.texturing.pipeline import MVDiffusionPipeline

    pipe = _tiny_mvdiffusion()
    cams = orbit(4, 16)
    depths = np.stack([sphere_depth(c) for c in cams])
    run = dict(num_inference_steps=3, guidance_scale=2.0, output_type="np")
    joint = pipe("a red mug", depths, cams, generator=torch.Generator().manual_seed(0), **run).images
    alone = pipe("a red mug", depths, cams, use_caa=False, generator=torch.Generator().manual_seed(0), **run).images
    assert joint.shape == (4, 16, 16, 3) and np.array_equal(joint, alone)     # zero-initialised CAA
    with torch.no_grad():
        for b in pipe.caa.blocks:
            b.to_out.weight.normal_(0, 0.2)
    joint = pipe("a red mug", depths, cams, generator=torch.Generator().manual_seed(0), **run).images
    assert np.abs(joint - alone).max() > 1e-4
    assert not pipe.unet._forward_hooks and not any(b._forward_hooks for b in pipe.unet.down_blocks)

    pipe.save_pretrained(tmp_path / "mvd")
    back = MVDiffusionPipeline.from_pretrained(tmp_path / "mvd")
    back.set_progress_bar_config(disable=True)
    again = back("a red mug", depths, cams, generator=torch.Generator().manual_seed(0), **run).images
    assert np.allclose(again, joint, atol=1e-6)
    with pytest.raises(ValueError, match="N = 4 cameras"):
        pipe("a red mug", depths[:3], cams, **run)
    # DDIM's eta reaches the scheduler: stochastic steps differ from eta 0, and repeat with the seed.
    noisy = [pipe("a red mug", depths, cams, eta=1.0, generator=torch.Generator().manual_seed(0), **run).images
             for _ in range(2)]
    assert np.array_equal(noisy[0], noisy[1]) and np.abs(noisy[0] - joint).max() > 1e-4

    bare = _tiny_mvdiffusion(caa=False)
    bare.save_pretrained(tmp_path / "bare")
    assert MVDiffusionPipeline.from_pretrained(tmp_path / "bare").caa is None


def test_baking_recovers_a_position_coloured_sphere_and_respects_occlusion():
    import trimesh

    from dreamline.texturing.bake import bake_vertex_colours

    mesh = trimesh.creation.icosphere(subdivisions=3, radius=RADIUS)
    cams = orbit(4, 64)
    depths = np.stack([sphere_depth(c) for c in cams])
    # Each view shows the surface point's position as its colour: a wrong view, or an
    # occluded one, would paint the wrong colour.
    images = []
    for c, d in zip(cams, depths):
        p = unproject(d, c)
        images.append(np.where(np.isfinite(p), p / (2 * RADIUS) + 0.5, 0.0))
    baked = bake_vertex_colours(mesh.vertices, mesh.vertex_normals, mesh.faces, np.stack(images), depths, cams,
                                depth_tol=0.02)
    truth = mesh.vertices / (2 * RADIUS) + 0.5
    err = np.abs(baked.colours - truth).max(1)
    assert 0.6 < baked.coverage < 1.0                   # the poles under/over the orbit are not seen
    assert np.median(err[baked.seen]) < 0.01 and err[baked.seen].max() < 0.08
    assert err[~baked.seen].max() < 0.5                 # filled from neighbours, not left black
    with pytest.raises(ValueError, match="4 images, 3 depth maps"):
        bake_vertex_colours(mesh.vertices, mesh.vertex_normals, mesh.faces, np.stack(images), depths[:3], cams, 0.02)


def test_caa_training_timesteps_shared_per_set_unless_independent():
    from dreamline.texturing.training import caa_noise
    from dreamline.training.objectives import DenoiseBatch

    batch = DenoiseBatch(torch.zeros(64 * 4, 3, 2, 2), torch.zeros(64 * 4, 1, 4), None, None, 4)
    noise, t = caa_noise(batch, 1000, 200, 0.0, torch.Generator().manual_seed(0))
    sets = t.reshape(64, 4)
    assert noise.shape == batch.latents.shape and (sets == sets[:, :1]).all() and t.min() >= 200
    _, t = caa_noise(batch, 1000, 0, 1.0, torch.Generator().manual_seed(0))
    sets = t.reshape(64, 4)
    assert (sets != sets[:, :1]).any(1).float().mean() > 0.9    # each view its own draw
    _, t = caa_noise(batch, 1000, 0, 0.5, torch.Generator().manual_seed(0))
    mixed = (t.reshape(64, 4) != t.reshape(64, 4)[:, :1]).any(1).float().mean()
    assert 0.25 < mixed < 0.75
