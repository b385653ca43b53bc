"""Depth conditioning (MVDiffusion's depth-to-image base): the depth map as extra UNet input.

Depth is normalised per view, as Stable Diffusion's depth-to-image model does (near = 1,
far = -1 over the foreground; background -1 since it is farthest), then brought to the
latent grid: pixel-unshuffled by the codec's factor for pixel-space models (every pixel
kept), area-resized to the latent size for a VAE (one channel). The base UNet gets those
channels as extra `conv_in` inputs with zero weights, so the widened model starts out
computing exactly what the base computed.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dreamline.models.codec import PixelUnshuffleCodec, spatial_factor


def normalise_depth(depth: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(..., H, W) depth (0 = background) -> same shape in [-1, 1]: nearest foreground 1,
    farthest foreground and background -1. A view with no foreground is all -1."""
    d = torch.as_tensor(np.asarray(depth) if not torch.is_tensor(depth) else depth, dtype=torch.float32)
    fg = torch.isfinite(d) & (d > 0)
    flat_d, flat_fg = d.flatten(-2), fg.flatten(-2)
    big = torch.finfo(torch.float32).max
    near = torch.where(flat_fg, flat_d, big).amin(-1)[..., None, None]
    far = torch.where(flat_fg, flat_d, -big).amax(-1)[..., None, None]
    span = (far - near).clamp_min(1e-6)
    out = 1.0 - 2.0 * (d - near) / span
    return torch.where(fg, out.clamp(-1.0, 1.0), torch.full_like(d, -1.0))


def depth_channels(vae) -> int:
    return vae.config.factor ** 2 if isinstance(vae, PixelUnshuffleCodec) else 1


def depth_condition(depth: np.ndarray | torch.Tensor, vae) -> torch.Tensor:
    """(N, H, W) depth at image resolution -> (N, depth_channels(vae), h, w) on the latent grid."""
    x = normalise_depth(depth)[:, None]
    factor = spatial_factor(vae)
    if isinstance(vae, PixelUnshuffleCodec):
        return F.pixel_unshuffle(x, factor)
    return F.adaptive_avg_pool2d(x, (x.shape[-2] // factor, x.shape[-1] // factor))


def add_depth_input(unet, channels: int):
    """Widen `unet.conv_in` by `channels` zero-weighted inputs (in place; returns the UNet).
    The output channels stay those of the latent; the config records both, so the model
    saves and loads as a depth-conditioned UNet."""
    old = unet.conv_in
    latent = unet.config.in_channels
    new = nn.Conv2d(latent + channels, old.out_channels, old.kernel_size, old.stride, old.padding)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :latent] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new.to(old.weight.device, old.weight.dtype)
    unet.register_to_config(in_channels=latent + channels, out_channels=unet.config.out_channels)
    return unet


def latent_channels(unet) -> int:
    """The channels a depth-conditioned UNet denoises (its outputs)."""
    return unet.config.out_channels
