"""Does a multi-view prior read its cameras? Held-out denoising loss of its val view sets with
the true cameras and with every camera turned about the up axis.

    python benchmarks/camera_use.py data/models/mv [more mv folders] [--base data/models/base] \
        [--json benchmarks/results/camera_use.json]

Each folder is scored by train_mv's own held-out comparison (dreamline.training.multiview.
heldout_comparison: params.yaml's train_mv block, the workspace's data/renders and captions, the
same noise for every row): the base model per view, the multi-view model, the same with
attention per view, and the same with its cameras turned 90 degrees ("multiview_cameras_turned").
Its paired difference to "multiview" (with a 95% interval over view sets) is what the model
loses when told the wrong orientation: about 0 means the camera input is ignored, and then
score distillation cannot fix which way an asset faces (each step's views arrive at a random
azimuth with nothing else to say where the front is).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def score(folder: Path, base: Path, eval_timesteps: int | None = None, t_min: int = 0) -> dict:
    from dreamline.config import load_params
    from dreamline.training.common import load_base_pipeline
    from dreamline.training.multiview import MultiViewTraining, heldout_comparison

    p = load_params(ROOT / "params.yaml").train_mv
    p = p.model_copy(update={"base_model": str(folder),
                             **({"eval_timesteps": eval_timesteps} if eval_timesteps else {})})
    # Only prepare() runs (it loads the folder, the val split and its text bank as train_mv
    # does); nothing is trained or written, so the output and work folders are never made.
    run = MultiViewTraining(p, ROOT / "data/renders", ROOT / "data/captions/captions.parquet",
                            Path("/nonexistent-out"), Path("/nonexistent-work"))
    run.prepare()
    base_unet = load_base_pipeline(base).unet.eval().requires_grad_(False)
    T = run.scheduler.config.num_train_timesteps
    return heldout_comparison(base_unet, run.model.eval(), run.pipe, run.val, run.val_bank, p, run.max_tokens,
                              t_range=(t_min, T))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--base", type=Path, default=ROOT / "data/models/base")
    ap.add_argument("--eval-timesteps", type=int, default=None,
                    help="evenly spaced t of the comparison (train_mv.eval_timesteps unless given); "
                         "24 reaches t = 959, where only the cameras say which way the object faces")
    ap.add_argument("--t-min", type=int, default=0,
                    help="score only t >= this (e.g. 950: where the noisy views hide the object)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    out = {}
    for folder in args.models:
        table = score(folder, args.base, args.eval_timesteps, args.t_min)
        out[str(folder)] = table
        print(folder)
        for name, row in table.items():
            if name.startswith("_"):
                continue
            extra = (f"  minus multiview {row['minus_multiview']:+.6f} {row['ci95']}"
                     if "minus_multiview" in row else "")
            print(f"  {name:<28} {row['loss']:.6f}{extra}")
        turned, mv = table["multiview_cameras_turned"]["per_timestep"], table["multiview"]["per_timestep"]
        print("  cameras turned minus multiview, per t: "
              + " ".join(f"{t}:{turned[t] - mv[t]:+.5f}" for t in mv))
    if args.json:
        from dreamline.atomic import write_json_atomic

        write_json_atomic(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
