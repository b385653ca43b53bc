"""The `evaluate` stage's work: R-precision (colour and geo) of distilled assets with the
real test renders (in colour, and shaded textureless for geo) as the ceiling rows, multi-view consistency and the Janus proxy, and the
image quality (FID / IS / CLIP score) of each model's samples. Every aggregate carries its
sample count and a bootstrap interval over independent units (objects, assets, captions).

Everything torch runs on `device` at `precision` (params `compute`, resolved by the flow):
assets render there in float32, the evaluator and the sampling pipelines are frozen models
stored in `frozen_dtype(precision)` and run under autocast; samples are drawn from CPU
generators. The device is recorded in the untracked run.json only."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from dreamline.config import EvaluateParams
from dreamline.evaluation.asset_metrics import consistency_psnr, janus_score, render_asset, turn_iou
from dreamline.evaluation.evaluator import load_evaluator
from dreamline.evaluation.metrics import (bootstrap_ci, clip_score, frechet_distance, inception_score,
                                          retrieval_ranks)
from dreamline.evaluation.textureless import textureless_views
from dreamline.evaluation.towers import fid_features
from dreamline.evaluation.train_evaluator import real_views
from dreamline.models.grid import grid_image


def _r_at(ranks: np.ndarray, units: np.ndarray, k: int, n_boot: int, seed: int) -> dict:
    """R@k over renders, with the interval from resampling units (objects or assets)."""
    hits = (ranks <= k).astype(float)
    per_unit = np.array([hits[units == u].mean() for u in np.unique(units)])
    lo, hi = bootstrap_ci(per_unit, n_resamples=n_boot, seed=seed) if len(per_unit) > 1 else (None, None)
    return {f"R@{k}": round(float(hits.mean()), 4), f"R@{k}_ci95": [lo, hi]}


def _rp_row(img_emb, text_emb, true_idx, units, p: EvaluateParams) -> dict:
    ranks = retrieval_ranks(img_emb, text_emb, true_idx)
    row = {"n_images": int(len(ranks)), "n_units": int(len(np.unique(units))), "n_captions": int(len(text_emb))}
    for k in (1, 5):
        row.update(_r_at(ranks, units, k, p.bootstrap, p.seed))
    return row


def asset_folders(*roots: Path) -> list[Path]:
    """Every distilled asset folder; one of an earlier version is listed too, so that
    loading it fails loudly (load_asset refuses its pickle) instead of it going missing."""
    from dreamline.distill.assets import is_asset_folder
    from dreamline.paths import confine

    found = set()
    for root in roots:
        for f in [root, *root.rglob("*")] if root.exists() else []:
            # A symlink in an asset root that leads out of it is refused before it is looked at.
            confine(f, root, f"{f} (under the asset root {root})", relative_to=".")
            if f.is_dir() and is_asset_folder(f):
                found.add(f)
    return sorted(found)


def evaluate_assets(p: EvaluateParams, evaluator, folders: list[Path], texts: list[str], text_emb: np.ndarray,
                    grids: Path, radius: float, device: torch.device | str | None = None,
                    keep_embeddings: bool = False) -> list[dict]:
    """Per asset: ranks of its prompt (colour and geo renders), consistency PSNR, Janus score.
    Assets are rendered on `device` (float32: a representation is never cast).
    `keep_embeddings`: each row also holds "embeddings" {colour, geo: (views, D) arrays}, to rank
    against other caption sets (not JSON: the caller takes them out)."""
    from dreamline.distill.assets import load_asset

    index = {t: i for i, t in enumerate(texts)}
    rows = []
    for folder in folders:
        rep, prompt = load_asset(folder, device=device)
        summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").exists() else {}
        views = render_asset(rep, p.azimuths, p.elevation_deg, p.resolution, radius, p.framing)
        row = {"asset": str(folder), "prompt": prompt, "guidance_type": summary.get("guidance_type"),
               "representation_type": summary.get("representation_type"), "steps": summary.get("steps")}
        for kind, images in (("colour", views.colour), ("geo", views.geo)):
            emb = evaluator.embed_images(images)
            ranks = retrieval_ranks(emb, text_emb, np.full(len(emb), index[prompt]))
            row[f"ranks_{kind}"] = ranks.tolist()
            if keep_embeddings:
                row.setdefault("embeddings", {})[kind] = emb
            if kind == "colour":
                row["janus"] = round(janus_score(emb, views.azimuths), 5)
        silhouette = turn_iou(views.depth > 0, views.azimuths)
        row["turn_iou"] = round(silhouette, 4) if silhouette is not None else None
        psnr = consistency_psnr(views)
        row["psnr"] = round(float(np.mean(psnr)), 3) if psnr else None
        row["psnr_pairs"] = len(psnr)
        grids.mkdir(parents=True, exist_ok=True)
        name = "__".join(folder.parts[-2:])
        grid_image(torch.cat([views.colour, views.geo]).permute(0, 2, 3, 1).numpy(), nrow=p.azimuths).save(
            grids / f"{name}.png")
        row["grid"] = str(grids / f"{name}.png")
        rows.append(row)
    return rows


def summarise_assets(rows: list[dict], p: EvaluateParams) -> dict:
    """R@1/R@5 (colour, geo), PSNR and Janus rate over a group of assets, units = assets."""
    out = {"n_assets": len(rows)}
    for kind in ("colour", "geo"):
        ranks = np.concatenate([np.array(r[f"ranks_{kind}"]) for r in rows])
        units = np.concatenate([np.full(len(r[f"ranks_{kind}"]), i) for i, r in enumerate(rows)])
        for k in (1, 5):
            out.update({f"{kind}_{key}": v for key, v in _r_at(ranks, units, k, p.bootstrap, p.seed).items()})
    psnr = [r["psnr"] for r in rows if r["psnr"] is not None]
    out["psnr"] = round(float(np.mean(psnr)), 3) if psnr else None
    out["janus_rate"] = round(float(np.mean([r["janus"] > 0 for r in rows])), 4)
    turns = [r["turn_iou"] for r in rows if r.get("turn_iou") is not None]
    out["turn_iou"] = round(float(np.mean(turns)), 4) if turns else None
    out["consistency_rate"] = round(1.0 - out["janus_rate"], 4)
    return out


def image_quality(p: EvaluateParams, evaluator, real_images: torch.Tensor, captions: list[str],
                  features, grids: Path, device: torch.device | str | None = None,
                  precision: str = "fp32", texts: list[str] | None = None,
                  text_emb: np.ndarray | None = None) -> dict:
    """FID and IS on `features` (towers.fid_features), CLIP score with the evaluator,
    and R-precision of the samples: each sample ranked against every caption in `texts`
    (default: `captions`), its own caption the true one, as Cap3D ranks text-to-3D results;
    units for the interval are captions. Each model samples on `device`, stored in
    frozen_dtype(precision) under autocast, from a CPU generator (the same initial noise on
    every device)."""
    from dreamline.device import autocast
    from dreamline.models.sampling import place
    from dreamline.training.common import load_base_pipeline, orbit_cameras

    device = torch.device(device or "cpu")

    q = p.image_quality
    real_feats, real_probs = features(real_images)
    caps = captions[:q.captions]
    cap_emb = evaluator.embed_texts(caps)
    if texts is None:
        texts, text_emb = list(captions), evaluator.embed_texts(list(captions))
    true_idx = np.array([texts.index(c) for c in caps])
    out = {"real": {"n": int(len(real_images)), "IS": round(inception_score(real_probs)[0], 4)}}
    for name, path in q.models.items():
        pipe = place(load_base_pipeline(path), device, precision)
        pipe.set_progress_bar_config(disable=True)
        views = 4
        # Every model gives 4 images per caption (4 views, or 4 seeds without cameras): FID is
        # biased by the sample count, so rows must share it.
        cams = orbit_cameras(views, 15.0, 2.0) if pipe.unet.class_embedding is not None else None
        prompts = caps if cams is not None else [c for c in caps for _ in range(views)]
        g = torch.Generator().manual_seed(q.seed)
        with autocast(device, precision):
            images = pipe(prompts, cameras=cams, num_inference_steps=q.steps, guidance_scale=q.guidance_scale,
                          generator=g, output_type="pt").images.float()
        feats, probs = features(images)
        emb = evaluator.embed_images(images)
        per_caption = clip_score(emb, np.repeat(cap_emb, views, axis=0)).reshape(len(caps), views).mean(1)
        lo, hi = bootstrap_ci(per_caption, n_resamples=p.bootstrap, seed=p.seed)
        out[name] = {"n": int(len(images)), "resolution": int(images.shape[-1]), "FID": round(frechet_distance(feats, real_feats), 3),
                     "IS": round(inception_score(probs)[0], 4),
                     "clip_score": round(float(per_caption.mean()), 3), "clip_score_ci95": [lo, hi],
                     "r_precision": _rp_row(emb, text_emb, np.repeat(true_idx, views),
                                            np.repeat(np.arange(len(caps)), views), p)}
        grids.mkdir(parents=True, exist_ok=True)
        grid_image(images.permute(0, 2, 3, 1).numpy()[: 8 * views], nrow=views).save(grids / f"samples_{name}.png")
    return out


def ceilings_at_sample_resolution(rows: dict, evaluator, images: torch.Tensor, text_emb, true_idx, uids,
                                  p: EvaluateParams) -> dict:
    """`real_<res>px` rows: the real views area-averaged to each resolution the priors of
    image_quality's `rows` sample below the renders' own. A prior cannot show more than its
    pixels hold, so this is the ceiling at its size (the evaluator upsamples both alike)."""
    out = {}
    for res in sorted({r["resolution"] for r in rows.values() if "resolution" in r}):
        if res < images.shape[-1]:
            small = torch.nn.functional.interpolate(images.float(), size=(res, res), mode="area")
            out[f"real_{res}px"] = {"n": int(len(small)), "resolution": res,
                                    "r_precision": _rp_row(evaluator.embed_images(small), text_emb, true_idx, uids, p)}
    return out


def real_turn_iou(renders: Path, rows, resolution: int) -> float | None:
    """The quarter-turn silhouette IoU of the real test objects (asset_metrics.turn_iou): each
    object's views of one render set (same camera distance and field of view), alpha > 0.5
    at `resolution`, averaged over objects."""
    from PIL import Image

    per_object = []
    for (_, _), g in rows.groupby(["uid", "set"], sort=True):
        masks = []
        for rel in g["rgba_path"]:
            alpha = np.asarray(Image.open(Path(renders) / rel).convert("RGBA"), dtype=np.float32)[..., 3] / 255.0
            pooled = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(alpha)[None, None], resolution)
            masks.append(pooled[0, 0].numpy() > 0.5)
        value = turn_iou(np.stack(masks), g["azimuth_deg"].tolist())
        if value is not None:
            per_object.append(value)
    return round(float(np.mean(per_object)), 4) if per_object else None


def evaluate(p: EvaluateParams, renders: Path, captions: Path, asset_roots: list[Path], out_dir: Path,
             radius: float, log=print, device: torch.device | str | None = None, precision: str = "fp32",
             prompts: list[str] = ()) -> dict:
    """`prompts`: distractors beside the test captions besides the prompts of the assets found
    (the distill stage's prompt set), so that every evaluation of assets (the main run's, the
    ablation's) ranks against the same captions."""
    from dreamline.device import describe

    t0 = time.perf_counter()
    device = torch.device(device or "cpu")
    evaluator = load_evaluator(p.evaluator, device, precision)
    folders = asset_folders(*asset_roots)
    prompts = sorted(set(prompts) | {json.loads((f / "summary.json").read_text())["prompt"] for f in folders
                                     if (f / "summary.json").exists()})
    rows, images = real_views(renders, captions, p.resolution, "test", kinds=("mv",))
    keep = rows.groupby("uid").head(p.real_views_per_object).index.to_numpy()
    rows, images = rows.loc[keep].reset_index(drop=True), images[keep]
    test_captions = sorted(set(rows["caption"]))
    texts = sorted(set(test_captions) | set(prompts))
    text_emb = evaluator.embed_texts(texts)
    index = {t: i for i, t in enumerate(texts)}
    log(f"evaluate: {len(folders)} assets, {len(rows)} real test views, {len(texts)} captions")

    real_emb = evaluator.embed_images(images)
    true_idx, uids = rows["caption"].map(index).to_numpy(), rows["uid"].to_numpy()
    # The geo ceiling: the same real views shaded textureless, as the assets' geo renders are.
    geo_emb = evaluator.embed_images(textureless_views(renders, rows, p.resolution))
    # FID's Inception-v3 when its weights are given, else EfficientNet-Lite0 (the LiT
    # evaluator's image tower, loaded once).
    features = fid_features(evaluator, p.image_quality.inception_weights, device, precision)
    metrics = {"evaluator": evaluator.name, "feature_net": features.name,
               "r_precision": {"real_test": _rp_row(real_emb, text_emb, true_idx, uids, p),
                               "real_test_geo": _rp_row(geo_emb, text_emb, true_idx, uids, p)},
               "real_test_turn_iou": real_turn_iou(renders, rows, p.resolution)}
    asset_rows = evaluate_assets(p, evaluator, folders, texts, text_emb, out_dir / "grids", radius, device)
    groups: dict[str, list[dict]] = {}
    for r in asset_rows:
        source = "ablation" if "ablation" in Path(r["asset"]).parts else "distill"
        groups.setdefault(f"{source}:{r['guidance_type']}", []).append(r)
    metrics["assets"] = {name: summarise_assets(g, p) for name, g in sorted(groups.items())}
    metrics["image_quality"] = image_quality(p, evaluator, images, test_captions, features, out_dir / "grids",
                                             device, precision, texts, text_emb)
    # The ceiling beside each model's row: what the evaluator gives the real renders.
    metrics["image_quality"]["real"]["r_precision"] = metrics["r_precision"]["real_test"]
    metrics["image_quality"].update(ceilings_at_sample_resolution(metrics["image_quality"], evaluator, images,
                                                                  text_emb, true_idx, uids, p))
    from dreamline.runinfo import record_run

    record_run(out_dir, "evaluate", {"seconds": round(time.perf_counter() - t0, 1), **describe(device, precision)})
    return metrics, asset_rows
