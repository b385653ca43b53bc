"""The `texture` stage's work: MVDiffusion depth-to-image texturing of test objects, evaluated.

Per object (test split, its own caption as the prompt): render the mesh's depth from N
orbit cameras, generate N views with the trained CAA model and, from the same initial
noise, with CAA switched off (each view alone: the baseline), measure the overlap PSNR of
neighbouring views through the depth correspondences (MVDiffusion's consistency measure),
bake the CAA views onto the mesh's vertices and export a coloured GLB. Over all objects:
FID / KID / IS / CLIP score of both variants against the real test renders, and
R-precision of renders of the textured GLB as loaded back from disk, next to the same
shape untextured (grey) and with its own colours (the ceiling), with every test caption as
the caption set.

Distilled shapes (the distill stage's `mesh.glb`, their prompt as the prompt) are textured
the same way; their R-precision rows compare the MVDiffusion texture with the colours the
distillation gave the asset and with the grey shape, against the test captions plus the
distillation prompts.

Device and precision are arguments (params `compute`, resolved by the flow): the MVDiffusion
pipeline and the evaluator are frozen, stored on the device in `frozen_dtype(precision)` and
run under autocast; the initial noise comes from a CPU generator seeded with `seed`, so
every device starts from the same noise. Baking and the GL renders stay on the CPU (numpy,
OSMesa). The device is recorded in the untracked run.json only.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dreamline.config import TextureParams
from dreamline.device import autocast, describe
from dreamline.models.sampling import place
from dreamline.models.weights import load_pretrained
from dreamline.paths import confine
from dreamline.runinfo import record_run
from dreamline.rendering.cameras import Camera, framing_distance
from dreamline.rendering.reprojection import overlap_psnr, warp

MIN_OVERLAP_PX = 8


def orbit(n: int, elevation: float, fov: float, resolution: int, radius: float, start: float = 0.0) -> list[Camera]:
    distance = framing_distance(fov, radius)
    return [Camera.orbit(start + 360.0 * i / n, elevation, distance, fov, resolution) for i in range(n)]


def neighbour_psnr(images: np.ndarray, depths: np.ndarray, cams: list[Camera], depth_tol: float) -> list[float]:
    """PSNR of each view against its next neighbour warped into it, over the pixels both see."""
    out = []
    n = len(cams)
    for i in range(n):
        j = (i + 1) % n
        warped, valid = warp(images[j], depths[j], cams[j], depths[i], cams[i], depth_tol, mode="nearest")
        if valid.sum() >= MIN_OVERLAP_PX:
            out.append(min(overlap_psnr(images[i], warped, valid, data_range=1.0), 100.0))
    return out


def _renders(mesh, cams, colours: bool) -> np.ndarray:
    """(N, 3, H, W) lit renders over white in [0, 1]; without colours the shape is grey."""
    import trimesh

    from dreamline.rendering.renderer import render_object

    m = mesh if colours else trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    bufs = render_object(m, cams)
    rgba = np.stack([b.rgba for b in bufs]).astype(np.float32) / 255.0
    rgb = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
    return torch.from_numpy(rgb).permute(0, 3, 1, 2)


def texture_object(pipe, mesh, prompt: str, p: TextureParams, out: Path, reference: str,
                   precision: str = "fp32") -> tuple[dict, dict, dict]:
    """Generate the views (with CAA and each alone), bake the CAA views, write the GLB and load
    it back. Returns the row (PSNRs, coverage, glb), the masked views by variant, and the
    evaluation renders of the GLB as loaded ("textured"), the mesh with the colours it came
    with (`reference`) and the grey shape ("untextured"). The pipeline runs where it is
    (its device), autocast to `precision`."""
    import trimesh

    from dreamline.models.grid import grid_image
    from dreamline.representations.export import write_glb
    from dreamline.rendering.renderer import render_object
    from dreamline.texturing.bake import bake_vertex_colours

    radius = float(np.linalg.norm(mesh.vertices, axis=1).max())
    cams = orbit(p.views, p.elevation_deg, p.fov_deg, p.resolution, radius)
    depths = np.stack([b.depth for b in render_object(mesh, cams)]).astype(np.float64)
    kw = dict(num_inference_steps=p.steps, guidance_scale=p.guidance_scale, output_type="np")
    with autocast(pipe.device, precision):
        images = {name: pipe(prompt, depths, cams, use_caa=use, generator=torch.Generator().manual_seed(p.seed),
                             **kw).images for name, use in (("caa", True), ("independent", False))}
    row = {"prompt": prompt}
    for name, im in images.items():
        masked = np.where(depths[..., None] > 0, im, 1.0)          # the object only, over white
        images[name] = masked
        pairs = neighbour_psnr(masked, depths, cams, p.depth_tol)
        row[f"psnr_{name}"] = round(float(np.mean(pairs)), 3) if pairs else None
        row["psnr_pairs"] = len(pairs)
    baked = bake_vertex_colours(mesh.vertices, mesh.vertex_normals, mesh.faces, images["caa"], depths, cams, p.depth_tol)
    textured = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False,
                               vertex_colors=(np.c_[baked.colours, np.ones(len(baked.colours))] * 255).astype(np.uint8))
    out.mkdir(parents=True, exist_ok=True)
    write_glb(textured, out / "mesh.glb")
    grid_image(np.concatenate([images["caa"], images["independent"]]), nrow=p.views).save(out / "views.png")
    row.update(coverage=round(baked.coverage, 4), glb=str(out / "mesh.glb"))
    # What the evaluator sees is the file a user gets, not the mesh still in memory.
    loaded = trimesh.load(out / "mesh.glb", force="mesh", process=False)
    eval_cams = orbit(p.eval_azimuths, p.eval_elevation_deg, p.fov_deg, p.eval_resolution, radius, start=22.5)
    renders = {"textured": _renders(loaded, eval_cams, True), reference: _renders(mesh, eval_cams, True),
               "untextured": _renders(mesh, eval_cams, False)}
    return row, images, renders


def _rank_renders(evaluator, renders_by: dict, text_emb: np.ndarray, true: list[int], units: list[int],
                  p: TextureParams) -> dict:
    """R-precision row per render kind; `true` and `units` per render, in concatenation order."""
    from dreamline.evaluation.evaluate import _rp_row

    return {name: _rp_row(evaluator.embed_images(torch.cat(ims)), text_emb, np.array(true), np.array(units), p)
            for name, ims in renders_by.items()}


def distilled_meshes(root: Path) -> list[tuple[Path, str]]:
    """(folder, prompt) of each distilled asset with an exported mesh, in name order."""
    import json

    out = []
    for mesh in sorted(Path(root).glob("*/mesh.glb")) if Path(root).exists() else []:
        confine(mesh, root, f"distilled mesh {mesh}", relative_to=".")
        summary = mesh.parent / "summary.json"
        if summary.exists():
            out.append((mesh.parent, json.loads(summary.read_text())["prompt"]))
    return out


def _psnr_summary(rows: list[dict], p: TextureParams) -> dict:
    """Mean overlap PSNR per variant over objects, and the paired CAA - independent difference."""
    from dreamline.evaluation.metrics import bootstrap_ci

    out = {}
    for name in ("caa", "independent"):
        vals = np.array([r[f"psnr_{name}"] for r in rows if r[f"psnr_{name}"] is not None])
        lo, hi = bootstrap_ci(vals, n_resamples=p.bootstrap, seed=p.seed) if len(vals) > 1 else (None, None)
        out[name] = {"psnr": round(float(vals.mean()), 3) if len(vals) else None, "psnr_ci95": [lo, hi],
                     "n_objects": len(vals)}
    diff = np.array([r["psnr_caa"] - r["psnr_independent"] for r in rows
                     if r["psnr_caa"] is not None and r["psnr_independent"] is not None])
    lo, hi = bootstrap_ci(diff, n_resamples=p.bootstrap, seed=p.seed) if len(diff) > 1 else (None, None)
    out["caa_minus_independent"] = {"psnr": round(float(diff.mean()), 3) if len(diff) else None, "ci95": [lo, hi],
                                    "higher": int((diff > 0).sum()), "n": int(len(diff))}
    return out


def texture_distilled(pipe, p: TextureParams, folders: list[tuple[Path, str]], out_dir: Path, evaluator,
                      texts: list[str], log=print, precision: str = "fp32") -> dict:
    """Texture each distilled shape with its prompt; PSNR table and R-precision of its renders
    (MVDiffusion texture vs the distillation's own colours vs grey) among `texts`."""
    import trimesh

    text_emb = evaluator.embed_texts(texts)
    index = {t: i for i, t in enumerate(texts)}
    rows, renders_by, units, true = [], {"textured": [], "distilled_colours": [], "untextured": []}, [], []
    for k, (folder, prompt) in enumerate(folders):
        mesh = trimesh.load(folder / "mesh.glb", force="mesh", process=False)
        if len(mesh.faces) == 0:
            rows.append({"asset": folder.name, "prompt": prompt, "skipped": "empty mesh"})
            continue
        row, _, shown = texture_object(pipe, mesh, prompt, p, Path(out_dir) / folder.name, "distilled_colours",
                                       precision)
        row["asset"] = folder.name
        for name, ims in shown.items():
            renders_by[name].append(ims)
        units += [k] * p.eval_azimuths
        true += [index[prompt]] * p.eval_azimuths
        rows.append(row)
        log(f"texture distilled {folder.name}: PSNR caa {row['psnr_caa']} vs independent "
            f"{row['psnr_independent']}, coverage {row['coverage']}")
    done = [r for r in rows if "skipped" not in r]
    out = {"assets": rows, "n_captions": len(texts)}
    if done:
        out["consistency"] = _psnr_summary(done, p)
        out["r_precision"] = _rank_renders(evaluator, renders_by, text_emb, true, units, p)
    return out


def texture(p: TextureParams, curated: Path, captions: Path, renders: Path, out_dir: Path, log=print,
            distill_root: Path | None = None, distilled_out: Path | None = None,
            device: torch.device | str | None = None, precision: str = "fp32") -> dict:
    import trimesh

    from dreamline.evaluation.evaluator import load_evaluator
    from dreamline.evaluation.metrics import (bootstrap_ci, clip_score, frechet_distance, inception_score,
                                              kernel_distance)
    from dreamline.evaluation.towers import fid_features
    from dreamline.evaluation.train_evaluator import real_views
    from dreamline.texturing.pipeline import MVDiffusionPipeline

    t0 = time.perf_counter()
    device = torch.device(device or "cpu")
    pipe = place(load_pretrained(MVDiffusionPipeline, p.model, "texture.model"), device, precision)
    pipe.set_progress_bar_config(disable=True)
    if pipe.caa is None:
        raise ValueError(f"{p.model}: no CAA model in this pipeline (point texture.model at the train_caa output)")
    caps = pd.read_parquet(captions)
    objects = pd.read_parquet(Path(curated) / "objects.parquet")
    test = caps[caps["split"] == "test"].merge(objects[["uid", "mesh_path"]], on="uid").sort_values("uid")
    chosen = test.head(p.objects)
    if chosen.empty:
        raise ValueError("no test-split objects to texture")
    evaluator = load_evaluator(p.evaluator, device, precision)
    texts = sorted(set(test["caption"]))
    text_emb = evaluator.embed_texts(texts)
    index = {t: i for i, t in enumerate(texts)}
    rows, generated, renders_by = [], {"caa": [], "independent": []}, {"textured": [], "untextured": [], "own_colours": []}
    units, true = [], []
    for k, r in enumerate(chosen.itertuples()):
        mesh_path = confine(r.mesh_path, curated, f"{Path(curated) / 'objects.parquet'}: row uid={r.uid}, mesh_path")
        mesh = trimesh.load(mesh_path, force="mesh", process=False)
        row, images, shown = texture_object(pipe, mesh, r.caption, p, Path(out_dir) / r.uid, "own_colours", precision)
        row["uid"] = r.uid
        for name in generated:
            generated[name].append(torch.from_numpy(images[name]).permute(0, 3, 1, 2).float())
        for name, ims in shown.items():
            renders_by[name].append(ims)
        units += [k] * p.eval_azimuths
        true += [index[r.caption]] * p.eval_azimuths
        rows.append(row)
        log(f"texture {k + 1}/{len(chosen)} {r.uid}: PSNR caa {row['psnr_caa']} vs independent "
            f"{row['psnr_independent']}, coverage {row['coverage']}")

    features = fid_features(evaluator, p.inception_weights, device, precision)
    metrics = {"evaluator": evaluator.name, "feature_net": features.name, "objects": len(rows), "views": p.views,
               "consistency": _psnr_summary(rows, p), "image_quality": {}}

    _, real = real_views(renders, captions, p.resolution, "test", kinds=("mv",))
    real_feats, real_probs = features(real)
    metrics["image_quality"]["real"] = {"n": int(len(real)), "IS": round(inception_score(real_probs)[0], 4)}
    prompts = list(chosen["caption"])
    cap_emb = evaluator.embed_texts(prompts)
    for name, ims in generated.items():
        images = torch.cat(ims)
        feats, probs = features(images)
        per = clip_score(evaluator.embed_images(images), np.repeat(cap_emb, p.views, axis=0)).reshape(-1, p.views).mean(1)
        lo, hi = bootstrap_ci(per, n_resamples=p.bootstrap, seed=p.seed) if len(per) > 1 else (None, None)
        metrics["image_quality"][name] = {"n": int(len(images)), "FID": round(frechet_distance(feats, real_feats), 3),
                                          "KID": round(kernel_distance(feats, real_feats), 4),
                                          "IS": round(inception_score(probs)[0], 4),
                                          "clip_score": round(float(per.mean()), 3), "clip_score_ci95": [lo, hi]}
    metrics["r_precision"] = _rank_renders(evaluator, renders_by, text_emb, true, units, p)
    metrics["objects_table"] = rows
    if p.distilled and distill_root is not None:
        folders = distilled_meshes(distill_root)
        prompts = sorted({prompt for _, prompt in folders})
        metrics["distilled"] = texture_distilled(pipe, p, folders, distilled_out or Path(out_dir).parent / "distilled",
                                                 evaluator, sorted(set(texts) | set(prompts)), log, precision)
    record_run(out_dir, "texture", {"seconds": round(time.perf_counter() - t0, 1), **describe(device, precision)})
    return metrics
