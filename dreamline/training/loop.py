"""The training loop shared by every training stage (base, multi-view, AGP, DreamBooth).

Resuming is exact by construction: nothing depends on iterator or global RNG state carried
from one step to the next. The caller supplies

* ``make_batch(step) -> batch``: a pure function of (seed, step), e.g. built on
  :func:`batch_indices`;
* ``loss_fn(model, batch, generator) -> scalar tensor``: every random draw (noise,
  timesteps, caption dropout) from ``generator``, which the loop seeds from (seed, step).
  The global torch RNG is also reseeded from (seed, step) around the call, so modules that
  cannot take a generator (``nn.Dropout``) are deterministic too; the caller's global RNG
  is left as it was.

Then restoring model, optimizer, LR scheduler, EMA and step from a checkpoint makes the rest
of a run identical to an unbroken run of the same seed (on CPU, with the same thread count).

Files under ``out_dir``:

* ``checkpoints/step-<N>.safetensors`` (the latest two; dreamline.tensorfile, no pickle) and
  ``checkpoints/latest.json``;
* ``curve.csv``: ``step,loss,lr``, one row per ``log_every`` steps (and one at the last
  step), growing while the run trains; equal runs write equal bytes (throughput goes to the
  log and to TrainResult). The stage writes it through DVCLive into the model folder when
  training ends (dreamline.training.common.training_record).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from dreamline import tensorfile
from dreamline.atomic import write_bytes_atomic, write_json_atomic
from dreamline.config import TrainingParams

log = logging.getLogger("dreamline.training")

CHECKPOINT_FORMAT = 1
KEEP_CHECKPOINTS = 2
CURVE_COLUMNS = ("step", "loss", "lr")
# Mixed into the per-step seeds so that they never coincide with batch_indices' streams.
_STEP_SEED_TAG = 0x5354_4550
_CKPT_RE = re.compile(r"^step-(\d+)\.safetensors$")
_LEGACY_CKPT_RE = re.compile(r"^step-(\d+)\.pt$")   # torch.save pickles: never loaded
# TrainingParams fields that cannot change the weights at a given step, so a run whose
# params differ only in these may resume: with warmup-then-constant LR the trajectory does
# not depend on the total step count, so raising `steps` continues a finished run.
_NOT_IN_RUN_KEY = frozenset({"steps", "checkpoint_every", "sample_captions", "sample_steps",
                             "guidance_scale"})


def _u64(x: int) -> int:
    # Seeds may be negative in the config; numpy's seeding wants non-negative entropy.
    return int(x) % (1 << 64)


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    perm = np.random.default_rng([_u64(seed), epoch]).permutation(n)
    perm.setflags(write=False)  # shared through the cache
    return perm


def batch_indices(seed: int, step: int, n: int, batch_size: int) -> np.ndarray:
    """Dataset indices of batch `step`: a pure function of its arguments.

    Sample position ``p = step * batch_size + i`` falls in epoch ``p // n``; each epoch is
    its own permutation of ``range(n)``, drawn from ``(seed, epoch)``, so every index is
    seen exactly once per epoch and batches that straddle an epoch boundary (or are larger
    than the dataset) wrap into the next epoch.
    """
    if n < 1:
        raise ValueError(f"dataset size must be >= 1, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    pos = np.arange(batch_size, dtype=np.int64) + int(step) * int(batch_size)
    epochs = pos // n
    out = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):
        sel = epochs == epoch
        out[sel] = _epoch_permutation(seed, int(epoch), n)[pos[sel] % n]
    return out


def _step_seeds(seed: int, step: int) -> tuple[int, int]:
    # Two streams: the generator handed to loss_fn and the global RNG (dropout), kept
    # apart so that dropout masks and noise are not drawn from the same numbers.
    state = np.random.SeedSequence([_u64(seed), int(step), _STEP_SEED_TAG]).generate_state(
        2, dtype=np.uint64)
    return int(state[0]) >> 1, int(state[1]) >> 1  # 63 bits: valid for every torch seeding


def step_seed(seed: int, step: int) -> int:
    """The seed of the generator the loop passes to ``loss_fn`` at `step`."""
    return _step_seeds(seed, step)[0]


def _canonical(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        skip = _NOT_IN_RUN_KEY if isinstance(obj, TrainingParams) else frozenset()
        return {name: _canonical(getattr(obj, name))
                for name in type(obj).model_fields if name not in skip}
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def make_run_key(*parts: Any) -> str:
    """A key for `Trainer(run_key=...)`: sha256 over JSON of `parts`.

    Pass everything that determines the weights: the stage's params (pydantic models are
    dumped field by field, TrainingParams without the fields in ``_NOT_IN_RUN_KEY``), a
    fingerprint of the training data and of any starting weights.
    """
    text = json.dumps(_canonical(list(parts)), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class EMA:
    """Exponential moving average of a model's trainable parameters.

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after n updates, as diffusers'
    EMAModel does, so that short runs are not dominated by the initial weights.
    """

    def __init__(self, named_parameters: Iterable[tuple[str, nn.Parameter]], decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        named = list(named_parameters)
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow = [p.detach().clone() for p in self.params]
        self._stored: list[torch.Tensor] | None = None

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self) -> None:
        weight = 1.0 - self.current_decay()
        self.num_updates += 1
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach(), weight)

    def _targets(self, target: nn.Module | Sequence[torch.Tensor] | None) -> list[torch.Tensor]:
        if target is None:
            return self.params
        if isinstance(target, nn.Module):
            by_name = dict(target.named_parameters(remove_duplicate=False))
            missing = [n for n in self.names if n not in by_name]
            if missing:
                raise KeyError(f"model lacks EMA parameters {missing[:5]}")
            return [by_name[n] for n in self.names]
        tensors = list(target)
        # `model.parameters()` of the trained model itself, frozen ones included: match by
        # identity, since position would shift by every frozen parameter.
        given = {id(t) for t in tensors}
        if all(id(p) in given for p in self.params):
            return self.params
        if len(tensors) != len(self.shadow):
            raise ValueError(f"EMA tracks {len(self.shadow)} tensors, got {len(tensors)}; pass the "
                             "model (matched by name) when it has frozen parameters")
        return tensors

    @torch.no_grad()
    def copy_to(self, target: nn.Module | Sequence[torch.Tensor] | None = None) -> None:
        """Write the averaged weights into `target`: the tracked parameters when None or
        when `target` contains them (``model.parameters()``), a module (matched by parameter
        name), or another sequence of tensors in tracking order."""
        for s, p in zip(self.shadow, self._targets(target)):
            p.copy_(s)

    @torch.no_grad()
    def store(self) -> None:
        self._stored = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def restore(self) -> None:
        if self._stored is None:
            raise RuntimeError("EMA.restore() without store()")
        for saved, p in zip(self._stored, self.params):
            p.copy_(saved)
        self._stored = None

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """Run the block with the EMA weights in the model, the trained weights after."""
        self.store()
        self.copy_to()
        try:
            yield
        finally:
            self.restore()

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates,
                "shadow": dict(zip(self.names, self.shadow))}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        shadow = state["shadow"]
        if list(shadow) != self.names:
            raise ValueError("EMA state tracks different parameters")
        for name, s in zip(self.names, self.shadow):
            if shadow[name].shape != s.shape:
                raise ValueError(f"EMA shape mismatch for {name}: {tuple(shadow[name].shape)} "
                                 f"vs {tuple(s.shape)}")
        for name, s in zip(self.names, self.shadow):
            s.copy_(shadow[name])
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])


@dataclass(frozen=True)
class TrainResult:
    step: int                       # steps done, params.steps on success
    loss: float | None              # mean loss of the last logged interval
    seconds: float                  # wall time of this call (this process)
    samples_per_s: float | None     # over this process's steps; None if it ran none
    resumed_from: int | None        # checkpoint step this call started from
    checkpoint: Path | None         # the checkpoint holding the final state
    curve: Path


def _write_curve(path: Path, rows: list[dict[str, Any]]) -> None:
    lines = [",".join(CURVE_COLUMNS)]
    for r in rows:
        # repr keeps loss and lr exact, so curves of equal runs are byte-equal there.
        lines.append(f"{r['step']},{r['loss']!r},{r['lr']!r}")
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode())


class Trainer:
    """AdamW + linear warmup then constant LR + grad-norm clipping + EMA, with checkpoints.

    Only parameters with ``requires_grad`` are optimised, averaged and checkpointed (with
    all persistent buffers). ``run()`` resumes from the newest usable checkpoint whose
    run key matches; it leaves the model holding the final trained (non-EMA) weights —
    use ``trainer.ema.copy_to()`` or ``with trainer.ema.swapped():`` for the EMA weights.
    """

    def __init__(self, model: nn.Module, params: TrainingParams, out_dir: str | Path,
                 make_batch: Callable[[int], Any],
                 loss_fn: Callable[[nn.Module, Any, torch.Generator], torch.Tensor], *,
                 run_key: str, samples_per_step: int | None = None,
                 generator_device: str | torch.device = "cpu"):
        self.model = model
        self.params = params
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.curve_path = self.out_dir / "curve.csv"
        self.make_batch = make_batch
        self.loss_fn = loss_fn
        self.run_key = str(run_key)
        self.samples_per_step = int(samples_per_step or params.batch_size)
        self.generator_device = torch.device(generator_device)
        self.trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not self.trainable:
            raise ValueError("model has no parameters with requires_grad")
        self._frozen = {n for n, p in model.named_parameters(remove_duplicate=False)
                        if not p.requires_grad}
        self._reset_state()

    # -- state -------------------------------------------------------------------------

    def _reset_state(self) -> None:
        p = self.params
        self.optimizer = torch.optim.AdamW([q for _, q in self.trainable], lr=p.lr,
                                           weight_decay=p.weight_decay)
        warmup = p.warmup_steps
        # Factor for the LR used at 0-based step s: reaches 1 at step warmup - 1.
        self.scheduler = LambdaLR(self.optimizer,
                                  lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
        self.ema = EMA(self.trainable, p.ema_decay)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._pending: list[float] = []   # losses since the last curve row
        self._seconds_before = 0.0        # training time of earlier processes

    def model_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps of the model: trainable parameters and buffers."""
        return {k: v for k, v in self.model.state_dict().items() if k not in self._frozen}

    def _checkpoints(self) -> list[tuple[int, Path]]:
        if not self.ckpt_dir.is_dir():
            return []
        found = []
        for path in self.ckpt_dir.iterdir():
            m = _CKPT_RE.match(path.name)
            if m:
                found.append((int(m.group(1)), path))
        return sorted(found, reverse=True)

    def _read_checkpoint(self, path: Path) -> dict[str, Any]:
        ckpt = tensorfile.load(path)
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not a dreamline training checkpoint")
        expected = self.model_state()
        saved = ckpt["model"]
        if set(saved) != set(expected):
            missing = sorted(set(expected) - set(saved))[:5]
            extra = sorted(set(saved) - set(expected))[:5]
            raise ValueError(f"model keys differ (missing {missing}, unexpected {extra})")
        for k, v in expected.items():
            if saved[k].shape != v.shape:
                raise ValueError(f"shape mismatch for {k}: {tuple(saved[k].shape)} vs {tuple(v.shape)}")
        return ckpt

    def _apply(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"], strict=False)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.ema.load_state_dict(ckpt["ema"])
        self.step = int(ckpt["step"])
        self.history = [dict(r) for r in ckpt["history"]]
        self._pending = [float(x) for x in ckpt["pending_losses"]]
        self._seconds_before = float(ckpt["seconds"])

    def _resume(self) -> tuple[int | None, Path | None]:
        if self.ckpt_dir.is_dir():
            for legacy in sorted(self.ckpt_dir.iterdir()):
                if _LEGACY_CKPT_RE.match(legacy.name):
                    log.warning("ignoring %s: a pickle checkpoint of an earlier version is never loaded "
                                "(unpickling can run code)", legacy)
        candidates = self._checkpoints()
        if not candidates:
            return None, None
        snapshot = {k: v.detach().clone() for k, v in self.model_state().items()}
        for step, path in candidates:
            if step > self.params.steps:
                log.warning("ignoring checkpoint %s: past the %d steps of this run", path,
                            self.params.steps)
                continue
            try:
                ckpt = self._read_checkpoint(path)
            except Exception as exc:  # truncated, corrupt or foreign: try an older one
                log.warning("checkpoint %s is unusable (%s: %s); trying an older one", path,
                            type(exc).__name__, exc)
                continue
            if ckpt.get("run_key") != self.run_key:
                log.info("checkpoint %s belongs to another run (key differs)", path)
                continue
            try:
                self._apply(ckpt)
            except Exception as exc:
                log.warning("restoring %s failed (%s: %s); trying an older one", path,
                            type(exc).__name__, exc)
                self.model.load_state_dict(snapshot, strict=False)
                self._reset_state()
                continue
            # Anything newer is corrupt or inconsistent with the state we resume from.
            for other_step, other in candidates:
                if other_step > step:
                    other.unlink(missing_ok=True)
            log.info("resuming from %s (step %d)", path, step)
            return step, path
        log.warning("no usable checkpoint for this run in %s; starting fresh and removing %d "
                    "stale checkpoint(s)", self.ckpt_dir, len(candidates))
        for _, path in candidates:
            path.unlink(missing_ok=True)
        (self.ckpt_dir / "latest.json").unlink(missing_ok=True)
        return None, None

    def _save(self, seconds: float) -> Path:
        ckpt = {
            "format": CHECKPOINT_FORMAT, "run_key": self.run_key, "step": self.step,
            "model": self.model_state(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "ema": self.ema.state_dict(),
            "history": self.history, "pending_losses": self._pending, "seconds": seconds,
        }
        path = tensorfile.save(self.ckpt_dir / f"step-{self.step}.safetensors", ckpt)
        # The pointer goes second so that it never names a file that is not all there.
        write_json_atomic(self.ckpt_dir / "latest.json",
                          {"step": self.step, "file": path.name, "run_key": self.run_key})
        kept = 0
        for step, other in self._checkpoints():
            if step <= self.step and kept < KEEP_CHECKPOINTS:
                kept += 1
            else:
                other.unlink(missing_ok=True)
        return path

    # -- loop --------------------------------------------------------------------------

    def _clean_temp_files(self) -> None:
        # Leftovers of atomic writes a killed run did not finish.
        for pattern, folder in ((".*.tmp", self.ckpt_dir), (".curve.csv.*.tmp", self.out_dir)):
            if folder.is_dir():
                for tmp in folder.glob(pattern):
                    tmp.unlink(missing_ok=True)

    def run(self) -> TrainResult:
        p = self.params
        self._clean_temp_files()
        resumed_from, checkpoint = self._resume()
        # Rows a killed run logged past its last checkpoint are dropped here.
        _write_curve(self.curve_path, self.history)

        trainable = [q for _, q in self.trainable]
        dev = self.generator_device
        fork_devices = [] if dev.type == "cpu" else [dev.index or 0]
        fork_type = None if dev.type == "cpu" else dev.type
        was_training = self.model.training
        self.model.train()
        t_start = time.perf_counter()
        compute_s, steps_run = 0.0, 0
        interval_s, interval_steps = 0.0, 0
        try:
            while self.step < p.steps:
                step = self.step
                t0 = time.perf_counter()
                batch = self.make_batch(step)
                gen_seed, global_seed = _step_seeds(p.seed, step)
                generator = torch.Generator(device=dev).manual_seed(gen_seed)
                lr = self.scheduler.get_last_lr()[0]
                self.optimizer.zero_grad(set_to_none=True)
                with torch.random.fork_rng(devices=fork_devices, device_type=fork_type):
                    torch.manual_seed(global_seed)
                    loss = self.loss_fn(self.model, batch, generator)
                    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                        raise TypeError("loss_fn must return a scalar tensor")
                    loss.backward()
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(f"loss is {value} at step {step}")
                nn.utils.clip_grad_norm_(trainable, p.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.ema.update()
                self.step += 1
                self._pending.append(value)
                dt = time.perf_counter() - t0
                compute_s += dt
                steps_run += 1
                interval_s += dt
                interval_steps += 1

                done = self.step == p.steps
                if self.step % p.log_every == 0 or done:
                    sps = interval_steps * self.samples_per_step / interval_s if interval_s > 0 else 0.0
                    row = {"step": self.step, "loss": sum(self._pending) / len(self._pending), "lr": lr}
                    self.history.append(row)
                    self._pending = []
                    interval_s, interval_steps = 0.0, 0
                    _write_curve(self.curve_path, self.history)
                    log.info("step %d/%d loss %.5g lr %.3g %.1f samples/s", self.step, p.steps,
                             row["loss"], lr, sps)
                if self.step % p.checkpoint_every == 0 or done:
                    checkpoint = self._save(self._seconds_before + time.perf_counter() - t_start)
        finally:
            self.model.train(was_training)

        seconds = time.perf_counter() - t_start
        samples_per_s = steps_run * self.samples_per_step / compute_s if compute_s > 0 else None
        if steps_run:
            log.info("trained %d steps in %.1f s: %.1f samples/s", steps_run, seconds,
                     samples_per_s or 0.0)
        return TrainResult(step=self.step, loss=self.history[-1]["loss"] if self.history else None,
                           seconds=seconds, samples_per_s=samples_per_s,
                           resumed_from=resumed_from, checkpoint=checkpoint,
                           curve=self.curve_path)
