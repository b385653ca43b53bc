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
from dreamline.training.common import file_digest, pixel_resolution
from dreamline.training.data import choose_captions, view_sets
# The multi-view stage's helpers: views over white through the codec, and the text bank.
from dreamline.training.multiview import _bank, _encode
from dreamline.training.objectives import (DenoiseBatch, comparison_table, denoise_loss, draw_noise,
                                           own_rows, paired_heldout_losses)
from dreamline.training.loop import WHOLE, Part
from dreamline.training.template import FineTuning
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


class DepthTraining(FineTuning):
    """train_depth: the base UNet with the depth map as extra (zero-weighted) input channels."""

    model_name = "depth"

    def prepare(self) -> None:
        from diffusers import DDPMScheduler

        from dreamline.texturing.depth import add_depth_input, depth_channels, depth_condition

        self.base = base = self.load_start(self.p.base_model)
        res = pixel_resolution(base)
        self.train = self.load_split("train", res)
        self.val = self.load_split("val", res)
        self.train_depths = depth_condition(view_depths(self.renders_root, self.train.rows, res), base.vae)
        self.val_depths = depth_condition(view_depths(self.renders_root, self.val.rows, res), base.vae)
        self.bank = _bank(base, self.train.rows, "", self.max_tokens)
        self.val_bank = _bank(base, self.val.rows, "", self.max_tokens)
        self.scheduler = DDPMScheduler.from_config(base.scheduler.config)
        self.model = add_depth_input(copy.deepcopy(base.unet), depth_channels(base.vae)).train()

    def learns_from(self) -> tuple[str, ...]:
        return (*super().learns_from(), file_digest(Path(self.p.base_model)))

    def make_batch(self, step: int, part: Part = WHOLE) -> DenoiseBatch:
        from dreamline.training.loop import batch_indices

        p, seed, train = self.p, self.p.train.seed, self.train
        idx = batch_indices(seed, step, len(train), p.train.batch_size)
        rng = np.random.default_rng([seed, step, 17])
        texts = choose_captions(train.rows.iloc[idx], rng, p.original_text_prob, p.caption_dropout)
        span, idx, texts = part.span(len(idx)), part.take(idx), part.take(texts)
        states, mask = self.bank.lookup(texts)
        return DenoiseBatch(_encode(self.base, train, idx), states, mask, None,
                            cond=self.train_depths[torch.as_tensor(idx)], part=span)

    def evaluate(self) -> dict:
        val, val_depths, seed = self.val, self.val_depths, self.p.train.seed
        latents = _encode(self.base, val, np.arange(len(val)))
        states, mask = self.val_bank.lookup(val.rows["caption"].tolist())
        # Another object's depth: the val views shifted by half the table (sorted by uid).
        other = torch.roll(val_depths, len(val) // 2, dims=0)
        none = torch.full_like(val_depths, -1.0)

        def variant(depth, chunk: int = 64):
            return self.model, [DenoiseBatch(latents[s:s + chunk], states[s:s + chunk],
                                             None if mask is None else mask[s:s + chunk], None, cond=depth[s:s + chunk])
                                for s in range(0, len(latents), chunk)]

        results = paired_heldout_losses({"own_depth": variant(val_depths), "other_object_depth": variant(other),
                                         "no_depth": variant(none)}, self.scheduler, self.p.eval_timesteps, seed)
        return {"heldout": comparison_table(results, "own_depth", seed)}

    def output_pipeline(self):
        from dreamline.texturing.pipeline import MVDiffusionPipeline

        base = self.base
        return MVDiffusionPipeline(unet=self.model, vae=base.vae, text_encoder=base.text_encoder,
                                   tokenizer=base.tokenizer, scheduler=base.scheduler, caa=None,
                                   max_tokens=self.max_tokens)

    def describe(self) -> dict:
        return {"train_views": len(self.train), "heldout_views": len(self.val)}


def train_depth(p: TrainDepthParams, renders_root: Path, captions_path: Path, out_dir: Path, work_dir: Path,
                max_tokens: int = 16, compute=None) -> dict:
    return DepthTraining(p, renders_root, captions_path, out_dir, work_dir, max_tokens, compute=compute).run()


def caa_noise(batch: DenoiseBatch, num_train_timesteps: int, min_timestep: int, independent: float,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise and timesteps for a CAA batch: t in [min_timestep, T), shared by a set's views
    (MVDiffusion), except in a share `independent` of the sets, where each view draws its own."""
    n = batch.num_views
    # Drawn for the step's whole batch; a part (rank, micro-batch) keeps its own rows.
    noise, t = draw_noise(batch, num_train_timesteps, generator, (min_timestep, num_train_timesteps), whole=True)
    if independent > 0:
        own = torch.randint(min_timestep, num_train_timesteps, t.shape, generator=generator)
        mixed = (torch.rand(len(t) // n, generator=generator) < independent).repeat_interleave(n)
        t = torch.where(mixed, own, t)
    return own_rows(batch, noise), own_rows(batch, t)


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


class CAATraining(FineTuning):
    """train_caa: CAA blocks after every block of the frozen depth model, on view sets."""

    model_name = "mvdiffusion"

    def prepare(self) -> None:
        from diffusers import DDPMScheduler

        from dreamline.models.codec import spatial_factor
        from dreamline.texturing.caa import CAAModel, unet_feature_sizes
        from dreamline.texturing.depth import depth_condition
        from dreamline.texturing.pipeline import MVDiffusionPipeline

        p = self.p
        self.pipe = pipe = load_pretrained(MVDiffusionPipeline, p.depth_model, "train_caa.depth_model")
        pipe.set_progress_bar_config(disable=True)
        self.unet = unet = pipe.unet.eval().requires_grad_(False)
        res = pixel_resolution(pipe)
        latent = res // spatial_factor(pipe.vae)
        sizes = unet_feature_sizes(unet, latent, latent)
        self.train = self.load_split("train", res, kinds=("mv",))
        self.val = self.load_split("val", res, kinds=("mv",))
        n = p.num_views
        self.train_sets, self.val_sets = view_sets(self.train, n), view_sets(self.val, n)
        train_depths, self.train_geo = set_geometry(self.renders_root, self.train, self.train_sets, res, sizes,
                                                   p.depth_tol)
        self.val_depth, self.val_geo = set_geometry(self.renders_root, self.val, self.val_sets, res, sizes,
                                                    p.depth_tol)
        self.train_cond = depth_condition(train_depths, pipe.vae)
        self.val_cond = depth_condition(self.val_depth, pipe.vae)
        self.max_tokens = pipe.config.max_tokens
        self.bank = _bank(pipe, self.train.rows, "", self.max_tokens)
        self.val_bank = _bank(pipe, self.val.rows, "", self.max_tokens)
        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.model = CAAModel.for_unet(unet, heads=p.heads, kernel=p.kernel, num_freqs=p.num_freqs,
                                       norm_groups=unet.config.norm_num_groups)
        self.handles = self.model.attach(unet)

    def learns_from(self) -> tuple[str, ...]:
        return (*super().learns_from(), file_digest(Path(self.p.depth_model)))

    def samples_per_step(self) -> int:
        return self.p.train.batch_size * self.p.num_views

    def make_batch(self, step: int, part: Part = WHOLE) -> DenoiseBatch:
        from dreamline.training.loop import batch_indices

        p, seed, n, caa = self.p, self.p.train.seed, self.p.num_views, self.model
        train, train_sets = self.train, self.train_sets
        chosen = batch_indices(seed, step, len(train_sets), p.train.batch_size)
        rng = np.random.default_rng([seed, step, 19])
        texts = choose_captions(train.rows.iloc[train_sets[chosen, 0]], rng, p.original_text_prob, p.caption_dropout)
        span, chosen, texts = part.span(len(chosen)), part.take(chosen), part.take(texts)
        states, mask = self.bank.lookup([t for t in texts for _ in range(n)])
        idx = train_sets[chosen].reshape(-1)
        geo = batch_geometry(self.train_geo, chosen)
        return DenoiseBatch(_encode(self.pipe, train, idx), states, mask, None, n,
                            cond=self.train_cond[torch.as_tensor(idx)], scope=lambda: caa.correspondences(geo, n),
                            part=span)

    def loss_modules(self) -> list:
        return [self.unet]   # the loss runs the CAA blocks inside it

    def loss(self, model, batch, generator: torch.Generator) -> torch.Tensor:
        # The CAA blocks run inside the frozen UNet, through the hooks attach() set.
        p = self.p
        noise, t = caa_noise(batch, self.scheduler.config.num_train_timesteps, p.min_timestep,
                             p.independent_timesteps, generator)
        return denoise_loss(self.unet, self.scheduler, batch, noise, t, snr_gamma=p.train.snr_gamma)

    def evaluate(self) -> dict:
        p, seed, n, caa = self.p, self.p.train.seed, self.p.num_views, self.model
        val, val_sets = self.val, self.val_sets
        vidx = val_sets.reshape(-1)
        latents = _encode(self.pipe, val, vidx)
        states, mask = self.val_bank.lookup([val.rows["caption"].iloc[s[0]] for s in val_sets for _ in range(n)])
        cond = self.val_cond[torch.as_tensor(vidx)]

        def variant(on: bool, chunk: int = 16):
            batches = []
            for s in range(0, len(val_sets), chunk):
                sl = slice(s * n, (s + chunk) * n)
                geo = batch_geometry(self.val_geo, np.arange(s, min(s + chunk, len(val_sets))))
                scope = (lambda geo=geo: caa.correspondences(geo, n)) if on else caa.off
                batches.append(DenoiseBatch(latents[sl], states[sl], None if mask is None else mask[sl], None, n,
                                            cond=cond[sl], scope=scope))
            return self.unet, batches

        heldout = comparison_table(paired_heldout_losses({"caa": variant(True), "caa_off": variant(False)},
                                                         self.scheduler, p.eval_timesteps, seed, n), "caa", seed)
        heldout["_sets"] = int(len(val_sets))
        return {"heldout": heldout}

    def output_pipeline(self):
        from dreamline.texturing.pipeline import MVDiffusionPipeline

        for h in self.handles:   # the pipeline attaches the CAA model itself
            h.remove()
        pipe = self.pipe
        out = MVDiffusionPipeline(unet=self.unet, vae=pipe.vae, text_encoder=pipe.text_encoder,
                                  tokenizer=pipe.tokenizer, scheduler=pipe.scheduler, caa=self.model,
                                  max_tokens=self.max_tokens, depth_tol=self.p.depth_tol)
        out.set_progress_bar_config(disable=True)
        return out

    def write_samples(self, pipe, folder: Path) -> dict:
        from dreamline.models.grid import grid_image

        p, val = self.p, self.val
        k = min(p.train.sample_captions, len(self.val_sets))
        if k:
            cams = view_cameras(val.rows)
            rows = []
            for s in self.val_sets[:k]:
                kwargs = dict(num_inference_steps=p.train.sample_steps, guidance_scale=p.train.guidance_scale,
                              output_type="np")
                prompt = val.rows["caption"].iloc[s[0]]
                d = self.val_depth[s]
                for use in (True, False):
                    rows.append(pipe(prompt, d, [cams[i] for i in s], use_caa=use,
                                     generator=torch.Generator().manual_seed(p.train.seed), **kwargs).images)
            grid_image(np.concatenate(rows), nrow=p.num_views).save(folder / "samples.png")
            (folder / "samples.txt").write_text("rows in pairs per val set: with CAA, then the same seed without\n")
        return {}

    def describe(self) -> dict:
        return {"num_views": self.p.num_views, "train_sets": int(len(self.train_sets))}


def train_caa(p: TrainCAAParams, renders_root: Path, captions_path: Path, out_dir: Path, work_dir: Path,
              compute=None) -> dict:
    return CAATraining(p, renders_root, captions_path, out_dir, work_dir, compute=compute).run()
