"""train_agp: SweetDreamer's aligned geometric prior, fine-tuned from the base model.

The model generates canonical coordinate maps for a caption and a camera. The CCM goes to
the UNet without a VAE (SweetDreamer): through a pixel-space base's own pixel unshuffle, or,
from an SD-layout base, as the latent itself (`dreamline.models.codec.CCMLatentCodec`).
Its camera embedding starts at zero, so training starts from the base model; an ablation
with the camera switched off trains on the same batches and noise, and held-out (val) loss
says whether the camera is used.
"""
from __future__ import annotations

import copy
import functools
from pathlib import Path

import numpy as np
import torch

from dreamline.config import TrainAGPParams
from dreamline.training.common import file_digest, pixel_resolution
from dreamline.training.data import TextBank, all_texts, choose_captions
from dreamline.training.loop import WHOLE, Part
from dreamline.training.objectives import DenoiseBatch, comparison_table, paired_heldout_losses
from dreamline.training.template import FineTuning, TrainingRun


def _ccm_latents(codec, table, idx) -> torch.Tensor:
    from dreamline.models.codec import to_latent

    with torch.no_grad():
        return to_latent(codec, table.ccm[torch.as_tensor(idx)])


def _batch(codec, table, idx, texts, bank, cameras: bool) -> DenoiseBatch:
    states, mask = bank.lookup(texts)
    return DenoiseBatch(_ccm_latents(codec, table, idx), states, mask,
                        table.cameras[torch.as_tensor(idx)] if cameras else None, 1)


def ccm_validity(raw: np.ndarray, masks: np.ndarray, real_masks: np.ndarray) -> dict:
    """What can be said of sampled CCMs beyond the pipeline's own clamping and masking.

    `raw`: the decoded samples before clamping, (N, 3, H, W) in model space ([-1, 1] is the
    CCM range, background -1); `masks`: the pipeline's foreground; `real_masks`: the real
    renders' foreground for the same cameras. Reported: how much of the raw output leaves
    the CCM range, how much of the background is not at -1 (the background the model was
    taught), and each sample's foreground fraction next to the real object's."""
    fg = masks.reshape(len(masks), -1).mean(1)
    real = real_masks.reshape(len(real_masks), -1).mean(1)
    bg = raw.transpose(0, 2, 3, 1)[~masks.astype(bool)]
    return {"raw_outside_range_fraction": round(float((np.abs(raw) > 1.0).mean()), 5),
            "background_off_fraction": round(float((np.abs(bg + 1.0) > 0.1).any(-1).mean()), 5) if len(bg) else None,
            "foreground_fraction": [round(float(f), 4) for f in fg],
            "real_foreground_fraction": [round(float(f), 4) for f in real],
            "nonempty": int(((fg > 0.01) & (fg < 0.95)).sum()), "samples": int(len(masks))}


class AGPTraining(FineTuning):
    """train_agp: the base UNet with a camera embedding, on CCMs of the agp views; with
    `p.ablation`, a second run from the base UNet with the camera off (same batches and noise)."""

    model_name = "agp"

    def prepare(self) -> None:
        from diffusers import DDPMScheduler

        from dreamline.models.codec import ccm_codec
        from dreamline.models.text import encode_text
        from dreamline.models.unet import add_camera_embedding, has_camera

        self.base = base = self.load_start(self.p.base_model)
        self.codec = ccm_codec(base)
        resolution = pixel_resolution(base)
        self.train = self.load_split("train", resolution, kinds=("agp",), with_ccm=True)
        self.val = self.load_split("val", resolution, kinds=("agp",), with_ccm=True)
        self.bank = TextBank(all_texts(self.train.rows) + all_texts(self.val.rows),
                             lambda texts: encode_text(base.text_encoder, base.tokenizer, texts, self.max_tokens))
        self.scheduler = DDPMScheduler.from_config(base.scheduler.config)
        start = copy.deepcopy(base.unet)
        self.model = start if has_camera(start) else add_camera_embedding(start)
        self.ablation = None

    def learns_from(self) -> tuple[str, ...]:
        return (*super().learns_from(), file_digest(Path(self.p.base_model)))

    def make_batch(self, step: int, part: Part = WHOLE, cameras: bool = True) -> DenoiseBatch:
        from dreamline.training.loop import batch_indices

        p, seed = self.p, self.p.train.seed
        idx = batch_indices(seed, step, len(self.train), p.train.batch_size)
        rng = np.random.default_rng([seed, step, 13])
        texts = choose_captions(self.train.rows.iloc[idx], rng, p.original_text_prob, p.caption_dropout)
        span, idx, texts = part.span(len(idx)), part.take(idx), part.take(texts)
        batch = _batch(self.codec, self.train, idx, texts, self.bank, cameras)
        batch.part = span
        return batch

    def training_runs(self):
        yield TrainingRun(self.model, self.make_batch, self.loss, self.samples_per_step(), work="agp")
        if self.p.ablation:
            self.ablation = copy.deepcopy(self.base.unet)
            yield TrainingRun(self.ablation, functools.partial(self.make_batch, cameras=False), self.loss,
                              self.samples_per_step(), name="ablation")

    def training_records(self, trained: list, folder: Path) -> dict:
        records = super().training_records(trained, folder)
        records.setdefault("ablation_training", None)   # null when p.ablation is off
        return records

    def evaluate(self) -> dict:
        val = self.val
        chunks = [np.arange(s, min(s + 64, len(val))) for s in range(0, len(val), 64)]
        captions = val.rows["caption"].tolist()

        def batches(cameras: bool) -> list[DenoiseBatch]:
            return [_batch(self.codec, val, c, [captions[i] for i in c], self.bank, cameras) for c in chunks]

        variants = {"agp": (self.model, batches(True))}
        if self.ablation is not None:
            variants["agp_camera_off"] = (self.ablation, batches(False))
        seed = self.p.train.seed
        return {"heldout": comparison_table(paired_heldout_losses(variants, self.scheduler, self.p.eval_timesteps,
                                                                  seed), "agp", seed)}

    def output_pipeline(self):
        from dreamline.models.pipelines import CCMPipeline

        base = self.base
        return CCMPipeline(unet=self.model, vae=self.codec, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                           scheduler=base.scheduler)

    def write_samples(self, pipe, folder: Path) -> dict:
        from dreamline.models.grid import grid_image

        p, val = self.p, self.val
        captions = val.rows["caption"].tolist()
        validity = None
        k = min(p.train.sample_captions, len(val))
        if k:
            rows = np.random.default_rng(p.train.seed).choice(len(val), size=k, replace=False)
            kwargs = dict(cameras=val.cameras[torch.as_tensor(rows)][:, None],
                          num_inference_steps=p.train.sample_steps, guidance_scale=p.train.guidance_scale)
            prompts = [captions[i] for i in rows]
            out = pipe(prompts, generator=torch.Generator().manual_seed(p.train.seed), output_type="np", **kwargs)
            raw = pipe.sample(prompts, generator=torch.Generator().manual_seed(p.train.seed), **kwargs)
            validity = ccm_validity(raw.float().numpy(), np.asarray(out.masks),
                                    (val.ccm[torch.as_tensor(rows)] > -1).any(1).numpy())
            truth = (val.ccm[torch.as_tensor(rows)].permute(0, 2, 3, 1).numpy() + 1) / 2
            grid_image(np.concatenate([out.images, truth]), nrow=k).save(folder / "samples.png")
            (folder / "samples.txt").write_text("top row: samples for held-out cameras; bottom: real CCMs\n"
                                                + "\n".join(captions[i] for i in rows) + "\n")
        return {"samples": validity}

    def describe(self) -> dict:
        return {"train_views": len(self.train), "heldout_views": len(self.val)}


def train_agp(p: TrainAGPParams, renders_root: Path, captions_path: Path, out_dir: Path,
              work_dir: Path, max_tokens: int = 16, compute=None) -> dict:
    return AGPTraining(p, renders_root, captions_path, out_dir, work_dir, max_tokens, compute=compute).run()
