"""Where torch work runs and at what precision (params: compute.device, compute.precision).

Random numbers are drawn on the CPU, from CPU generators seeded from (seed, step), and moved
to the device (`randn`, `rand`, `randint` here): a run draws the same numbers on every
device, and the CPU fp32 path keeps its bit-exact resume guarantee and its outputs.

Precision is autocast: trainable weights (a UNet being fine-tuned, a 3D representation)
stay fp32 with fp32 optimiser state, matmuls and convolutions run in bf16/fp16 inside
`autocast`; frozen models (priors, evaluators, text encoders) may be cast whole with
`frozen_dtype`. fp32 is a no-op everywhere, so the CPU default computes what it always did.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceError(ValueError):
    """A device or precision this machine cannot run; the message says which and why."""


def resolve_device(name: str = "auto") -> torch.device:
    """`auto`: the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"compute.device {name!r}: this machine has no CUDA device "
                              f"(use auto or cpu)")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"compute.device {name!r}: only {torch.cuda.device_count()} CUDA "
                              f"device(s) here")
    return device


def check_precision(device: torch.device, precision: str) -> None:
    if precision not in DTYPES:
        raise DeviceError(f"compute.precision {precision!r}: one of {sorted(DTYPES)}")
    if precision == "fp16" and device.type == "cpu":
        raise DeviceError("compute.precision fp16 needs a CUDA device; on the CPU use bf16 or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"compute.precision bf16: {torch.cuda.get_device_name(device)} has no bf16")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the code inside; fp32 changes nothing."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def frozen_dtype(precision: str) -> torch.dtype:
    """The dtype a frozen model (prior, evaluator, text encoder) may be stored in."""
    return DTYPES[precision]


def describe(device: torch.device, precision: str) -> dict:
    """What ran the work, for run.json (not DVC-tracked: the device is not an input)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device": str(device), "device_name": name, "precision": precision}


def _on(t: torch.Tensor, device: torch.device | None) -> torch.Tensor:
    return t if device is None or t.device == device else t.to(device)


def randn(shape, generator: torch.Generator | None, device: torch.device | None = None,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal draws from a CPU generator, on `device`."""
    return _on(torch.randn(shape, generator=generator, dtype=dtype), device)


def rand(shape, generator: torch.Generator | None, device: torch.device | None = None) -> torch.Tensor:
    return _on(torch.rand(shape, generator=generator), device)


def randint(low: int, high: int, shape, generator: torch.Generator | None,
            device: torch.device | None = None) -> torch.Tensor:
    return _on(torch.randint(low, high, shape, generator=generator), device)


@contextlib.contextmanager
def on_device(device: torch.device, precision: str) -> Iterator[None]:
    """Checks the pair, then autocasts the block."""
    check_precision(device, precision)
    with autocast(device, precision):
        yield
