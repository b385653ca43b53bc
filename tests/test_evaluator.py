"""Evaluators and asset metrics on cases with known answers: contrastive heads that learn a
planted pairing (and do not learn a shuffled one), LiT and CLIP folders that load back,
overlap PSNR of a consistent vs an inconsistent asset, and the Janus proxy."""
from __future__ import annotations

import math
import string

import numpy as np
import pytest
import torch

from dreamline.representations.configs import VoxelParams
from dreamline.evaluation.asset_metrics import (AssetViews, consistency_psnr, janus_score, render_asset,
                                                silhouette_radius, turn_iou)
from dreamline.evaluation.evaluator import CLIPEvaluator, LiTEvaluator, load_evaluator, train_heads
from dreamline.evaluation.metrics import r_precision
from dreamline.representations.voxel import VoxelField


def planted(n_classes=12, per_class=20, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, 48))
    labels = np.repeat(np.arange(n_classes), per_class)
    images = centres[labels] + 0.5 * rng.normal(size=(len(labels), 48))
    texts = rng.normal(size=(n_classes, 24))
    return images.astype(np.float32), texts.astype(np.float32), labels


def test_heads_learn_a_planted_pairing_and_not_a_shuffled_one():
    images, texts, labels = planted()
    objects = np.arange(len(labels))
    heads, curve = train_heads(images, texts, labels, objects, dim=16, steps=150, batch=32, lr=1e-2, seed=0)
    assert curve[-1]["loss"] < curve[0]["loss"]
    test_images, _, test_labels = planted(seed=0)
    with torch.no_grad():
        img, txt = heads(torch.from_numpy(test_images), torch.from_numpy(texts))
    assert r_precision(img.numpy(), txt.numpy(), test_labels)["R@1"] > 0.9
    shuffled = np.random.default_rng(1).permutation(labels)
    heads, _ = train_heads(images, texts, shuffled, objects, dim=16, steps=150, batch=32, lr=1e-2, seed=0)
    fresh, _, fresh_labels = planted(seed=5)          # new draws: memorised noise does not carry over
    with torch.no_grad():
        img, txt = heads(torch.from_numpy(fresh), torch.from_numpy(texts))
    assert r_precision(img.numpy(), txt.numpy(), fresh_labels)["R@1"] < 0.35


def test_lit_evaluator_round_trips(tmp_path):
    from dreamline.evaluation.evaluator import LiTHeads

    torch.manual_seed(0)
    ev = LiTEvaluator(LiTHeads(1280, 384, 32), image_size=64, name="lit-test")
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    a = ev.embed_images(images)
    ev.save(tmp_path / "ev")
    back = load_evaluator(tmp_path / "ev")
    assert back.name == "lit-test"
    np.testing.assert_allclose(back.embed_images(images), a, rtol=1e-5, atol=1e-6)
    t = back.embed_texts(["a red chair", "a blue mug"])
    assert t.shape == (2, 32) and np.allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)


def test_clip_folder_loads_as_an_evaluator(tmp_path):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase + " ":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                     "num_hidden_layers": 2, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1,
                     "pad_token_id": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16)
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    tokenizer.save_pretrained(tmp_path / "clip")
    ev = load_evaluator(tmp_path / "clip")
    assert isinstance(ev, CLIPEvaluator) and ev.name == "clip:clip"
    img = ev.embed_images(torch.rand(2, 3, 64, 64))
    txt = ev.embed_texts(["a red chair", "a mug"])
    assert img.shape == (2, 16) and txt.shape == (2, 16)
    assert np.allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)


def test_missing_evaluator_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_evaluator"):
        load_evaluator(tmp_path)


def test_overlap_psnr_separates_consistent_from_inconsistent_assets():
    field = VoxelField(VoxelParams(resolution=16), torch.Generator().manual_seed(0))
    with torch.no_grad():   # a coloured blob: albedo varies in space, not with the view
        x = torch.linspace(-1, 1, 16)
        field.albedo.copy_(3 * torch.stack(torch.meshgrid(x, x, x, indexing="ij"))[None])
    views = render_asset(field, 8, 30.0, 48, 0.6)
    consistent = consistency_psnr(views)
    assert len(consistent) == 8 and min(consistent) > 25.0
    rng = np.random.default_rng(0)
    noisy = AssetViews(views.azimuths, views.colour, views.geo, rng.random(views.albedo.shape).astype(np.float32),
                       views.depth, views.cameras, views.framed_radius)
    assert max(consistency_psnr(noisy)) < 12.0


def test_janus_proxy_on_planted_embeddings():
    az = [0.0, 90.0, 180.0, 270.0]
    face, side = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    two_faced = np.stack([face, side, face, side])
    assert janus_score(two_faced, az) == pytest.approx(1.0)
    one_faced = np.stack([face, face * 0.7 + side * 0.7, -face, face * 0.7 + side * 0.7])
    assert janus_score(one_faced / np.linalg.norm(one_faced, axis=1, keepdims=True), az) < 0


def test_turn_iou_on_planted_silhouettes():
    wide = np.zeros((8, 8), bool)
    wide[3:5, 1:7] = True                    # 12 pixels
    narrow = np.zeros((8, 8), bool)
    narrow[3:5, 3:5] = True                  # 4 of them
    assert turn_iou(np.stack([wide, narrow, wide, narrow]), [0.0, 90.0, 180.0, 270.0]) == pytest.approx(4 / 12)
    assert turn_iou(np.stack([wide] * 4), [10.0, 100.0, 190.0, 280.0]) == pytest.approx(1.0)
    # only the pairs a quarter turn apart count; none here
    assert turn_iou(np.stack([wide, narrow]), [0.0, 45.0]) is None


def solid(inside: torch.Tensor) -> VoxelField:
    """A 16^3 voxel field in the default bound 0.6, opaque where `inside` ([z, y, x]) holds."""
    f = VoxelField(VoxelParams(resolution=16, bound=0.6, blob_density=0.0, density_bias=0.0),
                   torch.Generator().manual_seed(0))
    with torch.no_grad():
        f.density.copy_(torch.where(inside, 30.0, -30.0)[None, None])
    return f


def test_turn_iou_tells_a_solid_of_revolution_from_a_slab():
    x = torch.linspace(-1, 1, 16)
    z_, y_, x_ = torch.meshgrid(x, x, x, indexing="ij")
    ball = solid(z_ ** 2 + y_ ** 2 + x_ ** 2 < 0.5)
    slab = solid((x_.abs() < 0.7) & (y_.abs() < 0.5) & (z_.abs() < 0.15))   # wide one way, thin the other
    iou = {name: turn_iou(render_asset(f, 8, 0.0, 48, 0.6).depth > 0, [45.0 * k for k in range(8)])
           for name, f in (("ball", ball), ("slab", slab))}
    assert iou["ball"] > 0.9 and iou["slab"] < 0.5, iou


def test_asset_framing_fills_the_frame_as_the_render_stage_frames_objects():
    centres = (torch.arange(16) + 0.5) / 16 * 1.2 - 0.6    # world coordinates of the cells
    z_, y_, x_ = torch.meshgrid(centres, centres, centres, indexing="ij")
    ball = solid(z_ ** 2 + y_ ** 2 + x_ ** 2 < 0.2 ** 2)     # radius 0.2 in a scene of radius 0.6
    scene, own = (render_asset(ball, 4, 0.0, 48, 0.6, framing) for framing in ("scene", "asset"))
    assert scene.framed_radius == 0.6 and 0.18 < own.framed_radius < 0.3, own.framed_radius

    def side(masks):   # silhouette bounding-box side, share of the frame
        return np.mean([np.ptp(np.nonzero(m)[1]) + 1 for m in masks]) / masks.shape[-1]

    assert side(scene.depth > 0) < 0.45 < 0.75 < side(own.depth > 0) <= 1.0
    bar = solid((x_.abs() < 0.5) & (y_.abs() < 0.08) & (z_.abs() < 0.08))  # long one way: reaches 0.5
    assert 0.48 < render_asset(bar, 8, 0.0, 48, 0.6, "asset").framed_radius < 0.6
    empty = solid(torch.zeros_like(x_, dtype=torch.bool))
    assert render_asset(empty, 4, 0.0, 16, 0.6, "asset").framed_radius == 0.6
    with pytest.raises(ValueError, match="framing"):
        render_asset(ball, 4, 0.0, 16, 0.6, "object")


def test_silhouette_radius_is_the_nearest_approach_of_the_outermost_ray():
    masks = np.zeros((1, 4, 4), bool)
    masks[0, 1:3, 1:3] = True              # the central 2 x 2 pixels: half the frame each way
    # fov 90: the corner ray of the central block has tan = sqrt(0.5^2 + 0.5^2)
    expected = 2.0 * math.sin(math.atan(math.sqrt(0.5)))
    assert silhouette_radius(masks, 2.0, 90.0) == pytest.approx(expected)
    assert silhouette_radius(np.zeros((2, 4, 4), bool), 2.0, 90.0) is None


def test_heads_are_a_function_of_the_seed_not_of_the_global_rng():
    images, texts, labels = planted()
    objects = np.arange(len(labels))
    state = torch.random.get_rng_state()
    torch.manual_seed(1)
    a, _ = train_heads(images, texts, labels, objects, dim=16, steps=5, batch=8, lr=1e-2, seed=3)
    torch.manual_seed(2)                       # another global state: same heads
    b, _ = train_heads(images, texts, labels, objects, dim=16, steps=5, batch=8, lr=1e-2, seed=3)
    assert torch.random.get_rng_state().equal(torch.manual_seed(2).get_state())  # untouched
    torch.random.set_rng_state(state)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
