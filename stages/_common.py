"""Shared entry-point plumbing for `python -m stages.<name>` (what dvc.yaml runs)."""
from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import sys
import time

# The stage's wall clock starts here: `stages/<name>.py` imports this module first, before
# torch, prefect or the flow (the interpreter's own start, some 20 ms, is not counted).
_STARTED = time.time()

# Offline and quiet by default; set before prefect / transformers are imported.
for key, value in {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    # PyOpenGL fixes its platform at first import; headless machines have no display.
    # setdefault keeps an explicit choice such as "egl" on GPU hosts.
    "PYOPENGL_PLATFORM": "osmesa",
}.items():
    os.environ.setdefault(key, value)

# Process-wide settings are made here, at the entry point, never inside the library.
# The torch thread count of each stage's process (it changes float summation order, so it
# is a parameter of the stage's own section and a DVC dependency with it).
STAGE_THREADS = {
    "train_base": "train_base.train.threads", "train_mv": "train_mv.train.threads",
    "train_mv_3d": "train_mv_3d.train.threads", "train_agp": "train_agp.train.threads",
    "dreambooth": "dreambooth.train.threads", "train_depth": "train_depth.train.threads",
    "train_caa": "train_caa.train.threads", "distill": "distill.threads", "ablation": "distill.threads",
    "train_evaluator": "evaluator.threads", "evaluate": "evaluate.threads", "evaluate_studies": "evaluate.threads",
    "texture": "texture.threads",
}
# Score distillation drives UNet activations into subnormal floats, which x86 computes ~3x
# slower (measured: 0.94 -> 2.85 it/s for mv-sds+agp); flushing them to zero is deterministic
# and below any precision SDS cares about. Only where the distillation loop runs: elsewhere
# it would change trained weights.
FLUSH_DENORMAL = frozenset({"distill", "ablation"})


def configure_process(stage: str, params) -> None:
    """Thread count and float mode of a stage's process, from its params."""
    import torch

    key = STAGE_THREADS.get(stage)
    if key:
        value = params
        for part in key.split("."):
            value = getattr(value, part)
        torch.set_num_threads(int(value))
    if stage in FLUSH_DENORMAL:
        torch.set_flush_denormal(True)

from dreamline.config import ParamsError, load_params  # noqa: E402


def check_compute(stage: str, params) -> None:
    """A torch stage stops here, like on an invalid params file (exit 2, the key named), when
    `compute.device` / `compute.precision` cannot run on this machine (DeviceError)."""
    if stage in STAGE_THREADS or (stage == "caption" and params.caption.captioner_type == "image"):
        from dreamline.device import check_precision, resolve_device

        check_precision(resolve_device(params.compute.device), params.compute.precision)


# One JSON line per stage process: {stage, argv, params, started (ISO UTC), seconds, rc, ok}.
# Relative to the working dir (the project root under DVC), beside data/ and never inside it:
# DVC outputs stay pure functions of their inputs. Git-ignored; `python scripts/stage_times.py`
# reads it. DREAMLINE_STAGE_TIMES names another file (the tests point it at a temp dir).
STAGE_TIMES = "logs/stage_times.jsonl"


def record_stage_time(name: str, argv: list[str], params_path: str, started: float, rc: int,
                      path: str | None = None) -> None:
    """Append this stage run's line with one write (O_APPEND: lines of concurrent stages never
    interleave). Never fails the stage: a log that cannot be written is only reported."""
    from datetime import datetime, timezone

    path = path or os.environ.get("DREAMLINE_STAGE_TIMES") or STAGE_TIMES
    line = json.dumps({
        "stage": name, "argv": list(argv), "params": params_path,
        "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="milliseconds"),
        "seconds": round(time.time() - started, 3), "rc": rc, "ok": rc == 0}) + "\n"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError as err:
        print(f"stage {name}: could not record its time in {path}: {err}", file=sys.stderr)


# What run_stage leaves for the line written at exit (record_stage_time's arguments).
_AT_EXIT: dict = {}


def _record_at_exit() -> None:
    if _AT_EXIT.pop("pid", None) == os.getpid():     # not in a forked or spawned worker
        record_stage_time(**_AT_EXIT)


# Registered on import, before prefect registers anything: atexit runs its handlers last in,
# first out, so this runs after prefect's (the temporary server's shutdown, log and event
# flushes) and the time recorded is nearly the whole process's, as DVC waits for it.
atexit.register(_record_at_exit)


def _exit_code(err: SystemExit) -> int:
    return err.code if isinstance(err.code, int) else (0 if err.code is None else 1)


def run_stage(name: str, flow_ref: str, before=None, options: dict | None = None) -> None:
    """Validate params, then import and run the flow `module:function` with them.
    `options`: extra command-line flags (argparse kwargs) passed to the flow by their dest.
    The process's wall time and exit code are recorded when it exits (record_stage_time)."""
    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}")
    parser.add_argument("--params", default="params.yaml")
    for flag, kwargs in (options or {}).items():
        parser.add_argument(flag, **kwargs)
    args = parser.parse_args()     # a bad command line (or --help) is no stage run: not recorded
    rc = 1                         # an exception that escapes ends the process with 1
    try:
        _run_stage(name, flow_ref, before, options, args)
        rc = 0
    except SystemExit as err:
        rc = _exit_code(err)
        raise
    except KeyboardInterrupt:
        rc = 130
        raise
    finally:
        _AT_EXIT.update(pid=os.getpid(), name=name, argv=sys.argv[1:], params_path=args.params,
                        started=_STARTED, rc=rc)


def _run_stage(name: str, flow_ref: str, before, options: dict | None, args) -> None:
    flow_kwargs = {kwargs["dest"]: getattr(args, kwargs["dest"]) for kwargs in (options or {}).values()}
    try:
        params = load_params(args.params)  # fail fast, before any work or server start
        check_compute(name, params)
    except ValueError as err:              # ParamsError, or dreamline.device.DeviceError
        print(f"stage {name}: {err}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for noisy in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if before is not None:
        before(params)
    configure_process(name, params)
    import importlib

    module, func = flow_ref.split(":")
    from flows.runners import shared_api_server, with_runner

    flow = getattr(importlib.import_module(module), func)
    with shared_api_server(params.execution):
        summary = with_runner(flow, params.execution)(params, **flow_kwargs)
    print(f"stage {name}: {summary}")


def use_compute(params) -> None:
    """A training stage's `before=`: params `compute:` exported for its training code, which
    reads it back (dreamline.training.loop.Compute.from_env) in this process, in a Dask
    worker or in the data-parallel ranks it launches: they all inherit the environment."""
    os.environ.update({"DREAMLINE_COMPUTE_DEVICE": params.compute.device,
                       "DREAMLINE_COMPUTE_PRECISION": params.compute.precision,
                       "DREAMLINE_COMPUTE_PROCESSES": str(params.compute.processes)})


def require_model(path: str, key: str) -> None:
    """Stop before any work when a model folder a stage starts from is missing, or holds its
    weights only in pickle formats (which can run code when loaded)."""
    from pathlib import Path

    if not (Path(path) / "model_index.json").is_file():
        print(f"{key}: {path} has no model_index.json (run the stage that trains it, or point "
              f"{key} at a diffusers folder)", file=sys.stderr)
        sys.exit(2)
    _require_safe_weights(path, key)


def _require_safe_weights(folder, key: str) -> None:
    """Exit 2 with the reason when `folder` holds weights only in pickle formats."""
    from dreamline.models.weights import UnsafeWeightsError, require_safetensors

    try:
        require_safetensors(folder, key)
    except UnsafeWeightsError as err:
        print(err, file=sys.stderr)
        sys.exit(2)


def require_inception_weights(path: str | None, key: str) -> None:
    """Stop before any work when FID's Inception weights are named but are not a readable
    safetensors file (null: EfficientNet-Lite0, nothing to check)."""
    if path is None:
        return
    from pathlib import Path

    if Path(path).suffix != ".safetensors" or not Path(path).is_file():
        print(f"{key}: {path} is not a .safetensors file here (README: what to download, and how to "
              f"convert the published .pth once)", file=sys.stderr)
        sys.exit(2)


def require_evaluator(folder: str, key: str = "evaluate.evaluator") -> None:
    """Stop before any work unless `folder` is an evaluator folder (train_evaluator's, or a
    transformers CLIP folder) whose weights are safetensors."""
    from pathlib import Path

    ev = Path(folder)
    if not ((ev / "evaluator.json").is_file() or (ev / "config.json").is_file()):
        print(f"{key}: {ev} is not an evaluator folder (run train_evaluator)", file=sys.stderr)
        sys.exit(2)
    _require_safe_weights(ev, key)


def require_models(models: dict[str, str], key: str) -> None:
    """require_model for each named folder of an `image_quality.models` block."""
    for name, path in models.items():
        require_model(path, f"{key}.{name}")
