"""Parameter-free stand-ins for the VAE, between images and "latents".

`PixelUnshuffleCodec`: pixel (un)shuffle. Pixel unshuffle only permutes values, so Gaussian
noise on the unshuffled tensor is Gaussian noise on the pixels: diffusion in this space is
pixel-space diffusion, at the spatial size (and speed) of a latent model.

`CCMLatentCodec`: SweetDreamer's AGP on a latent model (SD layout) feeds the 3-channel
canonical coordinate map to the UNet directly as its latent, with no VAE: the CCM is
area-averaged to the latent grid and the UNet's further input channels are held at zero.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


class _ConfigOnlyCodec(ModelMixin, ConfigMixin):
    """A codec whose config is the whole model: saved as config.json only."""

    def _anchor_buffer(self) -> None:
        # Without any tensor ModelMixin cannot report a device or dtype, which pipelines ask
        # every component for; an empty, unsaved buffer follows .to() and saves nothing.
        self.register_buffer("_anchor", torch.empty(0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder: str | None = None, **kwargs):
        # With no weights, save_pretrained writes only config.json, and ModelMixin's loader
        # insists on a weights file; the config is the whole model. Loading kwargs meant for
        # weights (dtype, device_map, ...) have nothing to act on.
        hub = {k: kwargs[k] for k in ("cache_dir", "local_files_only", "revision", "token",
                                      "force_download", "proxies") if k in kwargs}
        config = cls.load_config(pretrained_model_name_or_path, subfolder=subfolder, **hub)
        return cls.from_config(config)


class PixelUnshuffleCodec(_ConfigOnlyCodec):
    """``encode``: (N, C, H, W) -> (N, C r^2, H / r, W / r); ``decode`` inverts it exactly.

    ``scaling_factor`` sits in the config so that code reading a VAE's config reads this too.
    """

    @register_to_config
    def __init__(self, factor: int = 2, in_channels: int = 3, scaling_factor: float = 1.0):
        super().__init__()
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        self._anchor_buffer()

    @property
    def latent_channels(self) -> int:
        return self.config.in_channels * self.config.factor**2

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        r = self.config.factor
        if x.shape[-1] % r or x.shape[-2] % r:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by factor {r}")
        return F.pixel_unshuffle(x, r)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(z, self.config.factor)


class CCMLatentCodec(_ConfigOnlyCodec):
    """``encode``: CCM (N, 3, H, W) in [-1, 1] -> (N, latent_channels, H / f, W / f): each
    latent pixel the mean of the f x f CCM pixels it covers (the CCM rendered at image size,
    seen at the latent grid), channels past the third zero. ``decode``: the first three
    channels, each latent pixel repeated over its f x f block (nearest: no blend across the
    object's silhouette, whose background is -1 in every channel).

    ``factor`` is the replaced VAE's spatial factor and ``latent_channels`` the UNet's input
    channels, so a UNet fine-tuned from an SD-layout base keeps its shapes."""

    @register_to_config
    def __init__(self, factor: int = 8, latent_channels: int = 4, in_channels: int = 3,
                 scaling_factor: float = 1.0):
        super().__init__()
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        if latent_channels < in_channels:
            raise ValueError(f"latent_channels ({latent_channels}) must hold the {in_channels} CCM channels")
        self._anchor_buffer()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        f, c = self.config.factor, self.config.in_channels
        if x.shape[1] != c:
            raise ValueError(f"expected {c}-channel CCMs, got {x.shape[1]} channels")
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by factor {f}")
        z = F.avg_pool2d(x, f) if f > 1 else x
        pad = self.config.latent_channels - c
        return torch.cat([z, z.new_zeros(z.shape[0], pad, *z.shape[2:])], dim=1) if pad else z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        x = z[:, : self.config.in_channels]
        f = self.config.factor
        return F.interpolate(x, scale_factor=f, mode="nearest") if f > 1 else x


_CODECS = (PixelUnshuffleCodec, CCMLatentCodec)


def spatial_factor(vae) -> int:
    """How many image pixels one latent pixel spans, per side."""
    if isinstance(vae, _CODECS):
        return vae.config.factor
    return 2 ** (len(vae.config.block_out_channels) - 1)


def to_latent(vae, images: torch.Tensor, sample: bool = False,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Images in [-1, 1] -> the (scaled) latents the UNet is trained on.

    For a KL autoencoder the posterior mean is the default: deterministic targets, and the
    posterior of SD's VAE is so narrow that sampling it changes little.
    """
    if isinstance(vae, _CODECS):
        return vae.encode(images) * vae.config.scaling_factor
    if isinstance(vae, AutoencoderKL):
        dist = vae.encode(images).latent_dist
        z = dist.sample(generator) if sample else dist.mean
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return (z - shift) * vae.config.scaling_factor
    raise TypeError(f"unsupported autoencoder {type(vae).__name__}")


def from_latent(vae, z: torch.Tensor) -> torch.Tensor:
    """Inverse of `to_latent`: latents -> images in (about) [-1, 1], not clamped."""
    if isinstance(vae, _CODECS):
        return vae.decode(z / vae.config.scaling_factor)
    if isinstance(vae, AutoencoderKL):
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return vae.decode(z / vae.config.scaling_factor + shift).sample
    raise TypeError(f"unsupported autoencoder {type(vae).__name__}")


def ccm_codec(pipe):
    """The codec an AGP model fine-tuned from `pipe` works through: a pixel-space base's own
    (pixel unshuffle already feeds the CCM to the UNet as it is), else a `CCMLatentCodec` at
    the VAE's spatial factor and the UNet's input channels (SweetDreamer: no VAE for CCMs)."""
    if isinstance(pipe.vae, _CODECS):
        return pipe.vae
    return CCMLatentCodec(factor=spatial_factor(pipe.vae), latent_channels=int(pipe.unet.config.in_channels))
