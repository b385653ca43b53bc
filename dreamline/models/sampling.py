"""The sampler core: classifier-free guidance and the denoising loop, written once.

Every sampler in the project goes through here:

- `classifier_free_guidance` (and `guide`, its form for a doubled batch) is the only place
  CFG, ``uncond + scale * (cond - uncond)``, and Lin et al.'s rescale are computed: the
  sampling pipelines (`dreamline.models.pipelines`, `dreamline.texturing.pipeline`) and the
  score-distillation prior (`dreamline.guidance.prior.DiffusionPrior.guided`) call it.
- `denoise` is the one loop over a diffusers scheduler's timesteps: the pipelines hand it
  their initial latents and a model call, and it applies CFG and passes ``generator`` and
  ``eta`` to ``scheduler.step`` whenever that step accepts them.
- `ddim_step` is the deterministic DDIM move in closed form, for loops that walk their own
  (irregular, per-sample) timestep grid instead of a scheduler's: ISM's DDIM inversion.

Only torch and diffusers' ``randn_tensor``: cheap to import from anywhere.
"""
from __future__ import annotations

import inspect
from typing import Callable, Iterable

import torch
from diffusers.utils.torch_utils import randn_tensor

# model(x, t) -> the UNet's prediction for x, the (possibly doubled: unconditional half first)
# batch already passed through ``scheduler.scale_model_input``.
ModelCall = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def uses_guidance(guidance_scale: float) -> bool:
    """Whether CFG is on: a scale of 1 (or less) samples the conditional model alone, in one
    undoubled batch."""
    return guidance_scale > 1.0


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, rescale: float) -> torch.Tensor:
    """Lin et al. 2023, sec. 3.4: pull the guided prediction's per-sample std back to the
    conditional one's (CFG inflates it: over-exposure), mixed in by `rescale`.

    Written out rather than imported: importing it from diffusers' SD pipeline module pulls
    in transformers' image processors (and their torchvision warnings).
    """
    dims = list(range(1, cond.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return rescale * rescaled + (1.0 - rescale) * guided


def classifier_free_guidance(uncond: torch.Tensor, cond: torch.Tensor, scale: float,
                             rescale: float = 0.0) -> torch.Tensor:
    """``uncond + scale * (cond - uncond)``, then CFG rescale (against `cond`) when
    `rescale` > 0. The predictions may be epsilon, v or x0 alike."""
    guided = uncond + scale * (cond - uncond)
    if rescale > 0.0:
        guided = rescale_guidance(guided, cond, rescale)
    return guided


def guide(pred: torch.Tensor, scale: float, rescale: float = 0.0) -> torch.Tensor:
    """CFG on a doubled batch: the unconditional half first, the conditional second."""
    uncond, cond = pred.chunk(2)
    return classifier_free_guidance(uncond, cond, scale, rescale)


def step_kwargs(scheduler, generator: torch.Generator | list[torch.Generator] | None = None,
                eta: float = 0.0) -> dict:
    """``generator`` and ``eta`` for ``scheduler.step``, each only if the step takes it.
    Stochastic steps (DDPM, DDIM with eta > 0) then draw their noise from `generator`;
    a scheduler without an eta (DDPM: always fully stochastic) ignores it."""
    accepts = inspect.signature(scheduler.step).parameters
    return {k: v for k, v in (("generator", generator), ("eta", eta)) if k in accepts}


def initial_latents(shape: tuple[int, ...], generator, device, dtype: torch.dtype,
                    latents: torch.Tensor | None = None) -> torch.Tensor:
    """Gaussian noise of `shape` drawn from `generator`, or the caller's `latents` (checked),
    on `device` in `dtype`. Not yet scaled by the scheduler's init noise sigma (`denoise` does)."""
    if latents is None:
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    elif tuple(latents.shape) != tuple(shape):
        raise ValueError(f"latents of shape {tuple(latents.shape)}, expected {tuple(shape)}")
    return latents.to(device, dtype)


def denoise(scheduler, model: ModelCall, latents: torch.Tensor, num_inference_steps: int, *,
            guidance_scale: float = 1.0, guidance_rescale: float = 0.0,
            generator: torch.Generator | list[torch.Generator] | None = None, eta: float = 0.0,
            device=None, progress: Callable[[Iterable], Iterable] | None = None) -> torch.Tensor:
    """Run `scheduler` from `latents` (unit Gaussian noise) to the clean sample.

    ``set_timesteps``, scale by ``init_noise_sigma``; then per timestep: the batch doubled
    for CFG when `guidance_scale` > 1, ``scale_model_input``, `model`, `guide` with
    `guidance_rescale`, and ``scheduler.step`` with `generator` and `eta` where it takes them.
    `progress` wraps the timesteps (a pipeline's ``progress_bar``).
    """
    scheduler.set_timesteps(num_inference_steps, device=device)
    latents = latents * scheduler.init_noise_sigma
    guidance = uses_guidance(guidance_scale)
    kwargs = step_kwargs(scheduler, generator, eta)
    timesteps = scheduler.timesteps
    for t in (progress(timesteps) if progress is not None else timesteps):
        x = torch.cat([latents, latents]) if guidance else latents
        pred = model(scheduler.scale_model_input(x, t), t)
        if guidance:
            pred = guide(pred, guidance_scale, guidance_rescale)
        latents = scheduler.step(pred, t, latents, **kwargs).prev_sample
    return latents


def ddim_step(x: torch.Tensor, eps: torch.Tensor, ab_from: torch.Tensor, ab_to: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM move of x from one noise level to another along eps (eta = 0);
    towards more noise it is DDIM inversion. `ab_from` / `ab_to` are the alpha-bars of the
    two levels (broadcast against x: per sample, unlike a scheduler's single timestep)."""
    x0 = (x - (1.0 - ab_from).sqrt() * eps) / ab_from.sqrt()
    return ab_to.sqrt() * x0 + (1.0 - ab_to).sqrt() * eps


def place(model, device, precision: str = "fp32"):
    """A frozen model or pipeline (anything with ``.to``) on `device`, stored in
    ``dreamline.device.frozen_dtype(precision)``; returns it. At fp32 only the device is set
    (the weights are float32 already, and diffusers warns on any dtype passed to ``.to``)."""
    from dreamline.device import frozen_dtype

    model = model.to(device)
    return model if precision == "fp32" else model.to(frozen_dtype(precision))
