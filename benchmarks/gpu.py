"""GPU check (issue 19): research-scale costs in one run, printed as one table.

    python benchmarks/gpu.py [--out benchmarks/results/gpu.json] [--budget-s 420] [--tiny]

Random weights in the real architectures (no downloads), bf16 autocast, on CUDA when there
is one. Rows (measurement, value, unit, notes):

a. ``matmul_bf16.peak``: the device's bf16 matmul rate, measured in this run (8192^3
   products); the denominator of every MFU below.
b. ``train_mv.*``: one multi-view training step at 256 px (32x32 latents) x 4 views through
   the project's code: SD 2.1 base's UNet built from its config, turned into MVDream's by
   ``dreamline.models.unet.to_multiview`` (camera MLP + MultiViewAttnProcessor on SDPA),
   ``dreamline.training.objectives.training_loss`` on a ``DenoiseBatch``, AdamW, fp32 weights
   under bf16 autocast. Per batch size (view sets): images/s, peak memory
   (torch.cuda.max_memory_allocated) and MFU = forward+backward FLOPs per image (counted by
   torch.utils.flop_counter.FlopCounterMode on one step) x images/s / the measured peak.
c. ``mvsds.<R>px``: iterations/s of the distillation loop (``dreamline.distill.loop.distill``)
   with the ``mv-sds`` term on a 64^3 voxel grid rendered at R = 64 and 256 px; the prior
   is a ``DiffusionPrior`` around a ``MultiViewDiffusionPipeline`` holding the multi-view
   SD 2.1 UNet, SD's AutoencoderKL config and SD 2.1's text encoder config (bf16).
d. ``ism_gaussians.512px``: the same loop with the ``ism`` term (SD 2.1 UNet without
   cameras, 64x64 latents) on 3D Gaussians rendered at 512 px.
e. ``clip_l14.image_features``: images/s of ``CLIPModel.get_image_features`` at batch 256,
   ViT-L/14's config, bf16.

Each measurement is wrapped: a failure (or an out-of-memory batch) is written in its rows'
notes and the run goes on; a measurement that would start after ``--budget-s`` seconds is
skipped. Rows are printed as they finish and the JSON (``--out``) is rewritten after each
measurement, so a run cut short still leaves what it measured. ``--tiny``: the same code
paths with tiny configs on whatever device is there, in well under a minute (CI's test).

Imports: torch, transformers, numpy, pydantic, PyYAML, diffusers and the repository's own
``dreamline`` package (put on sys.path from here; nothing is installed). Nothing on these
paths imports prefect, dvc, dvclive, pyrender, objaverse, plyfile or imageio-ffmpeg, except
that importing ``dreamline.config`` reaches ``import trimesh`` (a params default's validator
imports dreamline.sources.procedural): where trimesh is absent it gets a stand-in module
(`stub_absent`) that fails on any use. tests/test_gpu_benchmark.py runs this with all of
those blocked.

On the project's GPU host (one H200: torch, transformers, numpy, PyYAML are there;
diffusers and pydantic are not): first, on a machine that reaches PyPI,
``bash benchmarks/gpu_wheels.sh`` (writes .cache/gpu-wheels/, git-ignored), then the
device tool's ``run`` with ``carry: [".cache/gpu-wheels"]``, ``timeout_s: 560`` and::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .cache/gpu-wheels/*.whl && export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 && python3 benchmarks/gpu.py --out $OUT/gpu.json

(the table is in the output; gpu.json comes back through $OUT).
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

# --------------------------------------------------------------------------- configs

# stabilityai/stable-diffusion-2-1-base unet/config.json, sample_size 32 (256 px latents here).
SD21_UNET = dict(
    sample_size=32, in_channels=4, out_channels=4, center_input_sample=False,
    flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1,
    mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
    cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20),   # diffusers' name for the number of heads (64-d heads)
    use_linear_projection=True, dual_cross_attention=False,
)
TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=32,
    attention_head_dim=(2, 4), use_linear_projection=True,
)
# SD 2.x vae/config.json (8x downsampling, 4 latent channels).
SD_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
    layers_per_block=2, act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=256,
    scaling_factor=0.18215,
)
TINY_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
    latent_channels=4, norm_num_groups=8, sample_size=16, scaling_factor=0.18215,
)
# SD 2.1's text encoder (OpenCLIP ViT-H/14 text tower as transformers CLIPTextModel).
SD21_TEXT = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                 num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512)
TINY_TEXT = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                 num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu", projection_dim=16,
                 pad_token_id=0, bos_token_id=2, eos_token_id=3)
# SD 2.1 base scheduler (epsilon prediction, scaled-linear betas).
SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                    beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False,
                    set_alpha_to_one=False, steps_offset=1)
# openai/clip-vit-large-patch14.
CLIP_L14 = dict(
    text_config=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, max_position_embeddings=77, projection_dim=768),
    vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                       num_attention_heads=16, patch_size=14, image_size=224, projection_dim=768),
    projection_dim=768,
)
TINY_CLIP = dict(
    text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                     num_attention_heads=2, max_position_embeddings=77, projection_dim=16,
                     pad_token_id=0, bos_token_id=2, eos_token_id=3),
    vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       patch_size=8, image_size=32, projection_dim=16),
    projection_dim=16,
)
PROMPT = "a red chair"
WORDS = "a an red blue chair mug table lamp front side back overhead view , 3d asset".split()


@dataclass
class Scale:
    name: str
    arch: str                       # what the UNet is, for the notes
    unet: dict
    vae: dict
    text: dict
    clip: dict
    matmul_n: int
    matmul_iters: int
    views: int                      # views per object (MVDream: 4)
    train_latent: int               # training UNet sample_size (latent side)
    train_sets: tuple[int, ...]     # view sets per step
    train_warmup: int
    train_steps: int
    mv_latent: int                  # mv-sds prior UNet sample_size
    mvsds_res: tuple[int, ...]      # render resolutions
    voxel: dict
    ism_latent: int
    ism_res: int
    gaussians: int
    distill_warmup: int
    distill_steps: int
    ism_steps: int
    clip_batch: int
    clip_warmup: int
    clip_steps: int
    cap_s: float                    # most seconds one timed loop may take

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae["block_out_channels"]) - 1)


FULL = Scale(
    name="full", arch="SD2.1 UNet", unet=SD21_UNET, vae=SD_VAE, text=SD21_TEXT, clip=CLIP_L14,
    matmul_n=8192, matmul_iters=50, views=4, train_latent=32, train_sets=(8, 32),
    train_warmup=3, train_steps=10, mv_latent=32, mvsds_res=(64, 256),
    voxel=dict(resolution=64, samples_per_ray=64), ism_latent=64, ism_res=512, gaussians=2048,
    distill_warmup=3, distill_steps=20, ism_steps=10,
    clip_batch=256, clip_warmup=3, clip_steps=10, cap_s=60.0,
)
TINY = Scale(
    name="tiny", arch="tiny UNet", unet=TINY_UNET, vae=TINY_VAE, text=TINY_TEXT, clip=TINY_CLIP,
    matmul_n=256, matmul_iters=5, views=4, train_latent=8, train_sets=(1, 2),
    train_warmup=1, train_steps=2, mv_latent=8, mvsds_res=(8, 16),
    voxel=dict(resolution=8, samples_per_ray=8), ism_latent=8, ism_res=16, gaussians=64,
    distill_warmup=1, distill_steps=2, ism_steps=2,
    clip_batch=8, clip_warmup=1, clip_steps=2, cap_s=10.0,
)

# --------------------------------------------------------------------------- harness


@dataclass
class Row:
    measurement: str
    value: float | None
    unit: str
    notes: str = ""


@dataclass
class Ctx:
    scale: Scale
    device: torch.device
    deadline: float                          # time.monotonic() past which nothing starts
    peak_tflops: float | None = None         # from matmul_bf16.peak
    cache: dict = field(default_factory=dict)

    def cap(self) -> float:
        """Seconds a timed loop may still take."""
        return max(0.0, min(self.scale.cap_s, self.deadline - time.monotonic()))


@dataclass
class Measurement:
    key: str
    rows: list[tuple[str, str]]              # (measurement, unit) it must produce
    fn: Callable[[Ctx, list[Row]], None]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "torch.cuda.max_memory_allocated"
    import resource

    # Linux reports KiB. The process's whole high-water mark, not this step's alone.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "CPU: process peak RSS (ru_maxrss)"


def is_oom(err: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(err, oom) or "out of memory" in str(err).lower()


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def short(err: BaseException, limit: int = 300) -> str:
    text = f"{type(err).__name__}: {err}".replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."


def timed_loop(step: Callable[[], object], warmup: int, n: int, cap_s: float,
               device: torch.device) -> tuple[float, int]:
    """(seconds per step, steps timed) over up to `n` steps after `warmup`; stops early
    (after at least one) once `cap_s` seconds are spent."""
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    done = 0
    while done < n:
        step()
        done += 1
        if done < n and time.perf_counter() - t0 > cap_s:
            break
    sync(device)
    return (time.perf_counter() - t0) / done, done


def steps_note(done: int, n: int) -> str:
    return f"{done} timed steps" if done == n else f"{done} of {n} timed steps (time cap)"


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0 or 1e-3 <= abs(value) < 1e6:
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return f"{value:.3e}"


def table(rows: list[Row]) -> str:
    head = ("measurement", "value", "unit", "notes")
    cells = [head] + [(r.measurement, fmt(r.value), r.unit, r.notes) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(3)]
    lines = []
    for k, c in enumerate(cells):
        lines.append("  ".join([c[0].ljust(widths[0]), c[1].rjust(widths[1]), c[2].ljust(widths[2]), c[3]]))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 5)
    return "\n".join(lines)


# --------------------------------------------------------------------------- absent packages

# dreamline.config imports, at module level, a params default whose validator imports
# dreamline.sources.procedural, which does `import trimesh` at top level (trimesh is used
# there only inside functions). The GPU host has no trimesh: a stand-in module lets that
# import succeed, and any real use of it fails with this message.
STUBBED = ("trimesh",)


class _AbsentError(AttributeError):
    """An AttributeError: `hasattr` probes see nothing, and `from trimesh import x` becomes
    the ImportError it would be without the package."""


class _Absent(type(sys)):
    def __getattr__(self, name: str):
        raise _AbsentError(f"{self.__name__} is not installed here; benchmarks/gpu.py stands in for "
                           f"its import only (attribute {name!r} asked for)")


def stub_absent(names=STUBBED) -> list[str]:
    """Stand-ins for the `names` that cannot be imported; returns those stubbed."""
    import importlib.machinery

    done = []
    for name in names:
        try:
            present = importlib.util.find_spec(name) is not None
        except (ValueError, ImportError):
            present = False
        if present:
            continue
        module = _Absent(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
        sys.modules[name] = module
        done.append(name)
    return done


# --------------------------------------------------------------------------- shared models


def tokenizer():
    """A word-level stand-in for CLIP's BPE tokenizer (its files are not on the GPU host);
    padded to CLIP's 77 tokens, so the UNet's cross-attention sees SD's sequence length."""
    from transformers import BertTokenizer

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS)}
    return BertTokenizer(vocab=vocab, model_max_length=77)


def shared_codec_and_text(ctx: Ctx):
    """The AutoencoderKL and CLIP text encoder every prior shares (random weights)."""
    if "codec" not in ctx.cache:
        from diffusers import AutoencoderKL
        from transformers import CLIPTextConfig, CLIPTextModel

        with torch.device(ctx.device):
            vae = AutoencoderKL(**ctx.scale.vae)
            text = CLIPTextModel(CLIPTextConfig(**ctx.scale.text))
        ctx.cache["codec"] = (vae.eval().requires_grad_(False), text.eval().requires_grad_(False), tokenizer())
    return ctx.cache["codec"]


def unet_config(scale: Scale, sample_size: int) -> dict:
    return {**scale.unet, "sample_size": sample_size}


def build_prior(ctx: Ctx, kind: str):
    """`mv`: the multi-view SD 2.1 UNet (cameras, joint attention) at the mv-sds size;
    `base`: SD 2.1's own UNet (no camera) at the ISM size. Stored bf16 by DiffusionPrior."""
    if kind in ctx.cache:
        return ctx.cache[kind]
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from dreamline.guidance.prior import DiffusionPrior
    from dreamline.models.pipelines import MultiViewDiffusionPipeline
    from dreamline.models.unet import CameraUNet2DConditionModel, to_multiview

    s = ctx.scale
    vae, text, tok = shared_codec_and_text(ctx)
    with torch.device(ctx.device):
        if kind == "mv":
            unet = to_multiview(CameraUNet2DConditionModel(**unet_config(s, s.mv_latent)), camera_dim=16)
        else:
            unet = UNet2DConditionModel(**unet_config(s, s.ism_latent))
    pipe = MultiViewDiffusionPipeline(unet=unet.eval(), vae=vae, text_encoder=text, tokenizer=tok,
                                      scheduler=DDIMScheduler(**SD_SCHEDULER), max_tokens=77,
                                      num_views=s.views if kind == "mv" else 1)
    pipe.set_progress_bar_config(disable=True)
    prior = DiffusionPrior(pipe, name=f"random sd21 {kind}", device=ctx.device, precision="bf16")
    ctx.cache[kind] = prior
    return prior


class _Enough(Exception):
    """Raised from the distillation loop's log callback once enough steps are timed."""


def time_distill(ctx: Ctx, prior, guidance_type: str, guidance: dict, representation_type: str,
                 representation: dict, resolution: int, warmup: int, n: int) -> tuple[float, int, float, str]:
    """(iterations/s, steps timed, peak GiB, peak note) of dreamline's distillation loop.

    The loop logs every step (log_every 1); the callback synchronises and stamps the time,
    and ends the run by raising once `warmup + n` steps are done (no checkpoint is written:
    checkpoint_every is past the end). steps is set far beyond, so the annealed schedules
    sit at their start; the albedo-only warm-up is off so shading follows its shares.
    """
    from dreamline.config import DistillParams
    from dreamline.distill.loop import PriorCache, distill

    p = DistillParams.model_validate({
        "prompts": {"bench": PROMPT}, "guidance_type": guidance_type,
        "guidance": {guidance_type: {"model": f"bench/{guidance_type}", **guidance}},
        "representation_type": representation_type, "representation": representation,
        "steps": 100_000, "resolution": resolution, "views_per_step": ctx.scale.views,
        "shading": {"albedo_warmup_fraction": 0.0}, "checkpoint_every": 10_000_000, "log_every": 1,
    })
    priors = PriorCache(loader=lambda path: prior, device=ctx.device, precision="bf16")
    cap = ctx.cap()
    stamps: list[float] = []

    def log(_msg: str) -> None:
        sync(ctx.device)
        stamps.append(time.perf_counter())
        done = len(stamps)
        if done >= warmup + n or (done > warmup and stamps[-1] - stamps[warmup - 1] > cap):
            raise _Enough

    reset_peak(ctx.device)
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as work:
        try:
            distill(p, PROMPT, priors, Path(work), key="gpu-benchmark", log=log)
        except _Enough:
            pass
    timed = len(stamps) - warmup
    if timed < 1:
        raise RuntimeError(f"the loop ended after {len(stamps)} steps, before any timed step")
    peak, how = peak_memory_gib(ctx.device)
    return timed / (stamps[-1] - stamps[warmup - 1]), timed, peak, how


# --------------------------------------------------------------------------- measurements


def m_matmul(ctx: Ctx, out: list[Row]) -> None:
    s, dev = ctx.scale, ctx.device
    n = s.matmul_n
    g = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16, generator=g)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16, generator=g)
    c = torch.empty(n, n, device=dev, dtype=torch.bfloat16)
    sec, done = timed_loop(lambda: torch.mm(a, b, out=c), 10 if s.name == "full" else 1,
                           s.matmul_iters, ctx.cap(), dev)
    ctx.peak_tflops = 2 * n**3 / sec / 1e12
    out.append(Row("matmul_bf16.peak", ctx.peak_tflops, "TFLOP/s",
                   f"{n}^3 bf16 torch.mm on random data, mean of {done} after warm-up"))


def m_train(ctx: Ctx, out: list[Row]) -> None:
    from diffusers import DDPMScheduler
    from torch.utils.flop_counter import FlopCounterMode

    from dreamline.device import autocast
    from dreamline.models.unet import CameraUNet2DConditionModel, to_multiview
    from dreamline.training.objectives import DenoiseBatch, training_loss

    s, dev = ctx.scale, ctx.device
    latent, views = s.train_latent, s.views
    px = latent * s.vae_factor
    with torch.device(dev):
        unet = to_multiview(CameraUNet2DConditionModel(**unet_config(s, latent)), camera_dim=16)
    unet.train()
    params = sum(p.numel() for p in unet.parameters())
    scheduler = DDPMScheduler(**{k: SD_SCHEDULER[k] for k in ("num_train_timesteps", "beta_start", "beta_end",
                                                               "beta_schedule", "prediction_type", "clip_sample")})
    optimiser = torch.optim.AdamW(unet.parameters(), lr=1e-5, weight_decay=1e-2)
    g = torch.Generator().manual_seed(0)
    cross = s.unet["cross_attention_dim"]

    def batch_of(sets: int) -> DenoiseBatch:
        n = sets * views
        return DenoiseBatch(latents=torch.randn(n, 4, latent, latent, generator=g).to(dev),
                            states=torch.randn(n, 77, cross, generator=g).to(dev), mask=None,
                            cameras=torch.randn(n, 16, generator=g).to(dev), num_views=views)

    def step(batch: DenoiseBatch) -> None:
        with autocast(dev, "bf16"):
            loss = training_loss(unet, scheduler, batch, g)
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)

    what = (f"{s.arch} ({params / 1e6:.1f}M params) via to_multiview, {px}px ({latent}x{latent} latents)"
            f" x {views} views")
    # FLOPs of one whole step (forward + backward), per image; batch size does not change it.
    first = s.train_sets[0]
    batch = batch_of(first)
    step(batch)                                       # AdamW state, allocator, kernels
    with FlopCounterMode(display=False) as counter:
        step(batch)
    total = counter.get_total_flops()
    attention = sum(v for k, v in counter.get_flop_counts().get("Global", {}).items()
                    if "attention" in str(k))
    per_image = total / (first * views)
    sdpa = (f"SDPA {100 * attention / max(total, 1):.1f}% of it" if attention else
            f"SDPA not counted (no FLOP formula for this device's kernel: MFU understated)")
    out.append(Row("train_mv.flops_per_image", per_image / 1e9, "GFLOP",
                   f"forward+backward, FlopCounterMode on one step of {first} view sets; {sdpa}; {what}"))
    del batch

    for sets in s.train_sets:
        name = f"train_mv.bs{sets}"
        images = sets * views
        try:
            free(dev)
            reset_peak(dev)
            batch = batch_of(sets)
            sec, done = timed_loop(lambda: step(batch), s.train_warmup, s.train_steps, ctx.cap(), dev)
            ips = images / sec
            peak, how = peak_memory_gib(dev)
            out.append(Row(f"{name}.images_per_s", ips, "images/s",
                           f"{sets} view sets x {views} views = {images} images/step, {sec * 1e3:.1f} ms/step, "
                           f"{steps_note(done, s.train_steps)}; AdamW, fp32 weights, bf16 autocast"))
            out.append(Row(f"{name}.peak_mem", peak, "GiB", how))
            if ctx.peak_tflops:
                mfu = 100 * per_image * ips / (ctx.peak_tflops * 1e12)
                out.append(Row(f"{name}.mfu", mfu, "%", f"{fmt(per_image / 1e9)} GFLOP/image x {fmt(ips)} "
                               f"images/s / {fmt(ctx.peak_tflops)} TFLOP/s measured peak"))
            else:
                out.append(Row(f"{name}.mfu", None, "%", "no measured matmul peak in this run"))
        except Exception as err:  # noqa: BLE001 - one batch size failing leaves the other
            if not is_oom(err):
                raise
            note = f"OOM at {sets} sets ({images} images): {short(err, 160)}"
            for suffix, unit in (("images_per_s", "images/s"), ("peak_mem", "GiB"), ("mfu", "%")):
                out.append(Row(f"{name}.{suffix}", None, unit, note))
        finally:
            batch = None
            optimiser.zero_grad(set_to_none=True)


def m_mvsds(res: int) -> Callable[[Ctx, list[Row]], None]:
    def run(ctx: Ctx, out: list[Row]) -> None:
        s = ctx.scale
        prior = build_prior(ctx, "mv")
        its, done, peak, how = time_distill(
            ctx, prior, "mv-sds", {"guidance_scale": 50.0, "guidance_rescale": 0.5, "num_views": s.views},
            "voxel", s.voxel, res, s.distill_warmup, s.distill_steps)
        v = s.voxel
        out.append(Row(f"mvsds.{res}px", its, "it/s",
                       f"distill(): mv-sds (CFG 50, rescale 0.5), multi-view {s.arch}, {v['resolution']}^3 voxels, "
                       f"{v['samples_per_ray']} samples/ray, {s.views} views at {res}px -> {prior.resolution}px "
                       f"into the VAE, {prior.resolution // s.vae_factor}^2 latents, bf16 prior; "
                       f"{steps_note(done, s.distill_steps)}; peak {peak:.2f} GiB ({how})"))
    return run


def m_ism(ctx: Ctx, out: list[Row]) -> None:
    s = ctx.scale
    prior = build_prior(ctx, "base")
    on_gsplat = ctx.device.type == "cuda" and importlib.util.find_spec("gsplat") is not None
    its, done, peak, how = time_distill(
        ctx, prior, "ism", {"guidance_scale": 7.5, "t_range": [0.02, 0.5], "delta_t": 50,
                            "delta_t_start": 100, "inversion_steps": 5},
        "gaussians", {"num_points": s.gaussians}, s.ism_res, s.distill_warmup, s.ism_steps)
    out.append(Row(f"ism_gaussians.{s.ism_res}px", its, "it/s",
                   f"distill(): ism (CFG 7.5, 5 inversion steps), {s.gaussians} Gaussians, "
                   f"rasteriser {'gsplat' if on_gsplat else 'torch'}, {s.views} views at {s.ism_res}px, "
                   f"{prior.resolution // s.vae_factor}^2 latents, {s.arch} without cameras, bf16; "
                   f"{steps_note(done, s.ism_steps)}; peak {peak:.2f} GiB ({how})"))


def m_clip(ctx: Ctx, out: list[Row]) -> None:
    from transformers import CLIPConfig, CLIPModel

    s, dev = ctx.scale, ctx.device
    with torch.device(dev):
        model = CLIPModel(CLIPConfig(**s.clip))
    model = model.to(torch.bfloat16).eval().requires_grad_(False)
    size = s.clip["vision_config"]["image_size"]
    pixels = torch.randn(s.clip_batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    pixels = pixels.to(dev, torch.bfloat16)

    def step():
        with torch.inference_mode():
            feats = model.get_image_features(pixel_values=pixels)
        # transformers 5 may return a model output whose pooler_output is the embedding.
        return feats if torch.is_tensor(feats) else feats.pooler_output

    dim = step().shape[-1]
    sec, done = timed_loop(step, s.clip_warmup, s.clip_steps, ctx.cap(), dev)
    vis = s.clip["vision_config"]
    out.append(Row("clip_l14.image_features", s.clip_batch / sec, "images/s",
                   f"CLIPModel.get_image_features, batch {s.clip_batch}, {size}px, vision {vis['hidden_size']}d x "
                   f"{vis['num_hidden_layers']} layers / patch {vis['patch_size']}, {dim}-d embeddings, bf16 "
                   f"({model.config._attn_implementation}); {steps_note(done, s.clip_steps)}"))


def plan(scale: Scale) -> list[Measurement]:
    train_rows = [("train_mv.flops_per_image", "GFLOP")]
    for sets in scale.train_sets:
        train_rows += [(f"train_mv.bs{sets}.images_per_s", "images/s"), (f"train_mv.bs{sets}.peak_mem", "GiB"),
                       (f"train_mv.bs{sets}.mfu", "%")]
    return [
        Measurement("matmul", [("matmul_bf16.peak", "TFLOP/s")], m_matmul),
        Measurement("train", train_rows, m_train),
        *[Measurement(f"mvsds{r}", [(f"mvsds.{r}px", "it/s")], m_mvsds(r)) for r in scale.mvsds_res],
        Measurement("ism", [(f"ism_gaussians.{scale.ism_res}px", "it/s")], m_ism),
        Measurement("clip", [("clip_l14.image_features", "images/s")], m_clip),
    ]


def run_one(m: Measurement, ctx: Ctx, verbose: bool) -> list[Row]:
    """The measurement's declared rows: measured, or carrying its error / skip reason."""
    if time.monotonic() > ctx.deadline:
        return [Row(name, None, unit, "skipped: time budget spent") for name, unit in m.rows]
    out: list[Row] = []
    problem = ""
    t0 = time.monotonic()
    try:
        m.fn(ctx, out)
    except Exception as err:  # noqa: BLE001 - every failure goes in the table
        problem = ("OOM: " if is_oom(err) else "error: ") + short(err)
        if verbose:
            traceback.print_exc()
    finally:
        free(ctx.device)
    for r in out:   # JSON holds no NaN: a non-finite result is a finding, kept in the notes
        if r.value is not None and not math.isfinite(r.value):
            r.notes, r.value = f"non-finite result ({r.value}); {r.notes}", None
    got = {r.measurement: r for r in out}
    rows = [got.get(name) or Row(name, None, unit, problem or "error: not produced") for name, unit in m.rows]
    rows += [r for r in out if r.measurement not in dict(m.rows)]
    print(f"[gpu.py] {m.key} done in {time.monotonic() - t0:.1f} s", flush=True)
    return rows


def environment(device: torch.device) -> dict:
    import importlib.metadata as md

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("diffusers", "transformers", "pydantic", "numpy"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    env = {"device": str(device), "versions": versions, "platform": platform.platform(),
           "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device_name=props.name, device_memory_gib=round(props.total_memory / 2**30, 1),
                   cuda=torch.version.cuda, sm_count=props.multi_processor_count)
    else:
        env["device_name"] = platform.processor() or "cpu"
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gpu.json")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="no measurement starts after this many seconds (default 420)")
    ap.add_argument("--tiny", action="store_true", help="tiny configs on any device (CI)")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cuda, cpu")
    ap.add_argument("--only", default="", help="comma-separated measurement keys (matmul, train, "
                    "mvsds<R>, ism, clip); default all")
    ap.add_argument("--gaussians", type=int, default=None, help="Gaussians for the ISM row")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--verbose", action="store_true", help="print tracebacks of failures")
    args = ap.parse_args(argv)

    start = time.monotonic()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    scale = TINY if args.tiny else FULL
    if args.gaussians:
        scale = replace(scale, gaussians=args.gaussians)
    ctx = Ctx(scale, device, deadline=start + args.budget_s)
    measurements = plan(scale)
    if args.only:
        keys = {k.strip() for k in args.only.split(",") if k.strip()}
        unknown = keys - {m.key for m in measurements}
        if unknown:
            ap.error(f"--only: unknown {sorted(unknown)}; known {[m.key for m in measurements]}")
        measurements = [m for m in measurements if m.key in keys]

    stubbed = stub_absent()
    try:   # diffusers warns on every bf16 cast of a frozen model (dreamline.models.sampling.place)
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
    except ImportError:
        pass
    env = environment(device)
    env["stubbed_imports"] = stubbed
    print(f"[gpu.py] {scale.name} mode on {device} ({env.get('device_name')}), budget {args.budget_s:.0f} s, "
          f"{json.dumps(env['versions'])}, stand-ins for {stubbed or 'nothing'}", flush=True)
    report = {"mode": scale.name, "budget_s": args.budget_s, **env, "config": asdict(scale),
              "planned": [name for m in measurements for name, _ in m.rows], "rows": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    for m in measurements:
        new = run_one(m, ctx, args.verbose)
        rows += new
        for r in new:
            print(f"[gpu.py]   {r.measurement} = {fmt(r.value)} {r.unit}  {r.notes}", flush=True)
        report.update(rows=[asdict(r) for r in rows], elapsed_s=round(time.monotonic() - start, 1))
        args.out.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    print()
    print(table(rows))
    print(f"\n[gpu.py] {len(rows)} rows in {time.monotonic() - start:.1f} s -> {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
