"""MVDiffusion's correspondence-aware attention (CAA), and a UNet with CAA after each block.

For a token at pixel s of view i and its corresponding point t^l in each other view l
(dreamline.texturing.correspondence.py), CAA attends over the K x K pixels around t^l:

    M(s) = sum_l sum_{t* in N(t^l)} softmax_t*( Q f_i(s) . K (f_l(t*) + P g(t* - t^l)) ) V (f_l(t*) + P g(t* - t^l))

f are the block's (group-normalised) features, g a sin/cos frequency encoding of the 2D
displacement, P a linear map of it. The neighbourhood is the K x K pixel centres nearest
t^l, so the displacements t* - t^l are sub-pixel values in [-(K+1)/2, (K+1)/2] that tell
the block where each sampled feature sits relative to the exact correspondence (the paper
encodes the displacement of the neighbour from the query pixel; for posed views that is
this quantity through the local source-to-target mapping). Features are sampled
bilinearly. The output projection starts at zero (ControlNet style), so a UNet with CAA
blocks computes exactly what the frozen base does until the blocks train.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from dreamline.texturing.correspondence import Correspondences


def frequency_encoding(d: torch.Tensor, num_freqs: int) -> torch.Tensor:
    """(..., 2) displacements in pixels -> (..., 4 * num_freqs): sin and cos of 2^k * pi * d / 4."""
    scales = (2.0 ** torch.arange(num_freqs, dtype=d.dtype, device=d.device)) * math.pi / 4.0
    x = d[..., None] * scales                                  # (..., 2, F)
    return torch.cat([x.sin(), x.cos()], dim=-1).flatten(-2)


class CorrespondenceAwareAttention(nn.Module):
    def __init__(self, channels: int, heads: int = 1, kernel: int = 3, num_freqs: int = 4, norm_groups: int = 32):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels {channels} is not a multiple of heads {heads}")
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be odd and positive, got {kernel}")
        self.heads, self.kernel, self.num_freqs = heads, kernel, num_freqs
        self.norm = nn.GroupNorm(math.gcd(norm_groups, channels), channels)
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(channels, channels, bias=False)
        self.to_v = nn.Linear(channels, channels, bias=False)
        self.pos = nn.Linear(4 * num_freqs, channels)
        self.to_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)
        r = torch.arange(kernel, dtype=torch.float32) - (kernel - 1) / 2
        self.register_buffer("offsets", torch.stack(torch.meshgrid(r, r, indexing="xy"), -1).reshape(-1, 2),
                             persistent=False)                  # (K*K, 2) as (du, dv)

    def forward(self, x: torch.Tensor, corr: Correspondences, num_views: int) -> torch.Tensor:
        """x: (B*N, C, h, w), the N views of each object contiguous; corr.target (B, N, N-1, h, w, 2)
        or (N, N-1, h, w, 2) shared by the batch. Returns x + CAA(x)."""
        bn, c, h, w = x.shape
        n = num_views
        if bn % n:
            raise ValueError(f"batch {bn} is not a multiple of num_views {n}")
        b = bn // n
        target, valid = corr.target.to(x.device), corr.valid.to(x.device)
        if target.dim() == 5:
            target, valid = target.expand(b, *target.shape), valid.expand(b, *valid.shape)
        if tuple(target.shape[1:5]) != (n, n - 1, h, w):
            raise ValueError(f"correspondences {tuple(target.shape)} do not match {n} views of {h}x{w}")
        kk = self.offsets.shape[0]
        feats = self.norm(x).reshape(b, n, c, h, w)
        others = torch.tensor(corr.others, device=x.device)                      # (N, N-1)
        src = feats[:, others]                                                   # (B, N, N-1, C, h, w)

        # Neighbours: the K x K pixel centres nearest t^l, sampled bilinearly (exact at centres).
        centre = torch.floor(target) + 0.5                                       # (B, N, N-1, h, w, 2)
        nbr = centre[..., None, :] + self.offsets.to(x.dtype)                    # (..., K*K, 2)
        disp = nbr - target[..., None, :]
        grid = torch.stack([2 * nbr[..., 0] / w - 1, 2 * nbr[..., 1] / h - 1], dim=-1)
        m = b * n * (n - 1)
        sampled = F.grid_sample(src.reshape(m, c, h, w), grid.reshape(m, h, w * kk, 2), mode="bilinear",
                                padding_mode="zeros", align_corners=False)       # (M, C, h, w*K*K)
        sampled = sampled.reshape(b, n, n - 1, c, h, w, kk).permute(0, 1, 4, 5, 2, 6, 3)   # (B,N,h,w,N-1,KK,C)
        in_frame = ((nbr[..., 0] >= 0) & (nbr[..., 0] < w) & (nbr[..., 1] >= 0) & (nbr[..., 1] < h))
        keep = (valid[..., None] & in_frame).permute(0, 1, 3, 4, 2, 5)           # (B,N,h,w,N-1,KK)
        enc = self.pos(frequency_encoding(disp, self.num_freqs)).permute(0, 1, 3, 4, 2, 5, 6)
        tgt = (sampled + enc).reshape(b, n, h, w, (n - 1) * kk, c)
        keep = keep.reshape(b, n, h, w, (n - 1) * kk)

        d = c // self.heads
        q = self.to_q(feats.permute(0, 1, 3, 4, 2)).reshape(b, n, h, w, self.heads, 1, d)
        k = self.to_k(tgt).reshape(b, n, h, w, -1, self.heads, d).transpose(-3, -2)   # (..., heads, L, d)
        v = self.to_v(tgt).reshape(b, n, h, w, -1, self.heads, d).transpose(-3, -2)
        logits = (q @ k.transpose(-1, -2)).squeeze(-2) / math.sqrt(d)             # (..., heads, L)
        mask = keep[..., None, :]
        logits = logits.masked_fill(~mask, float("-inf"))
        any_valid = mask.any(-1, keepdim=True)
        attn = torch.where(any_valid, torch.softmax(logits.masked_fill(~any_valid, 0.0), dim=-1), 0.0)
        out = (attn[..., None, :] @ v).squeeze(-2).reshape(b, n, h, w, c)        # no match: 0
        out = self.to_out(out) * any_valid.any(-2).reshape(b, n, h, w, 1)        # ... stays 0 after the bias
        return x + out.permute(0, 1, 4, 2, 3).reshape(bn, c, h, w)


class CAAModel(ModelMixin, ConfigMixin):
    """The trainable CAA blocks for a UNet: one after each down block, the mid block and each
    up block. Saved and loaded on its own (`save_pretrained`); `attach` hooks it onto a
    (frozen) UNet of matching channels, and `correspondences(...)` scopes the views' geometry
    for one forward pass. Outside that scope, or with no geometry, the UNet runs unchanged."""

    @register_to_config
    def __init__(self, block_channels: tuple = (32, 64, 128), heads: int = 1, kernel: int = 3,
                 num_freqs: int = 4, norm_groups: int = 32):
        super().__init__()
        down = list(block_channels)
        chans = down + [down[-1]] + list(reversed(down))
        self.blocks = nn.ModuleList(CorrespondenceAwareAttention(c, heads, kernel, num_freqs, norm_groups)
                                    for c in chans)
        self._context: tuple[dict, int] | None = None

    @classmethod
    def for_unet(cls, unet, **kwargs) -> "CAAModel":
        return cls(block_channels=tuple(unet.config.block_out_channels), **kwargs)

    def attach(self, unet) -> list:
        """Install the blocks after each UNet block; returns the hook handles (`.remove()` them to detach)."""
        blocks = list(unet.down_blocks) + [unet.mid_block] + list(unet.up_blocks)
        if len(blocks) != len(self.blocks):
            raise ValueError(f"UNet has {len(blocks)} blocks, this CAA model {len(self.blocks)}")
        return [blk.register_forward_hook(self._hook(caa)) for blk, caa in zip(blocks, self.blocks)]

    def _hook(self, caa: CorrespondenceAwareAttention):
        def hook(_module, _inputs, output):
            if self._context is None:
                return output
            by_size, num_views = self._context
            if isinstance(output, tuple):          # down block: (hidden, skip states); the last skip IS hidden
                hidden, skips = output
                new = self._run_block(caa, hidden, by_size, num_views)
                return new, tuple(skips[:-1]) + (new,)
            return self._run_block(caa, output, by_size, num_views)
        return hook

    @staticmethod
    def _run_block(caa, hidden, by_size, num_views):
        # Not `_apply`: that name is torch.nn.Module's (what .to() / .half() go through).
        size = tuple(hidden.shape[-2:])
        if size not in by_size:
            raise KeyError(f"no correspondences at {size[0]}x{size[1]} (have {sorted(by_size)})")
        return caa(hidden, by_size[size], num_views)

    @contextlib.contextmanager
    def correspondences(self, by_size: dict, num_views: int):
        """Within this block, attached UNets apply CAA with `by_size` {(h, w): Correspondences}."""
        previous, self._context = self._context, (by_size, num_views)
        try:
            yield self
        finally:
            self._context = previous

    @contextlib.contextmanager
    def off(self):
        """Within this block, attached UNets run as the frozen base (CAA switched off)."""
        previous, self._context = self._context, None
        try:
            yield self
        finally:
            self._context = previous


def unet_feature_sizes(unet, height: int, width: int) -> list[tuple[int, int]]:
    """The (h, w) of every UNet block's output for a (height, width) latent."""
    n = len(unet.config.block_out_channels)
    sizes = [(height >> i, width >> i) for i in range(n)]
    return sorted(set(sizes))
