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
from dreamline.paths import confine
from dreamline.training.common import file_digest, orbit_cameras, pixel_resolution
from dreamline.training.data import TrainingDataError, view_file
from dreamline.training.loop import WHOLE, Part
from dreamline.training.objectives import DenoiseBatch
from dreamline.training.template import FineTuning

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


def preservation_l1(model: torch.nn.Module, theta0) -> torch.Tensor:
    params = [q for q in model.parameters() if q.requires_grad]
    total = sum(q.numel() for q in params)
    return sum((q - q0).abs().sum() for q, q0 in zip(params, theta0)) / total


class Reference(torch.nn.Module):
    """Starting weights as buffers: a module, so they move to the training device with the
    model (Trainer's loss_modules); iterates as the tensors in order."""

    def __init__(self, tensors):
        super().__init__()
        self.count = 0
        for t in tensors:
            self.register_buffer(f"t{self.count}", t, persistent=False)
            self.count += 1

    def __iter__(self):
        return (getattr(self, f"t{i}") for i in range(self.count))

    def __len__(self) -> int:
        return self.count


class DreamBoothTraining(FineTuning):
    """dreambooth: the multi-view model on a few identity images (2D batches), with the L1
    preservation term to its starting weights."""

    model_name = "dreambooth"

    def prepare(self) -> None:
        from diffusers import DDPMScheduler

        from dreamline.models.codec import to_latent
        from dreamline.models.text import encode_text

        p = self.p
        self.pipe = pipe = self.load_start(p.model)
        self.identity_uid = None
        if p.images is None:   # written into the model folder, beside the weights
            self.images_dir, self.identity_uid = default_identity(self.renders_root, self.captions_path,
                                                                  self.folder / "identity")
        else:
            self.images_dir = Path(p.images)
        self.images = load_identity_images(self.images_dir, pixel_resolution(pipe))
        with torch.no_grad():
            self.latents = to_latent(pipe.vae, self.images)
        self.states, self.mask = encode_text(pipe.text_encoder, pipe.tokenizer, [p.prompt], self.max_tokens)
        self.model = pipe.unet
        self.theta0 = Reference(q.detach().clone() for q in self.model.parameters() if q.requires_grad)
        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    def learns_from(self) -> tuple[str, ...]:
        return file_digest(self.images_dir), file_digest(Path(self.p.model))

    def loss_modules(self) -> list:
        return [self.theta0]

    def make_batch(self, step: int, part: Part = WHOLE) -> DenoiseBatch:
        from dreamline.training.loop import batch_indices

        idx = batch_indices(self.p.train.seed, step, len(self.latents), self.p.train.batch_size)
        span, idx = part.span(len(idx)), part.take(idx)
        mask = self.mask
        return DenoiseBatch(self.latents[torch.as_tensor(idx)], self.states.expand(len(idx), -1, -1),
                            None if mask is None else mask.expand(len(idx), -1), None, 1, part=span)

    def loss(self, model, batch, generator: torch.Generator) -> torch.Tensor:
        return super().loss(model, batch, generator) + self.p.preservation_weight * preservation_l1(model, self.theta0)

    def evaluate(self) -> dict:
        return {"mean_abs_param_change": float(preservation_l1(self.model, self.theta0))}

    def output_pipeline(self):
        return self.pipe   # its unet is the trained model

    def write_samples(self, pipe, folder: Path) -> dict:
        from dreamline.models.grid import grid_image

        p = self.p
        if p.train.sample_captions:
            g = torch.Generator().manual_seed(p.train.seed)
            out = pipe([p.prompt + ", 3d asset"], cameras=orbit_cameras(4), generator=g,
                       num_inference_steps=p.train.sample_steps, guidance_scale=p.train.guidance_scale,
                       output_type="np").images
            grid_image(np.concatenate([out, (self.images.permute(0, 2, 3, 1).numpy()[:4] + 1) / 2]), nrow=4).save(
                folder / "samples.png")
        return {}

    def describe(self) -> dict:
        return {"prompt": self.p.prompt, "identity_images": int(len(self.images)), "identity_uid": self.identity_uid}


def dreambooth(p: DreamBoothParams, renders_root: Path, captions_path: Path, out_dir: Path,
               work_dir: Path, compute=None) -> dict:
    return DreamBoothTraining(p, renders_root, captions_path, out_dir, work_dir, compute=compute).run()
