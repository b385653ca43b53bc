"""Image captioner on a tiny random BLIP: plumbing, determinism and the consensus pick.

A random model's words are meaningless, so these tests check shapes, cleaning, determinism
and error messages, not caption quality.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
trimesh = pytest.importorskip("trimesh")

from dreamline.captioning.base import CAPTIONERS, CaptionInput  # noqa: E402
from dreamline.captioning.image import (  # noqa: E402
    ImageCaptioner, clean_caption, consensus_index,
)
from dreamline.captioning.configs import ImageCaptionerParams  # noqa: E402
from dreamline.rendering.cameras import look_at  # noqa: E402
from dreamline.rendering.quick_views import orbit_cameras, render_views  # noqa: E402

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
WORDS = ("a an the red blue green chair table box cube lamp car small large wooden metal of "
         "with on and toy model white black yellow round square tall short vase cup mug bowl "
         "plate house tree dog cat bird shoe hat bag book pen bottle sofa bench clock").split()


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def save_tiny_blip(root):
    """A randomly initialised BLIP captioner + processor saved in transformers format."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor
    try:  # without torchvision, transformers falls back to this class (and warns on the other)
        from transformers import BlipImageProcessorPil as ImageProcessor
    except ImportError:
        from transformers import BlipImageProcessor as ImageProcessor

    torch.set_num_threads(1)
    root.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL + WORDS
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer(vocab=str(root / "vocab.txt"), bos_token="[DEC]")
    processor = BlipProcessor(image_processor=ImageProcessor(size={"height": 32, "width": 32}),
                              tokenizer=tok)
    cfg = BlipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, encoder_hidden_size=32,
                         intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=64, pad_token_id=0,
                         bos_token_id=tok.bos_token_id, sep_token_id=tok.sep_token_id,
                         eos_token_id=tok.sep_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=8,
                           initializer_range=0.02),
        projection_dim=32, image_text_hidden_size=32)
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(cfg).eval()
    # A random decoder may stop at once or emit only special tokens, which would make every
    # caption fall back to the name and hide the decode path; forbid the special ids instead.
    with torch.no_grad():
        model.text_decoder.cls.predictions.bias[: len(SPECIAL)] = -1e4
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    return model_dir


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    return save_tiny_blip(tmp_path_factory.mktemp("blip"))


@pytest.fixture(scope="module")
def box_glb(tmp_path_factory):
    box = trimesh.creation.box(extents=(1.0, 0.6, 0.4))
    colours = np.where(box.vertices[:, 1:2] > 0, [220, 40, 40, 255], [40, 60, 220, 255])
    box.visual.vertex_colors = colours.astype(np.uint8)
    box.apply_scale(1.0 / box.extents.max())  # normalised: longest side 1, centred
    path = tmp_path_factory.mktemp("mesh") / "box.glb"
    box.export(path)
    return path


def _params(model_dir, **kw):
    base = dict(model_path=str(model_dir), n_views=3, resolution=32, max_new_tokens=5)
    return ImageCaptionerParams(**{**base, **kw})


def _items(glb):
    return [CaptionInput(uid="u1", name="red_box_v2", mesh_path=glb),
            CaptionInput(uid="u2", name="Blue Crate", mesh_path=glb)]


def test_registered():
    assert CAPTIONERS.get("image") is ImageCaptioner


def test_captions_one_per_item_and_deterministic(blip_dir, box_glb):
    cap = ImageCaptioner(_params(blip_dir), seed=3)
    assert cap._model is None  # construction must not load the model
    first = cap.caption(_items(box_glb))
    assert len(first) == 2 and all(isinstance(c, str) and c.strip() for c in first)
    # The special-token ban means these come from the model, not the name fallback.
    assert first[0] not in ("red box", "blue crate")
    assert all(len(c.split()) <= 5 for c in first)
    assert not any("[" in c for c in first)
    assert cap.caption(_items(box_glb)) == first
    assert ImageCaptioner(_params(blip_dir), seed=3).caption(_items(box_glb)) == first


def test_no_mesh_falls_back_to_name(blip_dir):
    cap = ImageCaptioner(_params(blip_dir))
    assert cap.caption([CaptionInput(uid="x", name="woodenChair_v3 FINAL")]) == ["wooden chair"]


def test_render_views_shape_and_visible(box_glb):
    views = render_views(box_glb, n_views=4, resolution=48, elevation_deg=20.0)
    assert len(views) == 4
    for v in views:
        assert v.shape == (48, 48, 3) and v.dtype == np.uint8
        assert (v[0, 0] == 255).all()  # white background in the corner
        assert (v < 250).any(axis=-1).mean() > 0.05  # the object covers part of the frame


def test_orbit_front_camera_on_plus_z():
    poses = orbit_cameras(4, elevation_deg=0.0, distance=2.0)
    assert len(poses) == 4
    front = poses[0]
    np.testing.assert_allclose(front[:3, 3], [0.0, 0.0, 2.0], atol=1e-9)
    np.testing.assert_allclose(-front[:3, 2], [0.0, 0.0, -1.0], atol=1e-9)  # looks at origin
    np.testing.assert_allclose(front[:3, 1], [0.0, 1.0, 0.0], atol=1e-9)  # +Y stays up
    np.testing.assert_allclose(poses[1][:3, 3], [2.0, 0.0, 0.0], atol=1e-9)
    high = orbit_cameras(1, elevation_deg=30.0, distance=2.0)[0]
    eye = high[:3, 3]
    assert eye[1] > 0 and eye[0] == pytest.approx(0.0) and eye[2] > 0
    np.testing.assert_allclose(-high[:3, 2], -eye / np.linalg.norm(eye), atol=1e-9)
    np.testing.assert_allclose(high[:3, :3].T @ high[:3, :3], np.eye(3), atol=1e-9)


def test_look_at_straight_down_is_valid_rotation():
    pose = look_at((0.0, 3.0, 0.0))
    np.testing.assert_allclose(pose[:3, :3].T @ pose[:3, :3], np.eye(3), atol=1e-9)
    np.testing.assert_allclose(pose[:3, 2], [0.0, 1.0, 0.0], atol=1e-9)


def test_consensus_picks_medoid():
    caps = [
        "a square",                     # top-down outlier
        "a red chair with four legs",
        "a red wooden chair",           # most of its words recur in both other chair views
        "a red wooden chair on white",
        "",                             # counts as a dissenting view, never picked
    ]
    assert consensus_index(caps) == 2
    assert consensus_index(["a cup", "a cup", "a mug"]) == 0  # tie -> lowest index
    assert consensus_index(["x"]) == 0
    assert consensus_index(["", " "]) is None
    assert consensus_index(["", "a lamp"]) == 1


def test_clean_caption():
    assert clean_caption("  arafed a picture of a red chair [SEP] ") == "a red chair"
    assert clean_caption("[DEC] a photo of") == ""
    assert clean_caption("a photograph frame") == "a photograph frame"


def test_missing_model_path_is_clear(tmp_path, box_glb):
    missing = tmp_path / "no_such_model"
    cap = ImageCaptioner(_params(missing))  # still cheap: nothing loaded yet
    with pytest.raises(FileNotFoundError, match="no_such_model") as err:
        cap.caption(_items(box_glb))
    assert err.value.__cause__ is None and err.value.__context__ is None  # no chained trace


def test_not_a_blip_folder(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match=re.escape(str(tmp_path)) + ".*'bert'"):
        ImageCaptioner(_params(tmp_path)).load()
