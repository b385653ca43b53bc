"""A tiny regression problem for the training-loop tests.

Run as a script it is the run that gets killed: ``python training_toy.py OUT_DIR KILL_AT``
trains until `make_batch(KILL_AT)` and then SIGKILLs its own process, as an OOM killer or
a pre-empted node would, with no chance to clean up.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dreamline.config import TrainingParams
from dreamline.training.loop import Trainer, batch_indices

N, D = 48, 6


def toy_params(**overrides) -> TrainingParams:
    # log_every does not divide checkpoint_every, so a checkpoint falls inside a log
    # interval and the loss of a half-finished interval must survive the resume.
    base = dict(steps=12, batch_size=8, lr=0.03, weight_decay=0.01, warmup_steps=3,
                grad_clip=0.5, ema_decay=0.9, checkpoint_every=4, log_every=3, threads=1, seed=7)
    base.update(overrides)
    return TrainingParams(**base)


class ToyNet(nn.Module):
    def __init__(self, dropout: float = 0.2):
        super().__init__()
        # Frozen, like a text encoder: neither trained nor checkpointed.
        self.embed = nn.Linear(D, D)
        self.embed.requires_grad_(False)
        # BatchNorm gives the model buffers, which must round-trip through a checkpoint.
        self.net = nn.Sequential(nn.Linear(D, 32), nn.BatchNorm1d(32), nn.ReLU(),
                                 nn.Dropout(dropout), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x + 0.1 * self.embed(x))


def toy_data() -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D))
    w = rng.normal(size=(D, 1))
    y = np.tanh(x @ w) + 0.5 * x[:, :1] ** 2
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)


def make_trainer(out_dir: Path, params: TrainingParams | None = None, run_key: str = "toy",
                 kill_at: int | None = None, dropout: float = 0.2) -> Trainer:
    params = params or toy_params()
    torch.manual_seed(0)
    model = ToyNet(dropout)
    x, y = toy_data()

    def make_batch(step: int):
        if kill_at is not None and step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        idx = torch.from_numpy(batch_indices(params.seed, step, N, params.batch_size))
        return x[idx], y[idx]

    def loss_fn(model: nn.Module, batch, generator: torch.Generator) -> torch.Tensor:
        xb, yb = batch
        noise = 0.05 * torch.randn(xb.shape, generator=generator)
        # Per-sample weights stand in for diffusion timesteps drawn per step.
        t = torch.rand(xb.shape[0], 1, generator=generator)
        return ((model(xb + noise) - yb) ** 2 * (0.5 + t)).mean()

    return Trainer(model, params, out_dir, make_batch, loss_fn, run_key=run_key)


if __name__ == "__main__":
    torch.set_num_threads(1)
    make_trainer(Path(sys.argv[1]), kill_at=int(sys.argv[2])).run()
