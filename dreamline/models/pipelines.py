"""Sampling pipelines: MVDream multi-view images and SweetDreamer canonical coordinate maps.

Both are diffusers `DiffusionPipeline`s and round-trip ``save_pretrained`` /
``<Class>.from_pretrained`` offline. model_index.json names the custom components by
module ("dreamline.models.unet", "dreamline.models.codec"), which diffusers imports.
Load through the pipeline's own class: generic ``DiffusionPipeline.from_pretrained``
cannot find it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dreamline.models.camera_input import camera_input, check_convention
from dreamline.models.codec import CCMLatentCodec, PixelUnshuffleCodec, from_latent, spatial_factor
# rescale_guidance is re-exported: it lived here before the sampler core.
from dreamline.models.sampling import denoise, initial_latents, rescale_guidance, uses_guidance  # noqa: F401
from dreamline.models.text import encode_text
from dreamline.models.unet import has_camera, is_multiview, to_multiview


@dataclass
class MultiViewPipelineOutput(BaseOutput):
    """``images``: B*F images in [0, 1], the F views of each prompt contiguous."""
    images: np.ndarray | torch.Tensor | list[PIL.Image.Image]


@dataclass
class CCMPipelineOutput(BaseOutput):
    """``images``: CCMs in [0, 1], 0 on background; ``masks``: (N, H, W) bool foreground."""
    images: np.ndarray | torch.Tensor | list[PIL.Image.Image]
    masks: np.ndarray | torch.Tensor


def _batch(prompt, cameras) -> tuple[list[str], torch.Tensor | None]:
    """Prompts and cameras (B, F, 16) of equal B: (F, 16) cameras are shared by every prompt,
    one prompt is shared by every camera set."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if cameras is None:
        return prompts, None
    cameras = (cameras if torch.is_tensor(cameras) else torch.as_tensor(np.asarray(cameras))).float()
    if cameras.ndim == 2:
        cameras = cameras.unsqueeze(0)
    if cameras.ndim != 3:
        raise ValueError(f"cameras must be (F, 16) or (B, F, 16), got {tuple(cameras.shape)}")
    if len(prompts) == 1:
        prompts = prompts * cameras.shape[0]
    if cameras.shape[0] == 1:
        cameras = cameras.expand(len(prompts), -1, -1)
    if cameras.shape[0] != len(prompts):
        raise ValueError(f"{cameras.shape[0]} camera sets for {len(prompts)} prompts")
    return prompts, cameras


class MultiViewDiffusionPipeline(DiffusionPipeline):
    """Text (+ cameras) to F views per prompt with DDIM and classifier-free guidance.

    F is the number of cameras. With a multi-view UNet (`dreamline.models.unet.set_multiview`)
    the F views are denoised jointly; a UNet with a camera embedding gets the cameras as
    ``class_labels``. Without cameras it is a plain text-to-image pipeline (the base model
    uses this class too); a UNet without a camera embedding only takes F from the cameras.

    ``vae`` is a `PixelUnshuffleCodec` (pixel-space models), an `AutoencoderKL`, or (AGP models
    from an SD-layout base) a `CCMLatentCodec`.
    Config: ``max_tokens`` pads non-CLIP text (CLIP always uses its full context);
    ``num_views`` records the F the model was trained with, for callers to reuse.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    # Whether the views of one prompt attend to each other (the CCM model samples each alone).
    joint_views = True

    def __init__(self, unet: UNet2DConditionModel, vae: PixelUnshuffleCodec | AutoencoderKL | CCMLatentCodec,
                 text_encoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 scheduler: SchedulerMixin, max_tokens: int = 16, num_views: int = 1,
                 camera_convention: str = "dreamline"):
        super().__init__()
        self.register_modules(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              scheduler=scheduler)
        self.register_to_config(max_tokens=max_tokens, num_views=num_views)
        # Recorded only when it is not dreamline's own: the project's folders stay as they were.
        if check_convention(camera_convention) != "dreamline":
            self.register_to_config(camera_convention=camera_convention)

    @property
    def camera_convention(self) -> str:
        """The camera input the UNet was trained on (dreamline.models.camera_input)."""
        return self.config.get("camera_convention", "dreamline")

    def _text_states(self, prompts: list[str], negative: list[str], views: int, guidance: bool,
                     max_tokens: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
        texts = negative + prompts if guidance else prompts
        states, mask = encode_text(self.text_encoder, self.tokenizer, texts, max_tokens)
        states = states.to(device, self.unet.dtype).repeat_interleave(views, dim=0)
        if mask is not None:
            mask = mask.to(device).repeat_interleave(views, dim=0)
        return states, mask

    @torch.no_grad()
    def sample(self, prompt: str | list[str], cameras=None, negative_prompt: str | list[str] = "",
               num_inference_steps: int = 50, guidance_scale: float = 1.0, guidance_rescale: float = 0.0,
               height: int | None = None, width: int | None = None,
               generator: torch.Generator | list[torch.Generator] | None = None,
               latents: torch.Tensor | None = None, max_tokens: int | None = None,
               eta: float = 0.0) -> torch.Tensor:
        """The decoded samples, (B*F, C, H, W) in about [-1, 1], unclamped. `eta` is DDIM's
        (0: deterministic, 1: as stochastic as DDPM), for schedulers whose step takes it."""
        prompts, cameras = _batch(prompt, cameras)
        batch = len(prompts)
        negative = [negative_prompt] * batch if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negative) != batch:
            raise ValueError(f"{len(negative)} negative prompts for {batch} prompts")
        device = self._execution_device
        max_tokens = max_tokens or self.config.max_tokens

        views, class_labels = 1, None
        if cameras is not None:
            views = cameras.shape[1]
            if has_camera(self.unet):
                class_labels = camera_input(cameras.reshape(batch * views, -1), self.camera_convention
                                            ).to(device, self.unet.dtype)
        attention_kwargs = None
        if is_multiview(self.unet):
            attention_kwargs = {"num_views": views if self.joint_views else 1}

        guidance = uses_guidance(guidance_scale)
        states, mask = self._text_states(prompts, negative, views, guidance, max_tokens, device)
        if guidance and class_labels is not None:
            class_labels = torch.cat([class_labels, class_labels])

        factor = spatial_factor(self.vae)
        height = height or self.unet.config.sample_size * factor
        width = width or self.unet.config.sample_size * factor
        shape = (batch * views, self.unet.config.in_channels, height // factor, width // factor)
        latents = initial_latents(shape, generator, device, self.unet.dtype, latents)

        def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.unet(x, t, encoder_hidden_states=states, encoder_attention_mask=mask,
                             class_labels=class_labels, cross_attention_kwargs=attention_kwargs).sample

        # Stochastic samplers (DDPM, DDIM with eta > 0) draw noise: seeded from `generator` too.
        latents = denoise(self.scheduler, model, latents, num_inference_steps, guidance_scale=guidance_scale,
                          guidance_rescale=guidance_rescale, generator=generator, eta=eta, device=device,
                          progress=self.progress_bar)
        return from_latent(self.vae, latents.to(self.vae.dtype)).float()

    def _convert(self, images: torch.Tensor, output_type: str):
        """(N, C, H, W) in [0, 1] -> the requested output type."""
        if output_type == "pt":
            return images.cpu()
        array = images.permute(0, 2, 3, 1).cpu().numpy()
        if output_type == "np":
            return array
        if output_type == "pil":
            return self.numpy_to_pil(array)
        raise ValueError(f"output_type must be 'np', 'pt' or 'pil', got {output_type!r}")

    def __call__(self, prompt: str | list[str], cameras=None, negative_prompt: str | list[str] = "",
                 num_inference_steps: int = 50, guidance_scale: float = 1.0,
                 guidance_rescale: float = 0.0, height: int | None = None, width: int | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 latents: torch.Tensor | None = None, output_type: str = "np",
                 max_tokens: int | None = None, return_dict: bool = True, eta: float = 0.0):
        """Sample F = len(cameras) views per prompt (1 without cameras).

        cameras: (F, 16) shared by every prompt or (B, F, 16); row-major flattened
        camera-to-world matrices. guidance_scale > 1 turns classifier-free guidance on,
        with `negative_prompt` as the unconditional text; guidance_rescale is Lin et al.'s
        CFG rescale (MVDream's SDS uses 0.5); eta is DDIM's stochasticity (0: deterministic),
        its noise drawn from `generator`. Returns ``.images``: B*F images in [0, 1],
        np (N, H, W, C), pt (N, C, H, W) or a list of PIL images.
        """
        x = self.sample(prompt, cameras, negative_prompt, num_inference_steps, guidance_scale,
                        guidance_rescale, height, width, generator, latents, max_tokens, eta=eta)
        images = self._convert(((x + 1.0) / 2.0).clamp(0.0, 1.0), output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return MultiViewPipelineOutput(images=images)


class CCMPipeline(MultiViewDiffusionPipeline):
    """SweetDreamer's AGP model: one canonical coordinate map per camera, views independent.

    Training targets are CCMs in [0, 1] mapped to [-1, 1] with background -1 in all three
    channels (dreamline.rendering.dataset.CCMViews), so a pixel is background when its
    channel mean is below `background_threshold` (default -0.8, i.e. canonical x+y+z < 0.3).
    The bounding-box corner (0, 0, 0) is black like the background, an ambiguity of the
    representation itself; the threshold sits near -1 to misjudge as little of it as it can.
    """

    joint_views = False

    def __call__(self, prompt: str | list[str], cameras=None, negative_prompt: str | list[str] = "",
                 num_inference_steps: int = 50, guidance_scale: float = 1.0,
                 guidance_rescale: float = 0.0, height: int | None = None, width: int | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 latents: torch.Tensor | None = None, output_type: str = "np",
                 max_tokens: int | None = None, return_dict: bool = True,
                 background_threshold: float = -0.8, eta: float = 0.0):
        x = self.sample(prompt, cameras, negative_prompt, num_inference_steps, guidance_scale,
                        guidance_rescale, height, width, generator, latents, max_tokens, eta=eta)
        masks = x.mean(dim=1) >= background_threshold
        ccm = ((x + 1.0) / 2.0).clamp(0.0, 1.0) * masks.unsqueeze(1)
        images = self._convert(ccm, output_type)
        masks = masks.cpu() if output_type == "pt" else masks.cpu().numpy()
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images, masks)
        return CCMPipelineOutput(images=images, masks=masks)


def load_sd_layout(folder: str | Path, camera_dim: int = 16, num_views: int = 4,
                   torch_dtype: torch.dtype | None = None) -> MultiViewDiffusionPipeline:
    """A Stable Diffusion 2.1-layout folder as a latent-space MVDream pipeline.

    The UNet gets a zero-initialised camera embedding and multi-view self-attention
    (`to_multiview`), so before fine-tuning it still computes SD's output per view. The
    scheduler becomes DDIM with the folder's noise schedule and prediction type.
    """
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    index = folder / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{folder}: no model_index.json; not a diffusers pipeline folder")
    components = json.loads(index.read_text())
    # Absent components are recorded as [null, null] (SD's safety checker often is).
    missing = [c for c in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
               if not (components.get(c) or [None])[0] or not (folder / c).is_dir()]
    if missing:
        raise FileNotFoundError(f"{folder}: missing SD components {missing}")
    from dreamline.models.weights import SAFE, require_safetensors

    require_safetensors(folder)
    dtype = {**SAFE} if torch_dtype is None else {**SAFE, "torch_dtype": torch_dtype}
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **dtype)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **dtype)
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", **dtype)
    text_encoder.eval().requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    scheduler = DDIMScheduler.from_config(DDIMScheduler.load_config(folder, subfolder="scheduler"))
    return MultiViewDiffusionPipeline(
        unet=to_multiview(unet, camera_dim), vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=scheduler, max_tokens=tokenizer.model_max_length, num_views=num_views)
