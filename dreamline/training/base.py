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
from dreamline.training.common import (keeps_global_rng, training_record, file_digest, fresh_folder, heldout_captions, renders_digest,
                                       replace_folder, run_key, sampling_scheduler,
                                       training_scheduler, write_summary)
from dreamline.training.data import (TextBank, all_texts, choose_captions, load_views)
from dreamline.training.objectives import (DenoiseBatch, comparison_table, paired_heldout_losses,
                                           training_loss)

WHITE = torch.ones(3)


def build_components(p: TrainBaseParams):
    from dreamline.models.codec import PixelUnshuffleCodec
    from dreamline.models.text import load_minilm
    from dreamline.models.unet import build_unet

    text_encoder, tokenizer = load_minilm()
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


@keeps_global_rng
def train_base(p: TrainBaseParams, renders_root: Path, captions_path: Path, out_dir: Path,
               work_dir: Path) -> dict:
    from dreamline.models.grid import grid_image
    from dreamline.models.pipelines import MultiViewDiffusionPipeline
    from dreamline.training.loop import Trainer, batch_indices

    torch.manual_seed(p.train.seed)
    table = load_views(renders_root, captions_path, p.resolution, splits=("train",))
    val = load_views(renders_root, captions_path, p.resolution, splits=("val",))
    unet, codec, text_encoder, tokenizer = build_components(p)
    bank = text_bank(table.rows, text_encoder, tokenizer, p.max_tokens, extra=all_texts(val.rows))
    scheduler = training_scheduler(p.diffusion)
    bs, seed = p.train.batch_size, p.train.seed

    def make_batch(step: int) -> DenoiseBatch:
        idx = batch_indices(seed, step, len(table), bs)
        rng = np.random.default_rng([seed, step, 7])
        texts = choose_captions(table.rows.iloc[idx], rng, p.original_text_prob, p.caption_dropout)
        return _single_view_batch(table, idx, texts, bank, codec)

    key = run_key(p, renders_digest(renders_root), file_digest(captions_path))
    trainer = Trainer(unet, p.train, work_dir, make_batch,
                      lambda model, batch, g: training_loss(model, scheduler, batch, g),
                      samples_per_step=bs, run_key=key)
    result = trainer.run()
    trainer.ema.copy_to(unet.parameters())
    unet.eval()

    pipe = MultiViewDiffusionPipeline(unet=unet, vae=codec, text_encoder=text_encoder,
                                      tokenizer=tokenizer, scheduler=sampling_scheduler(scheduler))
    folder = fresh_folder(out_dir)
    pipe.save_pretrained(folder)
    heldout = caption_losses(unet, scheduler, val, bank, codec, p)
    captions = heldout_captions(val.rows, p.train.sample_captions)
    if captions:
        g = torch.Generator().manual_seed(seed)
        images = pipe(captions, num_inference_steps=p.train.sample_steps,
                      guidance_scale=p.train.guidance_scale, generator=g, output_type="np",
                      max_tokens=p.max_tokens).images
        grid_image(images, nrow=len(captions)).save(folder / "samples.png")
        (folder / "samples.txt").write_text("\n".join(captions) + "\n")
    summary = {"model": "base", "train_views": len(table), "heldout_views": len(val),
               "heldout": heldout, "training": training_record(result, folder)}
    write_summary(folder, summary)
    replace_folder(folder, out_dir)
    return summary
