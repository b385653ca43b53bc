"""MVDiffusion's two training stages on the rendered corpus.

train_depth: the base model with the depth map as extra input (zero-weighted at the start,
so training starts from the base), trained on single train-split views. Held out: val loss
with each view's own depth, another object's depth, and no depth, on the same noise.

train_caa: CAA blocks after every block of the frozen depth model, trained on the MVDream
view sets (N views of one object, one timestep per set as MVDiffusion; `min_timestep` and
`independent_timesteps` change that, see `caa_noise`), each view's epsilon/v loss summed
over the set as MVDiffusion does (averaged here: a constant factor). Held out: val sets
with CAA on vs off, same noise.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from dreamline.config import TrainCAAParams, TrainDepthParams
from dreamline.models.weights import load_pretrained
from dreamline.paths import confine
from dreamline.rendering.cameras import Camera
from dreamline.training.common import (fresh_folder, keeps_global_rng, file_digest, load_base_pipeline, pixel_resolution,
                                       renders_digest, replace_folder, run_key, training_record, write_summary)
from dreamline.training.data import choose_captions, load_views, view_sets
# The multi-view stage's helpers: views over white through the codec, and the text bank.
from dreamline.training.multiview import _bank, _encode
from dreamline.training.objectives import (DenoiseBatch, comparison_table, denoise_loss, draw_noise,
                                           paired_heldout_losses, training_loss)
from dreamline.texturing.correspondence import Correspondences, correspondences, depth_at



def view_depths(renders_root: Path, rows, resolution: int) -> np.ndarray:
    """(N, R, R) depth of each row's view (arrays.npz of its object), read at R x R pixel centres."""
    out = np.zeros((len(rows), resolution, resolution))
    for path, group in rows.groupby("arrays_path", sort=False):
        arrays = np.load(confine(path, renders_root, f"{Path(renders_root) / 'index.parquet'}: rows uid="
                                                     f"{group['uid'].iloc[0]}, arrays_path"))
        where = {str(v): i for i, v in enumerate(arrays["view_id"])}
        for pos, view_id in zip(group.index, group["view_id"]):
            out[rows.index.get_loc(pos)] = depth_at(arrays["depth"][where[str(view_id)]], resolution, resolution)
    return out


def view_cameras(rows) -> list[Camera]:
    return [Camera(np.asarray(r.c2w, dtype=np.float64).reshape(4, 4), float(r.fov_deg), int(r.width), int(r.height))
            for r in rows.itertuples()]


@keeps_global_rng
def train_depth(p: TrainDepthParams, renders_root: Path, captions_path: Path, out_dir: Path, work_dir: Path,
                max_tokens: int = 16) -> dict:
    from diffusers import DDPMScheduler

    from dreamline.texturing.depth import add_depth_input, depth_channels, depth_condition
    from dreamline.texturing.pipeline import MVDiffusionPipeline
    from dreamline.training.loop import Trainer, batch_indices

    torch.manual_seed(p.train.seed)
    base = load_base_pipeline(p.base_model)
    max_tokens = getattr(base.config, "max_tokens", None) or max_tokens
    res = pixel_resolution(base)
    train = load_views(renders_root, captions_path, res, splits=("train",))
    val = load_views(renders_root, captions_path, res, splits=("val",))
    train_depths = depth_condition(view_depths(renders_root, train.rows, res), base.vae)
    val_depths = depth_condition(view_depths(renders_root, val.rows, res), base.vae)
    bank, val_bank = _bank(base, train.rows, "", max_tokens), _bank(base, val.rows, "", max_tokens)
    scheduler = DDPMScheduler.from_config(base.scheduler.config)
    unet = add_depth_input(copy.deepcopy(base.unet), depth_channels(base.vae)).train()
    seed, bs = p.train.seed, p.train.batch_size

    def make_batch(step: int):
        idx = batch_indices(seed, step, len(train), bs)
        rng = np.random.default_rng([seed, step, 17])
        states, mask = bank.lookup(choose_captions(train.rows.iloc[idx], rng, p.original_text_prob, p.caption_dropout))
        return DenoiseBatch(_encode(base, train, idx), states, mask, None, cond=train_depths[torch.as_tensor(idx)])

    def loss_fn(model, batch, g):
        return training_loss(model, scheduler, batch, g)

    key = run_key(p, renders_digest(renders_root), file_digest(captions_path), file_digest(Path(p.base_model)))
    trainer = Trainer(unet, p.train, work_dir, make_batch, loss_fn, samples_per_step=bs, run_key=key)
    result = trainer.run()
    trainer.ema.copy_to(unet.parameters())
    unet.eval()

    latents = _encode(base, val, np.arange(len(val)))
    states, mask = val_bank.lookup(val.rows["caption"].tolist())
    # Another object's depth: the val views shifted by half the table (sorted by uid).
    other = torch.roll(val_depths, len(val) // 2, dims=0)
    none = torch.full_like(val_depths, -1.0)

    def variant(depth, chunk: int = 64):
        return unet, [DenoiseBatch(latents[s:s + chunk], states[s:s + chunk],
                                   None if mask is None else mask[s:s + chunk], None, cond=depth[s:s + chunk])
                      for s in range(0, len(latents), chunk)]

    heldout = comparison_table(paired_heldout_losses({"own_depth": variant(val_depths),
                                                      "other_object_depth": variant(other),
                                                      "no_depth": variant(none)}, scheduler, p.eval_timesteps, seed),
                               "own_depth", seed)
    pipe = MVDiffusionPipeline(unet=unet, vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                               scheduler=base.scheduler, caa=None, max_tokens=max_tokens)
    folder = fresh_folder(out_dir)
    pipe.save_pretrained(folder)
    summary = {"model": "depth", "train_views": len(train), "heldout_views": len(val), "heldout": heldout,
               "training": training_record(result, folder)}
    write_summary(folder, summary)
    replace_folder(folder, out_dir)
    return summary


def caa_noise(batch: DenoiseBatch, num_train_timesteps: int, min_timestep: int, independent: float,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise and timesteps for a CAA batch: t in [min_timestep, T), shared by a set's views
    (MVDiffusion), except in a share `independent` of the sets, where each view draws its own."""
    n = batch.num_views
    noise, t = draw_noise(batch, num_train_timesteps, generator, (min_timestep, num_train_timesteps))
    if independent > 0:
        own = torch.randint(min_timestep, num_train_timesteps, t.shape, generator=generator)
        mixed = (torch.rand(len(t) // n, generator=generator) < independent).repeat_interleave(n)
        t = torch.where(mixed, own, t)
    return noise, t


def set_geometry(renders_root: Path, table, sets: np.ndarray, res: int, sizes, depth_tol: float):
    """Per view set: its depth maps (S, F, res, res) and {(h, w): Correspondences} (target (S, F, F-1, h, w, 2))."""
    depths = view_depths(renders_root, table.rows, res)
    cams = view_cameras(table.rows)
    per_size = {}
    for hw in sizes:
        cs = [correspondences([depths[i] for i in s], [cams[i] for i in s], hw[0], hw[1], depth_tol) for s in sets]
        per_size[hw] = (torch.stack([c.target for c in cs]), torch.stack([c.valid for c in cs]), cs[0].others)
    return depths, per_size


def batch_geometry(per_size: dict, chosen: np.ndarray) -> dict:
    idx = torch.as_tensor(chosen)
    return {hw: Correspondences(tgt[idx], val[idx], others) for hw, (tgt, val, others) in per_size.items()}


@keeps_global_rng
def train_caa(p: TrainCAAParams, renders_root: Path, captions_path: Path, out_dir: Path, work_dir: Path) -> dict:
    from diffusers import DDPMScheduler

    from dreamline.models.codec import spatial_factor
    from dreamline.models.grid import grid_image
    from dreamline.texturing.caa import CAAModel, unet_feature_sizes
    from dreamline.texturing.depth import depth_condition
    from dreamline.texturing.pipeline import MVDiffusionPipeline
    from dreamline.training.loop import Trainer, batch_indices

    torch.manual_seed(p.train.seed)
    pipe = load_pretrained(MVDiffusionPipeline, p.depth_model, "train_caa.depth_model")
    pipe.set_progress_bar_config(disable=True)
    unet = pipe.unet.eval().requires_grad_(False)
    res = pixel_resolution(pipe)
    latent = res // spatial_factor(pipe.vae)
    sizes = unet_feature_sizes(unet, latent, latent)
    train = load_views(renders_root, captions_path, res, kinds=("mv",), splits=("train",))
    val = load_views(renders_root, captions_path, res, kinds=("mv",), splits=("val",))
    n = p.num_views
    train_sets, val_sets = view_sets(train, n), view_sets(val, n)
    train_depth, train_geo = set_geometry(renders_root, train, train_sets, res, sizes, p.depth_tol)
    val_depth, val_geo = set_geometry(renders_root, val, val_sets, res, sizes, p.depth_tol)
    train_cond = depth_condition(train_depth, pipe.vae)
    val_cond = depth_condition(val_depth, pipe.vae)
    max_tokens = pipe.config.max_tokens
    bank, val_bank = _bank(pipe, train.rows, "", max_tokens), _bank(pipe, val.rows, "", max_tokens)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    caa = CAAModel.for_unet(unet, heads=p.heads, kernel=p.kernel, num_freqs=p.num_freqs,
                            norm_groups=unet.config.norm_num_groups)
    handles = caa.attach(unet)
    seed, bs = p.train.seed, p.train.batch_size

    def make_batch(step: int):
        chosen = batch_indices(seed, step, len(train_sets), bs)
        rng = np.random.default_rng([seed, step, 19])
        texts = choose_captions(train.rows.iloc[train_sets[chosen, 0]], rng, p.original_text_prob, p.caption_dropout)
        states, mask = bank.lookup([t for t in texts for _ in range(n)])
        idx = train_sets[chosen].reshape(-1)
        geo = batch_geometry(train_geo, chosen)
        return DenoiseBatch(_encode(pipe, train, idx), states, mask, None, n, cond=train_cond[torch.as_tensor(idx)],
                            scope=lambda: caa.correspondences(geo, n))

    def loss_fn(model, batch, g):
        noise, t = caa_noise(batch, scheduler.config.num_train_timesteps, p.min_timestep, p.independent_timesteps, g)
        return denoise_loss(unet, scheduler, batch, noise, t)

    key = run_key(p, renders_digest(renders_root), file_digest(captions_path), file_digest(Path(p.depth_model)))
    trainer = Trainer(caa, p.train, work_dir, make_batch, loss_fn, samples_per_step=bs * n, run_key=key)
    result = trainer.run()
    trainer.ema.copy_to(caa.parameters())
    caa.eval()

    vidx = val_sets.reshape(-1)
    latents = _encode(pipe, val, vidx)
    states, mask = val_bank.lookup([val.rows["caption"].iloc[s[0]] for s in val_sets for _ in range(n)])
    cond = val_cond[torch.as_tensor(vidx)]

    def variant(on: bool, chunk: int = 16):
        batches = []
        for s in range(0, len(val_sets), chunk):
            sl, geo = slice(s * n, (s + chunk) * n), batch_geometry(val_geo, np.arange(s, min(s + chunk, len(val_sets))))
            scope = (lambda geo=geo: caa.correspondences(geo, n)) if on else caa.off
            batches.append(DenoiseBatch(latents[sl], states[sl], None if mask is None else mask[sl], None, n,
                                        cond=cond[sl], scope=scope))
        return unet, batches

    heldout = comparison_table(paired_heldout_losses({"caa": variant(True), "caa_off": variant(False)}, scheduler,
                                                     p.eval_timesteps, seed, n), "caa", seed)
    heldout["_sets"] = int(len(val_sets))
    for h in handles:
        h.remove()
    out = MVDiffusionPipeline(unet=unet, vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                              scheduler=pipe.scheduler, caa=caa, max_tokens=max_tokens, depth_tol=p.depth_tol)
    out.set_progress_bar_config(disable=True)
    folder = fresh_folder(out_dir)
    out.save_pretrained(folder)
    k = min(p.train.sample_captions, len(val_sets))
    if k:
        cams = view_cameras(val.rows)
        rows = []
        for s in val_sets[:k]:
            kwargs = dict(num_inference_steps=p.train.sample_steps, guidance_scale=p.train.guidance_scale,
                          output_type="np")
            prompt = val.rows["caption"].iloc[s[0]]
            d = val_depth[s]
            for use in (True, False):
                rows.append(out(prompt, d, [cams[i] for i in s], use_caa=use,
                                generator=torch.Generator().manual_seed(seed), **kwargs).images)
        grid_image(np.concatenate(rows), nrow=n).save(folder / "samples.png")
        (folder / "samples.txt").write_text("rows in pairs per val set: with CAA, then the same seed without\n")
    summary = {"model": "mvdiffusion", "num_views": n, "train_sets": int(len(train_sets)), "heldout": heldout,
               "training": training_record(result, folder)}
    write_summary(folder, summary)
    replace_folder(folder, out_dir)
    return summary

