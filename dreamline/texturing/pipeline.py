"""MVDiffusion's multi-view depth-to-image pipeline: N views of one mesh denoised together.

Each view is a branch of the same depth-conditioned UNet (its depth map as extra input);
with a CAA model the branches exchange features along the depth correspondences after
every UNet block, so overlapping regions agree. Without one (or `use_caa=False`) each view
is generated independently: the baseline MVDiffusion compares against.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

# from_pretrained loads custom components only from modules already imported: the UNet and
# codec classes model_index.json names live here.
import dreamline.models.unet  # noqa: F401
from dreamline.models.codec import from_latent, spatial_factor
from dreamline.models.sampling import denoise, initial_latents, uses_guidance
from dreamline.models.text import encode_text
from dreamline.rendering.cameras import Camera
from dreamline.texturing.caa import unet_feature_sizes
from dreamline.texturing.correspondence import correspondences
from dreamline.texturing.depth import depth_condition, latent_channels


@dataclass
class MVDiffusionPipelineOutput(BaseOutput):
    """``images``: the N views in [0, 1] (np (N, H, W, 3), pt (N, 3, H, W) or PIL)."""
    images: np.ndarray | torch.Tensor | list[PIL.Image.Image]


class MVDiffusionPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["caa"]

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler, caa=None, max_tokens: int = 16,
                 depth_tol: float = 0.05):
        super().__init__()
        self.register_modules(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              scheduler=scheduler, caa=caa)
        self.register_to_config(max_tokens=max_tokens, depth_tol=depth_tol)

    def geometry(self, depths: np.ndarray, cameras: list[Camera]) -> dict:
        """{(h, w): Correspondences} at every UNet block's resolution for these views."""
        factor = spatial_factor(self.vae)
        h, w = depths.shape[1] // factor, depths.shape[2] // factor
        return {hw: correspondences(list(depths), cameras, hw[0], hw[1], self.config.depth_tol)
                for hw in unet_feature_sizes(self.unet, h, w)}

    @torch.no_grad()
    def sample(self, prompt: str, depths: np.ndarray, cameras: list[Camera], use_caa: bool = True,
               negative_prompt: str = "", num_inference_steps: int = 50, guidance_scale: float = 1.0,
               generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
               eta: float = 0.0, guidance_rescale: float = 0.0) -> torch.Tensor:
        """Decoded views (N, 3, H, W), about [-1, 1]. `depths` (N, H, W) world-unit depth of the
        mesh in each camera (0 = background); H and W are the output size. `eta` is DDIM's
        (0: deterministic, 1: as stochastic as DDPM), for schedulers that take it;
        `guidance_rescale` is Lin et al.'s CFG rescale (with guidance_scale > 1)."""
        depths = np.asarray(depths, dtype=np.float64)
        n = len(cameras)
        if depths.ndim != 3 or depths.shape[0] != n:
            raise ValueError(f"depths must be (N, H, W) with N = {n} cameras, got {depths.shape}")
        factor = spatial_factor(self.vae)
        if depths.shape[1] % factor or depths.shape[2] % factor:
            raise ValueError(f"image size {depths.shape[1:]} is not divisible by the codec factor {factor}")
        device = self._execution_device
        cond = depth_condition(depths, self.vae).to(device, self.unet.dtype)
        guidance = uses_guidance(guidance_scale)
        texts = [negative_prompt, prompt] if guidance else [prompt]
        states, mask = encode_text(self.text_encoder, self.tokenizer, texts, self.config.max_tokens)
        states = states.to(device, self.unet.dtype).repeat_interleave(n, dim=0)
        mask = None if mask is None else mask.to(device).repeat_interleave(n, dim=0)
        shape = (n, latent_channels(self.unet), cond.shape[-2], cond.shape[-1])
        latents = initial_latents(shape, generator, device, self.unet.dtype, latents)
        cond_in = torch.cat([cond, cond]) if guidance else cond

        def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            # The depth condition joins the noisy latents after the scheduler's input scaling.
            x = torch.cat([x, cond_in], dim=1)
            return self.unet(x, t, encoder_hidden_states=states, encoder_attention_mask=mask).sample

        caa = self.caa if use_caa else None
        handles = caa.attach(self.unet) if caa is not None else []
        try:
            scope = caa.correspondences(self.geometry(depths, cameras), n) if caa is not None else nullcontext()
            with scope:
                latents = denoise(self.scheduler, model, latents, num_inference_steps,
                                  guidance_scale=guidance_scale, guidance_rescale=guidance_rescale,
                                  generator=generator, eta=eta, device=device, progress=self.progress_bar)
        finally:
            for h in handles:
                h.remove()
        return from_latent(self.vae, latents.to(self.vae.dtype)).float()

    def __call__(self, prompt: str, depths: np.ndarray, cameras: list[Camera], use_caa: bool = True,
                 negative_prompt: str = "", num_inference_steps: int = 50, guidance_scale: float = 1.0,
                 generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
                 output_type: str = "np", return_dict: bool = True, eta: float = 0.0,
                 guidance_rescale: float = 0.0):
        x = self.sample(prompt, depths, cameras, use_caa, negative_prompt, num_inference_steps, guidance_scale,
                        generator, latents, eta, guidance_rescale)
        images = ((x + 1.0) / 2.0).clamp(0.0, 1.0)
        if output_type == "pt":
            out = images.cpu()
        elif output_type in ("np", "pil"):
            out = images.permute(0, 2, 3, 1).cpu().numpy()
            out = self.numpy_to_pil(out) if output_type == "pil" else out
        else:
            raise ValueError(f"output_type must be 'np', 'pt' or 'pil', got {output_type!r}")
        self.maybe_free_model_hooks()
        return MVDiffusionPipelineOutput(images=out) if return_dict else (out,)

