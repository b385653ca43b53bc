"""How well a prior's samples show their caption: the evaluate stage's image-quality rows
(R-precision of samples against every test caption, CLIP score, FID, IS) for any model folders,
with the real test renders' R-precision (the ceiling) beside them.

    python benchmarks/prior_quality.py base=data/models/base mv=/tmp/run/mv \
        [--steps 20] [--guidance 1.0] [--captions 16] [--timestep-spacing trailing] \
        [--out benchmarks/results/prior_quality.json]

`--timestep-spacing` samples each model with its DDIM timesteps spaced that way (diffusers'
`leading` / `trailing` / `linspace`) instead of its saved scheduler's: the folder is viewed
through a temporary copy whose scheduler config differs and whose other parts are links.

Uses the renders, captions and evaluator of the current workspace (data/), the same code path
as `python -m stages.evaluate`, so its figures and the stage's agree for the same settings.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def with_spacing(folder: Path, view: Path, spacing: str) -> Path:
    """`folder` seen through `view`: links to its parts, its scheduler config with `spacing`."""
    view.mkdir(parents=True)
    for part in folder.iterdir():
        if part.name != "scheduler":
            (view / part.name).symlink_to(part.resolve())
    (view / "scheduler").mkdir()
    config = json.loads((folder / "scheduler/scheduler_config.json").read_text())
    (view / "scheduler/scheduler_config.json").write_text(json.dumps({**config, "timestep_spacing": spacing}, indent=2))
    return view


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="name=folder")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--captions", type=int, default=None)
    ap.add_argument("--timestep-spacing", choices=["leading", "trailing", "linspace"], default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="append the rows (JSON lines) to this file")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from dreamline.config import load_params
    from dreamline.evaluation.evaluate import _rp_row, ceilings_at_sample_resolution, image_quality
    from dreamline.evaluation.evaluator import load_evaluator
    from dreamline.evaluation.towers import EfficientNetLite0
    from dreamline.evaluation.train_evaluator import real_views

    params = load_params(args.params)
    p = params.evaluate
    given = dict(m.split("=", 1) for m in args.models)
    models = given
    if args.timestep_spacing:
        tmp = tempfile.TemporaryDirectory()   # removed when the process ends
        models = {n: str(with_spacing(Path(f), Path(tmp.name) / n, args.timestep_spacing)) for n, f in given.items()}
    q = p.image_quality.model_copy(update={
        "models": models,
        **({"steps": args.steps} if args.steps else {}),
        **({"guidance_scale": args.guidance} if args.guidance is not None else {}),
        **({"captions": args.captions} if args.captions else {})})
    p = p.model_copy(update={"image_quality": q})
    evaluator = load_evaluator(p.evaluator)
    rows, images = real_views(ROOT / "data/renders", ROOT / "data/captions/captions.parquet", p.resolution,
                              "test", kinds=("mv",))
    keep = rows.groupby("uid").head(p.real_views_per_object).index.to_numpy()
    rows, images = rows.loc[keep].reset_index(drop=True), images[keep]
    texts = sorted(set(rows["caption"]))
    text_emb = evaluator.embed_texts(texts)
    index = {t: i for i, t in enumerate(texts)}
    true_idx, uids = rows["caption"].map(index).to_numpy(), rows["uid"].to_numpy()
    real = _rp_row(evaluator.embed_images(images), text_emb, true_idx, uids, p)
    features = evaluator.images if isinstance(getattr(evaluator, "images", None), EfficientNetLite0) \
        else EfficientNetLite0()
    t0 = time.perf_counter()
    out = image_quality(p, evaluator, images, texts, features, Path("/tmp/prior_quality_grids"),
                        texts=texts, text_emb=text_emb)
    seconds = time.perf_counter() - t0
    small = ceilings_at_sample_resolution(out, evaluator, images, text_emb, true_idx, uids, p)
    print(f"prior quality: {len(texts)} test captions, {q.captions} sampled x 4, DDIM {q.steps}, "
          f"CFG {q.guidance_scale}; sampling + scoring {seconds:.1f} s")
    print(f"{'model':<14} {'R@1':>6} {'R@1 ci95':>16} {'R@5':>6} {'CLIP':>7} {'FID':>8} {'IS':>6}")
    print(f"{'real (ceil.)':<14} {real['R@1']:>6.3f} {str([round(x, 2) for x in real['R@1_ci95']]):>16} "
          f"{real['R@5']:>6.3f}")
    for name, r in small.items():
        rp = r["r_precision"]
        print(f"{name + ' (ceil.)':<14} {rp['R@1']:>6.3f} {str([round(x, 2) for x in rp['R@1_ci95']]):>16} "
              f"{rp['R@5']:>6.3f}")
    records = []
    for name, r in out.items():
        if name == "real":
            continue
        rp = r["r_precision"]
        print(f"{name:<14} {rp['R@1']:>6.3f} {str([round(x, 2) for x in rp['R@1_ci95']]):>16} {rp['R@5']:>6.3f} "
              f"{r['clip_score']:>7.2f} {r['FID']:>8.1f} {r['IS']:>6.2f}")
        records.append({"model": name, "folder": given[name],
                        "timestep_spacing": args.timestep_spacing or "saved", "steps": q.steps, "guidance": q.guidance_scale,
                        "captions": q.captions, "real_R@1": real["R@1"],
                        "real_R@1_at_resolution": small.get(f"real_{r['resolution']}px", {"r_precision": real})
                        ["r_precision"]["R@1"], **r})
    if args.out:
        with open(args.out, "a") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
