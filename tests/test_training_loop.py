"""The generic training loop: exact resume after a kill, checkpoint fallbacks, curves."""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from training_toy import make_trainer, toy_params

from dreamline import tensorfile
from dreamline.training.loop import CURVE_COLUMNS, batch_indices, make_run_key, step_seed

TOY = Path(__file__).with_name("training_toy.py")
REPO = Path(__file__).resolve().parents[1]


def _snapshot(trainer) -> SimpleNamespace:
    return SimpleNamespace(
        model={k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
        ema={k: v.clone() for k, v in trainer.ema.state_dict()["shadow"].items()},
    )


def _assert_same_weights(trainer, reference: SimpleNamespace) -> None:
    got = _snapshot(trainer)
    assert got.model.keys() == reference.model.keys()
    for k in reference.model:
        assert torch.equal(got.model[k], reference.model[k]), k
    assert got.ema.keys() == reference.ema.keys()
    for k in reference.ema:
        assert torch.equal(got.ema[k], reference.ema[k]), k


def _curve(path: Path) -> list[list[str]]:
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(CURVE_COLUMNS)
    return [line.split(",") for line in lines[1:]]


def _exact_columns(path: Path) -> list[list[str]]:
    # The whole curve is step, loss and lr: equal runs write equal curves.
    return [row[:3] for row in _curve(path)]


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    out = tmp_path_factory.mktemp("unbroken")
    trainer = make_trainer(out)
    result = trainer.run()
    return SimpleNamespace(out=out, result=result, curve=_exact_columns(out / "curve.csv"),
                           **vars(_snapshot(trainer)))


def test_unbroken_run_layout(unbroken):
    r = unbroken.result
    assert r.step == 12 and r.resumed_from is None
    assert r.samples_per_s is not None and r.samples_per_s > 0
    ckpts = unbroken.out / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step-*.safetensors")) == ["step-12.safetensors", "step-8.safetensors"]
    assert json.loads((ckpts / "latest.json").read_text())["file"] == "step-12.safetensors"
    assert r.checkpoint == ckpts / "step-12.safetensors"
    assert [row[0] for row in unbroken.curve] == ["3", "6", "9", "12"]
    assert r.loss == float(unbroken.curve[-1][1])
    # Warmup over 3 steps, then constant.
    assert [float(row[2]) for row in unbroken.curve] == pytest.approx([0.03] * 4)
    saved = tensorfile.load(r.checkpoint)
    assert not any(k.startswith("embed.") for k in saved["model"])  # frozen: not saved
    assert "net.1.running_mean" in saved["model"]                   # buffers: saved


def test_killed_run_resumes_to_identical_weights(unbroken, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(TOY.parent)]))
    proc = subprocess.run([sys.executable, str(TOY), str(tmp_path), "6"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step-*.safetensors")) == ["step-4.safetensors"]
    # The killed run had logged a row past its last checkpoint.
    assert [row[0] for row in _curve(tmp_path / "curve.csv")] == ["3", "6"]

    trainer = make_trainer(tmp_path)
    result = trainer.run()
    assert result.resumed_from == 4 and result.step == 12
    _assert_same_weights(trainer, unbroken)
    assert _exact_columns(tmp_path / "curve.csv") == unbroken.curve
    assert json.loads((ckpts / "latest.json").read_text())["step"] == 12


def test_different_seed_gives_different_weights(unbroken, tmp_path):
    # Control for the test above: the weights do depend on the per-step draws.
    trainer = make_trainer(tmp_path, toy_params(seed=8))
    trainer.run()
    assert not torch.equal(trainer.model.state_dict()["net.0.weight"], unbroken.model["net.0.weight"])


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_corrupt_latest_checkpoint_falls_back(unbroken, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(unbroken.out, run)
    _truncate(run / "checkpoints/step-12.safetensors")
    (run / "checkpoints/latest.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="dreamline.training"):
        trainer = make_trainer(run)
        result = trainer.run()
    assert result.resumed_from == 8
    assert "step-12.safetensors is unusable" in caplog.text
    _assert_same_weights(trainer, unbroken)
    assert _exact_columns(run / "curve.csv") == unbroken.curve

    # With every checkpoint broken the run starts over and still gets there.
    for path in (run / "checkpoints").glob("step-*.safetensors"):
        _truncate(path)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dreamline.training"):
        trainer = make_trainer(run)
        result = trainer.run()
    assert result.resumed_from is None and result.step == 12
    assert "starting fresh" in caplog.text
    _assert_same_weights(trainer, unbroken)


def test_other_run_key_starts_fresh(unbroken, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(unbroken.out, run)
    result = make_trainer(run, toy_params(steps=4), run_key="other").run()
    assert result.resumed_from is None and result.step == 4
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*.safetensors")) == ["step-4.safetensors"]
    assert [row[0] for row in _curve(run / "curve.csv")] == ["3", "4"]
    assert tensorfile.load(result.checkpoint)["run_key"] == "other"


def test_finished_run_is_not_retrained_and_can_be_extended(unbroken, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(unbroken.out, run)
    trainer = make_trainer(run)
    result = trainer.run()
    assert result.resumed_from == 12 and result.samples_per_s is None
    _assert_same_weights(trainer, unbroken)
    assert result.loss == float(unbroken.curve[-1][1])

    result = make_trainer(run, toy_params(steps=15)).run()
    assert result.resumed_from == 12 and result.step == 15
    assert [row[0] for row in _curve(run / "curve.csv")] == ["3", "6", "9", "12", "15"]


def test_ema_weights_on_request(unbroken, tmp_path):
    trainer = make_trainer(tmp_path, toy_params(steps=6))
    rng_before = torch.get_rng_state()
    trainer.run()
    # The loop reseeds the global RNG per step for dropout but hands the caller's back.
    assert torch.equal(torch.get_rng_state(), rng_before)
    trained = trainer.model.net[0].weight.detach().clone()
    shadow = trainer.ema.state_dict()["shadow"]["net.0.weight"].clone()
    assert not torch.equal(trained, shadow)
    with trainer.ema.swapped():
        assert torch.equal(trainer.model.net[0].weight, shadow)
    assert torch.equal(trainer.model.net[0].weight, trained)
    embed = trainer.model.embed.weight.detach().clone()
    # model.parameters() includes the frozen embed: matched by identity, not position.
    trainer.ema.copy_to(trainer.model.parameters())
    assert torch.equal(trainer.model.net[0].weight, shadow)
    assert torch.equal(trainer.model.embed.weight, embed)
    with torch.no_grad():
        trainer.model.net[0].weight.zero_()
    trainer.ema.copy_to(trainer.model)
    assert torch.equal(trainer.model.net[0].weight, shadow)


def test_loss_decreases(tmp_path):
    params = toy_params(steps=80, batch_size=16, log_every=10, checkpoint_every=80, warmup_steps=5)
    result = make_trainer(tmp_path, params, dropout=0.0).run()
    losses = [float(row[1]) for row in _curve(tmp_path / "curve.csv")]
    assert len(losses) == 8
    # Per-step noise and weights make single intervals jumpy: compare the last two.
    assert np.mean(losses[-2:]) < 0.4 * losses[0], losses
    assert result.loss == losses[-1]


def test_batch_indices_cover_each_epoch_once():
    n, bs = 10, 3
    flat = np.concatenate([batch_indices(5, step, n, bs) for step in range(20)])  # 6 epochs
    for epoch in range(len(flat) // n):
        assert sorted(flat[epoch * n:(epoch + 1) * n]) == list(range(n))
    assert not np.array_equal(flat[:n], flat[n:2 * n])  # reshuffled each epoch
    again = np.concatenate([batch_indices(5, step, n, bs) for step in range(20)])
    assert np.array_equal(flat, again)
    assert not np.array_equal(flat, np.concatenate([batch_indices(6, s, n, bs) for s in range(20)]))
    # A batch larger than the dataset spans epochs; negative seeds are fine.
    big = batch_indices(-1, 1, 4, 10)
    assert len(big) == 10 and set(big) == set(range(4))
    with pytest.raises(ValueError):
        batch_indices(0, 0, 0, 4)


def test_seeds_and_run_keys_are_stable():
    assert step_seed(0, 1) == step_seed(0, 1) != step_seed(0, 2)
    assert 0 <= step_seed(-3, 10**9) < 2**63
    a = toy_params()
    # Fields that cannot change the weights at a given step leave the key alone.
    assert make_run_key(a, "data") == make_run_key(toy_params(steps=99, checkpoint_every=2), "data")
    assert make_run_key(a, "data") != make_run_key(toy_params(lr=0.01), "data")
    assert make_run_key(a, "data") != make_run_key(a, "other data")


def test_min_snr_weighting_is_the_formula_and_only_reweights():
    """train.snr_gamma: each sample's loss times min(SNR, gamma) / (SNR + 1) (v-prediction) or
    / SNR (epsilon); off (None) the loss is the plain mean."""
    from diffusers import DDPMScheduler

    from dreamline.training.objectives import DenoiseBatch, denoise_loss, min_snr_weight

    class Echo(torch.nn.Module):   # a fixed "UNet": its error depends on t, so weights show
        def forward(self, x, t, **_):
            return SimpleNamespace(sample=x * 0.5)

    g = torch.Generator().manual_seed(0)
    latents = torch.randn(6, 3, 4, 4, generator=g)
    noise = torch.randn(6, 3, 4, 4, generator=g)
    t = torch.tensor([1, 50, 200, 500, 800, 999])
    batch = DenoiseBatch(latents, torch.zeros(6, 2, 4), None, None)
    unet = Echo()
    unet.attn_processors = {}
    for kind in ("v_prediction", "epsilon"):
        sch = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=kind)
        ab = sch.alphas_cumprod.double()[t]
        snr = ab / (1 - ab)
        expect = snr.clamp(max=5.0) / (snr + 1 if kind == "v_prediction" else snr)
        w = min_snr_weight(sch, t, 5.0)
        assert torch.allclose(w.double(), expect, rtol=1e-6)
        assert w[0] < w[-2] if kind == "v_prediction" else w[0] < 1.0   # the low-noise end is damped
        plain = denoise_loss(unet, sch, batch, noise, t, reduction="none")
        weighted = denoise_loss(unet, sch, batch, noise, t, reduction="none", snr_gamma=5.0)
        assert torch.allclose(weighted, plain * w, rtol=1e-5)
        assert torch.allclose(denoise_loss(unet, sch, batch, noise, t, snr_gamma=None), plain.mean())


def test_batch_t_min_draws_training_timesteps_from_the_top_only():
    """DenoiseBatch.t_min (train_mv.high_t_fraction): the batch trains at t >= t_min, one t per
    view set; t_min 0 draws exactly what the plain objective draws."""
    from diffusers import DDPMScheduler

    from dreamline.training.objectives import DenoiseBatch, training_loss

    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x, t, **_):
            seen.append(t.clone())
            return SimpleNamespace(sample=x * 0.0)

    unet = Spy()
    unet.attn_processors = {}
    sch = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    latents = torch.randn(64 * 4, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    batch = DenoiseBatch(latents, torch.zeros(256, 2, 4), None, None, num_views=4)
    training_loss(unet, sch, batch, torch.Generator().manual_seed(1))
    batch.t_min = 0
    training_loss(unet, sch, batch, torch.Generator().manual_seed(1))
    batch.t_min = 950
    training_loss(unet, sch, batch, torch.Generator().manual_seed(1))
    plain, zero, top = seen
    assert torch.equal(plain, zero) and plain.min() < 900
    assert top.min() >= 950 and top.max() <= 999 and len(top.unique()) > 10
    assert torch.equal(top.reshape(-1, 4), top.reshape(-1, 4)[:, :1].expand(-1, 4))


def test_cosine_lr_schedule_and_its_run_key():
    from dreamline.config import TrainingParams
    from dreamline.training.loop import lr_factor

    assert [lr_factor(s, 4, 104, "constant") for s in (0, 3, 50, 103)] == [0.25, 1.0, 1.0, 1.0]
    cos = [lr_factor(s, 4, 104, "cosine") for s in (0, 3, 4, 54, 104)]
    assert cos[:3] == [0.25, 1.0, 1.0] and abs(cos[3] - 0.5) < 1e-12 and cos[4] == 0.0
    # Constant LR: more steps continue the same run; cosine: another run.
    const = [make_run_key(TrainingParams(steps=n)) for n in (100, 200)]
    cosine = [make_run_key(TrainingParams(steps=n, lr_schedule="cosine")) for n in (100, 200)]
    assert const[0] == const[1] and cosine[0] != cosine[1] and const[0] != cosine[0]
