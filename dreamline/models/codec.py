"""A parameter-free stand-in for the VAE: pixel (un)shuffle between images and "latents".

Pixel unshuffle only permutes values, so Gaussian noise on the unshuffled tensor is
Gaussian noise on the pixels: diffusion in this space is pixel-space diffusion, at the
spatial size (and speed) of a latent model. SweetDreamer likewise feeds its 3-channel
CCM to the UNet without a VAE.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


class PixelUnshuffleCodec(ModelMixin, ConfigMixin):
    """``encode``: (N, C, H, W) -> (N, C r^2, H / r, W / r); ``decode`` inverts it exactly.

    ``scaling_factor`` sits in the config so that code reading a VAE's config reads this too.
    """

    @register_to_config
    def __init__(self, factor: int = 2, in_channels: int = 3, scaling_factor: float = 1.0):
        super().__init__()
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        # Without any tensor ModelMixin cannot report a device or dtype, which pipelines ask
        # every component for; an empty, unsaved buffer follows .to() and saves nothing.
        self.register_buffer("_anchor", torch.empty(0), persistent=False)

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder: str | None = None,
                        **kwargs) -> "PixelUnshuffleCodec":
        # With no weights, save_pretrained writes only config.json, and ModelMixin's loader
        # insists on a weights file; the config is the whole model. Loading kwargs meant for
        # weights (dtype, device_map, ...) have nothing to act on.
        hub = {k: kwargs[k] for k in ("cache_dir", "local_files_only", "revision", "token",
                                      "force_download", "proxies") if k in kwargs}
        config = cls.load_config(pretrained_model_name_or_path, subfolder=subfolder, **hub)
        return cls.from_config(config)


def spatial_factor(vae) -> int:
    """How many image pixels one latent pixel spans, per side."""
    if isinstance(vae, PixelUnshuffleCodec):
        return vae.config.factor
    return 2 ** (len(vae.config.block_out_channels) - 1)


def to_latent(vae, images: torch.Tensor, sample: bool = False,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Images in [-1, 1] -> the (scaled) latents the UNet is trained on.

    For a KL autoencoder the posterior mean is the default: deterministic targets, and the
    posterior of SD's VAE is so narrow that sampling it changes little.
    """
    if isinstance(vae, PixelUnshuffleCodec):
        return vae.encode(images) * vae.config.scaling_factor
    if isinstance(vae, AutoencoderKL):
        dist = vae.encode(images).latent_dist
        z = dist.sample(generator) if sample else dist.mean
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return (z - shift) * vae.config.scaling_factor
    raise TypeError(f"unsupported autoencoder {type(vae).__name__}")


def from_latent(vae, z: torch.Tensor) -> torch.Tensor:
    """Inverse of `to_latent`: latents -> images in (about) [-1, 1], not clamped."""
    if isinstance(vae, PixelUnshuffleCodec):
        return vae.decode(z / vae.config.scaling_factor)
    if isinstance(vae, AutoencoderKL):
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return vae.decode(z / vae.config.scaling_factor + shift).sample
    raise TypeError(f"unsupported autoencoder {type(vae).__name__}")
