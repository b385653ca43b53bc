"""Tiny, randomly initialised stand-ins, in the real formats, for what the research profile
expects a user to download: an SD 2.1-layout diffusers folder, a transformers CLIP folder
and an Objaverse cache in the objaverse package's layout."""
from __future__ import annotations

import shutil
import string
from pathlib import Path

import torch


def _clip_vocab(chars: str) -> dict[str, int]:
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in chars:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    return vocab


def tiny_clip():
    """A tiny CLIPTextModel + CLIPTokenizer (SD's text encoder layout), 12 tokens."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer(vocab=_clip_vocab(string.ascii_lowercase + string.digits), merges=[],
                              model_max_length=12)
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=len(tokenizer.get_vocab()), hidden_size=32, intermediate_size=37,
                            num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=12,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return CLIPTextModel(config).eval(), tokenizer


def save_sd21(folder: Path, unet=None, vae=None, scheduler=None) -> Path:
    """A StableDiffusionPipeline folder (UNet2DConditionModel, AutoencoderKL, CLIPTextModel +
    CLIPTokenizer, a scheduler), written by diffusers itself; by default 16 px images, 8 px
    latents and DDIM. Pass `unet` / `vae` / `scheduler` for another layout."""
    from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)

    text, tokenizer = tiny_clip()
    torch.manual_seed(0)
    unet = unet or UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=4)
    vae = vae or AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                               up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                               sample_size=16)
    scheduler = scheduler or DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                           clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                           prediction_type="epsilon")
    StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                            scheduler=scheduler, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder)
    return folder


def save_clip(folder: Path) -> Path:
    """A transformers CLIPModel + CLIPTokenizer folder (stands in for CLIP ViT-L/14)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    tokenizer = CLIPTokenizer(vocab=_clip_vocab(string.ascii_lowercase + " "), merges=[], model_max_length=16)
    torch.manual_seed(0)
    vocab = len(tokenizer.get_vocab())
    config = CLIPConfig(
        text_config={"vocab_size": vocab, "hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                     "num_hidden_layers": 2, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1,
                     "pad_token_id": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_inception(path: Path, seed: int = 0) -> Path:
    """FID's Inception-v3 with random weights, as the safetensors file its published weights
    convert to (the torchvision-style key names; dreamline/evaluation/inception.py)."""
    from safetensors.torch import save_file

    from dreamline.evaluation.inception import FIDInceptionV3

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in FIDInceptionV3().state_dict().items()}, str(path))
    return path


def objaverse_home(mirror: Path, home: Path) -> Path:
    """HOME whose ~/.objaverse is `mirror` (an objaverse-layout cache): ObjaverseCache(None)
    reads it through the package's default path and finds nothing to download."""
    shutil.copytree(mirror, home / ".objaverse")
    return home
