"""What the training stages share: schedulers, run keys, sample cameras, atomic model folders."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamline.atomic import write_json_atomic
from dreamline.config import DiffusionParams
from dreamline.rendering.cameras import orbit_c2w


def keeps_global_rng(fn):
    """Run `fn` on a private copy of torch's global CPU RNG. Trainers seed it (module
    initialisers draw from it and take no generator); the caller's state is left as it was,
    so no library call changes process-wide state."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            return fn(*args, **kwargs)
    return wrapper


def training_scheduler(p: DiffusionParams):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=p.num_train_timesteps, beta_schedule=p.beta_schedule,
                         prediction_type=p.prediction_type, clip_sample=False)


def sampling_scheduler(train_scheduler, pixel_space: bool = True):
    """DDIM with the training schedule. In pixel space each step's x0 estimate is clipped to
    the data range [-1, 1] (as DDPM/Imagen do): at 32 px it removed most of the speckle an
    undertrained model leaves. Latent models (SD) must not clip: latents are unbounded."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(train_scheduler.config, clip_sample=pixel_space,
                                     set_alpha_to_one=False)


def file_digest(*paths: str | Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
        for f in files:
            h.update(str(f.relative_to(p) if p.is_dir() else f.parent.name + "/" + f.name).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def renders_digest(renders_root: str | Path) -> str:
    """The render index plus every object's work key (mesh hash + render params): it
    changes whenever any pixel could, without hashing thousands of images."""
    root = Path(renders_root)
    return file_digest(root / "index.parquet", *sorted((root / "objects").glob("*/done.json")))


# Training settings that change memory, not numbers: a checkpoint resumes across them.
NOT_IN_RUN_KEY = {"train": {"gradient_checkpointing"}}


def run_key(params: Any, *digests: str) -> str:
    """Identifies a training run: its parameters and digests of what it learns from."""
    blob = json.dumps(params.model_dump(mode="json", exclude=NOT_IN_RUN_KEY), sort_keys=True) + "".join(digests)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def orbit_cameras(n: int, elevation_deg: float = 15.0, distance: float = 2.0,
                  start_deg: float = 0.0) -> torch.Tensor:
    """(n, 16) c2w of n azimuths 360/n apart: the fixed cameras of sample grids."""
    return torch.tensor(np.stack([orbit_c2w(start_deg + 360.0 * k / n, elevation_deg, distance).reshape(-1)
                                  for k in range(n)]), dtype=torch.float32)


def heldout_captions(rows, k: int) -> list[str]:
    """The first k distinct augmented captions of held-out rows, in a stable order."""
    return sorted(set(rows["caption"]))[:k]


def replace_folder(tmp: Path, final: Path) -> None:
    """Swap a finished folder in place of the old one; a crash leaves one or the other."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def fresh_folder(final: Path) -> Path:
    tmp = final.with_name(final.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def write_summary(folder: Path, summary: dict) -> None:
    write_json_atomic(folder / "summary.json", summary)


def load_base_pipeline(path: str | Path):
    """A diffusers folder as a MultiViewDiffusionPipeline: this project's own pipelines, or an
    SD 2.1-layout folder (research scale), which becomes a latent-space pipeline."""
    from dreamline.models.pipelines import MultiViewDiffusionPipeline, load_sd_layout

    from dreamline.models.pipelines import CCMPipeline

    index = Path(path) / "model_index.json"
    if not index.exists():
        raise FileNotFoundError(f"{path}: no model_index.json (train the base model first, or "
                                f"point base_model at a diffusers folder)")
    name = json.loads(index.read_text()).get("_class_name")
    if name == "StableDiffusionPipeline":
        return load_sd_layout(path)
    from dreamline.models.weights import load_pretrained

    return load_pretrained(CCMPipeline if name == "CCMPipeline" else MultiViewDiffusionPipeline, path)


def pixel_resolution(pipe) -> int:
    """Image size the pipeline's UNet works at, through its codec (unshuffle factor or VAE)."""
    vae = pipe.vae
    factor = getattr(vae.config, "factor", None) or 2 ** (len(vae.config.block_out_channels) - 1)
    return int(pipe.unet.config.sample_size) * int(factor)


LIVE_DIR = "dvclive"


def write_dvclive(rows: list[dict], folder: Path, prefix: str = "train") -> Path:
    """A finished loss curve logged through DVCLive into `folder` (a fresh directory):
    `metrics.json` (the last row, what `dvc metrics` / `dvc exp show` read) and
    `plots/metrics/<prefix>/<column>.tsv` (`step` and the value: what `dvc plots` draws).

    Written once, at the end, from the rows alone (no timestamps, no host data): equal
    curves give equal bytes, so a killed-and-resumed run's folder hashes like an unbroken
    one's. No dvc.yaml, report or experiment of its own: the project's dvc.yaml lists these
    files (top-level `metrics:` / `plots:`)."""
    from dvclive import Live

    class FilesOnly(Live):
        # Live() otherwise opens the DVC repository around the working directory: in a git
        # repository with no commit yet it raises (dvclive 3.49.1), in one without .dvc it
        # runs `dvc init`. Writing files needs neither, nor Studio's live updates.
        def _init_dvc(self) -> None:
            pass

        def _init_studio(self) -> None:
            self._studio_events_to_skip.update(("start", "data", "done"))

    live = FilesOnly(dir=str(folder), save_dvc_exp=False, dvcyaml=None, report=None)
    for row in rows:
        live.step = int(row["step"])
        for key, value in row.items():
            if key != "step" and value not in (None, ""):
                live.log_metric(f"{prefix}/{key}", float(value))
    live.make_summary()   # metrics.json; not end(): no experiment, Studio or VS Code signal
    return folder


def read_curve_rows(path: Path) -> list[dict]:
    """The rows of the loop's work-dir curve.csv (step,loss,lr), numbers as logged."""
    import csv

    with Path(path).open(newline="") as f:
        return [{"step": int(r["step"]), **{k: float(v) for k, v in r.items() if k != "step" and v != ""}}
                for r in csv.DictReader(f)]


def training_record(result, folder: Path, name: str = LIVE_DIR) -> dict:
    """The loop's result as JSON-ready numbers; its loss curve logged through DVCLive into
    folder/<name> (`dvclive`, or e.g. `dvclive_ablation` for a second run of a stage).
    Only what the weights determine goes into the summary and the DVCLive files; wall time,
    throughput, the step a resumed run started from and what computed it (device, its name,
    precision, processes: results agree across them within float tolerance) go to the
    folder's untracked run.json (section `training`, or `training_ablation` for
    `dvclive_ablation`)."""
    from dreamline.runinfo import record_run

    if result.curve and Path(result.curve).exists():
        rows = read_curve_rows(result.curve)
        if rows:
            write_dvclive(rows, folder / name)
    section = "training" + name[len(LIVE_DIR):] if name.startswith(LIVE_DIR) else name
    info = {"seconds": round(result.seconds, 2), "samples_per_s": result.samples_per_s,
            "resumed_from": result.resumed_from}
    if getattr(result, "compute", None):
        info["compute"] = result.compute
    record_run(folder, section, info)
    return {"steps": result.step, "final_loss": result.loss}
