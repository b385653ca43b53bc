"""A frozen diffusion model as a score function for distillation.

Wraps one of this project's pipelines (or an SD 2.1 folder loaded as one): images in
[0, 1] go to the UNet's space, the UNet's prediction (epsilon or v) comes back as epsilon
and as the x0 estimate, with classifier-free guidance batched in one call.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dreamline.device import autocast, frozen_dtype
from dreamline.models.camera_input import camera_input
from dreamline.models.codec import to_latent
from dreamline.models.sampling import classifier_free_guidance, place
from dreamline.models.text import TextCache
from dreamline.models.unet import has_camera, is_multiview


@dataclass
class Prediction:
    eps: torch.Tensor      # guided epsilon
    x0: torch.Tensor       # guided x0 estimate (CFG rescale applied when asked)
    eps_cond: torch.Tensor
    eps_uncond: torch.Tensor


class DiffusionPrior:
    """Frozen: the UNet, autoencoder and text encoder are stored on `device` in
    `frozen_dtype(precision)` and run under autocast; what comes back is float32."""

    def __init__(self, pipe, name: str = "", device: torch.device | str | None = None,
                 precision: str = "fp32"):
        self.name = name
        self.pipe = pipe
        self.device = torch.device(device) if device is not None else pipe.unet.device
        self.precision = precision
        self.dtype = frozen_dtype(precision)
        for part in (pipe.unet, pipe.vae, pipe.text_encoder):
            place(part, self.device, precision)
        self.unet = pipe.unet.eval().requires_grad_(False)
        self.vae = pipe.vae
        self.text = TextCache(pipe.text_encoder, pipe.tokenizer, pipe.config.max_tokens)
        self.alphas_cumprod = pipe.scheduler.alphas_cumprod.float().to(self.device)
        self.num_train_timesteps = int(pipe.scheduler.config.num_train_timesteps)
        self.prediction_type = pipe.scheduler.config.prediction_type
        self.uses_cameras = has_camera(self.unet)
        self.camera_convention = pipe.config.get("camera_convention", "dreamline")
        self.multiview = is_multiview(self.unet)
        from dreamline.training.common import pixel_resolution

        self.resolution = pixel_resolution(pipe)

    @classmethod
    def load(cls, path: str, device: torch.device | str | None = None, precision: str = "fp32") -> "DiffusionPrior":
        from dreamline.training.common import load_base_pipeline

        return cls(load_base_pipeline(path), name=str(path), device=device, precision=precision)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [0, 1] -> model space, resized to the model's resolution
        (differentiably: the gradient flows back to the render)."""
        if images.shape[-1] != self.resolution or images.shape[-2] != self.resolution:
            images = F.interpolate(images, size=(self.resolution, self.resolution), mode="bilinear",
                                   align_corners=False, antialias=True)
        x = images * 2.0 - 1.0
        if self.dtype == torch.float32:
            return to_latent(self.vae, x)
        with autocast(self.device, self.precision):
            return to_latent(self.vae, x.to(self.dtype)).float()

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        return self.alphas_cumprod[t.long()].reshape(-1, 1, 1, 1)

    def add_noise(self, z: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self.alpha_bar(t)
        return ab.sqrt() * z + (1.0 - ab).sqrt() * noise

    def eps_and_x0(self, z_t: torch.Tensor, t: torch.Tensor, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ab = self.alpha_bar(t)
        if self.prediction_type == "epsilon":
            eps = raw
            return eps, (z_t - (1.0 - ab).sqrt() * eps) / ab.sqrt()
        if self.prediction_type == "v_prediction":
            return ab.sqrt() * raw + (1.0 - ab).sqrt() * z_t, ab.sqrt() * z_t - (1.0 - ab).sqrt() * raw
        raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")

    @torch.no_grad()
    def raw(self, z_t: torch.Tensor, t: torch.Tensor, texts: list[str], cameras: torch.Tensor | None,
            num_views: int) -> torch.Tensor:
        """The UNet's prediction for len(texts) == len(z_t) inputs."""
        states, mask = self.text(texts, device=self.device)
        z_t, states = z_t.to(self.dtype), states.to(self.dtype)
        kwargs = {}
        if self.multiview:
            kwargs["cross_attention_kwargs"] = {"num_views": num_views}
        labels = camera_input(cameras, self.camera_convention) if self.uses_cameras else None
        if labels is not None:
            labels = labels.to(self.dtype)
        with autocast(self.device, self.precision):
            return self.unet(z_t, t, encoder_hidden_states=states, encoder_attention_mask=mask,
                             class_labels=labels, **kwargs).sample.float()

    @torch.no_grad()
    def eps(self, z_t: torch.Tensor, t: torch.Tensor, texts: list[str], cameras=None,
            num_views: int = 1) -> torch.Tensor:
        return self.eps_and_x0(z_t, t, self.raw(z_t, t, texts, cameras, num_views))[0]

    @torch.no_grad()
    def guided(self, z_t: torch.Tensor, t: torch.Tensor, texts: list[str], negatives: list[str],
               scale: float, cameras: torch.Tensor | None = None, num_views: int = 1,
               rescale: float = 0.0, uncond_cameras: bool = True) -> Prediction:
        """Classifier-free guidance: uncond + scale * (cond - uncond), both in one UNet call
        (the sampler core's `classifier_free_guidance`, as the pipelines use it). `rescale`
        applies Lin et al.'s CFG rescale to the x0 estimate only (MVDream's SDS).
        `uncond_cameras` False: the unconditional branch runs with the camera embedding off, so
        guidance amplifies what the cameras say along with the text (Zero-1-to-3 drops its pose
        with its image for the same reason); two UNet calls then, as a batch shares its labels."""
        n = z_t.shape[0]
        if cameras is not None and not uncond_cameras:
            raw = torch.cat([self.raw(z_t, t, list(negatives), None, num_views),
                             self.raw(z_t, t, list(texts), cameras, num_views)])
        else:
            cams = None if cameras is None else torch.cat([cameras, cameras])
            raw = self.raw(torch.cat([z_t, z_t]), torch.cat([t, t]), list(negatives) + list(texts), cams, num_views)
        eps_u, x0_u = self.eps_and_x0(z_t, t, raw[:n])
        eps_c, x0_c = self.eps_and_x0(z_t, t, raw[n:])
        eps = classifier_free_guidance(eps_u, eps_c, scale)
        x0 = classifier_free_guidance(x0_u, x0_c, scale, rescale)
        return Prediction(eps=eps, x0=x0, eps_cond=eps_c, eps_uncond=eps_u)
