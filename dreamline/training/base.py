"""train_base: the small text-to-image model that stands in for Stable Diffusion 2.1 base.

Single views (every view kind) of train-split objects over a white background, captions
switched between the augmented caption and the original text, 10% dropped for CFG;
pixel space through the pixel-unshuffle codec; v-prediction, cosine schedule, EMA
(the recipe PLATFORM.md measured to learn categories and colours in minutes on 2 cores).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dreamline.config import TrainBaseParams
from dreamline.training.common import heldout_captions, sampling_scheduler, training_scheduler
from dreamline.training.data import TextBank, all_texts, choose_captions
from dreamline.training.loop import WHOLE, Part
from dreamline.training.objectives import DenoiseBatch, comparison_table, paired_heldout_losses
from dreamline.training.template import FineTuning

WHITE = torch.ones(3)


def build_components(p: TrainBaseParams):
    from dreamline.models.codec import PixelUnshuffleCodec
    from dreamline.models.text import load_minilm
    from dreamline.models.unet import build_unet

    text_encoder, tokenizer = load_minilm(pooled_token=p.pooled_text_token)
    codec = PixelUnshuffleCodec(factor=p.unshuffle)
    unet = build_unet(p.unet, in_channels=3 * p.unshuffle ** 2, sample_size=p.resolution // p.unshuffle,
                      cross_attention_dim=text_encoder.config.hidden_size)
    return unet, codec, text_encoder, tokenizer


def text_bank(rows, text_encoder, tokenizer, max_tokens: int, suffixes=("",), extra=()) -> TextBank:
    from dreamline.models.text import encode_text

    return TextBank(all_texts(rows, suffixes) + list(extra),
                    lambda texts: encode_text(text_encoder, tokenizer, texts, max_tokens))


def _single_view_batch(table, idx, texts, bank, codec) -> DenoiseBatch:
    states, mask = bank.lookup(texts)
    with torch.no_grad():
        latents = codec.encode(table.rgb(idx, WHITE))
    return DenoiseBatch(latents, states, mask, None, 1)


def caption_losses(unet, scheduler, val, bank: TextBank, codec, p: TrainBaseParams) -> dict:
    """Held-out (val) loss with the right caption, no caption and another object's caption.

    Text conditioning is learnt when right < empty < wrong on the same noisy views."""
    rows = val.rows
    rng = np.random.default_rng(p.train.seed)
    captions = rows["caption"].to_numpy()
    wrong = []
    for i in range(len(rows)):  # a caption naming something else, drawn reproducibly
        others = np.flatnonzero(captions != captions[i])
        wrong.append(captions[rng.choice(others)] if len(others) else "")
    chunks = [np.arange(s, min(s + 64, len(rows))) for s in range(0, len(rows), 64)]

    def batches(texts) -> list[DenoiseBatch]:
        return [_single_view_batch(val, idx, [texts[i] for i in idx], bank, codec) for idx in chunks]

    results = paired_heldout_losses({
        "right_caption": (unet, batches(list(captions))),
        "empty_caption": (unet, batches([""] * len(rows))),
        "wrong_caption": (unet, batches(wrong)),
    }, scheduler, 8, p.train.seed)
    return comparison_table(results, "right_caption", p.train.seed)


class BaseTraining(FineTuning):
    """train_base: a fresh UNet (MiniLM text encoder, pixel-unshuffle codec) on single views."""

    model_name = "base"

    def prepare(self) -> None:
        p = self.p
        self.table = self.load_split("train", p.resolution)
        self.val = self.load_split("val", p.resolution)
        self.model, self.codec, self.text_encoder, self.tokenizer = build_components(p)
        self.bank = text_bank(self.table.rows, self.text_encoder, self.tokenizer, p.max_tokens,
                              extra=all_texts(self.val.rows))
        self.scheduler = training_scheduler(p.diffusion)

    def make_batch(self, step: int, part: Part = WHOLE) -> DenoiseBatch:
        from dreamline.training.loop import batch_indices

        p, seed = self.p, self.p.train.seed
        idx = batch_indices(seed, step, len(self.table), p.train.batch_size)
        rng = np.random.default_rng([seed, step, 7])
        texts = choose_captions(self.table.rows.iloc[idx], rng, p.original_text_prob, p.caption_dropout)
        span, idx, texts = part.span(len(idx)), part.take(idx), part.take(texts)
        batch = _single_view_batch(self.table, idx, texts, self.bank, self.codec)
        batch.part = span
        return batch

    def evaluate(self) -> dict:
        return {"heldout": caption_losses(self.model, self.scheduler, self.val, self.bank, self.codec, self.p)}

    def output_pipeline(self):
        from dreamline.models.pipelines import MultiViewDiffusionPipeline

        return MultiViewDiffusionPipeline(unet=self.model, vae=self.codec, text_encoder=self.text_encoder,
                                          tokenizer=self.tokenizer, scheduler=sampling_scheduler(self.scheduler))

    def write_samples(self, pipe, folder: Path) -> dict:
        from dreamline.models.grid import grid_image

        p = self.p
        captions = heldout_captions(self.val.rows, p.train.sample_captions)
        if captions:
            g = torch.Generator().manual_seed(p.train.seed)
            images = pipe(captions, num_inference_steps=p.train.sample_steps,
                          guidance_scale=p.train.guidance_scale, generator=g, output_type="np",
                          max_tokens=p.max_tokens).images
            grid_image(images, nrow=len(captions)).save(folder / "samples.png")
            (folder / "samples.txt").write_text("\n".join(captions) + "\n")
        return {}

    def describe(self) -> dict:
        return {"train_views": len(self.table), "heldout_views": len(self.val)}


def train_base(p: TrainBaseParams, renders_root: Path, captions_path: Path, out_dir: Path,
               work_dir: Path, compute=None) -> dict:
    """`compute`: a dreamline.training.loop.Compute; None: what the entry point exported."""
    return BaseTraining(p, renders_root, captions_path, out_dir, work_dir, compute=compute).run()
