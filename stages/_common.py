"""Shared entry-point plumbing for `python -m stages.<name>` (what dvc.yaml runs)."""
from __future__ import annotations

import argparse
import logging
import os
import sys

# Offline and quiet by default; set before prefect / transformers are imported.
for key, value in {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}.items():
    os.environ.setdefault(key, value)

from dreamline.config import ParamsError, load_params  # noqa: E402


def run_stage(name: str, flow_ref: str, before=None, options: dict | None = None) -> None:
    """Validate params, then import and run the flow `module:function` with them.
    `options`: extra command-line flags (argparse kwargs) passed to the flow by their dest."""
    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}")
    parser.add_argument("--params", default="params.yaml")
    for flag, kwargs in (options or {}).items():
        parser.add_argument(flag, **kwargs)
    args = parser.parse_args()
    flow_kwargs = {kwargs["dest"]: getattr(args, kwargs["dest"]) for kwargs in (options or {}).values()}
    try:
        params = load_params(args.params)  # fail fast, before any work or server start
    except ParamsError as err:
        print(f"stage {name}: {err}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for noisy in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if before is not None:
        before(params)
    import importlib

    module, func = flow_ref.split(":")
    from flows.runners import shared_api_server, with_runner

    flow = getattr(importlib.import_module(module), func)
    with shared_api_server(params.execution):
        summary = with_runner(flow, params.execution)(params, **flow_kwargs)
    print(f"stage {name}: {summary}")


def require_model(path: str, key: str) -> None:
    """Stop before any work when a model folder a stage starts from is missing, or holds its
    weights only in pickle formats (which can run code when loaded)."""
    from pathlib import Path

    from dreamline.models.weights import UnsafeWeightsError, require_safetensors

    if not (Path(path) / "model_index.json").is_file():
        print(f"{key}: {path} has no model_index.json (run the stage that trains it, or point "
              f"{key} at a diffusers folder)", file=sys.stderr)
        sys.exit(2)
    try:
        require_safetensors(path, key)
    except UnsafeWeightsError as err:
        print(err, file=sys.stderr)
        sys.exit(2)
