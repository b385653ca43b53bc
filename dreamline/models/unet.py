"""The UNet side of MVDream: camera embedding and multi-view (3D) self-attention.

Calling convention shared by all training and sampling code::

    unet(z_t, t, encoder_hidden_states=states, encoder_attention_mask=mask,
         class_labels=cameras_or_None, cross_attention_kwargs={"num_views": F}).sample

``z_t`` is (B*F, C, H, W) with the F views of one object contiguous; ``cameras`` is
(B*F, 16), the row-major flattened camera-to-world matrices (OpenGL convention,
dreamline/rendering/cameras.py), or None to switch the camera embedding off. ``num_views``
1 switches the multi-view attention off (every view attends only to itself).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
# Loading a saved pipeline looks up its loadable base classes (ModelMixin, ...) as attributes
# of the module model_index.json names for a custom component: this module.
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401

from dreamline.config import UNetParams


class CameraUNet2DConditionModel(UNet2DConditionModel):
    """diffusers' UNet where ``class_labels=None`` switches the class (camera) embedding off.

    MVDream trains on 2D text-image batches with the camera embedding off; diffusers would
    raise instead. A ``multiview_attention`` entry in the config (written by
    `set_multiview`) reinstalls the multi-view processors when the model is loaded, as
    diffusers saves weights and config but not attention processors.
    """

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        multiview = False
        if isinstance(config, (str, os.PathLike)):  # diffusers' deprecated form; EMAModel uses it
            config, kwargs = cls.load_config(config, return_unused_kwargs=True, **kwargs)
        if isinstance(config, dict):  # FrozenDict too
            config = dict(config)
            # Not an __init__ argument: left in, diffusers would warn that it is ignored.
            multiview = bool(config.pop("multiview_attention", False))
        out = super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)
        if multiview:
            set_multiview(out[0] if return_unused_kwargs else out)
        return out

    def get_class_embed(self, sample: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor | None:
        if class_labels is None:
            return None
        return super().get_class_embed(sample=sample, class_labels=class_labels)


def has_camera(unet: UNet2DConditionModel) -> bool:
    return unet.config.class_embed_type == "projection"


def build_unet(p: UNetParams, in_channels: int, sample_size: int, cross_attention_dim: int,
               camera_dim: int | None = None) -> CameraUNet2DConditionModel:
    """A fresh UNet from the params; `camera_dim` adds MVDream's camera MLP."""
    bad = [c for c in p.block_out_channels if c % p.attention_head_dim]
    if bad:
        raise ValueError(f"block_out_channels {bad} are not multiples of "
                         f"attention_head_dim {p.attention_head_dim}")
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in p.attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(p.attention))
    camera = {}
    if camera_dim is not None:
        camera = dict(class_embed_type="projection", projection_class_embeddings_input_dim=camera_dim)
    return CameraUNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=down,
        up_block_types=up,
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=tuple(p.block_out_channels),
        layers_per_block=p.layers_per_block,
        norm_num_groups=p.norm_num_groups,
        cross_attention_dim=cross_attention_dim,
        # diffusers' `attention_head_dim` is, for this class, the number of heads
        # (huggingface/diffusers#2011); UNetParams.attention_head_dim is a true head size.
        attention_head_dim=tuple(c // p.attention_head_dim for c in p.block_out_channels),
        use_linear_projection=True,
        **camera,
    )


class PerViewAttnProcessor(AttnProcessor2_0):
    """diffusers' default processor, accepting (and ignoring) ``num_views``.

    ``cross_attention_kwargs`` reach every attention layer; without the argument in its
    signature diffusers would warn on each call and drop it.
    """

    def __call__(self, attn: Attention, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 num_views: int = 1, **kwargs) -> torch.Tensor:
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)


class MultiViewAttnProcessor:
    """MVDream's 3D self-attention: the F views of an object attend to each other's tokens.

    The 2D layer's own projections are reused: only the token grouping changes, from
    (B*F, N, C) to (B, F*N, C), so with ``num_views=1`` it computes exactly what diffusers'
    AttnProcessor2_0 computes. Normalisations stay per view.
    """

    def __call__(self, attn: Attention, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 num_views: int = 1, **kwargs) -> torch.Tensor:
        if encoder_hidden_states is not None:
            # Text tokens are per view already; joining views only makes sense for self-attention.
            num_views = 1
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, tokens, _ = hidden_states.shape
        if batch % num_views:
            raise ValueError(f"batch {batch} is not a whole number of {num_views}-view groups")
        if attention_mask is not None:
            if num_views > 1:
                raise NotImplementedError("self-attention masks are not supported across views")
            source_length = tokens if encoder_hidden_states is None else encoder_hidden_states.shape[1]
            attention_mask = attn.prepare_attention_mask(attention_mask, source_length, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        # The views of one object are contiguous in the batch, so a view() joins their tokens.
        groups = batch // num_views
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(groups, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(groups, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(groups, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _attention_layers(unet: torch.nn.Module):
    return [m for m in unet.modules() if isinstance(m, Attention)]


def set_multiview(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """Multi-view attention on every self-attention layer, per-view processors elsewhere (in place)."""
    for layer in _attention_layers(unet):
        layer.set_processor(PerViewAttnProcessor() if layer.is_cross_attention
                            else MultiViewAttnProcessor())
    unet.register_to_config(multiview_attention=True)
    return unet


def is_multiview(unet: UNet2DConditionModel) -> bool:
    """Whether the UNet takes ``cross_attention_kwargs={"num_views": F}``."""
    return any(isinstance(p, MultiViewAttnProcessor) for p in unet.attn_processors.values())


def add_camera_embedding(unet: UNet2DConditionModel, camera_dim: int = 16) -> CameraUNet2DConditionModel:
    """A copy of `unet` with MVDream's camera MLP, which starts as an exact no-op.

    The MLP's last layer is zero, so the camera adds exactly 0 to the timestep embedding and
    the new model computes what `unet` computes until fine-tuning moves it.
    """
    if unet.config.class_embed_type is not None or unet.config.num_class_embeds is not None:
        raise ValueError(f"the UNet already has a class embedding ({unet.config.class_embed_type})")
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    config.update(class_embed_type="projection", projection_class_embeddings_input_dim=camera_dim)
    param = next(unet.parameters())
    camera_unet = CameraUNet2DConditionModel.from_config(config).to(param.device)
    if param.dtype != camera_unet.dtype:
        camera_unet = camera_unet.to(param.dtype)

    missing, unexpected = camera_unet.load_state_dict(unet.state_dict(), strict=False)
    if unexpected or any(not k.startswith("class_embedding.") for k in missing):
        raise RuntimeError(f"weights do not carry over: missing {missing}, unexpected {unexpected}")
    last = camera_unet.class_embedding.linear_2
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    camera_unet.set_attn_processor(dict(unet.attn_processors))
    camera_unet.train(unet.training)
    return camera_unet


def to_multiview(unet: UNet2DConditionModel, camera_dim: int = 16) -> CameraUNet2DConditionModel:
    """The base text-to-image UNet turned into MVDream's: camera embedding + 3D self-attention."""
    return set_multiview(add_camera_embedding(unet, camera_dim))
