"""Distillation benchmark on the embedded default's trained priors (data/models/*).

    python benchmarks/distill.py [--speed-steps 20] [--steps 400] [--every 50] [--prompts 2]
                                 [--out benchmarks/results/distill.json]

1. Speed: iterations per second of every guidance type x representation (params.yaml's
   distill block otherwise) over `--speed-steps` + 3 steps (the first 20% of steps are the
   cheaper albedo-only warm-up, as in a real run).
2. ISM vs SDS convergence (LucidDreamer's claim: ~5K iterations vs ~10K): both run
   `--steps` iterations per prompt from the same seed on the voxel field; every `--every`
   iterations the asset is rendered at 8 fixed views and scored by the base model's
   conditional denoising loss at fixed timesteps and noise, with the other prompts as
   distractors (dreamline.evaluation.diffusion_score: an ELBO proxy and a diffusion
   classifier margin). The per-method training losses are not comparable (different
   estimators), this score is. Reported: iterations each method needs to reach the score
   SDS has at the end.
3. A gallery (benchmarks/results/distill_gallery.png): the 4 fixed views and a textureless
   view of each guidance type (sds and ism from step 2, mv-sds and mv-sds+agp run at the
   params' step count) x prompt, for a reviewer to look at until the evaluation stage scores them.
Needs `dvc repro train_mv train_agp` first. Run alone: concurrent torch jobs on 2 cores
distort every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from dreamline.config import load_params  # noqa: E402
from dreamline.distill.loop import CHECKPOINT, PriorCache, distill  # noqa: E402
from dreamline.distill.sampling import azimuth_ring, fixed_views  # noqa: E402
from dreamline.evaluation.diffusion_score import prompt_fit  # noqa: E402

GUIDANCES = ["sds", "mv-sds", "ism", "agp", "mv-sds+agp"]
REPRESENTATIONS = ["voxel", "gaussians"]
PROMPTS = ["a red chair", "a blue mug", "a green tree", "a yellow car"]
ASSETS: dict = {}   # (guidance, prompt) -> representation at the end of the convergence run


def speed(base, priors, steps: int) -> list[dict]:
    rows = []
    for rep in REPRESENTATIONS:
        for guidance in GUIDANCES:
            p = base.model_copy(update={"guidance_type": guidance, "representation_type": rep,
                                        "representation": {}, "steps": steps + 3, "log_every": 10**6})
            work = Path("/tmp/dreamline-bench-distill") / f"{rep}-{guidance}"
            for f in work.glob("*"):
                f.unlink()
            result = distill(p, "a red chair", priors, work, key=f"speed-{rep}-{guidance}")
            rows.append({"representation": rep, "guidance": guidance, "steps": result.steps,
                         "iterations_per_s": result.iterations_per_s,
                         "seconds_per_iteration": round(result.seconds / max(result.steps, 1), 4),
                         "final_loss": result.curve[-1]["loss"]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


@torch.no_grad()
def score(rep, prior, prompt: str, distractors: list[str]) -> dict:
    views = fixed_views(azimuth_ring(8, 22.5), 15.0, 40.0, 0.6, prior.resolution)
    out = rep.render(views.cams, "albedo", views.light, torch.ones(8, 3, prior.resolution, prior.resolution),
                     need_normals=False)
    return prompt_fit(prior, out.rgb.clamp(0, 1), prompt, distractors)


def convergence(base, priors, steps: int, every: int, prompts: list[str]) -> list[dict]:
    scorer = priors(base.guidance_config("sds").model)
    curves = []
    for prompt in prompts:
        distractors = [q for q in PROMPTS if q != prompt]
        for guidance in ("sds", "ism"):
            p = base.model_copy(update={"guidance_type": guidance, "representation_type": "voxel",
                                        "representation": {}, "steps": steps, "log_every": 10**6,
                                        "checkpoint_every": 10**6})
            work = Path("/tmp/dreamline-bench-distill") / f"conv-{guidance}"
            points = []
            t0 = time.perf_counter()
            for k in range(every, steps + 1, every):
                result = distill(p, prompt, priors, work, key=f"conv-{prompt}-{guidance}", stop_after=k)
                # stop_after checkpoints at k; the next call resumes from there exactly.
                s = score(result.representation, scorer, prompt, distractors)
                points.append({"iteration": k, **s})
            (work / CHECKPOINT).unlink(missing_ok=True)
            ASSETS[(guidance, prompt)] = result.representation
            curves.append({"prompt": prompt, "guidance": guidance, "seconds": round(time.perf_counter() - t0, 1),
                           "points": points})
            print(json.dumps(curves[-1]), flush=True)
    return curves


def gallery(base, priors, prompts: list[str], out_png: Path, assets: dict) -> list[dict]:
    """A guidance x prompt sheet of the 4 fixed views + a textureless view, for reviewers.
    `assets` already holds (guidance, prompt) -> representation from the convergence runs."""
    from PIL import Image, ImageDraw

    from dreamline.distill.assets import VIEW_AZIMUTHS, render_views

    rows, meta = [], []
    for guidance in ("sds", "ism", "mv-sds", "mv-sds+agp"):
        for prompt in prompts:
            rep = assets.get((guidance, prompt))
            if rep is None:
                p = base.model_copy(update={"guidance_type": guidance, "representation_type": "voxel",
                                            "representation": {}, "log_every": 10**6})
                work = Path("/tmp/dreamline-bench-distill") / f"gallery-{guidance}"
                for f in work.glob("*"):
                    f.unlink()
                t0 = time.perf_counter()
                rep = distill(p, prompt, priors, work, key=f"gallery-{guidance}-{prompt}").representation
                meta.append({"guidance": guidance, "prompt": prompt, "steps": p.steps,
                             "seconds": round(time.perf_counter() - t0, 1)})
            views = list(render_views(rep, VIEW_AZIMUTHS, 15.0, 64, base.camera.radius))
            views += list(render_views(rep, (45.0,), 15.0, 64, base.camera.radius, shading="textureless"))
            rows.append((f"{guidance}: {prompt}", views))
    sheet = Image.new("RGB", (150 + 64 * 5, 64 * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, views) in enumerate(rows):
        draw.text((4, 64 * i + 26), label, fill=(0, 0, 0))
        for j, v in enumerate(views):
            sheet.paste(Image.fromarray(v), (150 + 64 * j, 64 * i))
    sheet.save(out_png)
    return meta


def iterations_to_reach(curves: list[dict]) -> list[dict]:
    """Iterations each method needs to reach the diffusion-classifier margin SDS ends with.
    The margin (distractor loss - true-prompt loss) measures prompt fit; the raw loss does
    not: simple, low-frequency images are easier to denoise under any prompt, so it favours
    the early blob (observed: SDS's loss rose from 0.069 at 50 iterations while its
    margin held)."""
    out = []
    for prompt in sorted({c["prompt"] for c in curves}):
        by = {c["guidance"]: c["points"] for c in curves if c["prompt"] == prompt}
        target = by["sds"][-1]["margin"]
        row = {"prompt": prompt, "sds_final_margin": round(target, 5)}
        for g in ("sds", "ism"):
            hit = next((pt["iteration"] for pt in by[g] if pt["margin"] >= target), None)
            row[f"{g}_iterations"] = hit
            row[f"{g}_final_margin"] = round(by[g][-1]["margin"], 5)
            row[f"{g}_best_margin"] = round(max(pt["margin"] for pt in by[g]), 5)
            row[f"{g}_final_loss"] = round(by[g][-1]["loss"], 5)
            row[f"{g}_rank1_share"] = round(sum(pt["rank"] == 1 for pt in by[g]) / len(by[g]), 3)
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--speed-steps", type=int, default=20)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--first-prompt", type=int, default=0, help="index into PROMPTS of the first prompt")
    ap.add_argument("--lambda-opacity", type=float, default=None, help="override distill.lambda_opacity")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-gallery", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/distill.json")
    args = ap.parse_args()
    base = load_params(ROOT / "params.yaml").distill
    if args.lambda_opacity is not None:
        base = base.model_copy(update={"lambda_opacity": args.lambda_opacity})
    torch.set_num_threads(base.threads)
    priors = PriorCache()
    t0 = time.time()
    report = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "python": platform.python_version(), "torch": torch.__version__},
              "lambda_opacity": base.lambda_opacity,
              "speed": [] if args.skip_speed else speed(base, priors, args.speed_steps)}
    curves = convergence(base, priors, args.steps, args.every,
                         PROMPTS[args.first_prompt:args.first_prompt + args.prompts])
    report["convergence"] = curves
    report["iterations_to_sds_final_score"] = iterations_to_reach(curves)
    if not args.skip_gallery:
        sheet = Path(args.out).with_name(Path(args.out).stem + "_gallery.png")
        report["gallery"] = {"png": str(sheet), "runs": gallery(base, priors, PROMPTS[:args.prompts], sheet, ASSETS)}
    report["seconds"] = round(time.time() - t0, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for row in report["iterations_to_sds_final_score"]:
        print(row)
    print(f"wrote {args.out} in {report['seconds']} s")


if __name__ == "__main__":
    main()
