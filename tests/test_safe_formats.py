"""Nothing dreamline loads can run code: assets and checkpoints are safetensors + JSON, a
pickle where one used to be is refused (and not unpickled), and model folders whose weights
exist only as pickles are refused before diffusers / transformers open them.

Every refusal is checked against a crafted pickle that creates a file when unpickled; the
first test proves that payload is live, so the others cannot pass by the payload being inert.
"""
from __future__ import annotations

import json
import logging
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

from dreamline import tensorfile
from dreamline.distill.assets import LEGACY_STATE, STATE, load_asset
from dreamline.distill.loop import CHECKPOINT, LEGACY_CHECKPOINT, _read_checkpoint
from dreamline.models.weights import UnsafeWeightsError, require_safetensors
from tiny_models import save_tiny_priors
from training_toy import make_trainer


class _Payload:
    """Unpickling this calls open(marker, "w"): a stand-in for any command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def crafted_pickle(path, marker):
    """A torch.save file (zip container, as torch writes it) carrying the payload."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": _Payload(marker)}, path)
    return path


def test_the_crafted_payload_is_live(tmp_path):
    # Control: what the tests below refuse would really run if it were unpickled.
    marker = tmp_path / "pwned"
    path = crafted_pickle(tmp_path / "state.pt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    raw = pickle.dumps(_Payload(marker))
    pickle.loads(raw)
    assert marker.exists()


def test_tensor_file_round_trips_nested_state_exactly(tmp_path):
    g = torch.Generator().manual_seed(5)
    w = torch.randn(4, 3)
    tree = {
        "weights": {"a": w, "view": w[:2], "bf16": torch.randn(3).bfloat16(), "i": torch.arange(5)},
        "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"betas": (0.9, 0.99),
                                                                                      "params": [0], "foreach": None}]},
        "generator": g.get_state(), "curve": [{"step": 1, "loss": 0.1 + 0.2}, {"step": 2, "loss": float("inf")}],
        "flags": (True, None, "text"),
    }
    back = tensorfile.load(tensorfile.save(tmp_path / "t.safetensors", tree))
    assert torch.equal(back["weights"]["a"], w) and torch.equal(back["weights"]["view"], w[:2])
    assert back["weights"]["bf16"].dtype == torch.bfloat16
    assert torch.equal(back["weights"]["bf16"], tree["weights"]["bf16"])
    assert back["optimizer"]["state"].keys() == {0}                 # int keys stay ints
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert back["curve"] == tree["curve"] and back["flags"] == tree["flags"]
    assert torch.Generator().set_state(back["generator"]).initial_seed() == 5
    with pytest.raises(TypeError, match="cannot be stored"):
        tensorfile.dumps({"x": object()})


def test_tensor_file_refuses_a_pickle_under_any_name(tmp_path):
    marker = tmp_path / "pwned"
    for name in ("x.safetensors", "x.pt"):
        path = crafted_pickle(tmp_path / name, marker)
        with pytest.raises(tensorfile.UnsafeFormatError, match="pickle"):
            tensorfile.load(path)
    raw = tmp_path / "raw.safetensors"
    raw.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(tensorfile.UnsafeFormatError):
        tensorfile.load(raw)
    assert not marker.exists()


def test_asset_with_a_pickle_state_is_refused_with_how_to_regenerate(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "data/distill/red-chair"
    crafted_pickle(folder / LEGACY_STATE, marker)
    with pytest.raises(tensorfile.UnsafeFormatError) as err:
        load_asset(folder)
    message = str(err.value)
    assert str(folder / LEGACY_STATE) in message and "dvc repro distill@red-chair" in message
    # A pickle renamed to the new name is refused too.
    crafted_pickle(folder / STATE, marker)
    with pytest.raises(tensorfile.UnsafeFormatError):
        load_asset(folder)
    assert not marker.exists()


def test_evaluate_lists_an_old_asset_so_that_it_fails_loudly(tmp_path):
    from dreamline.evaluation.evaluate import asset_folders

    crafted_pickle(tmp_path / "distill/old" / LEGACY_STATE, tmp_path / "pwned")
    (tmp_path / "ablation/sds/new").mkdir(parents=True)
    tensorfile.save(tmp_path / "ablation/sds/new" / STATE, {"prompt": "x"})
    assert asset_folders(tmp_path / "distill", tmp_path / "ablation") == [
        tmp_path / "ablation/sds/new", tmp_path / "distill/old"]


def test_distill_checkpoints_that_are_pickles_are_never_loaded(tmp_path):
    marker = tmp_path / "pwned"
    said = []
    crafted_pickle(tmp_path / LEGACY_CHECKPOINT, marker)
    assert _read_checkpoint(tmp_path, "k", said.append) is None
    assert "never loaded" in said[0]
    crafted_pickle(tmp_path / CHECKPOINT, marker)
    assert _read_checkpoint(tmp_path, "k", said.append) is None
    assert not marker.exists()
    # A real checkpoint of this key is read; one of another key is not.
    tensorfile.save(tmp_path / CHECKPOINT, {"key": "k", "step": 3})
    assert _read_checkpoint(tmp_path, "k", None)["step"] == 3
    assert _read_checkpoint(tmp_path, "other", None) is None


def test_training_checkpoints_that_are_pickles_are_never_loaded(tmp_path, caplog):
    marker = tmp_path / "pwned"
    crafted_pickle(tmp_path / "checkpoints/step-8.pt", marker)
    crafted_pickle(tmp_path / "checkpoints/step-4.safetensors", marker)
    with caplog.at_level(logging.INFO, logger="dreamline.training"):
        result = make_trainer(tmp_path).run()
    assert result.resumed_from is None and result.step == 12
    assert "step-8.pt: a pickle checkpoint of an earlier version is never loaded" in caplog.text
    assert "step-4.safetensors is unusable" in caplog.text
    assert not marker.exists()


@pytest.fixture(scope="module")
def tiny_priors(tmp_path_factory):
    root = tmp_path_factory.mktemp("priors")
    save_tiny_priors(root)
    return root


def _pickle_only(src, dst, marker):
    """A copy of a model folder whose UNet weights are a pickle and nothing else."""
    shutil.copytree(src, dst)
    weights = sorted((dst / "unet").glob("*.safetensors"))
    assert weights, "the tiny prior should have safetensors UNet weights"
    for w in weights:
        w.unlink()
    crafted_pickle(dst / "unet/diffusion_pytorch_model.bin", marker)
    return dst


def test_model_folder_with_pickle_weights_only_is_refused(tiny_priors, tmp_path):
    from dreamline.distill.run import check_models
    from dreamline.training.common import load_base_pipeline

    marker = tmp_path / "pwned"
    require_safetensors(tiny_priors / "base")                      # the real folder passes
    assert load_base_pipeline(tiny_priors / "base") is not None
    bad = _pickle_only(tiny_priors / "base", tmp_path / "bad", marker)
    with pytest.raises(UnsafeWeightsError, match=r"diffusion_pytorch_model\.bin"):
        load_base_pipeline(bad)
    from test_distill import tiny_params

    from dreamline.config import DistillParams

    raw = tiny_params(tiny_priors, guidance_type="sds").model_dump(mode="json")
    raw["guidance"]["sds"]["model"] = str(bad)
    with pytest.raises(UnsafeWeightsError, match="distill.guidance.sds.model"):
        check_models(DistillParams.model_validate(raw))
    assert not marker.exists()


def test_clip_evaluator_folder_with_pickle_weights_only_is_refused(tmp_path):
    from dreamline.evaluation.evaluator import load_evaluator

    marker = tmp_path / "pwned"
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "clip"}))
    crafted_pickle(folder / "pytorch_model.bin", marker)
    with pytest.raises(UnsafeWeightsError, match="evaluate.evaluator"):
        load_evaluator(folder)
    assert not marker.exists()


def test_stage_refuses_a_pickle_only_model_folder_with_exit_2(tiny_priors, tmp_path):
    import yaml

    from conftest import REPO

    marker = tmp_path / "pwned"
    bad = _pickle_only(tiny_priors / "base", tmp_path / "bad", marker)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train_mv"]["base_model"] = str(bad)
    params["paths"]["allowed_roots"] = [str(tmp_path)]      # outside the project: allowed here
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    proc = subprocess.run([sys.executable, "-m", "stages.train_mv", "--params", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "train_mv.base_model" in proc.stderr and "safetensors" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists()
