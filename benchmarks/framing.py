"""How much of the frame an object fills: the real test renders against the distilled assets
as the evaluate stage renders them.

    . scripts/env.sh
    python benchmarks/framing.py [data/distill ...] [--framing scene|asset] [--json FILE]

The render stage frames each object's own bounding sphere (mvdream_view_set), so a real view's
object spans most of the frame; the evaluate stage renders an asset at evaluate.framing (see
dreamline/evaluation/asset_metrics.py). Prints, per group, the silhouette's (alpha > 0.5) bounding
box side as a share of the frame width (mean, min, max) and its area share, so the two can be
compared at the resolution the evaluator reads (evaluate.resolution).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def silhouette_stats(masks: np.ndarray) -> dict:
    """(N, H, W) booleans -> bbox side share (max of width, height) and area share."""
    sides, areas = [], []
    for m in masks:
        ys, xs = np.nonzero(m)
        if len(xs) == 0:
            sides.append(0.0)
            areas.append(0.0)
            continue
        side = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) / m.shape[1]
        sides.append(float(side))
        areas.append(float(m.mean()))
    s, a = np.array(sides), np.array(areas)
    return {"n": len(s), "bbox_side_mean": round(float(s.mean()), 3), "bbox_side_min": round(float(s.min()), 3),
            "bbox_side_max": round(float(s.max()), 3), "area_mean": round(float(a.mean()), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("roots", nargs="*", default=["data/distill"], help="asset roots (folders of asset folders)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--framing", choices=["scene", "asset"], default=None,
                    help="override evaluate.framing for the assets")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    from PIL import Image

    from dreamline.config import load_params
    from dreamline.distill.assets import load_asset
    from dreamline.evaluation.asset_metrics import render_asset
    from dreamline.evaluation.evaluate import asset_folders
    from dreamline.evaluation.train_evaluator import real_views

    params = load_params(a.params)
    p = params.evaluate
    if a.framing:
        p = p.model_copy(update={"framing": a.framing})
    torch.set_num_threads(2)
    rows, _ = real_views(Path("data/renders"), Path("data/captions/captions.parquet"), p.resolution, "test",
                         kinds=("mv",))
    masks = []
    for rel in rows["rgba_path"]:
        alpha = np.asarray(Image.open(Path("data/renders") / rel).convert("RGBA"), dtype=np.float32)[..., 3] / 255.0
        pooled = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(alpha)[None, None], p.resolution)
        masks.append(pooled[0, 0].numpy() > 0.5)
    out = {"real_test": silhouette_stats(np.stack(masks)), "framing": p.framing}
    assets = {}
    for folder in asset_folders(*[Path(r) for r in a.roots]):
        rep, prompt = load_asset(folder)
        views = render_asset(rep, p.azimuths, p.elevation_deg, p.resolution, params.distill.camera.radius,
                             p.framing)
        assets[prompt] = silhouette_stats(views.depth > 0)
        assets[prompt]["framed_radius"] = round(views.framed_radius, 4)
    out["assets"] = assets
    every = [v for v in assets.values()]
    if every:
        out["assets_mean"] = {k: round(float(np.mean([v[k] for v in every])), 3)
                              for k in ("bbox_side_mean", "area_mean", "framed_radius")}
    print(json.dumps(out, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
