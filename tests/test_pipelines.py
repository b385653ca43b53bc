"""Sampling pipelines on tiny seeded components (diffusers' get_dummy_components style)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, PNDMScheduler, UNet2DConditionModel

from dreamline.models.grid import grid_image
from dreamline.models.pipelines import CCMPipeline, load_sd_layout
from dreamline.models.sampling import denoise, step_kwargs
from dreamline.models.text import encode_text
from dreamline.models.unet import has_camera, is_multiview
from dreamline.rendering.cameras import Camera, orbit_c2w
from research_standins import save_sd21
from tiny_models import tiny_pipeline

REPO = Path(__file__).resolve().parents[1]
STEPS = 3


def orbit_cameras(n: int = 4, elevation: float = 15.0) -> torch.Tensor:
    """MVDream's orthogonal views: (n, 16) row-major camera-to-world matrices."""
    return torch.tensor(np.stack([orbit_c2w(360.0 * i / n, elevation, 2.0).reshape(16)
                                  for i in range(n)]), dtype=torch.float32)


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


# --- multi-view pipeline -------------------------------------------------------------------

def test_multiview_pipeline_shapes_and_seeded_determinism():
    pipe = tiny_pipeline()
    cameras = orbit_cameras(4)
    prompts = ["a red chair", "a blue mug"]
    out = pipe(prompts, cameras=cameras, num_inference_steps=STEPS, generator=seeded(0)).images
    assert out.shape == (8, 8, 8, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    again = pipe(prompts, cameras=cameras, num_inference_steps=STEPS, generator=seeded(0)).images
    assert np.array_equal(out, again)
    other = pipe(prompts, cameras=cameras, num_inference_steps=STEPS, generator=seeded(1)).images
    assert not np.allclose(out, other)

    pt = pipe(prompts, cameras=cameras.expand(2, 4, 16), num_inference_steps=STEPS,
              generator=seeded(0), output_type="pt").images
    assert pt.shape == (8, 3, 8, 8)
    assert np.allclose(pt.permute(0, 2, 3, 1).numpy(), out, atol=1e-6)  # (F,16) == (B,F,16) shared


def test_multiview_pipeline_guidance_paths():
    pipe = tiny_pipeline()
    kwargs = dict(cameras=orbit_cameras(4), num_inference_steps=STEPS)
    plain = pipe("a red chair", generator=seeded(0), **kwargs).images
    cfg = pipe("a red chair", guidance_scale=3.0, generator=seeded(0), **kwargs).images
    rescaled = pipe("a red chair", guidance_scale=3.0, guidance_rescale=0.5, generator=seeded(0),
                    negative_prompt="a blue car", **kwargs).images
    assert plain.shape == cfg.shape == rescaled.shape == (4, 8, 8, 3)
    assert not np.allclose(plain, cfg) and not np.allclose(cfg, rescaled)
    # One prompt with per-object cameras (B, F, 16) samples one object per camera set.
    two = pipe("a red chair", cameras=orbit_cameras(4).expand(2, 4, 16), num_inference_steps=STEPS,
               generator=seeded(0)).images
    assert two.shape == (8, 8, 8, 3)


def test_plain_text_to_image_without_cameras():
    pipe = tiny_pipeline(camera=False, multiview=False)
    assert not has_camera(pipe.unet) and not is_multiview(pipe.unet)
    out = pipe(["a red chair", "a mug", ""], num_inference_steps=STEPS, generator=seeded(0)).images
    assert out.shape == (3, 8, 8, 3)
    # Cameras only set F for a model without a camera embedding: F independent images.
    views = pipe("a red chair", cameras=orbit_cameras(2), num_inference_steps=STEPS, generator=seeded(0))
    assert views.images.shape == (2, 8, 8, 3)
    # The MV model with the camera off is the 2D text-to-image model (MVDream's 2D batches).
    mv = tiny_pipeline()
    assert mv("a red chair", num_inference_steps=STEPS, generator=seeded(0)).images.shape == (1, 8, 8, 3)


def test_save_and_load_in_a_fresh_process(tmp_path):
    mv, ccm = tiny_pipeline(), tiny_pipeline(CCMPipeline, seed=3)
    mv.save_pretrained(tmp_path / "mv")
    ccm.save_pretrained(tmp_path / "ccm")
    index = json.loads((tmp_path / "mv" / "model_index.json").read_text())
    assert index["unet"] == ["dreamline.models.unet", "CameraUNet2DConditionModel"]
    assert index["vae"] == ["dreamline.models.codec", "PixelUnshuffleCodec"]
    assert index["max_tokens"] == 8 and index["num_views"] == 4

    cameras = orbit_cameras(4)
    np.save(tmp_path / "cameras.npy", cameras.numpy())
    expected_mv = mv(["a red chair", "a mug"], cameras=cameras, guidance_scale=2.0,
                     num_inference_steps=STEPS, generator=seeded(7)).images
    expected_ccm = ccm("a red chair", cameras=cameras, num_inference_steps=STEPS, generator=seeded(7))

    # A fresh interpreter: no class or module cache can hide a loading failure.
    script = textwrap.dedent(f"""
        import numpy as np, torch
        torch.set_num_threads(1)
        from dreamline.models.pipelines import CCMPipeline, MultiViewDiffusionPipeline
        from dreamline.models.unet import is_multiview
        root = {str(tmp_path)!r}
        cameras = torch.from_numpy(np.load(root + "/cameras.npy"))
        mv = MultiViewDiffusionPipeline.from_pretrained(root + "/mv")
        ccm = CCMPipeline.from_pretrained(root + "/ccm")
        assert is_multiview(mv.unet) and type(ccm) is CCMPipeline, (type(mv.unet), type(ccm))
        for p in (mv, ccm):
            p.set_progress_bar_config(disable=True)
        out = mv(["a red chair", "a mug"], cameras=cameras, guidance_scale=2.0,
                 num_inference_steps={STEPS}, generator=torch.Generator().manual_seed(7)).images
        c = ccm("a red chair", cameras=cameras, num_inference_steps={STEPS},
                generator=torch.Generator().manual_seed(7))
        np.save(root + "/mv.npy", out)
        np.save(root + "/ccm.npy", c.images)
        np.save(root + "/masks.npy", c.masks)
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert np.array_equal(np.load(tmp_path / "mv.npy"), expected_mv)
    assert np.array_equal(np.load(tmp_path / "ccm.npy"), expected_ccm.images)
    assert np.array_equal(np.load(tmp_path / "masks.npy"), expected_ccm.masks)


# --- CCM pipeline --------------------------------------------------------------------------

def test_ccm_pipeline_output_and_independent_views():
    pipe = tiny_pipeline(CCMPipeline)
    cameras = orbit_cameras(4)
    out = pipe(["a red chair", "a mug"], cameras=cameras, num_inference_steps=STEPS, generator=seeded(0))
    assert out.images.shape == (8, 8, 8, 3) and out.masks.shape == (8, 8, 8)
    assert out.masks.dtype == bool
    assert out.images.min() >= 0.0 and out.images.max() <= 1.0
    assert np.all(out.images[~out.masks] == 0.0)

    # One CCM per camera: with the same noise, view 0 does not depend on the other cameras
    # (multi-view attention off), though the UNet has multi-view processors installed.
    latents = torch.randn(4, 12, 4, 4, generator=seeded(5))
    a = pipe("a red chair", cameras=cameras, latents=latents, num_inference_steps=STEPS).images
    b = pipe("a red chair", cameras=torch.cat([cameras[:1], orbit_cameras(3, 40.0)]), latents=latents,
             num_inference_steps=STEPS).images
    assert np.allclose(a[0], b[0], atol=1e-6) and not np.allclose(a[1:], b[1:])


def test_ccm_background_convention(monkeypatch):
    """Decoded -1 in all channels is background; foreground maps [-1, 1] -> [0, 1]."""
    pipe = tiny_pipeline(CCMPipeline)
    x = torch.full((1, 3, 4, 4), -1.0)
    x[0, :, 1, 1] = torch.tensor([0.0, 0.5, -0.5])    # a foreground point
    x[0, :, 2, 2] = torch.tensor([-0.95, -0.9, -1.0])  # sampler noise on background
    x[0, :, 3, 3] = torch.tensor([-1.0, -1.0, 0.0])    # thin foreground near a box edge
    monkeypatch.setattr(pipe, "sample", lambda *a, **k: x)
    out = pipe("a mug", cameras=orbit_cameras(1))
    expected = np.zeros((1, 4, 4), dtype=bool)
    expected[0, 1, 1] = expected[0, 3, 3] = True
    assert np.array_equal(out.masks, expected)
    assert np.allclose(out.images[0, 1, 1], [0.5, 0.75, 0.25])
    assert np.allclose(out.images[0, 3, 3], [0.0, 0.0, 0.5])
    assert out.images[0, 2, 2].sum() == 0.0


# --- Stable Diffusion 2.1 layout -----------------------------------------------------------

@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    """A Stable Diffusion 2.1-layout folder, written by diffusers' own StableDiffusionPipeline
    (with PNDM, SD's scheduler, which loading turns into DDIM)."""
    return save_sd21(tmp_path_factory.mktemp("sd21"), scheduler=PNDMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True,
        steps_offset=1, prediction_type="epsilon"))


def test_load_sd_layout_is_a_latent_multiview_pipeline(sd_folder):
    index = json.loads((sd_folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["safety_checker"] == [None, None]
    pipe = load_sd_layout(sd_folder)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.vae, AutoencoderKL) and isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.prediction_type == "epsilon"
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert is_multiview(pipe.unet) and has_camera(pipe.unet)

    states, mask = encode_text(pipe.text_encoder, pipe.tokenizer, ["a red chair", ""])
    assert mask is None and states.shape == (2, 12, 32)  # CLIP: full context, no mask

    out = pipe("a red chair", cameras=orbit_cameras(4), height=16, width=16, guidance_scale=2.0,
               num_inference_steps=STEPS, generator=seeded(0)).images
    assert out.shape == (4, 16, 16, 3) and 0.0 <= out.min() and out.max() <= 1.0

    # The converted UNet with F = 1 is SD's UNet, whatever the cameras.
    original = UNet2DConditionModel.from_pretrained(sd_folder, subfolder="unet").eval()
    g = seeded(2)
    z, text = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 12, 32, generator=g)
    t = torch.tensor(321)
    with torch.no_grad():
        expected = original(z, t, encoder_hidden_states=text).sample
        got = pipe.unet(z, t, encoder_hidden_states=text, class_labels=torch.randn(4, 16, generator=g),
                        cross_attention_kwargs={"num_views": 1}).sample
    assert torch.equal(got, expected)


# --- the sampler core: one loop under both pipelines -----------------------------------------

def tiny_mvdiffusion():
    """MVDiffusion's depth-to-image pipeline on the tiny components, no CAA; 2 views of 8 px."""
    from dreamline.models.codec import PixelUnshuffleCodec
    from dreamline.models.unet import build_unet
    from dreamline.texturing.depth import add_depth_input
    from dreamline.texturing.pipeline import MVDiffusionPipeline
    from tiny_models import TINY, tiny_text

    text_encoder, tokenizer = tiny_text()
    torch.manual_seed(0)
    unet = add_depth_input(build_unet(TINY, in_channels=12, sample_size=4, cross_attention_dim=16), 4).eval()
    pipe = MVDiffusionPipeline(unet=unet, vae=PixelUnshuffleCodec(factor=2), text_encoder=text_encoder,
                               tokenizer=tokenizer, scheduler=DDIMScheduler(prediction_type="v_prediction"),
                               max_tokens=8)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sampler(name: str):
    """run(**kwargs) -> (N, 3, 8, 8) images of the named pipeline, and its latent shape."""
    if name == "multiview":
        pipe = tiny_pipeline()
        cameras = orbit_cameras(4)
        return (lambda **kw: pipe("a red chair", cameras=cameras, num_inference_steps=STEPS, output_type="pt",
                                  **kw).images), (4, 12, 4, 4)
    pipe = tiny_mvdiffusion()
    cameras = [Camera.orbit(180.0 * i, 20.0, 1.5, 40.0, 8) for i in range(2)]
    depths = np.full((2, 8, 8), 1.5)
    depths[:, :2] = 0.0
    return (lambda **kw: pipe("a red chair", depths, cameras, num_inference_steps=STEPS, output_type="pt",
                              **kw).images), (2, 12, 4, 4)


@pytest.mark.parametrize("name", ["multiview", "mvdiffusion"])
def test_eta_makes_ddim_stochastic_and_seeded(name):
    run, shape = sampler(name)
    latents = torch.randn(shape, generator=seeded(9))
    plain = run(latents=latents, generator=seeded(0))
    assert torch.equal(run(latents=latents, eta=0.0, generator=seeded(1)), plain)  # eta 0: no draws
    noisy = run(latents=latents, eta=1.0, generator=seeded(0))
    assert torch.equal(run(latents=latents, eta=1.0, generator=seeded(0)), noisy)  # same generator
    assert (noisy - plain).abs().max() > 1e-4
    # The steps' noise comes from the generator: same start, another seed, another sample.
    assert (run(latents=latents, eta=1.0, generator=seeded(1)) - noisy).abs().max() > 1e-4


@pytest.mark.parametrize("name", ["multiview", "mvdiffusion"])
def test_guidance_rescale_changes_guided_samples(name):
    run, _ = sampler(name)
    cfg = run(guidance_scale=3.0, negative_prompt="a blue car", generator=seeded(0))
    rescaled = run(guidance_scale=3.0, guidance_rescale=0.7, negative_prompt="a blue car", generator=seeded(0))
    assert (cfg - rescaled).abs().max() > 1e-4
    assert torch.equal(run(guidance_scale=3.0, guidance_rescale=0.0, negative_prompt="a blue car",
                           generator=seeded(0)), cfg)
    # Without guidance there is nothing to rescale.
    assert torch.equal(run(guidance_rescale=0.7, generator=seeded(0)), run(generator=seeded(0)))


def test_denoise_is_the_scheduler_loop_with_guidance():
    scheduler = DDIMScheduler(prediction_type="v_prediction")
    latents = torch.randn(2, 3, 4, 4, generator=seeded(0))
    weights = torch.tensor([0.2, 0.2, 0.5, 0.5]).reshape(-1, 1, 1, 1)   # uncond half, cond half
    seen = []

    def model(x, t):
        return weights * x + 1e-3 * t

    def progress(timesteps):
        seen.extend(int(t) for t in timesteps)
        return timesteps

    got = denoise(scheduler, model, latents, 4, guidance_scale=3.0, generator=seeded(1), eta=0.5,
                  progress=progress)
    reference = DDIMScheduler(prediction_type="v_prediction")
    reference.set_timesteps(4)
    x, g = latents * reference.init_noise_sigma, seeded(1)
    for t in reference.timesteps:
        uncond, cond = model(torch.cat([x, x]), t).chunk(2)
        x = reference.step(uncond + 3.0 * (cond - uncond), t, x, eta=0.5, generator=g).prev_sample
    assert torch.equal(got, x)
    assert seen == [int(t) for t in reference.timesteps] and len(seen) == 4
    # generator and eta reach a step only if it takes them.
    g = seeded(0)
    assert step_kwargs(DDIMScheduler(), g, 0.3) == {"generator": g, "eta": 0.3}
    assert step_kwargs(DDPMScheduler(), g, 0.3) == {"generator": g}


# --- grids ---------------------------------------------------------------------------------

def test_grid_image_tiles_rows():
    images = np.random.default_rng(0).random((6, 8, 8, 3)).astype(np.float32)
    grid = grid_image(images, nrow=4, padding=2)
    assert grid.size == (4 * 10 + 2, 2 * 10 + 2) and grid.mode == "RGB"
    pixels = np.asarray(grid)
    assert np.array_equal(pixels[2:10, 2:10], (images[0] * 255).round().astype(np.uint8))
    assert np.all(pixels[12:20, 22:30] == 255)  # the short last row leaves the background
    pt = grid_image(torch.from_numpy(images).permute(0, 3, 1, 2), nrow=3)
    assert pt.size == (3 * 10 + 2, 2 * 10 + 2)
