"""Model side of training and sampling: text encoding, codec, MVDream UNet, pipelines.

Names resolve lazily: diffusers loads a saved pipeline's components by importing
``dreamline.models.<module>``, which should not drag in every other module.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "load_minilm": "text", "encode_text": "text", "TextCache": "text",
    "PixelUnshuffleCodec": "codec", "to_latent": "codec", "from_latent": "codec",
    "spatial_factor": "codec", "CCMLatentCodec": "codec", "ccm_codec": "codec",
    "CameraUNet2DConditionModel": "unet", "build_unet": "unet", "add_camera_embedding": "unet",
    "MultiViewAttnProcessor": "unet", "PerViewAttnProcessor": "unet", "set_multiview": "unet",
    "to_multiview": "unet", "is_multiview": "unet", "has_camera": "unet",
    "MultiViewDiffusionPipeline": "pipelines", "CCMPipeline": "pipelines",
    "load_sd_layout": "pipelines",
    "grid_image": "grid",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
