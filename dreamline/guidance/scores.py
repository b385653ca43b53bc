"""The score-distillation formulas as pure functions of tensors (tested by hand-computed cases).

Every loss is written so that its gradient with respect to the rendered latents z is the
method's update: loss = 0.5 * ||z - stopgrad(z - g)||^2 / B has dloss/dz = g / B.
"""
from __future__ import annotations

import torch

# The deterministic DDIM move (ISM's inversion and its x_s -> x_t step) is the sampler core's.
from dreamline.models.sampling import ddim_step  # noqa: F401


def weight(alpha_bar: torch.Tensor, kind: str) -> torch.Tensor:
    """w(t): "sds" = sigma_t^2 = 1 - alpha_bar (DreamFusion), "snr" = alpha_bar / (1 - alpha_bar)
    (what the x0-reconstruction form implies), "uniform" = 1."""
    if kind == "sds":
        return 1.0 - alpha_bar
    if kind == "snr":
        return alpha_bar / (1.0 - alpha_bar)
    if kind == "uniform":
        return torch.ones_like(alpha_bar)
    raise ValueError(f"unknown weighting {kind!r}")


def surrogate_loss(z: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """A scalar whose gradient wrt z is grad / batch (the UNet Jacobian never enters)."""
    target = (z - grad).detach()
    return 0.5 * ((z - target) ** 2).sum() / z.shape[0]


def sds_grad(eps_pred: torch.Tensor, noise: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """DreamFusion: w(t) (eps_phi(x_t; y, t) - eps)."""
    return w * (eps_pred - noise)


def ism_grad(eps_t: torch.Tensor, eps_s: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """LucidDreamer: w(t) (eps_phi(x_t, t, y) - eps_phi(x_s, s, empty))."""
    return w * (eps_t - eps_s)


def x0_reconstruction_loss(z: torch.Tensor, x0_hat: torch.Tensor) -> torch.Tensor:
    """MVDream: 0.5 ||z - stopgrad(x0_hat)||^2 per batch item (= SDS with w(t) = SNR)."""
    return 0.5 * ((z - x0_hat.detach()) ** 2).sum() / z.shape[0]


def inversion_timesteps(s: int, steps: int) -> list[int]:
    """0 = t_0 < ... < t_k = s, k = min(steps, s) evenly spaced integer timesteps."""
    k = max(1, min(steps, s))
    if s <= 0:
        return [0]
    return sorted(set(int(round(s * i / k)) for i in range(k + 1)))


def perp_neg(eps_uncond: torch.Tensor, eps_pos: torch.Tensor, eps_negs: list[torch.Tensor],
             scale: float, neg_weight: float) -> torch.Tensor:
    """Perp-Neg (Armandpour et al. 2023): remove from each negative direction its component
    along the positive one, so negative view prompts push away from the wrong view without
    cancelling the shared content: eps_u + s (d_pos - w sum_k perp(d_neg_k, d_pos))."""
    d_pos = eps_pos - eps_uncond
    flat = d_pos.flatten(1)
    norm2 = (flat * flat).sum(1).clamp_min(1e-12)
    total = d_pos
    for eps_neg in eps_negs:
        d_neg = (eps_neg - eps_uncond).flatten(1)
        along = ((d_neg * flat).sum(1) / norm2)[:, None] * flat
        total = total - neg_weight * (d_neg - along).reshape(d_pos.shape)
    return eps_uncond + scale * total


def view_suffix(azimuth_deg: float, elevation_deg: float, overhead_deg: float = 60.0) -> str:
    """DreamFusion's view-dependent prompt suffix; azimuth 0 faces the object's front."""
    if elevation_deg > overhead_deg:
        return "overhead view"
    az = (azimuth_deg + 180.0) % 360.0 - 180.0
    if abs(az) < 45.0:
        return "front view"
    if abs(az) > 135.0:
        return "back view"
    return "side view"


def linear(start: float, end: float, fraction: float) -> float:
    fraction = min(max(fraction, 0.0), 1.0)
    return start + (end - start) * fraction
