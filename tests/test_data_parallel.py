"""Training at scale (issue 19): the Trainer through accelerate, data-parallel over processes
(gloo on the CPU here), with gradient accumulation and bf16 autocast.

* 2 processes with the same global batch follow the 1-process loss curve and reach its
  weights within float tolerance; every rank holds the same weights and EMA;
* a 2-process run SIGKILLed right after a checkpoint lands resumes to exactly the unbroken
  2-process run;
* the parts of a step draw, together, exactly the noise and timesteps of the whole batch;
* bf16 autocast on the CPU trains;
* a training stage (train_base) over 2 processes writes one model folder (rank 0) that loads.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from training_toy import N, D, toy_data, toy_params

from dreamline.training.loop import WHOLE, Compute, Part, Trainer, batch_indices, launch

CPU = Compute(device="cpu")
TWO = Compute(device="cpu", processes=2)


# -- a toy that data parallelism can reproduce: no BatchNorm, no dropout (both see the batch) --

class DPNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(D, D)
        self.embed.requires_grad_(False)                   # frozen: neither trained nor saved
        self.net = nn.Sequential(nn.Linear(D, 32), nn.Tanh(), nn.Linear(32, 1))
        self.extra = nn.Linear(D, 1)   # used by some steps only, as the camera MLP by 2D batches

    def forward(self, x: torch.Tensor, extra: bool) -> torch.Tensor:
        out = self.net(x + 0.1 * self.embed(x))
        return out + self.extra(x) if extra else out


def dp_trainer(out_dir: Path, compute: Compute, seen: list | None = None, **overrides) -> Trainer:
    params = toy_params(**overrides)
    torch.manual_seed(0)
    model = DPNet()
    x, y = toy_data()

    def make_batch(step: int, part: Part = WHOLE):
        idx = batch_indices(params.seed, step, N, params.batch_size)   # the global batch
        span, idx = part.span(len(idx)), part.take(idx)
        return x[torch.from_numpy(idx)], y[torch.from_numpy(idx)], span, step % 3 == 1

    def loss_fn(model: nn.Module, batch, generator: torch.Generator) -> torch.Tensor:
        xb, yb, span, extra = batch
        units = span[2] if span else len(xb)
        # Drawn for the whole global batch; a part keeps its rows.
        noise = 0.05 * torch.randn((units, D), generator=generator)
        t = torch.rand((units, 1), generator=generator)
        if span:
            noise, t = noise[span[0]:span[1]], t[span[0]:span[1]]
        if seen is not None:
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return ((model(xb + noise, extra) - yb) ** 2 * (0.5 + t)).mean()

    return Trainer(model, params, out_dir, make_batch, loss_fn, run_key="dp-toy", compute=compute)


def toy_rank(out_dir: str, compute: Compute, overrides: dict, kill_after: str | None = None) -> dict:
    """One rank of a data-parallel toy run (run by `launch` in each process): trains, then
    saves its own weights and EMA as rank-<r>.safetensors."""
    from safetensors.torch import save_file

    if kill_after and os.environ["RANK"] == "0":
        from kill_after_write import install

        install(kill_after, 1)
    trainer = dp_trainer(Path(out_dir), compute, **overrides)
    result = trainer.run()
    state = {f"model.{k}": v.contiguous() for k, v in trainer.model_state().items()}
    state.update({f"ema.{k}": v.contiguous() for k, v in trainer.ema.state_dict()["shadow"].items()})
    save_file(state, str(Path(out_dir) / f"rank-{trainer.rank}.safetensors"))
    return {"step": result.step, "resumed_from": result.resumed_from, "loss": result.loss,
            "compute": result.compute, "world": trainer.world}


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def curve(path: Path) -> list[tuple[int, float, float]]:
    lines = path.read_text().splitlines()[1:]
    return [(int(s), float(loss), float(lr)) for s, loss, lr in (line.split(",") for line in lines)]


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    """The 1-process run, state saved like a rank's."""
    out = tmp_path_factory.mktemp("one")
    result = toy_rank(str(out), CPU, {})
    return out, result


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """The same run over 2 processes (gloo), the same global batch of 8."""
    out = tmp_path_factory.mktemp("two")
    result = launch(toy_rank, (str(out), TWO, {}), processes=2, device="cpu", threads=1)
    return out, result


def test_two_processes_follow_one_process_within_float_tolerance(one, two):
    (out1, r1), (out2, r2) = one, two
    assert r1["world"] == 1 and r2["world"] == 2 and r2["step"] == r1["step"] == 12
    assert r2["compute"] == {"device": "cpu", "device_name": "cpu", "precision": "fp32", "processes": 2}
    c1, c2 = curve(out1 / "curve.csv"), curve(out2 / "curve.csv")
    assert [(s, lr) for s, _, lr in c1] == [(s, lr) for s, _, lr in c2]      # steps and LR exactly
    assert [loss for _, loss, _ in c2] == pytest.approx([loss for _, loss, _ in c1], rel=1e-5)
    w1 = weights(out1 / "rank-0.safetensors")
    ranks = [weights(out2 / f"rank-{r}.safetensors") for r in (0, 1)]
    assert ranks[0].keys() == w1.keys() and not any(k.startswith("model.embed.") for k in w1)
    for k in w1:
        # Every rank holds exactly the same weights and EMA ...
        assert torch.equal(ranks[0][k], ranks[1][k]), k
        # ... which are the 1-process ones within float tolerance (summation order differs).
        torch.testing.assert_close(ranks[0][k], w1[k], rtol=1e-4, atol=1e-5, msg=k)
    # The step-parameter that only some steps use moved, as in one process.
    assert not torch.equal(w1["model.extra.weight"], dp_trainer(out1 / "fresh", CPU).model.extra.weight.detach())
    # Rank 0 alone wrote: one curve, one checkpoint directory, the last two checkpoints.
    assert sorted(p.name for p in (out2 / "checkpoints").glob("step-*")) == ["step-12.safetensors",
                                                                             "step-8.safetensors"]


def test_killed_two_process_run_resumes_to_the_unbroken_one(two, tmp_path):
    out2, _ = two
    # Rank 0 dies (SIGKILL) right after checkpoint step-8 lands; the launcher stops rank 1.
    with pytest.raises(torch.multiprocessing.ProcessExitedException):
        launch(toy_rank, (str(tmp_path), TWO, {}, r"checkpoints/step-8\.safetensors$"), processes=2,
               device="cpu", threads=1)
    assert (tmp_path / "checkpoints/step-8.safetensors").is_file()
    assert not (tmp_path / "rank-0.safetensors").exists()
    resumed = launch(toy_rank, (str(tmp_path), TWO, {}), processes=2, device="cpu", threads=1)
    assert resumed["resumed_from"] == 8 and resumed["step"] == 12
    # Exactly the unbroken run: same curve bytes, same weights and EMA on every rank.
    assert (tmp_path / "curve.csv").read_bytes() == (out2 / "curve.csv").read_bytes()
    unbroken = weights(out2 / "rank-0.safetensors")
    for r in (0, 1):
        got = weights(tmp_path / f"rank-{r}.safetensors")
        assert got.keys() == unbroken.keys()
        for k in unbroken:
            assert torch.equal(got[k], unbroken[k]), (r, k)


def test_gradient_accumulation_is_the_same_batch(one, tmp_path):
    out1, _ = one
    trainer = dp_trainer(tmp_path, CPU, grad_accumulation=4)   # 4 micro-batches of 2
    trainer.run()
    c1, c4 = curve(out1 / "curve.csv"), curve(tmp_path / "curve.csv")
    assert [(s, lr) for s, _, lr in c4] == [(s, lr) for s, _, lr in c1]
    assert [loss for _, loss, _ in c4] == pytest.approx([loss for _, loss, _ in c1], rel=1e-5)
    w1 = weights(out1 / "rank-0.safetensors")
    for k, v in trainer.model_state().items():
        torch.testing.assert_close(v, w1[f"model.{k}"], rtol=1e-4, atol=1e-5, msg=k)
    with pytest.raises(ValueError, match="equal parts"):
        dp_trainer(tmp_path / "odd", CPU, grad_accumulation=3).run()   # 8 does not split in 3


def test_parts_draw_together_what_the_whole_batch_draws():
    from dreamline.texturing.training import caa_noise
    from dreamline.training.objectives import DenoiseBatch, draw_noise

    F, units, C = 3, 4, 2
    latents = torch.zeros(units * F, C, 4, 4)

    def whole_and_parts(draw):
        whole = draw(DenoiseBatch(latents, None, None, None, F), torch.Generator().manual_seed(5))
        parts = []
        for i in range(4):
            span = Part(i, 4).span(units)
            batch = DenoiseBatch(latents[span[0] * F:span[1] * F], None, None, None, F, part=span)
            parts.append(draw(batch, torch.Generator().manual_seed(5)))
        return whole, parts

    for draw in (lambda b, g: draw_noise(b, 1000, g),
                 lambda b, g: caa_noise(b, 1000, 200, 0.5, g)):
        (noise, t), parts = whole_and_parts(draw)
        assert torch.equal(torch.cat([n for n, _ in parts]), noise)
        assert torch.equal(torch.cat([x for _, x in parts]), t)
    assert Part(1, 2).take(list(range(6))) == [3, 4, 5] and WHOLE.span(5) is None


def test_a_stage_trains_on_as_many_processes_as_its_batch_splits_over():
    from dreamline.training.loop import usable_processes

    assert usable_processes(256, 1, 8) == 8
    assert usable_processes(4, 1, 8) == 4          # DreamBooth's 4 images on 8 GPUs
    assert usable_processes(6, 1, 8) == 6 and usable_processes(7, 1, 8) == 7 and usable_processes(11, 1, 8) == 1
    assert usable_processes(8, 2, 8) == 4          # 2 micro-batches of 4: 4 ranks
    assert usable_processes(9, 2, 8) == 8          # 2 does not divide 9: the first step says so


def test_bf16_autocast_on_the_cpu_trains(tmp_path):
    from dreamline.device import DeviceError

    seen: list = []
    trainer = dp_trainer(tmp_path, Compute(device="cpu", precision="bf16"), seen=seen, steps=30, log_every=5,
                         checkpoint_every=30)
    result = trainer.run()
    assert seen and all(on and dtype == torch.bfloat16 for on, dtype in seen)   # the loss ran autocast
    losses = [loss for _, loss, _ in curve(tmp_path / "curve.csv")]
    assert all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0], losses
    assert result.compute["precision"] == "bf16"
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())   # weights stay fp32
    with pytest.raises(DeviceError, match="fp16"):
        dp_trainer(tmp_path / "fp16", Compute(device="cpu", precision="fp16"))
    # A later fp32 run in the same process computes in fp32 again.
    seen.clear()
    dp_trainer(tmp_path / "fp32", CPU, seen=seen, steps=1).run()
    assert len(seen) == 1 and not seen[0][0]


def test_gradient_checkpointing_recomputes_the_same_numbers(tmp_path):
    from tiny_models import TINY

    from dreamline.models.unet import build_unet

    def run(out: Path, checkpointing: bool):
        torch.manual_seed(0)
        unet = build_unet(TINY, in_channels=4, sample_size=8, cross_attention_dim=16)
        seen = []

        def make_batch(step: int):
            g = torch.Generator().manual_seed(step)
            return torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 3, 16, generator=g)

        def loss_fn(model, batch, generator):
            x, states = batch
            seen.append(model.is_gradient_checkpointing)
            t = torch.randint(0, 1000, (2,), generator=generator)
            return ((model(x, t, encoder_hidden_states=states).sample - x) ** 2).mean()

        params = toy_params(steps=2, batch_size=2, checkpoint_every=2, gradient_checkpointing=checkpointing)
        trainer = Trainer(unet, params, out, make_batch, loss_fn, run_key="ckpt", compute=CPU)
        trainer.run()
        trainer.release()
        return {k: v.clone() for k, v in unet.state_dict().items()}, seen, unet.is_gradient_checkpointing

    plain, seen_plain, _ = run(tmp_path / "plain", False)
    recomputed, seen_ckpt, after = run(tmp_path / "ckpt", True)
    assert seen_plain == [False, False] and seen_ckpt == [True, True] and not after
    assert plain.keys() == recomputed.keys()
    for k in plain:
        assert torch.equal(plain[k], recomputed[k]), k


def test_the_entry_point_hands_compute_to_the_training_code(monkeypatch):
    from dreamline.config import Params
    from dreamline.training.loop import COMPUTE_ENV
    from stages._common import use_compute

    for name in COMPUTE_ENV.values():
        monkeypatch.setenv(name, "placeholder")     # so that the test's values go with it
        monkeypatch.delenv(name)
    assert Compute.from_env() == Compute()          # nothing exported: the params defaults
    use_compute(Params.model_validate({"compute": {"device": "cpu", "precision": "bf16", "processes": 3}}))
    assert Compute.from_env() == Compute(device="cpu", precision="bf16", processes=3)


# -- a training stage over 2 processes -----------------------------------------------------------

def _renders(root: Path) -> tuple[Path, Path]:
    """A few objects' single views (32 px RGBA) and captions: what train_base reads."""
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40)}
    index, captions = [], []
    for i, (name, rgb) in enumerate(list(colours.items()) * 2):
        uid = f"obj{i:02d}"
        split = "val" if i >= 6 else "train"
        captions.append({"uid": uid, "split": split, "caption": f"a {name} {'chair' if i % 2 else 'mug'}",
                         "original_text": f"{name} thing"})
        folder = root / "objects" / uid
        folder.mkdir(parents=True)
        for v in range(2):
            img = np.zeros((32, 32, 4), np.uint8)
            lo, hi = 6 + 2 * v + int(rng.integers(0, 4)), 24 + int(rng.integers(0, 4))
            img[lo:hi, lo:hi, :3], img[lo:hi, lo:hi, 3] = rgb, 255
            Image.fromarray(img).save(folder / f"mv0_{v}.png")
            index.append({"uid": uid, "view_id": f"mv0_{v}", "kind": "mv", "set": 0,
                          "c2w": np.eye(4).reshape(-1).tolist(), "rgba_path": f"objects/{uid}/mv0_{v}.png"})
    pd.DataFrame(index).to_parquet(root / "index.parquet")
    pd.DataFrame(captions).to_parquet(root / "captions.parquet")
    return root, root / "captions.parquet"


def test_train_base_over_two_processes_writes_one_model_folder(tmp_path):
    import glob
    import tempfile

    from dreamline.config import TrainBaseParams
    from dreamline.models.pipelines import MultiViewDiffusionPipeline
    from dreamline.models.weights import load_pretrained
    from dreamline.training.base import train_base

    renders, captions = _renders(tmp_path / "renders")
    p = TrainBaseParams.model_validate({
        "resolution": 16, "unet": {"block_out_channels": [8, 16], "attention": [False, True],
                                   "norm_num_groups": 8, "attention_head_dim": 8},
        "train": {"steps": 3, "batch_size": 4, "log_every": 1, "checkpoint_every": 2, "sample_steps": 2,
                  "sample_captions": 2, "threads": 1}})
    scratch_before = set(glob.glob(os.path.join(tempfile.gettempdir(), "dreamline-rank*")))
    out2 = tmp_path / "models/base2"
    summary = train_base(p, renders, captions, out2, tmp_path / "work2", compute=TWO)
    assert summary["model"] == "base" and summary["training"]["steps"] == 3
    assert sorted(x.name for x in out2.parent.iterdir()) == ["base2"]   # no .partial, one folder
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "dreamline-rank*"))) == scratch_before
    run = json.loads((out2 / "run.json").read_text())
    assert run["training"]["compute"]["processes"] == 2
    assert (out2 / "samples.png").is_file() and (out2 / "summary.json").is_file()
    pipe = load_pretrained(MultiViewDiffusionPipeline, out2)
    assert list(pipe.unet.config.block_out_channels) == [8, 16]

    # The same stage in one process: the same loss curve within float tolerance.
    out1 = tmp_path / "models/base1"
    one = train_base(p, renders, captions, out1, tmp_path / "work1", compute=CPU)

    def losses(folder: Path) -> list[float]:
        rows = (folder / "dvclive/plots/metrics/train/loss.tsv").read_text().splitlines()[1:]
        return [float(r.split("\t")[1]) for r in rows]

    assert losses(out2) == pytest.approx(losses(out1), rel=1e-4)
    assert summary["training"]["final_loss"] == pytest.approx(one["training"]["final_loss"], rel=1e-4)
