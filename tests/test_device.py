"""Device and precision of the non-training torch stages (issue 19), exercised on the CPU:
a device or precision this machine cannot run stops a stage with exit code 2 naming the key;
fp32 draws of dreamline.device are plain torch draws and the precision never changes what
the step generator draws; distillation in bf16 (CPU autocast) runs with float32 parameters
and Adam state and finite losses; the frozen models (evaluator towers, priors, sampling and
texturing pipelines, the image captioner) in bf16 agree with fp32 within tolerance."""
from __future__ import annotations

import copy
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dreamline import device as dl
from dreamline.distill.loop import CHECKPOINT, PriorCache, distill, distill_key
from dreamline.distill.run import distill_prompt, model_digest, model_paths
from dreamline.runinfo import read_run
from test_distill import tiny_params
from tiny_models import save_tiny_priors, tiny_pipeline

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("priors")
    save_tiny_priors(root)
    return root


# ------------------------------------------------------------------ device and precision

@no_cuda
def test_cuda_on_a_cpu_machine_is_a_device_error_naming_the_key():
    from tasks.common import compute_target

    for name in ("cuda", "cuda:1"):
        with pytest.raises(dl.DeviceError, match=rf"compute.device '{name}': this machine has no CUDA device"):
            dl.resolve_device(name)
        with pytest.raises(dl.DeviceError, match="compute.device"):
            compute_target(name, "fp32")
    assert dl.resolve_device("auto") == CPU and compute_target("auto", "bf16") == (CPU, "bf16")


def test_fp16_on_the_cpu_is_refused_bf16_and_fp32_are_not():
    from tasks.common import compute_target

    with pytest.raises(dl.DeviceError, match="compute.precision fp16 needs a CUDA device"):
        dl.check_precision(CPU, "fp16")
    with pytest.raises(dl.DeviceError, match="compute.precision fp16"):
        compute_target("cpu", "fp16")
    for ok in ("fp32", "bf16"):
        dl.check_precision(CPU, ok)
    assert dl.describe(CPU, "bf16") == {"device": "cpu", "device_name": "cpu", "precision": "bf16"}


def _params_file(tmp_path, **compute) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["compute"].update(compute)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@no_cuda
@pytest.mark.parametrize("stage", ["distill", "evaluate"])
def test_a_stage_stops_with_exit_2_naming_the_key(tmp_path, stage):
    """The same path as an invalid params file (stages/_common.py), before any work."""
    for compute, words in (({"device": "cuda"}, "compute.device 'cuda'"),
                           ({"device": "cpu", "precision": "fp16"}, "compute.precision fp16")):
        proc = subprocess.run([sys.executable, "-m", f"stages.{stage}", "--params", str(_params_file(tmp_path, **compute))],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
        assert words in proc.stderr and f"stage {stage}:" in proc.stderr, proc.stderr[-2000:]


@no_cuda
def test_the_commands_stop_with_exit_2_naming_the_key(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["sample", "a red chair", "--device", "cuda", "--params", str(tmp_path / "none.yaml")])
    assert out.exit_code == 2 and "compute.device 'cuda'" in out.output, out.output
    out = runner.invoke(app, ["sample", "a red chair", "--params", str(_params_file(tmp_path, precision="fp16",
                                                                                        device="cpu"))])
    assert out.exit_code == 2 and "compute.precision fp16" in out.output, out.output
    out = runner.invoke(app, ["generate", "a red chair", "--params", str(_params_file(tmp_path, device="cuda"))])
    assert out.exit_code == 2 and "compute.device 'cuda'" in out.output, out.output


# ------------------------------------------------------------------------- randomness

def test_fp32_draws_are_plain_torch_draws_in_the_same_order():
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(2):   # interleaved: each call consumes exactly what the plain draw does
        assert torch.equal(dl.randn((2, 5), a, CPU), torch.randn(2, 5, generator=b))
        assert torch.equal(dl.rand(7, a), torch.rand(7, generator=b))
        assert torch.equal(dl.randint(3, 11, (4,), a, CPU), torch.randint(3, 11, (4,), generator=b))
        assert torch.equal(dl.rand((3, 1), a, None), torch.rand(3, 1, generator=b))
    assert torch.equal(a.get_state(), b.get_state())
    x = dl.randn((3,), torch.Generator().manual_seed(0), CPU)
    assert x.dtype == torch.float32 and x.device == CPU


def test_views_drawn_for_a_device_are_the_cpu_draws():
    from dreamline.config import DistillCameraParams
    from dreamline.distill.sampling import sample_views

    p = DistillCameraParams()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    plain = sample_views(p, 8, 4, 16, g1)
    placed = sample_views(p, 8, 4, 16, g2, device=CPU)
    assert torch.equal(plain.cams.c2w, placed.cams.c2w) and torch.equal(plain.light.position, placed.light.position)
    assert torch.equal(g1.get_state(), g2.get_state())


def test_the_precision_does_not_change_what_the_step_generator_draws(models, tmp_path):
    """Cameras, shading, backgrounds, jitter, timesteps and noise come from the CPU generator
    in the same order at fp32 and bf16: the checkpointed generator states agree."""
    p = tiny_params(models, guidance_type="mv-sds+agp", steps=2, background="random")
    states = {}
    for precision in ("fp32", "bf16"):
        work = tmp_path / precision
        distill(p, "a red chair", PriorCache(device="cpu", precision=precision), work, key="k")
        from dreamline import tensorfile

        states[precision] = tensorfile.load(work / CHECKPOINT)["generator"]
    assert torch.equal(states["fp32"], states["bf16"])


# ------------------------------------------------------------------------ distillation

@pytest.mark.parametrize("guidance,representation", [("mv-sds+agp", "voxel"), ("sds", "gaussians"),
                                                     ("ism", "voxel")])
def test_bf16_distillation_on_the_cpu_runs_with_finite_losses(models, tmp_path, guidance, representation):
    p = tiny_params(models, guidance_type=guidance, representation_type=representation, steps=3)
    priors = PriorCache(device="cpu", precision="bf16")
    out = tmp_path / "asset"
    summary = distill_prompt(p, "red-chair", "a red chair", out, tmp_path / "work", priors=priors)
    assert summary["steps"] == 3 and np.isfinite(summary["final_loss"])
    with (out / "curve.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(np.isfinite(float(r["loss"])) for r in rows)
    for prior in priors._priors.values():      # frozen priors stored in bf16
        assert prior.unet.dtype == torch.bfloat16 and prior.pipe.text_encoder.dtype == torch.bfloat16
    # The device goes to the untracked run.json only; the precision is part of the key.
    run = read_run(out)["distill"]
    assert (run["device"], run["device_name"], run["precision"]) == ("cpu", "cpu", "bf16")
    assert not {"device", "device_name", "precision"} & set(json.loads((out / "summary.json").read_text()))
    digests = {path: model_digest(path) for path in model_paths(p)}
    assert summary["key"] == distill_key(p, "a red chair", digests, "bf16") != distill_key(p, "a red chair", digests)


def test_bf16_keeps_the_representation_and_adam_state_float32(models, tmp_path):
    from dreamline import tensorfile

    p = tiny_params(models, guidance_type="sds", steps=2)
    result = distill(p, "a red chair", PriorCache(device="cpu", precision="bf16"), tmp_path, key="k")
    assert all(t.dtype == torch.float32 for t in result.representation.parameters())
    state = tensorfile.load(tmp_path / CHECKPOINT)["optimiser"]["state"]
    moments = [v for s in state.values() for k, v in s.items() if k in ("exp_avg", "exp_avg_sq")]
    assert moments and all(m.dtype == torch.float32 for m in moments)


def test_bf16_prior_predicts_close_to_fp32():
    from dreamline.guidance.prior import DiffusionPrior

    p32 = DiffusionPrior(tiny_pipeline(seed=2), device="cpu", precision="fp32")
    p16 = DiffusionPrior(tiny_pipeline(seed=2), device="cpu", precision="bf16")
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 8, 8, generator=g)
    z = p32.encode(images)
    assert torch.allclose(p16.encode(images), z, atol=1e-2) and p16.encode(images).dtype == torch.float32
    t = torch.tensor([100, 300, 500, 700])
    cams = torch.eye(4).reshape(1, 16).repeat(4, 1)
    a = p32.guided(z, t, ["a red chair"] * 4, [""] * 4, 3.0, cams, num_views=4).eps
    b = p16.guided(z, t, ["a red chair"] * 4, [""] * 4, 3.0, cams, num_views=4).eps
    assert b.dtype == torch.float32 and torch.isfinite(b).all()
    assert (a - b).norm() / a.norm() < 0.05


def test_camera_free_unconditional_branch_is_two_plain_predictions():
    """guided(uncond_cameras=False): the unconditional half without the camera embedding, the
    conditional half with it, each as its own call would give it; the default keeps both."""
    from dreamline.guidance.prior import DiffusionPrior

    prior = DiffusionPrior(tiny_pipeline(seed=2), device="cpu", precision="fp32")
    g = torch.Generator().manual_seed(0)
    z = prior.encode(torch.rand(4, 3, 8, 8, generator=g))
    t = torch.tensor([900, 900, 900, 900])
    cams = torch.randn(4, 16, generator=g)
    with torch.no_grad():   # a camera embedding that matters (the stage's starts at zero)
        prior.unet.class_embedding.linear_2.weight.normal_(0, 0.5, generator=g)
    free = prior.guided(z, t, ["a red chair"] * 4, [""] * 4, 3.0, cams, num_views=4, uncond_cameras=False)
    both = prior.guided(z, t, ["a red chair"] * 4, [""] * 4, 3.0, cams, num_views=4)
    torch.testing.assert_close(free.eps_uncond, prior.eps(z, t, [""] * 4, None, 4))
    torch.testing.assert_close(free.eps_cond, prior.eps(z, t, ["a red chair"] * 4, cams, 4))
    torch.testing.assert_close(both.eps_uncond, prior.eps(z, t, [""] * 4, cams, 4))
    assert not torch.allclose(free.eps_uncond, both.eps_uncond)


# --------------------------------------------------------------------------- evaluation

@pytest.fixture(scope="module")
def towers():
    from dreamline.evaluation.towers import EfficientNetLite0, MiniLMSentences

    return {precision: (EfficientNetLite0(64, CPU, precision), MiniLMSentences(device=CPU, precision=precision))
            for precision in ("fp32", "bf16")}


def _asset_views() -> torch.Tensor:
    """What the evaluator scores: renders of (random-albedo) voxel assets over white, lit and
    textureless, 4 azimuths each."""
    from dreamline.evaluation.asset_metrics import render_asset
    from dreamline.representations.configs import VoxelParams
    from dreamline.representations.voxel import VoxelField

    out = []
    for seed in range(2):
        field = VoxelField(VoxelParams(resolution=16), torch.Generator().manual_seed(seed))
        with torch.no_grad():
            field.albedo.mul_(10.0)
        views = render_asset(field, 4, 20.0, 64, 0.6)
        out += [views.colour, views.geo[:1]]
    return torch.cat(out)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_evaluator_scores_in_bf16_close_to_fp32(towers):
    from dreamline.evaluation.evaluator import LiTEvaluator, LiTHeads
    from dreamline.evaluation.metrics import clip_score, retrieval_ranks

    torch.manual_seed(0)
    heads = LiTHeads(1280, 384, 32)
    images = _asset_views()
    texts = ["a red chair", "a blue mug", "a green lamp", "a small car", "a big table", "a wooden stool",
             "a tall vase", "a toy house", "a metal bench", "a round clock"]
    ev = {pr: LiTEvaluator(copy.deepcopy(heads), 64, "tiny", towers=towers[pr], device=CPU, precision=pr)
          for pr in ("fp32", "bf16")}
    img = {pr: e.embed_images(images) for pr, e in ev.items()}
    txt = {pr: e.embed_texts(texts) for pr, e in ev.items()}
    assert img["bf16"].dtype == np.float32 and txt["bf16"].dtype == np.float32
    # Measured: image embeddings cos >= 0.995, text 0.9999, CLIP scores within 1.3 (of 100).
    assert _cos(img["fp32"], img["bf16"]).min() > 0.99 and _cos(txt["fp32"], txt["bf16"]).min() > 0.999
    scores = {pr: clip_score(img[pr], txt[pr]) for pr in ev}
    assert np.abs(scores["fp32"] - scores["bf16"]).max() < 2.5
    assert np.abs(img["fp32"] @ txt["fp32"].T - img["bf16"] @ txt["bf16"].T).max() < 0.05
    truth = np.arange(10)
    ranks = {pr: retrieval_ranks(img[pr], txt[pr], truth) for pr in ev}
    assert np.abs(ranks["fp32"] - ranks["bf16"]).mean() <= 1.0
    # The FID / IS features of EfficientNet-Lite0 move more in bf16 (measured: cos >= 0.988,
    # class posteriors within 0.23): a precision is a DVC dependency for that reason.
    feats = {pr: towers[pr][0](images) for pr in ev}
    assert _cos(feats["fp32"][0], feats["bf16"][0]).min() > 0.98
    assert np.abs(feats["fp32"][1] - feats["bf16"][1]).max() < 0.35
    assert all(p.dtype == torch.float32 for p in ev["bf16"].heads.parameters())


def test_heads_train_in_bf16_with_float32_weights():
    from dreamline.evaluation.evaluator import train_heads

    rng = np.random.default_rng(0)
    feats, texts = rng.normal(size=(24, 48)).astype(np.float32), rng.normal(size=(6, 24)).astype(np.float32)
    labels = np.arange(24) % 6
    out = {pr: train_heads(feats, texts, labels, np.arange(24), 16, 20, 8, 1e-2, 0, device=CPU, precision=pr)
           for pr in ("fp32", "bf16")}
    heads, curve = out["bf16"]
    assert all(np.isfinite(r["loss"]) for r in curve) and curve[-1]["loss"] < curve[0]["loss"]
    assert all(p.dtype == torch.float32 for p in heads.parameters())
    assert abs(out["fp32"][1][0]["loss"] - curve[0]["loss"]) < 0.05      # the same first batch


def test_asset_renders_and_sampling_in_bf16(models):
    """The image-quality sampling: a frozen pipeline placed in bf16 samples under autocast
    from the same CPU-drawn noise, close to fp32."""
    from dreamline.models.sampling import place
    from dreamline.training.common import load_base_pipeline, orbit_cameras

    out = {}
    for precision in ("fp32", "bf16"):
        pipe = place(load_base_pipeline(models / "mv"), CPU, precision)
        pipe.set_progress_bar_config(disable=True)
        with dl.autocast(CPU, precision):
            out[precision] = pipe(["a red chair"], cameras=orbit_cameras(4, 15.0, 2.0), num_inference_steps=3,
                                  guidance_scale=2.0, generator=torch.Generator().manual_seed(0),
                                  output_type="pt").images
        assert pipe.unet.dtype == dl.frozen_dtype(precision)
    assert out["bf16"].dtype == torch.float32 and torch.isfinite(out["bf16"]).all()
    assert (out["fp32"] - out["bf16"]).abs().mean() < 0.05


# ---------------------------------------------------------------------------- texture

def test_mvdiffusion_texturing_in_bf16_close_to_fp32():
    from test_caa import _tiny_mvdiffusion, orbit, sphere_depth

    from dreamline.models.sampling import place

    cams = orbit(4, 16)
    depths = np.stack([sphere_depth(c) for c in cams])
    out = {}
    for precision in ("fp32", "bf16"):
        pipe = _tiny_mvdiffusion()
        with torch.no_grad():
            for b in pipe.caa.blocks:        # a CAA that does something
                b.to_out.weight.copy_(0.2 * torch.randn(b.to_out.weight.shape, generator=torch.Generator().manual_seed(0)))
        place(pipe, CPU, precision)
        with dl.autocast(CPU, precision):
            out[precision] = pipe("a red mug", depths, cams, num_inference_steps=3, guidance_scale=2.0,
                                  generator=torch.Generator().manual_seed(0), output_type="np").images
    assert np.isfinite(out["bf16"]).all() and out["bf16"].dtype == np.float32
    assert np.abs(out["fp32"] - out["bf16"]).mean() < 0.05


# --------------------------------------------------------------------------- captioner

def test_image_captioner_takes_the_compute_device_not_a_config_key(tmp_path):
    from pydantic import ValidationError
    from test_image_captioner import save_tiny_blip

    from dreamline.captioning.configs import ImageCaptionerParams
    from dreamline.captioning.image import ImageCaptioner

    with pytest.raises(ValidationError, match="device"):
        ImageCaptionerParams(device="cpu")
    config = ImageCaptionerParams(model_path=str(save_tiny_blip(tmp_path / "blip")), max_new_tokens=5)
    views = np.random.default_rng(0).integers(0, 255, size=(2, 32, 32, 3), dtype=np.uint8)
    texts = {}
    for precision in ("fp32", "bf16"):
        captioner = ImageCaptioner(config).place(CPU, precision)
        texts[precision] = captioner.caption_views(views)
        assert captioner._model.dtype == dl.frozen_dtype(precision) and captioner.device == "cpu"
    assert all(isinstance(t, str) for t in texts["bf16"]) and len(texts["bf16"]) == 2
