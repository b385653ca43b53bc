"""The held-out comparison: paired noise, per-unit aggregation and its bootstrap interval."""
from types import SimpleNamespace

import torch
from diffusers import DDPMScheduler

from dreamline.training.objectives import DenoiseBatch, comparison_table, paired_heldout_losses


class ConstantModel:
    """Predicts a constant: its loss against the v-target is known up to the noise."""
    attn_processors: dict = {}

    def __init__(self, value: float):
        self.value = value

    def __call__(self, z_t, t, **kwargs):
        return SimpleNamespace(sample=torch.full_like(z_t, self.value))


def _batches(n_batches=3, images=8):
    g = torch.Generator().manual_seed(0)
    return [DenoiseBatch(torch.rand(images, 3, 4, 4, generator=g) * 2 - 1, torch.zeros(images, 2, 4),
                         None, None, 1) for _ in range(n_batches)]


def test_units_average_views_and_timesteps_and_intervals_use_them():
    sched = DDPMScheduler(num_train_timesteps=100, prediction_type="v_prediction")
    batches = _batches()
    res = paired_heldout_losses({"zero": (ConstantModel(0.0), batches),
                                 "off": (ConstantModel(0.3), batches)}, sched, timesteps=5, seed=1,
                                unit_size=4)
    # 3 batches x 8 images x 5 timesteps evaluations; units = views of a set over timesteps.
    assert len(res["zero"]["items"]) == 120 and len(res["zero"]["units"]) == 6
    assert torch.isclose(res["zero"]["units"].mean(), res["zero"]["items"].mean(), atol=1e-6)
    # Same noise for both rows: per evaluation (0.3 - v)^2 - v^2 = 0.09 - 0.6 v exactly, so
    # the reported difference is a paired one, not a difference of two noisy means.
    table = comparison_table(res, "zero")
    diff = table["off"]["minus_zero"]
    lo, hi = table["off"]["ci95"]
    assert table["off"]["units"] == 6 and lo <= diff <= hi
    per_eval = res["off"]["items"] - res["zero"]["items"]
    assert per_eval.max() - per_eval.min() <= 0.6 * 2 * res["zero"]["items"].max().sqrt() + 1e-5
    assert abs(diff - float(per_eval.mean())) < 1e-6


def test_identical_models_have_zero_difference_and_a_zero_width_interval():
    sched = DDPMScheduler(num_train_timesteps=100, prediction_type="epsilon")
    batches = _batches()
    res = paired_heldout_losses({"a": (ConstantModel(0.1), batches), "b": (ConstantModel(0.1), batches)},
                                sched, timesteps=3, seed=0)
    table = comparison_table(res, "a")
    assert table["b"]["minus_a"] == 0.0 and table["b"]["ci95"] == [0.0, 0.0]


def test_a_timestep_range_scores_only_its_timesteps():
    """t_range (benchmarks/camera_use.py --t-min): the evenly spaced grid lies inside it; the
    default range is every timestep."""
    sched = DDPMScheduler(num_train_timesteps=100, prediction_type="v_prediction")
    batches = _batches(1)
    top = paired_heldout_losses({"a": (ConstantModel(0.0), batches)}, sched, timesteps=4, seed=0, t_range=(90, 100))
    full = paired_heldout_losses({"a": (ConstantModel(0.0), batches)}, sched, timesteps=4, seed=0)
    assert list(top["a"]["per_timestep"]) == [92, 94, 95, 97]
    assert list(full["a"]["per_timestep"]) == [20, 40, 59, 79]
    # A constant-0 prediction at high noise misses v = -x0 nearly in full, at low noise mostly eps.
    assert top["a"]["loss"] != full["a"]["loss"]
