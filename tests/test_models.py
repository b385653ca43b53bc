"""Model side of MVDream / SweetDreamer: codec, text encoding, camera UNet, multi-view attention."""
from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from dreamline.config import UNetParams
from dreamline.models.codec import CCMLatentCodec, PixelUnshuffleCodec, ccm_codec, from_latent, to_latent
from dreamline.models.unet import (
    CameraUNet2DConditionModel, MultiViewAttnProcessor, PerViewAttnProcessor, add_camera_embedding,
    build_unet, has_camera, is_multiview, set_multiview, to_multiview,
)

TINY = UNetParams(block_out_channels=(16, 32), attention=(False, True), attention_head_dim=8,
                  norm_num_groups=8)
CHANNELS, SIZE, TEXT_DIM, TOKENS = 12, 8, 24, 5


def tiny_unet(camera_dim=None, seed=0):
    torch.manual_seed(seed)
    return build_unet(TINY, CHANNELS, SIZE, TEXT_DIM, camera_dim=camera_dim).eval()


def unet_inputs(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, CHANNELS, SIZE, SIZE, generator=g)
    states = torch.randn(n, TOKENS, TEXT_DIM, generator=g)
    mask = torch.ones(n, TOKENS, dtype=torch.long)
    mask[:, 3:] = 0
    return z, torch.tensor(437), states, mask


def run(unet, z, t, states, mask, cameras=None, views=None):
    kwargs = None if views is None else {"num_views": views}
    with torch.no_grad():
        return unet(z, t, encoder_hidden_states=states, encoder_attention_mask=mask,
                    class_labels=cameras, cross_attention_kwargs=kwargs).sample


# --- codec ---------------------------------------------------------------------------------

def test_codec_round_trip_is_exact_and_saves(tmp_path):
    codec = PixelUnshuffleCodec(factor=2)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    z = codec.encode(x)
    assert z.shape == (3, 12, 8, 8)
    assert torch.equal(codec.decode(z), x)
    # A permutation: noise in this space is pixel noise, same values, same statistics.
    assert torch.equal(z.flatten().sort().values, x.flatten().sort().values)
    assert codec.latent_channels == 12 and not list(codec.parameters())

    codec.save_pretrained(tmp_path)
    loaded = PixelUnshuffleCodec.from_pretrained(tmp_path)
    assert loaded.config.factor == 2 and loaded.config.scaling_factor == 1.0
    assert torch.equal(to_latent(loaded, x), z) and torch.equal(from_latent(loaded, z), x)
    with pytest.raises(ValueError):
        codec.encode(torch.zeros(1, 3, 15, 16))


def test_ccm_latent_codec_is_the_ccm_at_the_latent_grid(tmp_path):
    codec = CCMLatentCodec(factor=4, latent_channels=4)
    g = torch.Generator().manual_seed(0)
    # A CCM constant over each 4 x 4 block: seen at the latent grid it loses nothing.
    blocks = torch.rand(2, 3, 3, 3, generator=g) * 2 - 1
    ccm = blocks.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    z = codec.encode(ccm)
    assert z.shape == (2, 4, 3, 3) and not list(codec.parameters())
    assert torch.allclose(z[:, :3], blocks, atol=1e-6) and torch.equal(z[:, 3:], torch.zeros(2, 1, 3, 3))
    assert torch.allclose(codec.decode(z), ccm, atol=1e-6)
    # Otherwise each latent pixel is the mean of the block it covers.
    x = torch.rand(1, 3, 8, 8, generator=g) * 2 - 1
    assert torch.allclose(codec.encode(x)[0, :3, 1, 0], x[0, :, 4:8, 0:4].mean(dim=(1, 2)), atol=1e-6)

    codec.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]   # nothing but the config
    loaded = CCMLatentCodec.from_pretrained(tmp_path)
    assert (loaded.config.factor, loaded.config.latent_channels) == (4, 4)
    assert torch.equal(to_latent(loaded, ccm), z) and torch.allclose(from_latent(loaded, z), ccm, atol=1e-6)
    with pytest.raises(ValueError, match="divisible"):
        codec.encode(torch.zeros(1, 3, 6, 8))
    with pytest.raises(ValueError, match="3-channel"):
        codec.encode(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="latent_channels"):
        CCMLatentCodec(factor=8, latent_channels=2)


def test_ccm_codec_replaces_a_vae_and_keeps_pixel_unshuffle():
    class Pipe:
        def __init__(self, vae, in_channels):
            self.vae = vae
            self.unet = type("U", (), {"config": type("C", (), {"in_channels": in_channels})()})()

    unshuffle = PixelUnshuffleCodec(factor=2)
    assert ccm_codec(Pipe(unshuffle, 12)) is unshuffle
    vae = AutoencoderKL(block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=4)
    codec = ccm_codec(Pipe(vae, 4))
    assert isinstance(codec, CCMLatentCodec) and (codec.config.factor, codec.config.latent_channels) == (8, 4)


def test_latent_helpers_dispatch_to_autoencoder_kl():
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4,
                        norm_num_groups=4, sample_size=16).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z = to_latent(vae, x)
        mean = vae.encode(x).latent_dist.mean
        assert z.shape == (2, 4, 8, 8)
        assert torch.allclose(z, mean * vae.config.scaling_factor)
        assert from_latent(vae, z).shape == x.shape


# --- camera UNet ---------------------------------------------------------------------------

def test_build_unet_levels_and_camera():
    unet = tiny_unet(camera_dim=16)
    assert isinstance(unet, CameraUNet2DConditionModel) and has_camera(unet)
    assert unet.config.down_block_types == ("DownBlock2D", "CrossAttnDownBlock2D")
    assert unet.config.up_block_types == ("CrossAttnUpBlock2D", "UpBlock2D")
    assert unet.config.out_channels == CHANNELS
    assert unet.class_embedding.linear_1.in_features == 16
    # diffusers' attention_head_dim is the head count: 32 channels / head size 8.
    assert unet.config.attention_head_dim == (2, 4)
    assert not has_camera(tiny_unet())
    with pytest.raises(ValueError):
        build_unet(UNetParams(block_out_channels=(48,), attention=(True,), attention_head_dim=32,
                              norm_num_groups=16), CHANNELS, SIZE, TEXT_DIM)


def test_class_labels_none_switches_the_camera_off():
    unet = tiny_unet(camera_dim=16)
    z, t, states, mask = unet_inputs(2)
    off = run(unet, z, t, states, mask, cameras=None)
    on = run(unet, z, t, states, mask, cameras=torch.randn(2, 16))
    assert off.shape == z.shape
    assert not torch.allclose(off, on)  # a freshly built camera MLP is not zero
    with pytest.raises(ValueError):  # plain diffusers still insists
        UNet2DConditionModel.from_config(unet.config)(z, t, states, class_labels=None)


def test_zero_initialised_camera_reproduces_base_exactly():
    """Issue must-show: zero-init camera embedding + F = 1 gives the base model's output."""
    base = tiny_unet()
    z, t, states, mask = unet_inputs(8)
    expected = run(base, z, t, states, mask)

    camera = add_camera_embedding(base)
    assert has_camera(camera) and not has_camera(base)
    assert torch.equal(camera.class_embedding.linear_2.weight, torch.zeros_like(camera.class_embedding.linear_2.weight))
    cameras = torch.randn(8, 16) * 3
    assert torch.equal(run(camera, z, t, states, mask, cameras=cameras), expected)

    mv = to_multiview(base)
    assert torch.equal(run(mv, z, t, states, mask, cameras=cameras, views=1), expected)
    assert torch.equal(run(mv, z, t, states, mask, cameras=None, views=1), expected)

    # Every base weight carried over; the camera path exists and learns (after a step the
    # cameras matter).
    base_sd = base.state_dict()
    for name, value in mv.state_dict().items():
        if not name.startswith("class_embedding."):
            assert torch.equal(value, base_sd[name]), name
    with torch.no_grad():
        mv.class_embedding.linear_2.weight.normal_()
    assert not torch.allclose(run(mv, z, t, states, mask, cameras=cameras, views=1), expected)


def test_add_camera_embedding_refuses_a_second_one():
    with pytest.raises(ValueError):
        add_camera_embedding(tiny_unet(camera_dim=16))


# --- multi-view attention ------------------------------------------------------------------

def test_multiview_processor_with_one_view_matches_default():
    base = tiny_unet()
    z, t, states, mask = unet_inputs(8)
    expected = run(base, z, t, states, mask)
    set_multiview(base)
    assert is_multiview(base)
    procs = base.attn_processors
    assert all(isinstance(p, MultiViewAttnProcessor) for k, p in procs.items() if ".attn1." in k)
    assert all(isinstance(p, PerViewAttnProcessor) for k, p in procs.items() if ".attn2." in k)
    got = run(base, z, t, states, mask, views=1)
    assert (got - expected).abs().max() < 1e-5


def test_multiview_attention_is_attention_over_the_joined_tokens():
    """Layer level: F views of N tokens attend like one image of F*N tokens."""
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=4, dim_head=8).eval()
    x = torch.randn(2 * 4, 6, 32)
    with torch.no_grad():
        joint = MultiViewAttnProcessor()(attn, x, num_views=4)
        reference = AttnProcessor2_0()(attn, x.reshape(2, 4 * 6, 32)).reshape(8, 6, 32)
    assert torch.allclose(joint, reference, atol=1e-6)
    with pytest.raises(ValueError):
        MultiViewAttnProcessor()(attn, x, num_views=3)


def test_views_attend_to_each_other_only_within_an_object(caplog):
    unet = to_multiview(tiny_unet())
    z, t, states, mask = unet_inputs(8)  # two objects x four views
    cameras = torch.randn(8, 16)
    changed = z.clone()
    changed[2] += torch.randn_like(changed[2])  # object 0, view 2

    per_view = run(unet, z, t, states, mask, cameras, views=1)
    joint = run(unet, z, t, states, mask, cameras, views=4)
    joint_changed = run(unet, changed, t, states, mask, cameras, views=4)
    per_view_changed = run(unet, changed, t, states, mask, cameras, views=1)

    assert not torch.allclose(joint, per_view, atol=1e-4)
    assert (joint_changed[0] - joint[0]).abs().max() > 1e-4   # view 0 sees view 2
    assert torch.allclose(joint_changed[4:], joint[4:], atol=1e-6)  # object 1 does not
    assert torch.allclose(per_view_changed[0], per_view[0], atol=1e-6)
    assert torch.allclose(per_view_changed[[1, 3]], per_view[[1, 3]], atol=1e-6)
    # num_views reaches every processor without diffusers warning that it is dropped.
    assert "are not expected" not in caplog.text


def test_multiview_survives_save_and_load(tmp_path):
    unet = to_multiview(tiny_unet())
    unet.save_pretrained(tmp_path)
    loaded = CameraUNet2DConditionModel.from_pretrained(tmp_path).eval()
    assert is_multiview(loaded) and has_camera(loaded)
    z, t, states, mask = unet_inputs(4)
    cameras = torch.randn(4, 16)
    assert torch.equal(run(loaded, z, t, states, mask, cameras, views=4),
                       run(unet, z, t, states, mask, cameras, views=4))


# --- text ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm():
    from dreamline.models.text import load_minilm

    return load_minilm()


def test_encode_text_minilm(minilm):
    from dreamline.models.text import TextCache, encode_text

    model, tokenizer = minilm
    assert not any(p.requires_grad for p in model.parameters())
    states, mask = encode_text(model, tokenizer, ["a red chair", "a blue car", ""], max_tokens=16)
    assert states.shape == (3, 16, 384) and states.dtype == torch.float32
    assert mask.shape == (3, 16)
    assert mask[2].sum() == 2  # "" is [CLS] [SEP]: the unconditional text
    assert not torch.allclose(states[0], states[1])
    assert not torch.allclose(states[0, :mask[0].sum()], states[2, :mask[0].sum()])

    cache = TextCache(model, tokenizer, max_tokens=16)
    cached, cached_mask = cache(["a blue car", "a red chair", "a blue car"])
    assert len(cache) == 2
    assert torch.allclose(cached[1], states[0], atol=1e-6) and torch.allclose(cached[0], states[1], atol=1e-6)
    assert torch.equal(cached_mask[0], mask[1])


def test_pooled_text_token(tmp_path):
    """train_base.pooled_text_token: the sentence embedding leads the token states, the mark
    travels with a saved text encoder, and paraphrases land closer on it than on the tokens."""
    from transformers import AutoModel

    from dreamline.models.text import POOLED_TOKEN, encode_text, load_minilm

    plain, tokenizer = load_minilm()
    marked, _ = load_minilm(pooled_token=True)
    texts = ["a red chair", "a scarlet seat", "a blue car", ""]
    states, mask = encode_text(plain, tokenizer, texts, max_tokens=16)
    pooled, pmask = encode_text(marked, tokenizer, texts, max_tokens=16)
    assert pooled.shape == (4, 17, 384) and pmask.shape == (4, 17)
    assert torch.equal(pooled[:, 1:], states) and torch.equal(pmask[:, 1:], mask)
    assert pmask[:, 0].eq(1).all()
    assert torch.allclose(pooled[:, 0].norm(dim=-1), torch.full((4,), 384 ** 0.5), atol=1e-3)
    lead = torch.nn.functional.normalize(pooled[:, 0], dim=-1)
    # "a scarlet seat" is nearer "a red chair" than "a blue car" is, on the sentence embedding
    assert float(lead[0] @ lead[1]) > float(lead[2] @ lead[1])

    marked.save_pretrained(tmp_path / "te")
    assert json.loads((tmp_path / "te/config.json").read_text())[POOLED_TOKEN] is True
    again = AutoModel.from_pretrained(tmp_path / "te", use_safetensors=True)
    assert torch.equal(encode_text(again, tokenizer, texts, max_tokens=16)[0], pooled)
    plain.save_pretrained(tmp_path / "plain")
    assert POOLED_TOKEN not in json.loads((tmp_path / "plain/config.json").read_text())


@pytest.mark.parametrize("start, turn", [(0.0, 90.0), (30.0, -45.0), (200.0, 180.0)])
def test_cameras_turned_about_up_are_the_orbit_cameras_further_round(start, turn):
    """train_mv's held-out 'cameras turned' row: the same views, told the object faces
    `turn` degrees further round, i.e. each camera moved `turn` degrees along its orbit."""
    import numpy as np

    from dreamline.rendering.cameras import orbit_c2w
    from dreamline.training.multiview import rotated_about_up

    cams = torch.tensor(np.stack([orbit_c2w(start + 90.0 * k, 20.0, 1.7).reshape(-1) for k in range(4)]),
                        dtype=torch.float32)
    want = torch.tensor(np.stack([orbit_c2w(start + turn + 90.0 * k, 20.0, 1.7).reshape(-1) for k in range(4)]),
                        dtype=torch.float32)
    got = rotated_about_up(cams, turn)
    assert got.shape == cams.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert not torch.allclose(got, cams)
