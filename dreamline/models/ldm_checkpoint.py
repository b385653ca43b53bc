"""Released MVDream weights (an LDM "original" checkpoint) as dreamline's multi-view pipeline.

MVDream's ``sd-v2.1-base-4view.pt`` is the whole state dict of its
``LatentDiffusionInterface`` (mvdream/ldm/interface.py; loaded there with a strict
``load_state_dict``), i.e. SD 2.1 base in the latent-diffusion layout plus the camera MLP:

========================================  ==========================================
LDM key prefix                            diffusers component
========================================  ==========================================
``model.diffusion_model.``                ``unet`` (`CameraUNet2DConditionModel`)
``model.diffusion_model.camera_embed.``   ``unet.class_embedding`` (see below)
``first_stage_model.``                    ``vae`` (`AutoencoderKL`)
``cond_stage_model.model.``               ``text_encoder`` (transformers `CLIPTextModel`)
========================================  ==========================================

UNet (`unet_key_map`; L = layers_per_block): ``time_embed.{0,2}`` -> ``time_embedding.linear_{1,2}``;
``camera_embed.{0,2}`` (MVDream's ``Linear(16, 4C) - SiLU - Linear(4C, 4C)``, added to the
timestep embedding) -> ``class_embedding.linear_{1,2}``: diffusers' ``class_embed_type="projection"``
is the same Linear-SiLU-Linear added to the timestep embedding, which is how
`dreamline.models.unet.add_camera_embedding` structures the camera; ``input_blocks.0.0`` ->
``conv_in``; ``input_blocks.{1 + b(L+1) + j}.{0,1}`` -> ``down_blocks.b.{resnets,attentions}.j``;
``input_blocks.{(b+1)(L+1)}.0.op`` -> ``down_blocks.b.downsamplers.0.conv``;
``middle_block.{0,1,2}`` -> ``mid_block.{resnets.0, attentions.0, resnets.1}``;
``output_blocks.{b(L+1) + j}.{0,1}`` -> ``up_blocks.b.{resnets,attentions}.j``;
``output_blocks.{b(L+1) + L}.{1 or 2}.conv`` (2 when the level has attention) ->
``up_blocks.b.upsamplers.0.conv``; ``out.{0,2}`` -> ``conv_norm_out`` / ``conv_out``. Inside a
ResBlock: ``in_layers.{0,2}`` -> ``norm1``/``conv1``, ``emb_layers.1`` -> ``time_emb_proj``,
``out_layers.{0,3}`` -> ``norm2``/``conv2``, ``skip_connection`` -> ``conv_shortcut``. Inside a
(3D) SpatialTransformer the names are diffusers' own (``norm, proj_in, transformer_blocks.N.
{norm1-3, attn1, attn2, ff.net.0.proj, ff.net.2}, proj_out``); MVDream's multi-view attention
reuses attn1's weights, which `MultiViewAttnProcessor` reproduces. ``proj_in``/``proj_out`` may
differ from the config only by 1x1 conv vs linear (exact reshape).

VAE (`vae_key_map`, n levels): ``encoder.down.i.block.j`` -> ``encoder.down_blocks.i.resnets.j``,
``encoder.down.i.downsample.conv`` -> ``...downsamplers.0.conv``, ``decoder.up.(n-1-i)`` ->
``decoder.up_blocks.i`` (LDM counts decoder levels from the bottom), ``mid.block_{1,2}`` ->
``mid_block.resnets.{0,1}``, ``mid.attn_1.{norm,q,k,v,proj_out}`` ->
``mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}`` (1x1 convs squeezed to linear),
``norm_out`` -> ``conv_norm_out``, ``nin_shortcut`` -> ``conv_shortcut``; ``conv_in``,
``conv_out``, ``quant_conv``, ``post_quant_conv`` keep their names.

Text encoder (`text_key_map`): OpenCLIP ViT-H's text tower -> `CLIPTextModel` with SD 2.1's
config (23 layers: SD 2 and MVDream's FrozenOpenCLIPEmbedder(layer="penultimate") stop one
block early and then apply ``ln_final``, which is exactly CLIPTextModel's
``last_hidden_state`` with 23 layers): ``token_embedding`` -> ``embeddings.token_embedding``,
``positional_embedding`` -> ``embeddings.position_embedding.weight``,
``transformer.resblocks.N.attn.in_proj_{weight,bias}`` -> rows split in thirds, in the order
q, k, v (torch's MultiheadAttention packing) -> ``encoder.layers.N.self_attn.{q,k,v}_proj``,
``attn.out_proj`` -> ``self_attn.out_proj``, ``ln_1``/``ln_2`` -> ``layer_norm1``/``layer_norm2``,
``mlp.c_fc``/``mlp.c_proj`` -> ``mlp.fc1``/``mlp.fc2``, ``ln_final`` -> ``final_layer_norm``.

Every tensor is either mapped or deliberately ignored (`IGNORED_KEYS`, `IGNORED_PREFIXES`,
`TEXT_IGNORED`, and the text block after the last one the config keeps,
``transformer.resblocks.{num_hidden_layers}``, which SD 2's penultimate-layer conditioning
never runs). The noise-schedule buffers are not weights; when a scheduler is given they are
checked against it. Anything else, and anything the config needs that the checkpoint lacks,
raises `CheckpointError` naming each key; a shape the config does not expect names the key and
both shapes.

Cameras are weights-only business here: the released model was trained on MVDream's own
camera input (mvdream/camera_utils.py ``get_camera``: the OpenGL camera-to-world matrix of a
unit-distance orbit, left-multiplied by ``flip_yz`` into a z-up world, flattened row-major),
while dreamline's cameras are y-up OpenGL c2w at the render distance; callers that feed the
converted model must supply MVDream's convention for it to see the cameras it learned.

Reading the file (`read_checkpoint`): dreamline never unpickles files from elsewhere
(dreamline/tensorfile.py, dreamline/models/weights.py). Accepted are a ``.safetensors`` file
in the LDM layout (read by safetensors: a JSON header and raw buffers, no code) and the
original ``.pt`` / ``.ckpt`` only through ``torch.load(path, map_location="cpu",
weights_only=True, mmap=True)``: torch's restricted unpickler, which builds tensors,
containers and primitives only and refuses any other global (a ``__reduce__`` payload
fails before it can run), with the tensor storages memory-mapped rather than read into memory.
A pickle that needs anything more is refused (`UnsafeWeightsError`), as is every other suffix.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from dreamline.models.weights import UnsafeWeightsError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.model."
CAMERA_KEY = UNET_PREFIX + "camera_embed.0.weight"

# LatentDiffusionInterface.register_schedule's buffers (not weights; the scheduler config
# carries the schedule), and the extras of LDM / SGM training checkpoints.
SCHEDULE_KEYS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2")
IGNORED_KEYS = SCHEDULE_KEYS + ("logvar", "scale_factor")
IGNORED_PREFIXES = ("model_ema.",)          # LitEma copies (model_ema.decay, .num_updates, ...)
# OpenCLIP parts SD 2's text conditioning does not use: the contrastive head and the causal
# mask (a buffer; CLIPTextModel builds its own).
TEXT_IGNORED = ("text_projection", "logit_scale", "attn_mask")
READABLE_SUFFIXES = (".safetensors", ".pt", ".ckpt")
MVDREAM_SAMPLE_SIZE = 32    # mvdream/configs/sd-v2-base.yaml: image_size 32 (256 px)


class CheckpointError(ValueError):
    """An LDM checkpoint that does not map onto the configured components."""


class Source(NamedTuple):
    """Where a diffusers tensor comes from: an LDM key (without the component prefix) and,
    for OpenCLIP's packed in-projection, which third of its rows (0 q, 1 k, 2 v)."""
    key: str
    chunk: int | None = None


# --- reading -------------------------------------------------------------------------------

def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The checkpoint's state dict, and the names of top-level entries that are not part of it
    (a Lightning ``.ckpt``'s ``global_step`` etc. beside its ``state_dict``). See the module
    docstring for what is accepted and why."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in READABLE_SUFFIXES:
        raise UnsafeWeightsError(
            f"{path}: unsupported checkpoint format {suffix or '(no suffix)'!r}; give a .safetensors "
            f"file in the LDM layout, or the original .pt / .ckpt (read with torch's weights-only "
            f"unpickler)")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path), device="cpu")
        except Exception as exc:  # header / buffer errors: one clear message
            raise CheckpointError(
                f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UnsafeWeightsError(
                f"{path}: refused by torch's weights-only unpickler ({first}); the file needs more "
                f"than tensors and containers to load, which could run code. dreamline does not "
                f"unpickle it; convert it to .safetensors where you trust it") from None
        except (RuntimeError, OSError, EOFError, ValueError) as exc:
            raise CheckpointError(
                f"{path}: cannot read it with torch.load(weights_only=True, mmap=True) "
                f"({type(exc).__name__}: {exc}); legacy (pre-zip) torch files cannot be memory-mapped: "
                f"re-save it or convert it to .safetensors") from None
    extras: list[str] = []
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        extras = sorted(str(k) for k in obj if k != "state_dict")
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    bad = sorted(str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointError(f"{path}: entries that are not named tensors: {_names(bad)}")
    return dict(obj), extras


# --- key maps (diffusers name -> LDM name) -------------------------------------------------

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))
_UNET_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "class_embedding.linear_1": "camera_embed.0",
             "class_embedding.linear_2": "camera_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
_VAE_ATTN = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))


def _rename_first(rest: str, pairs) -> str:
    for new, old in pairs:
        if rest == new or rest.startswith(new + "."):
            return old + rest[len(new):]
    raise KeyError(rest)


def _unet_name(key: str, layers: int, up_attention: list[bool]) -> str:
    step = layers + 1
    head, _, param = key.rpartition(".")
    if head in _UNET_TOP:
        return f"{_UNET_TOP[head]}.{param}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "resnets":
            return f"input_blocks.{1 + b * step + j}.0.{_rename_first(rest, _RESNET)}"
        return f"input_blocks.{1 + b * step + j}.1.{rest}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key)
    if m:
        return f"input_blocks.{(int(m[1]) + 1) * step}.0.op.{m[2]}"
    m = re.fullmatch(r"mid_block\.resnets\.(\d)\.(.+)", key)
    if m:
        return f"middle_block.{2 * int(m[1])}.{_rename_first(m[2], _RESNET)}"
    m = re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key)
    if m:
        return f"middle_block.1.{m[1]}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "resnets":
            return f"output_blocks.{b * step + j}.0.{_rename_first(rest, _RESNET)}"
        return f"output_blocks.{b * step + j}.1.{rest}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key)
    if m:
        b = int(m[1])
        return f"output_blocks.{b * step + layers}.{2 if up_attention[b] else 1}.conv.{m[2]}"
    raise KeyError(key)


def _vae_resnet(rest: str) -> str:
    return "nin_shortcut" + rest[len("conv_shortcut"):] if rest.startswith("conv_shortcut.") else rest


def _vae_name(key: str, levels: int) -> str:
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key)
    if m:
        return f"encoder.down.{m[1]}.block.{m[2]}.{_vae_resnet(m[3])}"
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key)
    if m:
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key)
    if m:
        return f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{_vae_resnet(m[3])}"
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key)
    if m:
        return f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)", key)
    if m:
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_vae_resnet(m[3])}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key)
    if m:
        return f"{m[1]}.mid.attn_1.{_rename_first(m[2], _VAE_ATTN)}"
    m = re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", key)
    if m:
        return f"{m[1]}.norm_out.{m[2]}"
    if re.fullmatch(r"((encoder|decoder)\.conv_(in|out)|quant_conv|post_quant_conv)\.(weight|bias)", key):
        return key
    raise KeyError(key)


_TEXT_LAYER = (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("self_attn.out_proj", "attn.out_proj"),
               ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"))


def _text_name(key: str) -> Source:
    key = key.removeprefix("text_model.")   # transformers 4 nests the weights under text_model
    fixed = {"embeddings.token_embedding.weight": "token_embedding.weight",
             "embeddings.position_embedding.weight": "positional_embedding",
             "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}
    if key in fixed:
        return Source(fixed[key])
    m = re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key)
    if m:
        return Source(f"transformer.resblocks.{m[1]}.attn.in_proj_{m[3]}", "qkv".index(m[2]))
    m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", key)
    if m:
        return Source(f"transformer.resblocks.{m[1]}.{_rename_first(m[2], _TEXT_LAYER)}")
    raise KeyError(key)


def _meta_shapes(build: Callable[[], torch.nn.Module]) -> dict[str, torch.Size]:
    """The state dict's names and shapes of a model, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = build()
    return {k: v.shape for k, v in model.state_dict().items()}


def _clean(config) -> dict:
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def _unet_shapes(config: dict) -> dict[str, torch.Size]:
    from dreamline.models.unet import CameraUNet2DConditionModel

    config = {k: v for k, v in _clean(config).items() if k != "multiview_attention"}
    return _meta_shapes(lambda: CameraUNet2DConditionModel.from_config(config))


def _vae_shapes(config: dict) -> dict[str, torch.Size]:
    from diffusers import AutoencoderKL

    return _meta_shapes(lambda: AutoencoderKL.from_config(_clean(config)))


def _text_shapes(config) -> dict[str, torch.Size]:
    from transformers import CLIPTextModel

    return _meta_shapes(lambda: CLIPTextModel(config))


def _map(shapes: dict[str, torch.Size], name: Callable[[str], Source], what: str) -> dict[str, Source]:
    out, unknown = {}, []
    for key in shapes:
        try:
            out[key] = name(key)
        except KeyError:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{what} config has weights with no LDM counterpart (an unsupported "
                              f"layout): {_names(unknown)}")
    return out


def unet_key_map(config: dict, shapes: dict[str, torch.Size] | None = None) -> dict[str, Source]:
    """diffusers UNet key -> its LDM source under ``model.diffusion_model.``, for `config` (a
    UNet2DConditionModel config; ``class_embed_type="projection"`` for the camera MLP)."""
    layers = config.get("layers_per_block", 2)
    if not isinstance(layers, int):
        raise CheckpointError(f"per-level layers_per_block {layers!r} is not supported; LDM uses one count")
    if config.get("class_embed_type") not in (None, "projection") or config.get("num_class_embeds"):
        raise CheckpointError(f"class embedding {config.get('class_embed_type')!r} has no LDM counterpart "
                              f"here; only MVDream's camera MLP (class_embed_type='projection') maps")
    up_attention = ["CrossAttn" in t for t in config["up_block_types"]]
    shapes = _unet_shapes(config) if shapes is None else shapes
    return _map(shapes, lambda k: Source(_unet_name(k, layers, up_attention)), "UNet")


def vae_key_map(config: dict, shapes: dict[str, torch.Size] | None = None) -> dict[str, Source]:
    """diffusers AutoencoderKL key -> its LDM source under ``first_stage_model.``."""
    levels = len(config["block_out_channels"])
    shapes = _vae_shapes(config) if shapes is None else shapes
    return _map(shapes, lambda k: Source(_vae_name(k, levels)), "VAE")


def text_key_map(config, shapes: dict[str, torch.Size] | None = None) -> dict[str, Source]:
    """transformers CLIPTextModel key -> its OpenCLIP source under ``cond_stage_model.model.``."""
    return _map(_text_shapes(config) if shapes is None else shapes, _text_name, "text encoder")


# --- conversion ----------------------------------------------------------------------------

def _names(keys, limit: int = 20) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" ... and {len(keys) - limit} more" if len(keys) > limit else "")


def _fit(tensor: torch.Tensor, shape: torch.Size, reshape_1x1: bool) -> torch.Tensor | None:
    """`tensor` with `shape`, or None. A 1x1 conv weight and a linear weight are the same
    numbers: where allowed, one becomes the other by dropping / adding the trailing 1s."""
    if tensor.shape == shape:
        return tensor
    if reshape_1x1 and tensor.numel() == shape.numel() and tensor.shape[:2] == shape[:2] \
            and all(d == 1 for d in (*tensor.shape[2:], *shape[2:])):
        return tensor.reshape(shape)
    return None


@dataclass
class _Part:
    out: dict[str, torch.Tensor] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shapes: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def _convert_part(state: dict[str, torch.Tensor], prefix: str, key_map: dict[str, Source],
                  shapes: dict[str, torch.Size], ignore: Callable[[str], bool],
                  reshape_1x1: Callable[[str], bool]) -> _Part:
    part = _Part()
    needed = set()
    for key, (source, chunk) in key_map.items():
        full = prefix + source
        needed.add(full)
        if full not in state:
            if full not in part.missing:
                part.missing.append(full)
            continue
        tensor = state[full]
        if chunk is not None:
            if tensor.ndim == 0 or tensor.shape[0] % 3:
                part.shapes.append(f"{full}: shape {tuple(tensor.shape)} is not q, k and v stacked")
                continue
            tensor = tensor.chunk(3, dim=0)[chunk]
        fitted = _fit(tensor, shapes[key], reshape_1x1(source))
        if fitted is None:
            what = f" (third {chunk} of it)" if chunk is not None else ""
            part.shapes.append(f"{full}{what}: checkpoint {tuple(tensor.shape)}, config expects "
                               f"{tuple(shapes[key])} for {key}")
            continue
        part.out[key] = fitted
    for full in state:
        if full.startswith(prefix) and full not in needed:
            (part.ignored if ignore(full[len(prefix):]) else part.unexpected).append(full)
    return part


def _raise_if_bad(parts: list[_Part], top_unexpected: list[str], source: str) -> None:
    missing = [k for p in parts for k in p.missing]
    unexpected = top_unexpected + [k for p in parts for k in p.unexpected]
    shapes = [s for p in parts for s in p.shapes]
    if not (missing or unexpected or shapes):
        return
    lines = [f"{source}: the checkpoint does not match the component configs"]
    if missing:
        lines.append(f"  {len(missing)} missing key(s) the config needs: {_names(missing)}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected key(s), neither mapped nor known to be unused: "
                     f"{_names(unexpected)}")
    if shapes:
        lines.append(f"  {len(shapes)} shape mismatch(es) (is the config folder the checkpoint's base "
                     f"model, e.g. SD 2.1 base?): " + "; ".join(shapes[:20])
                     + (f" ... and {len(shapes) - 20} more" if len(shapes) > 20 else ""))
    raise CheckpointError("\n".join(lines))


@dataclass
class Converted:
    """The diffusers components' state dicts; `ignored` lists the checkpoint keys left out."""
    unet: dict[str, torch.Tensor]
    vae: dict[str, torch.Tensor]
    text_encoder: dict[str, torch.Tensor]
    ignored: list[str]


def check_schedule(state: dict[str, torch.Tensor], alphas_cumprod: torch.Tensor,
                   source: str = "checkpoint") -> None:
    """The checkpoint's schedule buffers (where present) agree with the scheduler's, to the
    precision they are stored in (LDM computes them in float64 and stores float32)."""
    ours = alphas_cumprod.double()
    theirs = {"alphas_cumprod": ours, "betas": 1.0 - ours / torch.cat([ours.new_ones(1), ours[:-1]])}
    for name, expected in theirs.items():
        if name not in state:
            continue
        got = state[name]
        rtol = max(1e-4, 8 * torch.finfo(got.dtype).eps) if got.is_floating_point() else 1e-4
        got = got.double()
        if got.shape != expected.shape or not torch.allclose(got, expected, rtol=rtol, atol=1e-6):
            same = got.shape == expected.shape
            worst = ((got - expected).abs() / expected.abs()).max().item() if same else None
            raise CheckpointError(
                f"{source}: its noise schedule ({name}, {tuple(got.shape)}) differs from the scheduler "
                f"config's ({tuple(expected.shape)}"
                + (f", largest relative difference {worst:.3g}" if worst is not None else "")
                + "): the config folder is not this model's base")


def convert_ldm_checkpoint(state: dict[str, torch.Tensor], unet_config: dict, vae_config: dict, text_config,
                           source: str = "checkpoint") -> Converted:
    """An LDM-layout state dict -> state dicts for `CameraUNet2DConditionModel(unet_config)`,
    `AutoencoderKL(vae_config)` and `CLIPTextModel(text_config)`. Pure: reads `state` only
    (the results may share memory with it). Raises `CheckpointError` naming every missing,
    unexpected or mis-shaped key."""
    unet_shapes, vae_shapes = _unet_shapes(unet_config), _vae_shapes(vae_config)
    text_shapes = _text_shapes(text_config)
    unet_map = unet_key_map(unet_config, unet_shapes)
    vae_map = vae_key_map(vae_config, vae_shapes)
    text_map = text_key_map(text_config, text_shapes)
    dropped_block = f"transformer.resblocks.{text_config.num_hidden_layers}."

    def unet_1x1(name: str) -> bool:
        return bool(re.search(r"\.proj_(in|out)\.weight$", name))

    def vae_1x1(name: str) -> bool:
        return bool(re.search(r"\.attn_1\.(q|k|v|proj_out)\.weight$", name))

    parts = [
        _convert_part(state, UNET_PREFIX, unet_map, unet_shapes, lambda k: False, unet_1x1),
        _convert_part(state, VAE_PREFIX, vae_map, vae_shapes, lambda k: False, vae_1x1),
        _convert_part(state, TEXT_PREFIX, text_map, text_shapes,
                      lambda k: k in TEXT_IGNORED or k.startswith(dropped_block), lambda k: False),
    ]
    top_ignored, top_unexpected = [], []
    for key in state:
        if key.startswith((UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX)):
            continue
        (top_ignored if key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES) else top_unexpected).append(key)
    _raise_if_bad(parts, top_unexpected, source)
    return Converted(unet=parts[0].out, vae=parts[1].out, text_encoder=parts[2].out,
                     ignored=sorted(top_ignored + [k for p in parts for k in p.ignored]))


# --- configs and the pipeline --------------------------------------------------------------

@dataclass
class BaseConfigs:
    """What a local SD 2.1 (base) diffusers folder contributes: configs and the tokenizer."""
    folder: Path
    unet: dict
    vae: dict
    text: object          # transformers CLIPTextConfig
    tokenizer: object     # transformers CLIPTokenizer
    scheduler: dict


def read_base_configs(folder: str | Path) -> BaseConfigs:
    """Component configs and tokenizer files of a local SD 2.1-layout folder (weights unused)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTokenizer

    folder = Path(folder)
    need = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
            "scheduler": "scheduler_config.json", "tokenizer": None}
    missing = [f"{d}/{f or ''}" for d, f in need.items()
               if not ((folder / d / f).is_file() if f else (folder / d).is_dir())]
    if missing:
        raise FileNotFoundError(f"{folder}: not an SD 2.1-layout diffusers folder; missing {missing}")
    return BaseConfigs(
        folder=folder,
        unet=_clean(UNet2DConditionModel.load_config(folder, subfolder="unet")),
        vae=_clean(AutoencoderKL.load_config(folder, subfolder="vae")),
        text=CLIPTextConfig.from_pretrained(folder / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        scheduler=_clean(DDIMScheduler.load_config(folder, subfolder="scheduler")))


def mvdream_unet_config(base: dict, camera_dim: int) -> dict:
    """SD's UNet config with MVDream's camera MLP (diffusers' projection class embedding)."""
    base = _clean(base)
    if base.get("class_embed_type") not in (None, "projection") or base.get("num_class_embeds"):
        raise CheckpointError(f"the base UNet config already has a class embedding "
                              f"({base.get('class_embed_type')!r}); MVDream's camera needs it free")
    return {**base, "class_embed_type": "projection", "projection_class_embeddings_input_dim": int(camera_dim)}


def _dtype(tensors: dict[str, torch.Tensor], dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        return dtype
    kinds = {t.dtype for t in tensors.values() if t.is_floating_point()}
    return kinds.pop() if len(kinds) == 1 else torch.float32


def build_pipeline(state: dict[str, torch.Tensor], base: BaseConfigs, num_views: int = 4,
                   sample_size: int | None = MVDREAM_SAMPLE_SIZE, dtype: torch.dtype | None = None,
                   source: str = "checkpoint"):
    """The checkpoint as a `MultiViewDiffusionPipeline`: camera UNet with multi-view attention,
    AutoencoderKL, CLIPTextModel, the base folder's tokenizer and its schedule as DDIM.

    `sample_size` is the UNet's default latent size: MVDream's 32 (256 px, the resolution its
    multi-view model was trained at) rather than SD 2.1 base's 64; None keeps the base config's.
    `dtype` None keeps each component's checkpoint dtype."""
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPTextModel

    from dreamline.models.pipelines import MultiViewDiffusionPipeline
    from dreamline.models.unet import CameraUNet2DConditionModel, set_multiview

    camera_dim = int(state[CAMERA_KEY].shape[1]) if CAMERA_KEY in state and state[CAMERA_KEY].ndim == 2 else 16
    unet_config = mvdream_unet_config(base.unet, camera_dim)
    if sample_size is not None:
        unet_config["sample_size"] = int(sample_size)
    scheduler = DDIMScheduler.from_config(base.scheduler)
    check_schedule(state, scheduler.alphas_cumprod, source)
    if "scale_factor" in state and "scaling_factor" in base.vae and \
            abs(float(state["scale_factor"]) - float(base.vae["scaling_factor"])) > 1e-6:
        raise CheckpointError(f"{source}: latent scale_factor {float(state['scale_factor'])} differs from the "
                              f"VAE config's scaling_factor {base.vae['scaling_factor']}")
    converted = convert_ldm_checkpoint(state, unet_config, base.vae, base.text, source)

    def load(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
        wanted = _dtype(weights, dtype)
        if next(model.parameters()).dtype != wanted:
            # nn.Module's own cast: diffusers 0.42's ModelMixin.to warns about _keep_in_fp32_modules
            # even when, as here, the list is empty; the rest of it concerns quantised models.
            model = torch.nn.Module.to(model, wanted)
        model.load_state_dict(weights, strict=True)   # copies, casting where dtype asks
        return model.eval().requires_grad_(False)

    unet = set_multiview(load(CameraUNet2DConditionModel.from_config(unet_config), converted.unet))
    vae = load(AutoencoderKL.from_config(base.vae), converted.vae)
    text_encoder = load(CLIPTextModel(base.text), converted.text_encoder)
    pipe = MultiViewDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=base.tokenizer,
                                      scheduler=scheduler, max_tokens=base.tokenizer.model_max_length,
                                      num_views=num_views, camera_convention="mvdream")
    pipe.set_progress_bar_config(disable=True)
    return pipe, converted


def convert_checkpoint(checkpoint: str | Path, out_folder: str | Path, config_from: str | Path,
                       num_views: int = 4, sample_size: int | None = MVDREAM_SAMPLE_SIZE,
                       dtype: torch.dtype | None = None) -> tuple[Path, Converted, list[str]]:
    """Write `checkpoint` (LDM layout) as a dreamline multi-view pipeline folder (safetensors
    weights only) that `dreamline.training.common.load_base_pipeline` loads. The folder appears
    whole or not at all: it is written beside `out_folder` and renamed into place."""
    out = Path(out_folder)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not an empty folder; choose a new output folder")
    base = read_base_configs(config_from)
    state, extras = read_checkpoint(checkpoint)
    pipe, converted = build_pipeline(state, base, num_views=num_views, sample_size=sample_size, dtype=dtype,
                                     source=str(checkpoint))
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "conversion.json").write_text(json.dumps({
            "source": Path(checkpoint).name, "config_from": str(base.folder),
            "ignored_keys": converted.ignored, "ignored_top_level_entries": extras}, indent=1) + "\n")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out, converted, extras
