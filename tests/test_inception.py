"""FID's Inception-v3 from a local safetensors file: the tensor layout of the published
weights' PyTorch port, features and posteriors of the right shapes, and files that are not
it refused with a message before anything runs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from dreamline.evaluation.inception import FIDInceptionV3, InceptionFeatures
from dreamline.evaluation.towers import EfficientNetLite0, fid_features
from research_standins import save_inception

KEYS = Path(__file__).parent / "data/fid_inception_keys.json"


def test_network_has_the_tensor_layout_of_the_published_weights():
    expected = json.loads(KEYS.read_text())["tensors"]
    ours = {k: list(v.shape) for k, v in FIDInceptionV3().state_dict().items()
            if not k.endswith("num_batches_tracked")}
    assert ours == expected


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_inception(tmp_path_factory.mktemp("inception") / "inception-v3-fid.safetensors")


def test_features_and_posteriors_of_images(weights):
    net = InceptionFeatures(weights)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    feats, probs = net(images, batch=2)
    assert feats.shape == (3, 2048) and probs.shape == (3, 1008)
    assert np.isfinite(feats).all() and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    # One image alone gives what it gave in the batch: eval-mode BatchNorm, no batch coupling.
    alone, _ = net(images[2:])
    assert np.allclose(alone[0], feats[2], atol=1e-5)
    assert net.name.startswith("inception-v3 (FID") and "md5:" in net.name
    assert isinstance(fid_features(None, str(weights)), InceptionFeatures)


def test_without_weights_fid_uses_efficientnet():
    assert isinstance(fid_features(None, None), EfficientNetLite0)


def test_files_that_are_not_the_network_are_refused(tmp_path, weights):
    with pytest.raises(ValueError, match="pickle"):
        InceptionFeatures(tmp_path / "pt_inception-2015-12-05.pth")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        InceptionFeatures(tmp_path / "absent.safetensors")
    other = tmp_path / "other.safetensors"
    save_file({"fc.weight": torch.zeros(10, 2048)}, str(other))
    with pytest.raises(ValueError, match="not FID's Inception-v3.*missing.*another shape"):
        InceptionFeatures(other)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        InceptionFeatures(garbage)


def test_stages_stop_before_work_when_the_named_weights_are_absent(tmp_path, capsys, weights):
    from stages._common import require_inception_weights

    require_inception_weights(None, "evaluate.image_quality.inception_weights")      # null: nothing to check
    require_inception_weights(str(weights), "evaluate.image_quality.inception_weights")
    for bad in (tmp_path / "absent.safetensors", tmp_path / "pt_inception.pth"):
        with pytest.raises(SystemExit) as err:
            require_inception_weights(str(bad), "texture.inception_weights")
        assert err.value.code == 2
        assert "texture.inception_weights" in capsys.readouterr().err
