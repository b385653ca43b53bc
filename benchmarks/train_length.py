"""How a prior's samples improve with training length: one run, exported at several lengths.

    python benchmarks/train_length.py --stage train_base --steps 500 1000 1500 \
        --out /tmp/train-length [--set train.lr_schedule=constant] [--precision fp32]

Trains the stage's model (params.yaml's block for `--stage`, the workspace's data/renders and
captions) through the stage's own code, once per length in `--steps`, each from step 0 with the
same seed (the stage's run key holds `train.steps`, so no length resumes another; with the
constant LR schedule the first N steps of every run are the same steps). Each length's model
folder goes to `<out>/<stage>-<steps>`, its wall time (training, held-out evaluation, export and
samples, this process) to `<out>/times.json`; score the folders with benchmarks/prior_quality.py.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRAINERS = {"train_base": "dreamline.training.base:train_base",
            "train_mv": "dreamline.training.multiview:train_mv",
            "train_agp": "dreamline.training.agp:train_agp"}


def _set(block, assignment: str):
    """`a.b=value` (YAML value) applied to a pydantic params block."""
    import yaml

    key, _, raw = assignment.partition("=")
    head, _, rest = key.partition(".")
    if rest:
        return block.model_copy(update={head: _set(getattr(block, head), f"{rest}={raw}")})
    value = yaml.safe_load(raw)
    return type(block).model_validate({**block.model_dump(), head: value})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=sorted(TRAINERS), default="train_base")
    ap.add_argument("--steps", type=int, nargs="+", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--set", action="append", default=[], help="key=value inside the stage's block")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import importlib

    import torch

    torch.set_num_threads(args.threads)
    from dreamline.config import load_params
    from dreamline.training.loop import Compute

    block = getattr(load_params(ROOT / "params.yaml"), args.stage)
    for assignment in args.set:
        block = _set(block, assignment)
    module, _, name = TRAINERS[args.stage].partition(":")
    train = getattr(importlib.import_module(module), name)
    args.out.mkdir(parents=True, exist_ok=True)
    times = {}
    for steps in sorted(args.steps):
        p = block.model_copy(update={"train": block.train.model_copy(update={"steps": steps})})
        t0 = time.perf_counter()
        summary = train(p, ROOT / "data/renders", ROOT / "data/captions/captions.parquet",
                        args.out / f"{args.stage}-{steps}", args.out / "checkpoints",
                        compute=Compute(device="cpu", precision=args.precision))
        times[steps] = round(time.perf_counter() - t0, 1)
        heldout = summary.get("heldout", {}).get("right_caption", {}).get("loss")
        print(f"{args.stage} {steps} steps: {times[steps]} s , held-out loss {heldout}",
              flush=True)
        (args.out / "times.json").write_text(json.dumps({"stage": args.stage, "set": args.set,
                                                          "precision": args.precision, "seconds": times},
                                                         indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
