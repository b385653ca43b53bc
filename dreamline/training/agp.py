"""train_agp: SweetDreamer's aligned geometric prior, fine-tuned from the base model.

The model generates canonical coordinate maps (3 channels, used directly as the image: no
VAE in pixel space) for a caption and a camera. Its camera embedding starts at zero, so
training starts from the base model; an ablation with the camera switched off trains on
the same batches and noise, and held-out (val) loss says whether the camera is used.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from dreamline.config import TrainAGPParams
from dreamline.training.common import (keeps_global_rng, training_record, file_digest, fresh_folder,
                                       load_base_pipeline, pixel_resolution, renders_digest,
                                       replace_folder, run_key, write_summary)
from dreamline.training.data import TextBank, all_texts, choose_captions, load_views
from dreamline.training.objectives import (DenoiseBatch, comparison_table, paired_heldout_losses,
                                           training_loss)


def _ccm_latents(pipe, table, idx) -> torch.Tensor:
    from dreamline.models.codec import to_latent

    with torch.no_grad():
        return to_latent(pipe.vae, table.ccm[torch.as_tensor(idx)])


def _batch(pipe, table, idx, texts, bank, cameras: bool) -> DenoiseBatch:
    states, mask = bank.lookup(texts)
    return DenoiseBatch(_ccm_latents(pipe, table, idx), states, mask,
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


def _train_one(unet, p: TrainAGPParams, table, bank, pipe, scheduler, work_dir: Path, key: str,
               cameras: bool):
    from dreamline.training.loop import Trainer, batch_indices

    seed, bs = p.train.seed, p.train.batch_size

    def make_batch(step: int) -> DenoiseBatch:
        idx = batch_indices(seed, step, len(table), bs)
        rng = np.random.default_rng([seed, step, 13])
        texts = choose_captions(table.rows.iloc[idx], rng, p.original_text_prob, p.caption_dropout)
        return _batch(pipe, table, idx, texts, bank, cameras)

    trainer = Trainer(unet, p.train, work_dir, make_batch,
                      lambda model, batch, g: training_loss(model, scheduler, batch, g),
                      samples_per_step=bs, run_key=key + ("" if cameras else "-ablation"))
    result = trainer.run()
    trainer.ema.copy_to(unet.parameters())
    return unet.eval(), result


@keeps_global_rng
def train_agp(p: TrainAGPParams, renders_root: Path, captions_path: Path, out_dir: Path,
              work_dir: Path, max_tokens: int = 16) -> dict:
    from diffusers import DDPMScheduler

    from dreamline.models.grid import grid_image
    from dreamline.models.pipelines import CCMPipeline
    from dreamline.models.text import encode_text
    from dreamline.models.unet import add_camera_embedding, has_camera

    torch.manual_seed(p.train.seed)
    base = load_base_pipeline(p.base_model)
    max_tokens = getattr(base.config, "max_tokens", None) or max_tokens
    resolution = pixel_resolution(base)
    train = load_views(renders_root, captions_path, resolution, kinds=("agp",), splits=("train",), with_ccm=True)
    val = load_views(renders_root, captions_path, resolution, kinds=("agp",), splits=("val",), with_ccm=True)
    bank = TextBank(all_texts(train.rows) + all_texts(val.rows),
                    lambda texts: encode_text(base.text_encoder, base.tokenizer, texts, max_tokens))
    scheduler = DDPMScheduler.from_config(base.scheduler.config)
    key = run_key(p, renders_digest(renders_root), file_digest(captions_path), file_digest(Path(p.base_model)))
    start = copy.deepcopy(base.unet)
    unet, result = _train_one(start if has_camera(start) else add_camera_embedding(start), p, train, bank, base,
                              scheduler, work_dir / "agp", key, cameras=True)
    variants = {}
    chunks = [np.arange(s, min(s + 64, len(val))) for s in range(0, len(val), 64)]
    captions = val.rows["caption"].tolist()
    variants["agp"] = (unet, [_batch(base, val, c, [captions[i] for i in c], bank, True) for c in chunks])
    ablation_result = None
    if p.ablation:
        ablation, ablation_result = _train_one(copy.deepcopy(base.unet), p, train, bank, base, scheduler,
                                               work_dir / "ablation", key, cameras=False)
        variants["agp_camera_off"] = (ablation, [_batch(base, val, c, [captions[i] for i in c], bank, False)
                                                 for c in chunks])
    heldout = comparison_table(paired_heldout_losses(variants, scheduler, p.eval_timesteps, p.train.seed),
                               "agp", p.train.seed)

    pipe = CCMPipeline(unet=unet, vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                       scheduler=base.scheduler)
    folder = fresh_folder(out_dir)
    pipe.save_pretrained(folder)
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
    summary = {"model": "agp", "train_views": len(train), "heldout_views": len(val),
               "heldout": heldout, "samples": validity, "training": training_record(result, folder),
               "ablation_training": ablation_result and training_record(ablation_result, folder, "dvclive_ablation")}
    write_summary(folder, summary)
    replace_folder(folder, out_dir)
    return summary
