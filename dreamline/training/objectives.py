"""The denoising objective every training stage minimises, and its held-out evaluation.

One function serves the base model (F = 1, no camera), the multi-view model (F views of an
object share a timestep, cameras on, joint attention), the AGP model (F = 1, camera on) and
MVDiffusion's depth model (extra input channels) with its CAA blocks (a scope around the call).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
import torch.nn.functional as F


@dataclass
class DenoiseBatch:
    latents: torch.Tensor             # (B*F, C, h, w) clean model-space inputs
    states: torch.Tensor              # (B*F, L, D) text token states
    mask: torch.Tensor | None         # (B*F, L) attention mask of the text tokens
    cameras: torch.Tensor | None      # (B*F, 16) or None: camera embedding off
    num_views: int = 1                # F; 1 = per-view self-attention
    cond: torch.Tensor | None = None  # (B*F, C', h, w) extra input channels after z_t (MVDiffusion's depth)
    scope: Callable[[], ContextManager] | None = None   # entered around the UNet call (CAA's correspondences)
    # (first, end, units): this batch is units [first, end) of its step's global batch of
    # `units` objects (F views each), one part of a data-parallel / accumulated step
    # (dreamline.training.loop.Part); None: the whole batch.
    part: tuple[int, int, int] | None = None
    # Training timesteps are drawn from [t_min, T): > 0 spends the batch where the noisy input
    # no longer shows the object (train_mv's high_t_fraction).
    t_min: int = 0


def unet_forward(unet, z_t: torch.Tensor, t: torch.Tensor, batch: DenoiseBatch) -> torch.Tensor:
    kwargs = {}
    if _has_multiview(unet):
        kwargs["cross_attention_kwargs"] = {"num_views": batch.num_views}
    x = z_t if batch.cond is None else torch.cat([z_t, batch.cond.to(z_t.dtype)], dim=1)
    with batch.scope() if batch.scope is not None else nullcontext():
        return unet(x, t, encoder_hidden_states=batch.states, encoder_attention_mask=batch.mask,
                    class_labels=batch.cameras, **kwargs).sample


def _has_multiview(unet) -> bool:
    return any(type(p).__name__ == "MultiViewAttnProcessor" for p in unet.attn_processors.values())


def target_for(scheduler, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(z0, noise, t)
    raise ValueError(f"unsupported prediction_type {kind!r}")


def draw_noise(batch: DenoiseBatch, num_train_timesteps: int, generator: torch.Generator,
               t_range: tuple[int, int] | None = None, whole: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise per image, and a timestep per object shared by its F views (as MVDream).

    A part of a step's batch (`batch.part`) draws for the whole global batch and keeps its
    own rows, so the parts of a step (ranks, micro-batches) together use exactly the numbers
    the whole batch draws in one process. `whole`: return the global batch's draws, on the
    CPU (a caller that draws more, then keeps its part with `own_rows`)."""
    F = batch.num_views
    lo, hi = t_range or (0, num_train_timesteps)
    if batch.part is None:
        n = batch.latents.shape[0]
        t = torch.randint(lo, hi, (n // F,), generator=generator)
        noise = torch.randn(batch.latents.shape, generator=generator)
    else:
        units = batch.part[2]
        t = torch.randint(lo, hi, (units,), generator=generator)
        noise = torch.randn((units * F, *batch.latents.shape[1:]), generator=generator)
    t = t.repeat_interleave(F)
    if whole:
        return noise, t
    return own_rows(batch, noise), own_rows(batch, t)


def own_rows(batch: DenoiseBatch, x: torch.Tensor) -> torch.Tensor:
    """This batch's rows (F per object) of `x`, drawn on the CPU for the whole step's batch,
    on the batch's device."""
    if batch.part is not None:
        first, end, _ = batch.part
        x = x[first * batch.num_views:end * batch.num_views]
    device = batch.latents.device
    return x if x.device == device else x.to(device)


def denoise_loss(unet, scheduler, batch: DenoiseBatch, noise: torch.Tensor, t: torch.Tensor,
                 reduction: str = "mean", snr_gamma: float | None = None) -> torch.Tensor:
    z_t = scheduler.add_noise(batch.latents, noise, t)
    pred = unet_forward(unet, z_t, t, batch)
    err = F.mse_loss(pred.float(), target_for(scheduler, batch.latents, noise, t).float(), reduction="none")
    per_image = err.flatten(1).mean(1)
    if snr_gamma is not None:
        per_image = per_image * min_snr_weight(scheduler, t, snr_gamma).to(per_image.device)
    return per_image.mean() if reduction == "mean" else per_image


def min_snr_weight(scheduler, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights per sample: min(SNR, gamma) / (SNR + 1) for a v-prediction
    loss, min(SNR, gamma) / SNR for epsilon (the x0-space weight min(SNR, gamma) in both)."""
    alpha_bar = scheduler.alphas_cumprod.to(torch.float64)[t.cpu()]
    snr = alpha_bar / (1.0 - alpha_bar)
    clipped = snr.clamp(max=gamma)
    kind = scheduler.config.prediction_type
    if kind == "v_prediction":
        return (clipped / (snr + 1.0)).float()
    if kind == "epsilon":
        return (clipped / snr).float()
    raise ValueError(f"unsupported prediction_type {kind!r}")


def training_loss(unet, scheduler, batch: DenoiseBatch, generator: torch.Generator,
                  snr_gamma: float | None = None) -> torch.Tensor:
    T = scheduler.config.num_train_timesteps
    noise, t = draw_noise(batch, T, generator, (batch.t_min, T) if batch.t_min else None)
    return denoise_loss(unet, scheduler, batch, noise, t, snr_gamma=snr_gamma)


@torch.no_grad()
def paired_heldout_losses(variants: dict[str, tuple], scheduler, timesteps: int,
                          seed: int, unit_size: int = 1, t_range: tuple[int, int] | None = None) -> dict[str, dict]:
    """Mean held-out denoising loss of several (model, batches) variants on the SAME noise.

    Each variant is (unet, list of DenoiseBatch); the lists are aligned and hold the same
    latents, differing only in what the variant changes (text, cameras, F). Every batch is
    evaluated at `timesteps` evenly spaced t (inside `t_range`, default all) with noise drawn
    from `seed`, so rows differ
    only by the model or its conditioning. Per row: mean loss, per-timestep means, every
    evaluation's loss ("items": images x timesteps) and per-unit losses ("units"): the
    mean over timesteps and over `unit_size` consecutive images (the views of one set),
    the independent units a bootstrap may resample.
    """
    lo, hi = t_range or (0, scheduler.config.num_train_timesteps)
    grid = torch.linspace(lo, hi - 1, timesteps + 2)[1:-1].round().long()
    names = list(variants)
    first = variants[names[0]][1]
    per_item = {name: [] for name in names}
    per_unit = {name: [] for name in names}
    per_t = {name: torch.zeros(len(grid)) for name in names}
    for b, ref in enumerate(first):
        if ref.latents.shape[0] % unit_size:
            raise ValueError(f"batch {b} of {ref.latents.shape[0]} images is not whole units of {unit_size}")
        at_b = {name: [] for name in names}
        for k, t_val in enumerate(grid):
            g = torch.Generator().manual_seed(seed * 1_000_003 + b * 1009 + k)
            noise = torch.randn(ref.latents.shape, generator=g)
            t = torch.full((ref.latents.shape[0],), int(t_val), dtype=torch.long)
            for name in names:
                unet, batches = variants[name]
                losses = denoise_loss(unet, scheduler, batches[b], noise, t, reduction="none")
                per_item[name].append(losses)
                at_b[name].append(losses)
                per_t[name][k] += losses.sum()
        for name in names:  # (K, n) -> per image over timesteps -> per unit
            per_unit[name].append(torch.stack(at_b[name]).mean(0).reshape(-1, unit_size).mean(1))
    n_items = sum(b.latents.shape[0] for b in first)
    out = {}
    for name in names:
        items = torch.cat(per_item[name])
        out[name] = {"loss": float(items.mean()), "items": items, "units": torch.cat(per_unit[name]),
                     "per_timestep": {int(t): float(v / n_items) for t, v in zip(grid, per_t[name])}}
    return out


def comparison_table(results: dict[str, dict], reference: str, seed: int = 0) -> dict:
    """JSON-ready rows: each variant's loss and its paired difference to `reference`, with a
    95% interval from resampling units (evaluations of one view or view set at several
    timesteps share the view, so they are not independent draws)."""
    ref = results[reference]["units"]
    rows = {}
    for name, r in results.items():
        row = {"loss": round(r["loss"], 6), "items": int(len(r["items"])), "units": int(len(r["units"])),
               "per_timestep": {str(k): round(v, 6) for k, v in r["per_timestep"].items()}}
        if name != reference:
            lo, hi = paired_bootstrap(r["units"], ref, seed)
            row["minus_" + reference] = round(float((r["units"] - ref).mean()), 6)
            row["ci95"] = [round(lo, 6), round(hi, 6)]
        rows[name] = row
    return rows


def paired_bootstrap(a: torch.Tensor, b: torch.Tensor, seed: int = 0, n: int = 1000) -> tuple[float, float]:
    """95% interval of mean(a - b) over paired units, resampled with replacement."""
    d = (a - b).double()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(d), (n, len(d)), generator=g)
    means = d[idx].mean(1)
    return float(means.quantile(0.025)), float(means.quantile(0.975))
