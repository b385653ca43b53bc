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

Scale (Hugging Face accelerate; :class:`Compute`, params ``compute:``): model, optimizer and
LR scheduler are prepared by an ``accelerate.Accelerator`` on ``compute.device`` with
``compute.precision`` autocast. A step's batch (``batch_size``) is one global batch: over N
data-parallel processes and ``grad_accumulation`` micro-batches it is cut into
P = N x grad_accumulation equal parts, rank r computing parts r*k .. r*k+k-1. With P > 1 the
loop calls ``make_batch(step, part)`` (a :class:`Part`): the part is a slice of the global
batch's indices (the same ``batch_indices(seed, step, ...)`` on every rank), and ``loss_fn``
draws its noise and timesteps for the whole global batch from the (seed, step) generator
and keeps its part's slice (``dreamline.training.objectives.draw_noise``), so the parts
together see exactly the samples and noise of the single-process step. Gradients are
averaged over ranks (DDP) and micro-batches, i.e. the gradient of the global batch's mean
loss: N processes follow the single-process loss curve and weights within float tolerance
(summation order differs). The logged loss is the mean over all parts, gathered, so every
rank logs, and averages into its EMA, the same numbers. Rank 0 alone writes checkpoints and
curve.csv; every rank resumes from the same checkpoint. One process, fp32, one part is the
single-process loop as it always was, bit for bit.

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
import copy
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import re
import socket
import sys
import threading
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
# TrainingParams fields that cannot change the weights at a given step, so the loop lets a
# run whose params differ only in these resume: with warmup-then-constant LR the trajectory
# does not depend on the total step count (a cosine schedule puts `steps` back into the key).
# The training stages are stricter: their run key (dreamline.training.common.run_key) holds
# `steps`, so a stage given more steps trains again from step 0.
# gradient_checkpointing recomputes the same activations: memory, not numbers.
_NOT_IN_RUN_KEY = frozenset({"steps", "checkpoint_every", "sample_captions", "sample_steps",
                             "guidance_scale", "gradient_checkpointing"})


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """The LR multiplier at 0-based `step`: linear warmup reaching 1 at step warmup - 1, then
    1 (constant) or a cosine from 1 down to 0 at step `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / span)))


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
        skip = frozenset()
        if isinstance(obj, TrainingParams):
            # A decaying LR depends on the total step count.
            skip = _NOT_IN_RUN_KEY - ({"steps"} if obj.lr_schedule != "constant" else set())
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


# -- compute: device, precision, processes -------------------------------------------------

# How a stage's entry point hands params `compute:` to the training code it runs (in its own
# process, a Dask worker it starts, or the ranks it launches): the environment, which all of
# them inherit, as `accelerate launch` hands its settings to the processes it starts.
COMPUTE_ENV = {"device": "DREAMLINE_COMPUTE_DEVICE", "precision": "DREAMLINE_COMPUTE_PRECISION",
               "processes": "DREAMLINE_COMPUTE_PROCESSES"}
_MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


@dataclass(frozen=True)
class Compute:
    """Where a training run computes (params ``compute:``): ``device`` auto | cpu | cuda |
    cuda:N, ``precision`` fp32 | bf16 | fp16 (autocast; weights and optimiser state stay
    fp32), ``processes`` data-parallel processes (one per GPU; 1 = no launcher). A stage
    (dreamline.training.template) launches that many ranks; a Trainer trains as one rank of
    the group its process belongs to (:func:`launch`, ``accelerate launch``, torchrun)."""
    device: str = "auto"
    precision: str = "fp32"
    processes: int = 1

    @classmethod
    def from_env(cls) -> "Compute":
        """What the entry point exported (stages._common.use_compute); the params defaults
        where it exported nothing."""
        default = cls()
        return cls(device=os.environ.get(COMPUTE_ENV["device"], default.device),
                   precision=os.environ.get(COMPUTE_ENV["precision"], default.precision),
                   processes=int(os.environ.get(COMPUTE_ENV["processes"], default.processes)))

    def torch_device(self) -> torch.device:
        """The device, checked against this machine and the precision (DeviceError if not)."""
        from dreamline.device import check_precision, resolve_device

        device = resolve_device(self.device)
        check_precision(device, self.precision)
        return device


def launched_rank() -> tuple[int, int] | None:
    """(rank, world size) when this process is one of several data-parallel ranks (started by
    :func:`launch`, ``accelerate launch`` or torchrun), else None."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and "RANK" in os.environ:
        return int(os.environ["RANK"]), world
    return None


def _accelerator(compute: Compute, grad_accumulation: int):
    """An Accelerator for `compute`. accelerate keeps its state per process (a singleton):
    a single process may train on another device or precision than its previous run, so
    that state is reset then; a launched rank keeps its process group."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs

    device = compute.torch_device()
    cpu = device.type == "cpu"
    mixed = _MIXED_PRECISION[compute.precision]
    if launched_rank() is None:
        if PartialState._shared_state and PartialState._shared_state.get("_cpu") != cpu:
            AcceleratorState._reset_state(reset_partial_state=True)
        if not cpu and device.index is not None:
            torch.cuda.set_device(device)
    elif compute.device not in ("auto", "cpu", "cuda") and not cpu:
        raise ValueError(f"compute.device {compute.device!r}: with several processes each rank takes "
                         f"its own GPU (cuda:<local rank>); use auto or cuda")
    if AcceleratorState._shared_state and AcceleratorState._shared_state.get("_mixed_precision") != mixed:
        AcceleratorState._reset_state(reset_partial_state=False)
    threads = torch.get_num_threads()
    accelerator = Accelerator(
        cpu=cpu, mixed_precision=mixed, gradient_accumulation_steps=grad_accumulation,
        # The batch a step names is the global batch, split over the ranks: the LR schedule
        # steps once per optimiser step, whatever the number of processes.
        dataloader_config=DataLoaderConfiguration(split_batches=True), step_scheduler_with_optimizer=True,
        # Parameters a step does not use (the camera MLP in a 2D batch) stay without a
        # gradient on every rank, as in one process.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    # accelerate sets its own thread count in a multi-CPU rank; the stage's is a parameter.
    torch.set_num_threads(threads)
    return accelerator


@dataclass(frozen=True)
class Part:
    """Part ``index`` of ``count`` equal, contiguous parts of a step's global batch: what one
    rank computes in one micro-batch. ``count`` 1 is the whole batch."""
    index: int = 0
    count: int = 1

    def span(self, units: int) -> tuple[int, int, int] | None:
        """(first, end, units): this part's units of a global batch of `units` (objects, view
        sets, samples); None for the whole batch."""
        if self.count == 1:
            return None
        if units % self.count:
            raise ValueError(f"a batch of {units} does not split into {self.count} equal parts "
                             f"(compute.processes x train.grad_accumulation); choose a batch_size "
                             f"that {self.count} divides")
        size = units // self.count
        return self.index * size, (self.index + 1) * size, units

    def take(self, seq):
        """This part's slice of a sequence that holds the global batch, one item per unit."""
        span = self.span(len(seq))
        return seq if span is None else seq[span[0]:span[1]]


WHOLE = Part()


def usable_processes(batch_units: int, grad_accumulation: int, processes: int) -> int:
    """The most processes, up to `processes`, over which a step's batch of `batch_units`
    splits into equal parts of `grad_accumulation` micro-batches each (DreamBooth's batch of
    4 images on 8 GPUs: 4). Where grad_accumulation does not divide the batch, `processes`
    (the first step then says why it cannot split)."""
    if batch_units % grad_accumulation:
        return processes
    per_micro = batch_units // grad_accumulation
    return max(d for d in range(1, processes + 1) if per_micro % d == 0)


def _part_seed(global_seed: int, part: Part) -> int:
    # The global RNG of one part of a step (dropout): its own stream per part.
    state = np.random.SeedSequence([global_seed, part.index, part.count, _STEP_SEED_TAG]).generate_state(
        1, dtype=np.uint64)
    return int(state[0]) >> 1


def _to_device(obj: Any, device: torch.device) -> Any:
    """Tensors of a batch (tensors, dataclasses, tuples, lists, dicts) moved to `device`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _to_device(getattr(obj, f.name), device)
                                           for f in dataclasses.fields(obj) if f.init})
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


def _place(module: nn.Module, device: torch.device) -> None:
    """`module`'s parameters and buffers moved to `device` in place (what ``module.to`` does,
    without calling ``_apply``, which some modules here define for something else: CAAModel)."""
    with torch.no_grad():
        for sub in module.modules():
            for param in sub._parameters.values():
                if param is not None and param.device != device:
                    param.data = param.data.to(device)
            for name, buf in sub._buffers.items():
                if buf is not None and buf.device != device:
                    sub._buffers[name] = buf.to(device)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


class _Objective(nn.Module):
    """The trained model and its loss as one module, which accelerate prepares: DDP then
    sees every use of the parameters, also where a loss runs them through a frozen model's
    hooks (CAA) or reads them directly (DreamBooth's preservation term), and mixed precision
    autocasts the whole loss."""

    def __init__(self, model: nn.Module, loss_fn: Callable):
        super().__init__()
        self.model = model
        object.__setattr__(self, "loss_fn", loss_fn)   # never a submodule

    def forward(self, batch: Any, generator: torch.Generator) -> torch.Tensor:
        return self.loss_fn(self.model, batch, generator)


def _checkpointing(modules: Iterable[nn.Module], enable: bool) -> int:
    """Switch diffusers' gradient checkpointing on the models among `modules` that support
    it (UNets); returns how many."""
    count = 0
    for module in modules:
        for sub in module.modules():
            supports = getattr(sub, "_supports_gradient_checkpointing", False)
            if supports and hasattr(sub, "enable_gradient_checkpointing"):
                if enable:
                    sub.enable_gradient_checkpointing()
                else:
                    sub.disable_gradient_checkpointing()
                count += 1
                break   # it switches its own submodules
    return count


# -- launching ranks ---------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _watch_parent(parent: int) -> None:
    # A rank whose launcher is gone (killed) would wait in a collective until its timeout.
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="dreamline-parent-watch", daemon=True).start()


def _rank_main(index: int, fn: Callable, args: tuple, world: int, port: int, cuda: bool, threads: int,
               results, parent: int, log_level: int | None) -> None:
    if log_level is not None:   # the launcher logs: so does each rank, named
        logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s [rank {index}] %(message)s")
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(index),
                       "LOCAL_RANK": str(index), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
                       "OMP_NUM_THREADS": str(threads)})
    if not cuda and sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")   # one machine: loopback, as accelerate's own launcher
    torch.set_num_threads(threads)
    _watch_parent(parent)
    if cuda:
        torch.cuda.set_device(index)
    result = fn(*args)
    if index == 0:
        results.put(result)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def launch(fn: Callable, args: tuple = (), *, processes: int, device: str = "auto",
           threads: int | None = None) -> Any:
    """Run ``fn(*args)`` in `processes` fresh (spawned) processes on this machine, ranks
    0..N-1 of one data-parallel group (gloo on the CPU, NCCL on GPUs: rank r on cuda:r), and
    return rank 0's result. Each rank runs `threads` torch threads (default: this process's).
    A rank that fails or is killed stops the others and raises here; a rank whose launcher
    dies exits."""
    import torch.multiprocessing as mp

    from dreamline.device import resolve_device

    cuda = resolve_device(device).type == "cuda"
    if cuda and processes > torch.cuda.device_count():
        raise ValueError(f"compute.processes {processes}: this machine has {torch.cuda.device_count()} GPU(s)")
    threads = int(threads or torch.get_num_threads())
    root = logging.getLogger()
    log_level = root.getEffectiveLevel() if root.handlers else None
    results = mp.get_context("spawn").SimpleQueue()
    context = mp.start_processes(_rank_main, nprocs=processes, join=False, start_method="spawn",
                                 args=(fn, tuple(args), processes, _free_port(), cuda, threads, results,
                                       os.getpid(), log_level))
    result = None
    while True:
        finished = context.join(timeout=0.5)
        while not results.empty():   # read while they run: a large result fills the pipe
            result = results.get()
        if finished:
            return result


# -- the loop ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainResult:
    step: int                       # steps done, params.steps on success
    loss: float | None              # mean loss of the last logged interval
    seconds: float                  # wall time of this call (this process)
    samples_per_s: float | None     # over this process's steps (the global batch); None if it ran none
    resumed_from: int | None        # checkpoint step this call started from
    checkpoint: Path | None         # the checkpoint holding the final state
    curve: Path
    compute: dict | None = None     # device, device_name, precision, processes (for run.json)


def _write_curve(path: Path, rows: list[dict[str, Any]]) -> None:
    lines = [",".join(CURVE_COLUMNS)]
    for r in rows:
        # repr keeps loss and lr exact, so curves of equal runs are byte-equal there.
        lines.append(f"{r['step']},{r['loss']!r},{r['lr']!r}")
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode())


class Trainer:
    """AdamW + linear warmup then constant LR + grad-norm clipping + EMA, with checkpoints,
    through an ``accelerate.Accelerator`` (device, mixed precision, data-parallel ranks,
    gradient accumulation: see the module's docstring).

    Only parameters with ``requires_grad`` are optimised, averaged and checkpointed (with
    all persistent buffers). ``run()`` resumes from the newest usable checkpoint whose
    run key matches; it leaves the model holding the final trained (non-EMA) weights —
    use ``trainer.ema.copy_to()`` or ``with trainer.ema.swapped():`` for the EMA weights —
    on the training device (``release()`` brings it back to the CPU).

    `loss_modules`: frozen modules `loss_fn` runs besides `model` (CAA's UNet; reference
    weights), moved to the device with it and gradient-checkpointed with it.
    """

    def __init__(self, model: nn.Module, params: TrainingParams, out_dir: str | Path,
                 make_batch: Callable[..., Any],
                 loss_fn: Callable[[nn.Module, Any, torch.Generator], torch.Tensor], *,
                 run_key: str, samples_per_step: int | None = None,
                 generator_device: str | torch.device = "cpu", compute: Compute | None = None,
                 loss_modules: Sequence[nn.Module] = ()):
        self.model = model
        self.params = params
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.curve_path = self.out_dir / "curve.csv"
        self.make_batch = make_batch
        self.loss_fn = loss_fn
        self.samples_per_step = int(samples_per_step or params.batch_size)
        self.generator_device = torch.device(generator_device)
        self.compute = compute if compute is not None else Compute.from_env()
        # A checkpoint goes on only under the precision that wrote it (the device and the
        # number of processes agree within float tolerance: a run may resume across them).
        self.run_key = str(run_key) if self.compute.precision == "fp32" else f"{run_key}@{self.compute.precision}"
        self.accelerator = acc = _accelerator(self.compute, params.grad_accumulation)
        # (accelerate names the CPU of a multi-CPU rank cpu:0; it is the CPU)
        self.device = torch.device("cpu") if acc.device.type == "cpu" else acc.device
        self.rank, self.world = acc.process_index, acc.num_processes
        self.is_main = acc.is_main_process
        self.parts = self.world * params.grad_accumulation
        self.loss_modules = list(loss_modules)
        self.trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not self.trainable:
            raise ValueError("model has no parameters with requires_grad")
        self._frozen = {n for n, p in model.named_parameters(remove_duplicate=False)
                        if not p.requires_grad}
        if self.device.type != "cpu":
            for module in (model, *self.loss_modules):
                _place(module, self.device)
        # DDP over the ranks, autocast around the loss (placed above: on the CPU nothing moves).
        self.objective = acc.prepare_model(_Objective(model, loss_fn), device_placement=False)
        self._checkpointed = 0
        if params.gradient_checkpointing:
            self._checkpointed = _checkpointing([model, *self.loss_modules], True)
            if not self._checkpointed:
                log.warning("train.gradient_checkpointing: no model here supports it (diffusers "
                            "enable_gradient_checkpointing); training without")
        raw = torch.optim.AdamW([q for _, q in self.trainable], lr=params.lr, weight_decay=params.weight_decay)
        warmup, total, kind = params.warmup_steps, params.steps, params.lr_schedule
        schedule = LambdaLR(raw, lambda s: lr_factor(s, warmup, total, kind))
        self._initial = (copy.deepcopy(raw.state_dict()), copy.deepcopy(schedule.state_dict()))
        self._raw_optimizer = raw
        self.optimizer = acc.prepare_optimizer(raw)
        self.scheduler = acc.prepare_scheduler(schedule)
        self._reset_state(first=True)

    # -- state -------------------------------------------------------------------------

    def _reset_state(self, first: bool = False) -> None:
        if not first:   # a restore failed half-way: back to a fresh optimiser and schedule
            self._raw_optimizer.load_state_dict(copy.deepcopy(self._initial[0]))
            self.scheduler.load_state_dict(copy.deepcopy(self._initial[1]))
        self.ema = EMA(self.trainable, self.params.ema_decay)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._pending: list[float] = []   # losses since the last curve row
        self._seconds_before = 0.0        # training time of earlier processes

    def model_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps of the model: trainable parameters and buffers."""
        return {k: v for k, v in self.model.state_dict().items() if k not in self._frozen}

    def describe(self) -> dict[str, Any]:
        """What ran the training, for run.json (not DVC-tracked: agrees within tolerance)."""
        from dreamline.device import describe

        return {**describe(self.device, self.compute.precision), "processes": self.world}

    def release(self) -> None:
        """The model and loss modules back on the CPU (held-out evaluation, saving), gradient
        checkpointing off, accelerate's references dropped."""
        if self._checkpointed:
            _checkpointing([self.model, *self.loss_modules], False)
            self._checkpointed = 0
        if self.device.type != "cpu":
            for module in (self.model, *self.loss_modules):
                _place(module, torch.device("cpu"))
        self.objective = None
        self.accelerator.free_memory()

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
        if "scaler" in ckpt and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(ckpt["scaler"])
        self.ema.load_state_dict(ckpt["ema"])
        self.step = int(ckpt["step"])
        self.history = [dict(r) for r in ckpt["history"]]
        self._pending = [float(x) for x in ckpt["pending_losses"]]
        self._seconds_before = float(ckpt["seconds"])

    def _resume(self) -> tuple[int | None, Path | None]:
        """Every rank reads the same files and picks the same checkpoint; rank 0 alone removes
        the ones passed over, once every rank has read."""
        if self.ckpt_dir.is_dir() and self.is_main:
            for legacy in sorted(self.ckpt_dir.iterdir()):
                if _LEGACY_CKPT_RE.match(legacy.name):
                    log.warning("ignoring %s: a pickle checkpoint of an earlier version is never loaded "
                                "(unpickling can run code)", legacy)
        candidates = self._checkpoints()
        chosen: tuple[int, Path] | None = None
        remove: list[Path] = []
        if candidates:
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
                chosen = (step, path)
                # Anything newer is corrupt or inconsistent with the state we resume from.
                remove = [other for other_step, other in candidates if other_step > step]
                log.info("resuming from %s (step %d)", path, step)
                break
            else:
                log.warning("no usable checkpoint for this run in %s; starting fresh and removing %d "
                            "stale checkpoint(s)", self.ckpt_dir, len(candidates))
                remove = [path for _, path in candidates] + [self.ckpt_dir / "latest.json"]
        if self.world > 1:
            steps = self.accelerator.gather(torch.tensor([-1 if chosen is None else chosen[0]],
                                                         device=self.device))
            if len(set(steps.tolist())) != 1:
                raise RuntimeError(f"ranks found different checkpoints to resume from: {steps.tolist()} "
                                   f"(is {self.ckpt_dir} on a filesystem every rank sees?)")
            self.accelerator.wait_for_everyone()   # all have read before anything is removed
        if self.is_main:
            for path in remove:
                path.unlink(missing_ok=True)
        return chosen if chosen is not None else (None, None)

    def _save(self, seconds: float) -> Path:
        path = self.ckpt_dir / f"step-{self.step}.safetensors"
        if not self.is_main:
            return path
        ckpt = {
            "format": CHECKPOINT_FORMAT, "run_key": self.run_key, "step": self.step,
            "model": self.model_state(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "ema": self.ema.state_dict(),
            "history": self.history, "pending_losses": self._pending, "seconds": seconds,
        }
        if self.accelerator.scaler is not None:   # fp16: the loss scale goes on with the run
            ckpt["scaler"] = self.accelerator.scaler.state_dict()
        if self.device.type != "cpu":
            ckpt = _to_cpu(ckpt)
        path = tensorfile.save(path, ckpt)
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

    def _step_loss(self, losses: list[torch.Tensor]) -> float:
        """The step's loss: its one part's, or the mean over every part of every rank
        (gathered in rank order, so each rank computes the same number)."""
        if self.parts == 1:
            return float(losses[0])
        local = torch.stack([x.float() for x in losses]).to(torch.float64)
        every = self.accelerator.gather(local) if self.world > 1 else local
        return float(every.sum()) / every.numel()

    def run(self) -> TrainResult:
        p = self.params
        acc = self.accelerator
        if self.is_main:
            self._clean_temp_files()
        resumed_from, checkpoint = self._resume()
        # Rows a killed run logged past its last checkpoint are dropped here.
        if self.is_main:
            _write_curve(self.curve_path, self.history)

        trainable = [q for _, q in self.trainable]
        dev = self.generator_device
        # The global RNG (dropout) is seeded per step on the device that computes.
        rng_device = self.device if self.device.type != "cpu" else dev
        fork_devices = [] if rng_device.type == "cpu" else [rng_device.index or 0]
        fork_type = None if rng_device.type == "cpu" else rng_device.type
        k = p.grad_accumulation
        was_training = self.model.training
        self.model.train()
        t_start = time.perf_counter()
        compute_s, steps_run = 0.0, 0
        interval_s, interval_steps = 0.0, 0
        try:
            while self.step < p.steps:
                step = self.step
                t0 = time.perf_counter()
                gen_seed, global_seed = _step_seeds(p.seed, step)
                lr = self.scheduler.get_last_lr()[0]
                self._raw_optimizer.zero_grad(set_to_none=True)
                losses = []
                for micro in range(k):
                    part = Part(self.rank * k + micro, self.parts)
                    batch = self.make_batch(step) if self.parts == 1 else self.make_batch(step, part)
                    if self.device.type != "cpu":
                        batch = _to_device(batch, self.device)
                    # The same (seed, step) generator for every part: each draws the global
                    # batch's noise and keeps its own slice.
                    generator = torch.Generator(device=dev).manual_seed(gen_seed)
                    with acc.accumulate(self.objective), \
                            torch.random.fork_rng(devices=fork_devices, device_type=fork_type):
                        torch.manual_seed(global_seed if self.parts == 1 else _part_seed(global_seed, part))
                        loss = self.objective(batch, generator)
                        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                            raise TypeError("loss_fn must return a scalar tensor")
                        acc.backward(loss)
                    losses.append(loss.detach())
                value = self._step_loss(losses)
                if not math.isfinite(value):
                    raise FloatingPointError(f"loss is {value} at step {step}")
                acc.clip_grad_norm_(trainable, p.grad_clip)
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
                    if self.is_main:
                        _write_curve(self.curve_path, self.history)
                        log.info("step %d/%d loss %.5g lr %.3g %.1f samples/s", self.step, p.steps,
                                 row["loss"], lr, sps)
                if self.step % p.checkpoint_every == 0 or done:
                    checkpoint = self._save(self._seconds_before + time.perf_counter() - t_start)
        finally:
            self.model.train(was_training)
        if self.world > 1:
            acc.wait_for_everyone()   # rank 0's last checkpoint is written before any rank goes on

        seconds = time.perf_counter() - t_start
        samples_per_s = steps_run * self.samples_per_step / compute_s if compute_s > 0 else None
        if steps_run and self.is_main:
            log.info("trained %d steps in %.1f s: %.1f samples/s", steps_run, seconds,
                     samples_per_s or 0.0)
        return TrainResult(step=self.step, loss=self.history[-1]["loss"] if self.history else None,
                           seconds=seconds, samples_per_s=samples_per_s,
                           resumed_from=resumed_from, checkpoint=checkpoint,
                           curve=self.curve_path, compute=self.describe())
