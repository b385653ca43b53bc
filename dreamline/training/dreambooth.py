"""MVDreamBooth: fine-tune the multi-view model on a few images of one identity.

L = L_denoise(identity images, prompt) + lambda * |theta - theta_0|_1 / N_theta (MVDream,
lambda = 1). Identity images have no cameras, so they train as 2D batches (camera and
multi-view attention off); the preservation term keeps the multi-view weights close to
where they started, which is what lets the result still sample consistent views.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from dreamline.config import DreamBoothParams
from dreamline.training.common import (keeps_global_rng, training_record, file_digest, fresh_folder, load_base_pipeline, orbit_cameras,
                                       pixel_resolution, replace_folder, run_key, write_summary)
from dreamline.paths import confine
from dreamline.training.data import TrainingDataError, view_file
from dreamline.training.objectives import DenoiseBatch, training_loss

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def load_identity_images(folder: Path, resolution: int) -> torch.Tensor:
    """(N, 3, R, R) in [-1, 1]: RGBA composited over white, centre-cropped, resized."""
    files = sorted(f for f in Path(folder).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise TrainingDataError(f"{folder}: no identity images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    out = []
    for f in files:
        # A symlink in the folder that points out of it is refused, not followed.
        img = Image.open(confine(f.name, folder, f"dreambooth identity image {f}")).convert("RGBA")
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.BOX)
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        rgb = np.asarray(Image.alpha_composite(white, img).convert("RGB"), dtype=np.float32) / 255.0
        out.append(torch.from_numpy(rgb).permute(2, 0, 1) * 2.0 - 1.0)
    return torch.stack(out)


def default_identity(renders_root: Path, captions_path: Path, dest: Path) -> tuple[Path, str]:
    """The embedded default's identity: one test object's first multi-view set, as PNGs."""
    caps = pd.read_parquet(captions_path)
    test = sorted(caps.loc[caps["split"] == "test", "uid"])
    if not test:
        raise TrainingDataError("no test-split object to use as the DreamBooth identity")
    index_path = Path(renders_root) / "index.parquet"
    index = pd.read_parquet(index_path)
    views = index[(index["uid"] == test[0]) & (index["kind"] == "mv") & (index["set"] == 0)]
    dest.mkdir(parents=True, exist_ok=True)
    for r in views.sort_values("view_id").itertuples():
        Image.open(view_file(Path(renders_root), r, "rgba_path", index_path)).save(
            confine(f"{r.view_id}.png", dest, f"{index_path}: row uid={r.uid} view_id={r.view_id}"))
    return dest, test[0]


def preservation_l1(model: torch.nn.Module, theta0: list[torch.Tensor]) -> torch.Tensor:
    params = [q for q in model.parameters() if q.requires_grad]
    total = sum(q.numel() for q in params)
    return sum((q - q0).abs().sum() for q, q0 in zip(params, theta0)) / total


@keeps_global_rng
def dreambooth(p: DreamBoothParams, renders_root: Path, captions_path: Path, out_dir: Path,
               work_dir: Path) -> dict:
    from diffusers import DDPMScheduler

    from dreamline.models.codec import to_latent
    from dreamline.models.grid import grid_image
    from dreamline.models.text import encode_text
    from dreamline.training.loop import Trainer, batch_indices

    torch.manual_seed(p.train.seed)
    pipe = load_base_pipeline(p.model)
    folder = fresh_folder(out_dir)
    identity_uid = None
    if p.images is None:
        images_dir, identity_uid = default_identity(renders_root, captions_path, folder / "identity")
    else:
        images_dir = Path(p.images)
    images = load_identity_images(images_dir, pixel_resolution(pipe))
    with torch.no_grad():
        latents = to_latent(pipe.vae, images)
    max_tokens = getattr(pipe.config, "max_tokens", None) or 16
    states, mask = encode_text(pipe.text_encoder, pipe.tokenizer, [p.prompt], max_tokens)
    unet = pipe.unet
    theta0 = [q.detach().clone() for q in unet.parameters() if q.requires_grad]
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    bs, seed = p.train.batch_size, p.train.seed

    def make_batch(step: int) -> DenoiseBatch:
        idx = batch_indices(seed, step, len(latents), bs)
        return DenoiseBatch(latents[torch.as_tensor(idx)], states.expand(len(idx), -1, -1),
                            None if mask is None else mask.expand(len(idx), -1), None, 1)

    def loss_fn(model, batch, g):
        return training_loss(model, scheduler, batch, g) + p.preservation_weight * preservation_l1(model, theta0)

    key = run_key(p, file_digest(images_dir), file_digest(Path(p.model)))
    trainer = Trainer(unet, p.train, work_dir, make_batch, loss_fn, samples_per_step=bs, run_key=key)
    result = trainer.run()
    trainer.ema.copy_to(unet.parameters())
    unet.eval()
    drift = float(preservation_l1(unet, theta0))
    pipe.save_pretrained(folder)
    if p.train.sample_captions:
        g = torch.Generator().manual_seed(seed)
        out = pipe([p.prompt + ", 3d asset"], cameras=orbit_cameras(4), generator=g,
                   num_inference_steps=p.train.sample_steps, guidance_scale=p.train.guidance_scale,
                   output_type="np").images
        grid_image(np.concatenate([out, (images.permute(0, 2, 3, 1).numpy()[:4] + 1) / 2]), nrow=4).save(
            folder / "samples.png")
    summary = {"model": "dreambooth", "prompt": p.prompt, "identity_images": int(len(images)),
               "identity_uid": identity_uid, "mean_abs_param_change": drift, "training": training_record(result, folder)}
    write_summary(folder, summary)
    replace_folder(folder, out_dir)
    return summary
