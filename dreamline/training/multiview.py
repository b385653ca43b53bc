"""train_mv: MVDream's multi-view model, fine-tuned from the base model.

Every self-attention layer attends over the F views of one object (the 2D weights reused),
a zero-initialised camera MLP adds the 16 extrinsic numbers to the timestep embedding, and
a fraction of steps are plain 2D batches (single views, camera and multi-view attention
off) so the model keeps what the base knew. Captions of 3D batches carry ", 3d asset".
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from dreamline.config import TrainMVParams
from dreamline.training.common import file_digest, heldout_captions, orbit_cameras, pixel_resolution
from dreamline.training.data import TextBank, all_texts, choose_captions, view_sets
from dreamline.training.loop import WHOLE, Part
from dreamline.training.objectives import DenoiseBatch, comparison_table, paired_heldout_losses
from dreamline.training.template import FineTuning

WHITE = torch.ones(3)


def _encode(pipe, table, idx) -> torch.Tensor:
    from dreamline.models.codec import to_latent

    with torch.no_grad():
        return to_latent(pipe.vae, table.rgb(idx, WHITE))


def _bank(pipe, rows, suffix: str, max_tokens: int) -> TextBank:
    from dreamline.models.text import encode_text

    return TextBank(all_texts(rows, ("", suffix)),
                    lambda texts: encode_text(pipe.text_encoder, pipe.tokenizer, texts, max_tokens))


def set_batch(pipe, table, sets: np.ndarray, texts: list[str], bank: TextBank, num_views: int,
              cameras: bool = True) -> DenoiseBatch:
    """A batch of whole view sets: (B*F) views, each object's text repeated over its views."""
    idx = sets.reshape(-1)
    states, mask = bank.lookup([t for t in texts for _ in range(sets.shape[1])])
    return DenoiseBatch(_encode(pipe, table, idx), states, mask,
                        table.cameras[idx] if cameras else None, num_views)


def rotated_about_up(cameras: torch.Tensor, degrees: float) -> torch.Tensor:
    """(N, 16) row-major camera-to-world matrices turned about the world's up (+Y) axis: the
    cameras of the same views of an object that faces `degrees` further round."""
    a = np.radians(degrees)
    turn = torch.tensor([[np.cos(a), 0.0, np.sin(a), 0.0], [0.0, 1.0, 0.0, 0.0],
                         [-np.sin(a), 0.0, np.cos(a), 0.0], [0.0, 0.0, 0.0, 1.0]], dtype=cameras.dtype)
    return (turn @ cameras.reshape(-1, 4, 4)).reshape(cameras.shape)


def heldout_comparison(base_unet, mv_unet, pipe, val, bank, p: TrainMVParams, max_tokens: int,
                       t_range: tuple[int, int] | None = None) -> dict:
    """MVDream's claim on val view sets, same noisy inputs for every row:
    base model (per view, no camera) vs multi-view model vs the same with attention per view,
    and the multi-view model told the wrong orientation (every camera turned 90 degrees about
    the up axis: the views of each set keep their relative poses). A model that reads its
    cameras does worse with them turned; one that does not cannot fix an asset's front in
    score distillation, where the views' absolute cameras are all it is told."""
    sets = view_sets(val, p.num_views)
    chunks = [sets[i: i + 8] for i in range(0, len(sets), 8)]
    caption = val.rows["caption"].to_numpy()

    def batches(suffix: str, cameras: bool, num_views: int, turn_deg: float = 0.0):
        out = [set_batch(pipe, val, c, [caption[s[0]] + suffix for s in c], bank, num_views, cameras)
               for c in chunks]
        if turn_deg:
            for b in out:
                b.cameras = rotated_about_up(b.cameras, turn_deg)
        return out

    results = paired_heldout_losses({
        "multiview": (mv_unet, batches(p.caption_suffix, True, p.num_views)),
        "multiview_attention_off": (mv_unet, batches(p.caption_suffix, True, 1)),
        "multiview_cameras_turned": (mv_unet, batches(p.caption_suffix, True, p.num_views, 90.0)),
        "base": (base_unet, batches("", False, 1)),
    }, pipe.scheduler, p.eval_timesteps, p.train.seed, unit_size=p.num_views, t_range=t_range)
    table = comparison_table(results, "multiview", p.train.seed)
    table["_sets"] = int(len(sets))
    return table


class MultiViewTraining(FineTuning):
    """train_mv / train_mv_3d: the base UNet made multi-view (camera MLP, joint attention),
    on view sets of the train split plus a share of plain 2D batches."""

    model_name = "mv"

    def prepare(self) -> None:
        from diffusers import DDPMScheduler

        from dreamline.models.unet import has_camera, is_multiview, to_multiview

        p = self.p
        self.pipe = pipe = self.load_start(p.base_model)
        resolution = pixel_resolution(pipe)
        self.train = self.load_split("train", resolution)
        self.val = self.load_split("val", resolution)
        self.sets = view_sets(self.train, p.num_views)
        self.bank = _bank(pipe, self.train.rows, p.caption_suffix, self.max_tokens)
        self.val_bank = _bank(pipe, self.val.rows, p.caption_suffix, self.max_tokens)
        self.base_unet = copy.deepcopy(pipe.unet).eval().requires_grad_(False)
        # An SD-layout folder arrives already converted (zero camera MLP, joint attention).
        self.model = pipe.unet if is_multiview(pipe.unet) and has_camera(pipe.unet) else to_multiview(pipe.unet)
        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        T = self.scheduler.config.num_train_timesteps
        if p.high_t_fraction and p.high_t_min >= T:
            raise ValueError(f"train_mv.high_t_min {p.high_t_min}: the model has timesteps 0..{T - 1}")

    def learns_from(self) -> tuple[str, ...]:
        return (*super().learns_from(), file_digest(Path(self.p.base_model)))

    def samples_per_step(self) -> int:
        return self.p.train.batch_size * self.p.num_views

    def make_batch(self, step: int, part: Part = WHOLE) -> DenoiseBatch:
        from dreamline.training.loop import batch_indices

        p, pipe, train = self.p, self.pipe, self.train
        bs, seed, F = p.train.batch_size, p.train.seed, p.num_views
        rng = np.random.default_rng([seed, step, 11])
        if rng.random() < p.joint_2d_fraction:  # a 2D batch: single views, camera off
            idx = batch_indices(seed + 1, step, len(train), bs * F)
            texts = choose_captions(train.rows.iloc[idx], rng, p.original_text_prob, p.caption_dropout)
            span, idx, texts = part.span(len(idx)), part.take(idx), part.take(texts)
            states, mask = self.bank.lookup(texts)
            return DenoiseBatch(_encode(pipe, train, idx), states, mask, None, 1, part=span)
        chosen = self.sets[batch_indices(seed, step, len(self.sets), bs)]
        firsts = train.rows.iloc[chosen[:, 0]]
        texts = choose_captions(firsts, rng, p.original_text_prob, p.caption_dropout, p.caption_suffix)
        span, chosen, texts = part.span(len(chosen)), part.take(chosen), part.take(texts)
        batch = set_batch(pipe, train, chosen, texts, self.bank, F)
        batch.part = span
        # Its own stream, so the batches and captions are those of high_t_fraction 0.
        if np.random.default_rng([seed, step, 13]).random() < p.high_t_fraction:
            batch.t_min = p.high_t_min
        return batch

    def evaluate(self) -> dict:
        return {"heldout": heldout_comparison(self.base_unet, self.model, self.pipe, self.val, self.val_bank,
                                              self.p, self.max_tokens)}

    def output_pipeline(self):
        self.pipe.unet = self.model
        self.pipe.register_modules(unet=self.model)
        return self.pipe

    def write_samples(self, pipe, folder: Path) -> dict:
        from dreamline.models.grid import grid_image

        p, F = self.p, self.p.num_views
        captions = heldout_captions(self.val.rows, p.train.sample_captions)
        if captions:
            g = torch.Generator().manual_seed(p.train.seed)
            images = pipe([c + p.caption_suffix for c in captions], cameras=orbit_cameras(F),
                          num_inference_steps=p.train.sample_steps, guidance_scale=p.train.guidance_scale,
                          generator=g, output_type="np").images
            grid_image(images, nrow=F).save(folder / "samples.png")
            (folder / "samples.txt").write_text("\n".join(captions) + "\n")
        return {}

    def describe(self) -> dict:
        return {"num_views": self.p.num_views, "train_sets": int(len(self.sets))}


def train_mv(p: TrainMVParams, renders_root: Path, captions_path: Path, out_dir: Path,
             work_dir: Path, max_tokens: int = 16, compute=None) -> dict:
    return MultiViewTraining(p, renders_root, captions_path, out_dir, work_dir, max_tokens, compute=compute).run()
