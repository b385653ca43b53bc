"""Why CAA does or does not make generated views agree: the texture stage's overlap PSNR, taken apart.

    python benchmarks/caa_consistency.py [--model data/models/mvdiffusion] [--objects 8] [--views 4]
        [--prompt caption|category|original_text] [--caa-scale 1.0] [--schedule joint|keyframes]
        [--steps 20] [--guidance 1.0] [--out benchmarks/results/caa_consistency.json]

Needs a reproduced pipeline (curated meshes, captions, a train_caa model). For the first
`--objects` test objects (as the texture stage picks them) and `--views` orbit cameras it
generates the views with CAA and, from the same noise, each view alone, and prints per object:

- overlap PSNR of neighbouring views (the texture stage's measure), raw and after a 3x3 box
  blur (colour agreement without pixel-level speckle);
- the same measure on the object's real renders with its own colours at the same cameras:
  the ceiling a perfectly consistent texture would reach (lighting differs between views);
- mean |CAA - alone| per pixel: how much CAA changes the output at all.

`--caa-scale` multiplies every CAA output projection (1 = as trained) to see whether a
stronger effect in the learned direction helps. `--schedule keyframes` generates views
0, 2, 4... first, then the others with the finished key frames held clean (t = 0) and read
through CAA: MVDiffusion's key-frame idea done with the same CAA blocks instead of a
separately trained interpolation module.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def keyframe_views(pipe, prompt: str, depths, cams, use_caa: bool, steps: int, seed: int):
    """Key frames (even views) denoised first, then the rest beside the finished key frames."""
    import torch

    from dreamline.models.codec import from_latent
    from dreamline.models.text import encode_text
    from dreamline.texturing.depth import depth_condition, latent_channels

    n, unet, sch = len(cams), pipe.unet, pipe.scheduler
    cond = depth_condition(depths, pipe.vae)
    states, mask = encode_text(pipe.text_encoder, pipe.tokenizer, [prompt], pipe.config.max_tokens)
    states = states.repeat_interleave(n, 0)
    mask = None if mask is None else mask.repeat_interleave(n, 0)
    latents = torch.randn((n, latent_channels(unet), cond.shape[-2], cond.shape[-1]),
                          generator=torch.Generator().manual_seed(seed))
    sch.set_timesteps(steps)
    top = sch.config.num_train_timesteps - 1
    handles = pipe.caa.attach(unet) if use_caa else []
    done = torch.zeros(n, dtype=torch.bool)
    try:
        with torch.no_grad(), (pipe.caa.correspondences(pipe.geometry(depths, cams), n) if use_caa
                               else pipe.caa.off()):
            for active in (list(range(0, n, 2)), list(range(1, n, 2))):
                waiting = torch.ones(n, dtype=torch.bool)
                waiting[active] = False
                waiting &= ~done
                for t in sch.timesteps:
                    tv = torch.where(done, 0, torch.where(waiting, top, int(t)))
                    pred = unet(torch.cat([latents, cond], 1), tv, encoder_hidden_states=states,
                                encoder_attention_mask=mask).sample
                    for v in active:
                        latents[v] = sch.step(pred[v:v + 1], t, latents[v:v + 1]).prev_sample[0]
                done[active] = True
    finally:
        for h in handles:
            h.remove()
    return ((from_latent(pipe.vae, latents) + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def pooled_views(pipe, prompt: str, depths, cams, use_caa: bool, steps: int, seed: int, eta: float,
                 window: tuple[int, int] = (0, 1000)):
    """An oracle for what cross-view communication could buy with this base: every step's x0
    estimate of each view is replaced, where other views see the same surface, by the mean of
    its own and the others' estimates warped into it through depth (not learned, not CAA), at
the steps whose t lies in `window` [lo, hi)."""
    import numpy as np
    import torch

    from dreamline.models.codec import from_latent, to_latent
    from dreamline.models.text import encode_text
    from dreamline.rendering.reprojection import warp
    from dreamline.texturing.depth import depth_condition, latent_channels

    n, unet, sch = len(cams), pipe.unet, pipe.scheduler
    g = torch.Generator().manual_seed(seed)
    cond = depth_condition(depths, pipe.vae)
    states, mask = encode_text(pipe.text_encoder, pipe.tokenizer, [prompt], pipe.config.max_tokens)
    states = states.repeat_interleave(n, 0)
    mask = None if mask is None else mask.repeat_interleave(n, 0)
    latents = torch.randn((n, latent_channels(unet), cond.shape[-2], cond.shape[-1]), generator=g)
    sch.set_timesteps(steps)
    ac = sch.alphas_cumprod
    handles = pipe.caa.attach(unet) if use_caa else []
    try:
        with torch.no_grad(), (pipe.caa.correspondences(pipe.geometry(depths, cams), n) if use_caa
                               else pipe.caa.off()):
            for t in sch.timesteps:
                v = unet(torch.cat([latents, cond], 1), t, encoder_hidden_states=states,
                         encoder_attention_mask=mask).sample
                a, s = ac[t].sqrt(), (1 - ac[t]).sqrt()
                x0 = (a * latents - s * v).clamp(-1, 1)
                if not window[0] <= int(t) < window[1]:
                    latents = sch.step(v, t, latents, eta=eta, generator=g).prev_sample
                    continue
                img = from_latent(pipe.vae, x0).permute(0, 2, 3, 1).numpy()
                pooled = img.copy()
                for i in range(n):
                    total, count = img[i].astype(np.float64), np.ones(img.shape[1:3])
                    for j in range(n):
                        if j != i:
                            w, ok = warp(img[j], depths[j], cams[j], depths[i], cams[i], 0.05, mode="nearest")
                            total += np.where(ok[..., None], w, 0.0)
                            count += ok
                    pooled[i] = total / count[..., None]
                x0 = to_latent(pipe.vae, torch.from_numpy(pooled).permute(0, 3, 1, 2).float())
                eps = (latents - a * x0) / s
                latents = sch.step(a * eps - s * x0, t, latents, eta=eta, generator=g).prev_sample
    finally:
        for h in handles:
            h.remove()
    return ((from_latent(pipe.vae, latents) + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="data/models/mvdiffusion")
    ap.add_argument("--objects", type=int, default=8)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--prompt", default="caption", choices=("caption", "category", "original_text"))
    ap.add_argument("--caa-scale", type=float, default=1.0)
    ap.add_argument("--schedule", default="joint", choices=("joint", "keyframes", "oracle-pool"))
    ap.add_argument("--pool-window", type=int, nargs=2, default=(0, 1000), metavar=("LO", "HI"),
                    help="oracle-pool: pool only at steps with LO <= t < HI")
    ap.add_argument("--eta", type=float, default=0.0, help="DDIM eta (1: stochastic, as DDPM)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()

    import numpy as np
    import pandas as pd
    import torch
    import trimesh
    from scipy.ndimage import uniform_filter

    from dreamline.rendering.renderer import render_object
    from dreamline.texturing.pipeline import MVDiffusionPipeline
    from dreamline.models.weights import load_pretrained
    from dreamline.texturing.texture import MIN_OVERLAP_PX, neighbour_psnr, orbit

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    pipe = load_pretrained(MVDiffusionPipeline, a.model)
    pipe.set_progress_bar_config(disable=True)
    if pipe.caa is None:        # a depth model alone: zero-initialised CAA, i.e. the base itself
        from dreamline.texturing.caa import CAAModel
        pipe.register_modules(caa=CAAModel.for_unet(pipe.unet, norm_groups=pipe.unet.config.norm_num_groups))
    with torch.no_grad():
        for block in pipe.caa.blocks:
            block.to_out.weight.mul_(a.caa_scale)
            block.to_out.bias.mul_(a.caa_scale)
    caps = pd.read_parquet(ROOT / "data/captions/captions.parquet")
    objects = pd.read_parquet(ROOT / "data/curated/objects.parquet")
    test = caps[caps["split"] == "test"].merge(objects[["uid", "mesh_path"]], on="uid").sort_values("uid")
    rows = []
    for r in test.head(a.objects).itertuples():
        mesh = trimesh.load(ROOT / "data/curated" / r.mesh_path, force="mesh", process=False)
        cams = orbit(a.views, 20.0, 40.0, 32, float(np.linalg.norm(mesh.vertices, axis=1).max()))
        bufs = render_object(mesh, cams)
        depths = np.stack([b.depth for b in bufs]).astype(np.float64)
        rgba = np.stack([b.rgba for b in bufs]).astype(np.float32) / 255.0
        real = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
        prompt = getattr(r, a.prompt)
        row, images = {"uid": r.uid, "prompt": prompt}, {}
        for name, use in (("caa", True), ("alone", False)):
            if a.schedule == "keyframes":
                im = keyframe_views(pipe, prompt, depths, cams, use, a.steps, a.seed)
            elif a.schedule == "oracle-pool":
                im = pooled_views(pipe, prompt, depths, cams, use, a.steps, a.seed, a.eta, tuple(a.pool_window))
            else:
                im = pipe(prompt, depths, cams, use_caa=use, num_inference_steps=a.steps, guidance_scale=a.guidance,
                          generator=torch.Generator().manual_seed(a.seed), output_type="np", eta=a.eta).images
            im = np.where(depths[..., None] > 0, im, 1.0)
            images[name] = im
            blurred = np.stack([uniform_filter(x, size=(3, 3, 1)) for x in im])
            row[f"psnr_{name}"] = float(np.mean(neighbour_psnr(im, depths, cams, 0.05)))
            row[f"psnr_blur_{name}"] = float(np.mean(neighbour_psnr(blurred, depths, cams, 0.05)))
        row["psnr_real"] = float(np.mean(neighbour_psnr(real, depths, cams, 0.05)))
        row["mean_abs_change"] = float(np.abs(images["caa"] - images["alone"]).mean())
        rows.append(row)
        print(f"{r.uid[:8]} PSNR caa {row['psnr_caa']:.2f} alone {row['psnr_alone']:.2f} | blurred "
              f"{row['psnr_blur_caa']:.2f} {row['psnr_blur_alone']:.2f} | real {row['psnr_real']:.2f} | "
              f"|caa-alone| {row['mean_abs_change']:.4f}", flush=True)
    table = pd.DataFrame(rows)
    summary = {k: round(float(table[k].mean()), 3) for k in table.columns if k.startswith(("psnr", "mean_abs"))}
    summary["caa_higher"] = int((table["psnr_caa"] > table["psnr_alone"]).sum())
    summary["objects"] = len(table)
    print(json.dumps(summary, indent=1))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()}, "summary": summary,
                                     "objects": rows, "min_overlap_px": MIN_OVERLAP_PX,
                                     "seconds": round(time.perf_counter() - t0, 1),
                                     "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}, indent=1))


if __name__ == "__main__":
    main()
