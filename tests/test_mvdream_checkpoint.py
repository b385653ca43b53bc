"""MVDream's released checkpoint layout (LDM "original") -> dreamline's multi-view pipeline.

The real file (5 GB) is not available offline, so a tiny checkpoint is built in exactly its
layout: SD 2.1 base's block pattern (cross-attention in all but the deepest level, 2 ResBlocks
per level) at tiny widths, the camera MLP, an OpenCLIP text tower with one block more than the
CLIPTextModel keeps, and the extras a training checkpoint carries (schedule buffers, EMA).
Its key names are checked against hand-written names from MVDream's / SD's code and against
diffusers' own LDM converters, so they do not merely mirror the mapping under test.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextModel

from dreamline.models import ldm_checkpoint as L
from dreamline.models.pipelines import MultiViewDiffusionPipeline
from dreamline.models.unet import CameraUNet2DConditionModel, has_camera, is_multiview
from dreamline.models.weights import UnsafeWeightsError
from research_standins import save_sd21
from test_pipelines import orbit_cameras

REPO = Path(__file__).resolve().parents[1]
VAE_1X1 = ("mid.attn_1.q.weight", "mid.attn_1.k.weight", "mid.attn_1.v.weight", "mid.attn_1.proj_out.weight")

# Names as MVDream's MultiViewUNetModel / LDM AutoencoderKL / OpenCLIP write them for this
# layout (3 levels, 2 ResBlocks each, attention on the two upper levels).
KNOWN_LDM_NAMES = (
    "model.diffusion_model.time_embed.0.weight", "model.diffusion_model.time_embed.2.bias",
    "model.diffusion_model.camera_embed.0.weight", "model.diffusion_model.camera_embed.2.weight",
    "model.diffusion_model.input_blocks.0.0.weight",
    "model.diffusion_model.input_blocks.1.0.in_layers.0.weight",
    "model.diffusion_model.input_blocks.1.0.emb_layers.1.weight",
    "model.diffusion_model.input_blocks.1.1.proj_in.weight",
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
    "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight",
    "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.ff.net.0.proj.weight",
    "model.diffusion_model.input_blocks.3.0.op.weight",
    "model.diffusion_model.input_blocks.4.0.skip_connection.weight",
    "model.diffusion_model.input_blocks.8.0.out_layers.3.weight",
    "model.diffusion_model.middle_block.0.in_layers.2.weight",
    "model.diffusion_model.middle_block.1.transformer_blocks.0.norm3.weight",
    "model.diffusion_model.middle_block.2.out_layers.0.bias",
    "model.diffusion_model.output_blocks.0.0.skip_connection.weight",
    "model.diffusion_model.output_blocks.2.1.conv.weight",       # upsampler after a plain level
    "model.diffusion_model.output_blocks.5.1.proj_out.weight",
    "model.diffusion_model.output_blocks.5.2.conv.weight",       # upsampler after attention
    "model.diffusion_model.output_blocks.8.1.transformer_blocks.0.ff.net.2.weight",
    "model.diffusion_model.out.0.weight", "model.diffusion_model.out.2.bias",
    "first_stage_model.encoder.conv_in.weight", "first_stage_model.encoder.down.0.block.1.norm1.weight",
    "first_stage_model.encoder.down.0.downsample.conv.weight",
    "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight",
    "first_stage_model.encoder.mid.block_2.conv2.weight", "first_stage_model.encoder.mid.attn_1.q.weight",
    "first_stage_model.encoder.norm_out.weight", "first_stage_model.decoder.up.0.block.2.conv2.weight",
    "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight",
    "first_stage_model.decoder.up.1.upsample.conv.weight",
    "first_stage_model.decoder.mid.attn_1.proj_out.weight", "first_stage_model.quant_conv.weight",
    "first_stage_model.post_quant_conv.bias",
    "cond_stage_model.model.token_embedding.weight", "cond_stage_model.model.positional_embedding",
    "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight",
    "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_bias",
    "cond_stage_model.model.transformer.resblocks.1.mlp.c_fc.weight",
    "cond_stage_model.model.transformer.resblocks.0.ln_2.bias",
    "cond_stage_model.model.ln_final.weight",
)


class _Payload:
    """Unpickling this calls open(marker, "w"): a stand-in for any command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory) -> Path:
    """A tiny SD 2.1-layout folder (written by diffusers' StableDiffusionPipeline) with SD 2.1
    base's block pattern; the converter takes configs, scheduler and tokenizer from it."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(8, 16, 16),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4, 4), use_linear_projection=True, norm_num_groups=4)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                        layers_per_block=2, sample_size=16)
    scheduler = PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              skip_prk_steps=True, steps_offset=1, prediction_type="epsilon")
    return save_sd21(tmp_path_factory.mktemp("sd21-tiny"), unet=unet, vae=vae, scheduler=scheduler)


def _random(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Every tensor random (no zero-initialised layer), distinct from the base folder's."""
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=g) * 0.2).contiguous() for k, v in model.state_dict().items()}


def _ldm_layout(prefix: str, key_map: dict[str, L.Source],
                weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, packed = {}, {}
    for key, (source, chunk) in key_map.items():
        t = weights[key]
        if chunk is not None:
            packed.setdefault(prefix + source, {})[chunk] = t
            continue
        if source.endswith(VAE_1X1):
            t = t[:, :, None, None]      # LDM's AttnBlock q/k/v/proj_out are 1x1 Conv2d
        out[prefix + source] = t.clone()
    for name, parts in packed.items():
        out[name] = torch.cat([parts[0], parts[1], parts[2]])   # OpenCLIP packs q, k, v
    return out


@pytest.fixture(scope="module")
def synthetic(base_folder):
    """(LDM state dict, the diffusers weights it was made from, the configs)."""
    base = L.read_base_configs(base_folder)
    unet_config = L.mvdream_unet_config(base.unet, 16)
    unet = _random(CameraUNet2DConditionModel.from_config(unet_config), 1)
    vae = _random(AutoencoderKL.from_config(base.vae), 2)
    text = _random(CLIPTextModel(base.text), 3)
    state = {**_ldm_layout(L.UNET_PREFIX, L.unet_key_map(unet_config), unet),
             **_ldm_layout(L.VAE_PREFIX, L.vae_key_map(base.vae), vae),
             **_ldm_layout(L.TEXT_PREFIX, L.text_key_map(base.text), text)}
    g = torch.Generator().manual_seed(4)
    hidden, n = base.text.hidden_size, base.text.num_hidden_layers
    # The OpenCLIP block after the penultimate one, and the contrastive head: present, unused.
    for name, like in list(state.items()):
        if name.startswith(f"{L.TEXT_PREFIX}transformer.resblocks.{n - 1}."):
            state[name.replace(f"resblocks.{n - 1}.", f"resblocks.{n}.")] = torch.randn(like.shape, generator=g)
    state[L.TEXT_PREFIX + "text_projection"] = torch.randn(hidden, hidden, generator=g)
    state[L.TEXT_PREFIX + "logit_scale"] = torch.tensor(4.6)
    # LatentDiffusion's schedule buffers (float64 numpy -> float32, as LDM computes them).
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, 0)
    state.update({"betas": betas.float(), "alphas_cumprod": alphas_cumprod.float(),
                  "alphas_cumprod_prev": torch.cat([torch.ones(1), alphas_cumprod[:-1].float()]),
                  "posterior_variance": torch.rand(1000, generator=g), "logvar": torch.zeros(1000),
                  "model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(7),
                  "model_ema.diffusion_modeltime_embed0weight": torch.randn(4, generator=g)})
    return state, {"unet": unet, "vae": vae, "text_encoder": text}, base, unet_config


def _source_tensor(state, prefix: str, source: L.Source, shape) -> torch.Tensor:
    t = state[prefix + source.key]
    if source.chunk is not None:
        t = t.chunk(3)[source.chunk]
    return t.reshape(shape)   # only ever drops the 1x1 of LDM's VAE attention convs


def test_synthetic_checkpoint_has_the_ldm_names(synthetic):
    state, _, _, _ = synthetic
    missing = [k for k in KNOWN_LDM_NAMES if k not in state]
    assert not missing
    assert state["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (16, 16, 1, 1)
    assert state["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"].shape == (96, 32)
    assert state["model.diffusion_model.camera_embed.0.weight"].shape == (32, 16)   # Linear(16, 4 * 8)


def test_mapping_agrees_with_diffusers_own_converters(synthetic):
    """diffusers' single-file converters (validated on real SD checkpoints) read the
    synthetic checkpoint into the same tensors as our mapping; the camera MLP is ours alone."""
    from diffusers.loaders import single_file_utils as sfu

    state, _, base, unet_config = synthetic
    ours = L.convert_ldm_checkpoint(state, unet_config, base.vae, base.text)
    theirs = sfu.convert_ldm_unet_checkpoint(state, {**unet_config, "class_embed_type": None})
    assert set(theirs) == {k for k in ours.unet if not k.startswith("class_embedding.")}
    assert all(torch.equal(theirs[k], ours.unet[k]) for k in theirs)
    theirs = sfu.convert_ldm_vae_checkpoint(state, base.vae)
    assert set(theirs) == set(ours.vae) and all(torch.equal(theirs[k], ours.vae[k]) for k in theirs)
    theirs = {k.removeprefix("text_model."): v for k, v in
              sfu.convert_open_clip_checkpoint(CLIPTextModel(base.text), state).items()}
    ours_text = {k.removeprefix("text_model."): v for k, v in ours.text_encoder.items()}
    assert set(ours_text) <= set(theirs)
    assert all(torch.equal(theirs[k], v) for k, v in ours_text.items())
    # What diffusers also converted but the 23-layer (here 2-layer) model does not have:
    assert {k.split(".")[2] for k in set(theirs) - set(ours_text) if k.startswith("encoder.layers.")} == \
        {str(base.text.num_hidden_layers)}


@pytest.fixture(scope="module")
def converted(synthetic, base_folder, tmp_path_factory):
    """The checkpoint saved as .safetensors (converted by the script) and as a .pt of a
    plain dict (converted through the module); both output folders."""
    state, _, _, _ = synthetic
    root = tmp_path_factory.mktemp("mvdream")
    st, pt = root / "tiny-4view.safetensors", root / "tiny-4view.pt"
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    torch.save(dict(state), pt)
    out_st, out_pt = root / "from-safetensors", root / "from-pt"
    run = subprocess.run([sys.executable, str(REPO / "scripts/convert_mvdream.py"), str(st), str(out_st),
                          "--config-from", str(base_folder)], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert "wrote" in run.stdout
    L.convert_checkpoint(pt, out_pt, base_folder)
    return out_st, out_pt


def test_converted_folder_loads_as_a_multiview_pipeline(converted, synthetic):
    from dreamline.guidance.prior import DiffusionPrior
    from dreamline.training.common import load_base_pipeline

    state, _, base, unet_config = synthetic
    maps = {"unet": (L.UNET_PREFIX, L.unet_key_map(unet_config)),
            "vae": (L.VAE_PREFIX, L.vae_key_map(base.vae)),
            "text_encoder": (L.TEXT_PREFIX, L.text_key_map(base.text))}
    loaded = []
    for folder in converted:
        files = [p for p in folder.rglob("*") if p.is_file()]
        assert any(p.suffix == ".safetensors" for p in files)
        assert not [p.name for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
        index = json.loads((folder / "model_index.json").read_text())
        assert index["_class_name"] == "MultiViewDiffusionPipeline"
        assert index["unet"] == ["dreamline.models.unet", "CameraUNet2DConditionModel"]

        pipe = load_base_pipeline(folder)
        assert isinstance(pipe, MultiViewDiffusionPipeline)
        assert isinstance(pipe.unet, CameraUNet2DConditionModel)
        assert has_camera(pipe.unet) and is_multiview(pipe.unet)
        assert pipe.unet.config.sample_size == L.MVDREAM_SAMPLE_SIZE and pipe.config.num_views == 4
        assert pipe.scheduler.config.prediction_type == "epsilon"
        assert pipe.tokenizer.model_max_length == 12 and pipe.config.max_tokens == 12
        # Every converted tensor is its source tensor (after the q/k/v split and 1x1 squeeze).
        for name, (prefix, key_map) in maps.items():
            weights = getattr(pipe, name).state_dict()
            assert set(weights) == set(key_map), name
            for key, value in weights.items():
                assert torch.equal(value, _source_tensor(state, prefix, key_map[key], value.shape)), (name, key)
        # The camera MLP arrived where dreamline's camera embedding lives.
        emb = pipe.unet.class_embedding
        assert emb.linear_1.in_features == 16
        assert torch.equal(emb.linear_1.weight, state["model.diffusion_model.camera_embed.0.weight"])
        assert torch.equal(emb.linear_2.bias, state["model.diffusion_model.camera_embed.2.bias"])
        record = json.loads((folder / "conversion.json").read_text())
        assert "cond_stage_model.model.transformer.resblocks.2.attn.in_proj_weight" in record["ignored_keys"]
        assert {"betas", "logvar", "model_ema.decay",
                "cond_stage_model.model.text_projection"} <= set(record["ignored_keys"])
        loaded.append(pipe)

    # The .safetensors and the .pt give the same model.
    a, b = (p.unet.state_dict() for p in loaded)
    assert all(torch.equal(a[k], b[k]) for k in a)

    pipe = loaded[0]
    g = torch.Generator().manual_seed(0)
    z, text = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 12, 32, generator=g)
    cams = orbit_cameras(4)
    t = torch.tensor([500] * 4)
    with torch.no_grad():
        with_cams = pipe.unet(z, t, encoder_hidden_states=text, class_labels=cams,
                              cross_attention_kwargs={"num_views": 4}).sample
        without = pipe.unet(z, t, encoder_hidden_states=text, class_labels=None,
                            cross_attention_kwargs={"num_views": 4}).sample
    assert torch.isfinite(with_cams).all() and not torch.allclose(with_cams, without)

    pipe.set_progress_bar_config(disable=True)
    images = pipe("a red chair", cameras=cams, height=16, width=16, num_inference_steps=2,
                  guidance_scale=2.0, generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (4, 16, 16, 3)

    prior = DiffusionPrior.load(str(converted[0]))
    assert prior.uses_cameras and prior.multiview and prior.prediction_type == "epsilon"


def _expect_error(state, synthetic, *names):
    _, _, base, unet_config = synthetic
    with pytest.raises(L.CheckpointError) as info:
        L.convert_ldm_checkpoint(state, unet_config, base.vae, base.text)
    for name in names:
        assert name in str(info.value)
    return str(info.value)


def test_missing_and_surplus_keys_are_named(synthetic):
    state = synthetic[0]
    for key in ("model.diffusion_model.camera_embed.2.weight",
                "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight",
                "first_stage_model.decoder.mid.attn_1.v.weight"):
        message = _expect_error({k: v for k, v in state.items() if k != key}, synthetic, key)
        assert "missing" in message
    for key in ("model.diffusion_model.label_emb.0.0.weight", "first_stage_model.loss.logvar",
                "cond_stage_model.model.transformer.resblocks.3.ln_1.weight",   # two past the kept ones
                "some_other_model.weight"):
        message = _expect_error({**state, key: torch.zeros(2)}, synthetic, key)
        assert "unexpected" in message


def test_shapes_that_disagree_with_the_config_are_named(synthetic, base_folder):
    state, _, base, _ = synthetic
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    message = _expect_error({**state, key: torch.zeros(8, 16)}, synthetic, key, "(8, 16)", "(8, 32)")
    assert "shape" in message
    # A config folder of another model: every disagreeing tensor is named.
    wrong = L.mvdream_unet_config({**base.unet, "cross_attention_dim": 24}, 16)
    with pytest.raises(L.CheckpointError, match="attn2.to_k.weight: checkpoint"):
        L.convert_ldm_checkpoint(state, wrong, base.vae, base.text)
    # A schedule the scheduler config does not describe.
    bad = {**state, "alphas_cumprod": state["alphas_cumprod"] * 0.9}
    with pytest.raises(L.CheckpointError, match="noise schedule"):
        L.build_pipeline(bad, base)


def test_only_safe_readers_open_the_file(tmp_path, base_folder):
    # The payload is live: plain unpickling runs it.
    live, marker = tmp_path / "live.pt", tmp_path / "live-marker"
    torch.save({"x": torch.zeros(1), "p": _Payload(marker)}, live)
    torch.load(live, weights_only=False)["p"].close()   # the file the payload opened
    assert marker.exists()

    evil, marker = tmp_path / "evil.pt", tmp_path / "marker"
    torch.save({"model.diffusion_model.time_embed.0.weight": torch.zeros(2), "p": _Payload(marker)}, evil)
    with pytest.raises(UnsafeWeightsError, match="weights-only"):
        L.read_checkpoint(evil)
    with pytest.raises(UnsafeWeightsError):
        L.convert_checkpoint(evil, tmp_path / "out", base_folder)   # refused before any output
    assert not marker.exists() and not (tmp_path / "out").exists()

    for name in ("weights.bin", "weights.pkl", "weights"):
        (tmp_path / name).write_bytes(b"\x80\x04N.")
        with pytest.raises(UnsafeWeightsError, match="unsupported checkpoint format"):
            L.read_checkpoint(tmp_path / name)
    disguised = tmp_path / "disguised.safetensors"
    disguised.write_bytes(evil.read_bytes())
    with pytest.raises(L.CheckpointError, match="not a readable safetensors"):
        L.read_checkpoint(disguised)
    assert not marker.exists()

    # A Lightning-style .ckpt: the state dict is taken from "state_dict", the rest named.
    ckpt = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"betas": torch.ones(3)}, "global_step": 3, "epoch": 1}, ckpt)
    state, extras = L.read_checkpoint(ckpt)
    assert list(state) == ["betas"] and extras == ["epoch", "global_step"]


# --- cameras: the converted model sees MVDream's camera input --------------------------

def _mvdream_camera(azimuth_deg: float, elevation_deg: float) -> torch.Tensor:
    """MVDream's camera input written from its recipe (camera_utils.get_camera, blender_coord
    and normalize_camera): a look-at c2w on the unit sphere with up +y, the world flipped to
    z-up, flattened row-major. Independent of dreamline's cameras code."""
    import math

    import numpy as np

    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    pos = np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    forward = -pos / np.linalg.norm(pos)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, up, -forward], axis=1)
    c2w[:3, 3] = pos
    flip = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=float)
    return torch.tensor((flip @ c2w).reshape(-1), dtype=torch.float32)


@pytest.mark.parametrize("azimuth, elevation, distance", [(0, 0, 2.0), (90, 15, 1.3), (225, 30, 3.7)])
def test_mvdream_camera_input_matches_mvdreams_recipe(azimuth, elevation, distance):
    from dreamline.models.camera_input import camera_input
    from dreamline.rendering.cameras import orbit_c2w

    ours = torch.tensor(orbit_c2w(azimuth, elevation, distance).reshape(-1), dtype=torch.float32)
    assert torch.equal(camera_input(ours, "dreamline"), ours)
    assert torch.allclose(camera_input(ours[None], "mvdream")[0], _mvdream_camera(azimuth, elevation), atol=1e-5)


def test_converted_pipeline_feeds_mvdream_cameras_and_project_folders_do_not(converted, tmp_path):
    from dreamline.guidance.prior import DiffusionPrior
    from dreamline.training.common import load_base_pipeline

    folder = converted[0]
    pipe = load_base_pipeline(folder)
    assert pipe.camera_convention == "mvdream"
    assert json.loads((folder / "model_index.json").read_text())["camera_convention"] == "mvdream"
    assert DiffusionPrior(pipe).camera_convention == "mvdream"
    # The UNet receives the converted cameras: same output as a dreamline-convention
    # pipeline fed MVDream's cameras by hand.
    cams = orbit_cameras(4)
    seen = []
    handle = pipe.unet.class_embedding.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    pipe.sample("a chair", cameras=cams, num_inference_steps=1, generator=torch.Generator().manual_seed(0))
    handle.remove()
    from dreamline.models.camera_input import camera_input

    assert torch.allclose(seen[0].float(), camera_input(cams, "mvdream").to(seen[0].device).float(), atol=1e-6)
    # A project pipeline saved without the option records nothing.
    plain = MultiViewDiffusionPipeline(unet=pipe.unet, vae=pipe.vae, text_encoder=pipe.text_encoder,
                                       tokenizer=pipe.tokenizer, scheduler=pipe.scheduler)
    plain.save_pretrained(tmp_path / "plain")
    assert "camera_convention" not in json.loads((tmp_path / "plain" / "model_index.json").read_text())
    assert load_base_pipeline(tmp_path / "plain").camera_convention == "dreamline"
