"""The distillation loop: sample views, render, sum the guidance terms, step; checkpoint.

All randomness comes from one torch.Generator whose state is checkpointed with the
representation and optimiser, so a killed run resumes to the same asset as an unbroken one.
It is a CPU generator on every device: draws are made on the CPU and moved (dreamline.device),
so the numbers, and their order, do not depend on where the work runs.

Device and precision (params `compute`, resolved by the caller): the representation, its
renders, the cameras and the guidance run on `device`; the representation's parameters and
the Adam state stay float32 whatever the precision, the priors are stored in
`frozen_dtype(precision)` and run under autocast (dreamline.guidance.prior).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from dreamline import tensorfile
from dreamline.config import DistillParams
from dreamline.distill.sampling import pick_shading, sample_views
from dreamline.guidance.prior import DiffusionPrior
from dreamline.guidance.terms import StepInput, build_guidance
from dreamline.representations.build import build_representation
from dreamline.representations.base import background_images

CHECKPOINT = "checkpoint.safetensors"
LEGACY_CHECKPOINT = "checkpoint.pt"   # a pickle of earlier versions: never loaded


@dataclass
class DistillResult:
    representation: torch.nn.Module
    steps: int
    seconds: float
    resumed_from: int
    curve: list[dict] = field(default_factory=list)

    @property
    def iterations_per_s(self) -> float:
        done = self.steps - self.resumed_from
        return round(done / self.seconds, 3) if self.seconds > 0 else 0.0


def distill_key(p: DistillParams, prompt: str, model_digests: dict[str, str], precision: str = "fp32") -> str:
    """What determines the asset: the prompt, the resolved settings of the guidance terms
    and representation in use (defaults filled in; blocks of unused terms left out), every
    other distill setting except the prompt list and export settings, the priors' contents,
    the precision (not the device: see dreamline.config.ComputeParams) and the code the loop
    can run."""
    from dreamline.lineage.code import code_digest

    settings = p.model_dump(mode="json", exclude={"prompts", "export", "log_every", "checkpoint_every", "threads",
                                                  "guidance", "representation"})
    settings["guidance"] = {t: p.guidance_config(t).model_dump(mode="json") for t in p.guidance_terms}
    settings["representation"] = p.representation_config().model_dump(mode="json")
    parts = [prompt, settings, model_digests, code_digest("dreamline.distill.loop:distill")]
    if precision != "fp32":   # fp32 runs keep the key form they always had
        parts.append({"precision": precision})
    blob = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class PriorCache:
    """Loads each model folder once, however many terms (or prompts) use it, on `device` at
    `precision` (the default loader; a custom `loader(path)` places its priors itself)."""

    def __init__(self, loader: Callable[[str], DiffusionPrior] | None = None,
                 device: torch.device | str | None = None, precision: str = "fp32"):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.precision = precision
        self.loader = loader
        self._priors: dict[str, DiffusionPrior] = {}

    def __call__(self, path: str) -> DiffusionPrior:
        if path not in self._priors:
            self._priors[path] = (self.loader(path) if self.loader is not None
                                  else DiffusionPrior.load(path, self.device, self.precision))
        return self._priors[path]


def build_terms(p: DistillParams, priors: PriorCache) -> dict[str, object]:
    return {term: build_guidance(term, p.guidance_config(term), priors(p.guidance_config(term).model))
            for term in p.guidance_terms}


def _save(path: Path, state: dict) -> None:
    tensorfile.save(path, state)


def _read_checkpoint(work_dir: Path, key: str, log: Callable[[str], None] | None) -> dict | None:
    """The checkpoint of this run's key, or None (absent, another run's, unreadable)."""
    def say(msg: str) -> None:
        if log:
            log(msg)

    legacy = work_dir / LEGACY_CHECKPOINT
    if legacy.exists():
        say(f"ignoring {legacy}: a pickle checkpoint of an earlier version is never loaded "
            f"(unpickling can run code); starting from step 0")
    ckpt = work_dir / CHECKPOINT
    if not ckpt.exists():
        return None
    try:
        state = tensorfile.load(ckpt)
    except ValueError as err:   # truncated, foreign, or a pickle under the new name
        say(f"ignoring checkpoint {ckpt}: {err}")
        return None
    return state if isinstance(state, dict) and state.get("key") == key else None


def distill(p: DistillParams, prompt: str, priors: PriorCache, work_dir: Path, key: str,
            stop_after: int | None = None, log: Callable[[str], None] | None = None) -> DistillResult:
    """Optimise a representation for `prompt` on the priors' device (`priors.device`, at
    `priors.precision`). Checkpoints go to work_dir; a checkpoint of the same key resumes.
    `stop_after` ends the call early (tests of resumption).
    Thread count and flush-denormal mode are the caller's (stages/_common.py sets them from
    `distill.threads` for the stage and for `dreamline generate`)."""
    device = priors.device
    g = torch.Generator().manual_seed(p.seed)   # on the CPU, whatever the device
    # Built on the CPU from `g` (the same initial parameters on every device), then moved;
    # the parameters, and so the optimiser state, stay float32.
    rep = build_representation(p.representation_type, p.representation_config(), g).to(device)
    terms = build_terms(p, priors)
    orthogonal = max((t.orthogonal_views for t in terms.values()), default=0)
    optimiser = torch.optim.Adam(rep.param_groups(), betas=(0.9, 0.99), eps=1e-15)
    shares = {"albedo": p.shading.albedo, "lambertian": p.shading.lambertian,
              "textureless": p.shading.textureless}

    start, curve = 0, []
    ckpt = work_dir / CHECKPOINT
    state = _read_checkpoint(work_dir, key, log)
    if state is not None:
        rep.load_state_dict(state["representation"])
        optimiser.load_state_dict(state["optimiser"])
        g.set_state(state["generator"])
        start, curve = int(state["step"]), [dict(r) for r in state["curve"]]
        if log:
            log(f"resuming {prompt!r} from step {start}")

    t0 = time.perf_counter()
    end = p.steps if stop_after is None else min(p.steps, stop_after)
    for step in range(start, end):
        progress = step / p.steps
        res = p.resolution_at(step)
        views = sample_views(p.camera, p.views_per_step, orthogonal, res, g, p.shading.ambient,
                             device=device)
        shading = pick_shading(shares, progress, p.shading.albedo_warmup_fraction, g)
        dirs = views.cams.rays()[1] if p.background == "mlp" else None
        bg = background_images(p.background, len(views.cams), res, res, g, dirs,
                               getattr(rep, "background", None), device=device)
        out = rep.render(views.cams, shading, views.light, bg, generator=g,
                         need_normals=shading != "albedo")
        s = StepInput(out, views.cams, views.azimuth_deg, views.elevation_deg, prompt, step, p.steps, g)
        row = {"step": step + 1, "shading": shading, "resolution": res}
        total = torch.zeros((), device=device)
        for name, term in terms.items():
            result = term(s)
            w = term.weight_at(progress)
            total = total + w * result["loss"]
            row[f"loss_{name}"] = round(float(result["loss"].detach()), 6)
            row[f"t_{name}"] = round(float(result["t"]), 1)
        if p.lambda_orientation > 0:
            total = total + p.lambda_orientation * out.orientation
        if p.lambda_opacity > 0:
            total = total + p.lambda_opacity * out.opacity.mean()
        if p.lambda_opaque > 0:
            o = out.opacity.clamp(1e-5, 1.0 - 1e-5)
            total = total + p.lambda_opaque * -(o * o.log() + (1.0 - o) * (1.0 - o).log()).mean()
        reg = rep.regulariser()
        total = total + reg
        row["regulariser"] = round(float(reg.detach()), 6)
        row["orientation"] = round(float(out.orientation.detach()), 6)
        row["opacity"] = round(float(out.opacity.detach().mean()), 4)
        row["loss"] = round(float(total.detach()), 6)
        optimiser.zero_grad(set_to_none=True)
        total.backward()
        if p.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(rep.parameters(), p.grad_clip)
        optimiser.step()
        rep.post_step(step)
        curve.append(row)
        done = step + 1
        if log and (done % p.log_every == 0 or done == p.steps):
            log(f"{prompt!r} step {done}/{p.steps} loss {row['loss']:.4f} opacity {row['opacity']:.3f} "
                f"({shading})")
        if done % p.checkpoint_every == 0 or done == end:
            _save(ckpt, {"key": key, "step": done, "representation": rep.state_dict(),
                         "optimiser": optimiser.state_dict(), "generator": g.get_state(), "curve": curve})
    return DistillResult(rep, end, time.perf_counter() - t0, start, curve)
