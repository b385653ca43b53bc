"""Does a multi-view prior read its cameras? Held-out denoising loss of its val view sets with
the true cameras and with every camera turned about the up axis.

    python benchmarks/camera_use.py data/models/mv [more mv folders] [--base data/models/base] \
        [--eval-timesteps N] [--t-min 950] [--target "a green car" ...] \
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


def target_turn_iou(folder: Path, prompt: str, t: int, draws: int, guidance: float = 7.5,
                    rescale: float = 0.5, threshold: float = 0.15, png: Path | None = None,
                    uncond_cameras: bool = True) -> dict:
    """What mv-sds asks of an asset at timestep t: the prior's guided x0 estimate for the four
    orbit cameras (azimuths 0, 90, 180, 270, as in a distillation step) from a white canvas under
    noise, decoded; its silhouette (pixels more than `threshold` from white) per view and their
    quarter-turn IoU (dreamline.evaluation.asset_metrics.turn_iou), per noise draw. Near 1: the
    prior asks for the same outline from the front and the side, whatever it was told. `png`:
    the targets as a grid, a row per draw, a column per camera."""
    import numpy as np
    import torch

    from dreamline.evaluation.asset_metrics import turn_iou
    from dreamline.guidance.prior import DiffusionPrior
    from dreamline.models.codec import from_latent
    from dreamline.training.common import orbit_cameras

    prior = DiffusionPrior.load(str(folder), device="cpu")
    r, views = prior.resolution, 4
    z0 = prior.encode(torch.ones(views, 3, r, r))
    cams = orbit_cameras(views)
    steps = torch.full((views,), int(t), dtype=torch.long)
    ious, rows = [], []
    for d in range(draws):
        noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(d))
        pred = prior.guided(prior.add_noise(z0, noise, steps), steps, [prompt] * views, [""] * views,
                            guidance, cams, num_views=views, rescale=rescale, uncond_cameras=uncond_cameras)
        image = (from_latent(prior.vae, pred.x0).clamp(-1, 1) + 1) / 2
        rows.append(image)
        masks = ((1.0 - image).abs().amax(1) > threshold).numpy()
        value = turn_iou(masks, [0.0, 90.0, 180.0, 270.0])
        if value is not None:
            ious.append(value)
    if png is not None:
        from dreamline.models.grid import grid_image

        png.parent.mkdir(parents=True, exist_ok=True)
        grid_image(torch.cat(rows).permute(0, 2, 3, 1).numpy(), nrow=views).save(png)
    return {"prompt": prompt, "t": int(t), "draws": draws, "guidance": guidance, "turn_iou": round(float(np.mean(ious)), 4) if ious else None,
            "turn_iou_per_draw": [round(v, 4) for v in ious]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--base", type=Path, default=ROOT / "data/models/base")
    ap.add_argument("--eval-timesteps", type=int, default=None,
                    help="evenly spaced t of the comparison (train_mv.eval_timesteps unless given); "
                         "24 reaches t = 959, where only the cameras say which way the object faces")
    ap.add_argument("--t-min", type=int, default=0,
                    help="score only t >= this (e.g. 950: where the noisy views hide the object)")
    ap.add_argument("--target", action="append", default=[], metavar="PROMPT",
                    help="also the quarter-turn IoU of the x0 targets mv-sds would give this prompt "
                         "(target_turn_iou); repeatable")
    ap.add_argument("--target-t", type=int, nargs="+", default=[980, 800, 500])
    ap.add_argument("--target-draws", type=int, default=8)
    ap.add_argument("--target-cfg", type=float, default=7.5, help="CFG of the x0 targets (mv-sds's default 7.5)")
    ap.add_argument("--target-camera-guidance", action="store_true",
                    help="the targets' unconditional branch without cameras (mv-sds camera_guidance)")
    ap.add_argument("--target-png", type=Path, default=None,
                    help="a folder for the targets as images: <model>_<prompt>_t<t>.png")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    out = {}
    for folder in args.models:
        table = score(folder, args.base, args.eval_timesteps, args.t_min)
        def png(prompt: str, t: int) -> Path | None:
            if args.target_png is None:
                return None
            cam = "_camguide" if args.target_camera_guidance else ""
            return args.target_png / f"{folder.name}_{prompt.replace(' ', '-')}_t{t}_cfg{args.target_cfg:g}{cam}.png"

        targets = [target_turn_iou(folder, prompt, t, args.target_draws, args.target_cfg, png=png(prompt, t),
                                   uncond_cameras=not args.target_camera_guidance)
                   for prompt in args.target for t in args.target_t]
        out[str(folder)] = {**table, **({"_targets": targets} if targets else {})}
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
        for row in targets:
            print(f"  x0 target quarter-turn IoU, {row['prompt']!r} t={row['t']}: {row['turn_iou']}")
    if args.json:
        from dreamline.atomic import write_json_atomic

        write_json_atomic(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
