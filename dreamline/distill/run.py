"""One prompt, end to end: distil (resuming a checkpoint of the same key), export the asset
into a fresh folder, write its summary, and swap the folder in place."""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Callable

from dreamline.config import DistillParams
from dreamline.device import describe
from dreamline.distill.assets import STATE, missing_exports, write_assets
from dreamline.distill.loop import PriorCache, distill, distill_key
from dreamline.runinfo import RUN_FILE, read_run, record_run
from dreamline.training.common import file_digest, fresh_folder, replace_folder, write_summary


def model_paths(p: DistillParams) -> list[str]:
    return sorted({p.guidance_config(term).model for term in p.guidance_terms})


def check_models(p: DistillParams) -> None:
    """Fail before any work when a prior the guidance needs is missing or holds pickle
    weights only (FileNotFoundError / UnsafeWeightsError), naming the key."""
    from dreamline.models.weights import require_safetensors

    for term in p.guidance_terms:
        path = Path(p.guidance_config(term).model)
        if not (path / "model_index.json").is_file():
            raise FileNotFoundError(f"distill.guidance.{term}.model: {path} has no model_index.json "
                                    f"(run the stage that trains it, or point the key at a diffusers folder)")
        require_safetensors(path, f"distill.guidance.{term}.model")


def _last_mean(curve: list[dict], key: str, n: int = 20) -> float | None:
    values = [row[key] for row in curve[-n:] if key in row]
    return round(sum(values) / len(values), 6) if values else None


def _reexport(p: DistillParams, old: dict, out_dir: Path, log, priors: PriorCache) -> dict:
    """Only the export settings changed: write the exports again from the saved state."""
    import csv

    from dreamline.distill.assets import load_asset

    rep, prompt = load_asset(out_dir, device=priors.device)
    curve = []
    if (out_dir / "curve.csv").exists():
        with (out_dir / "curve.csv").open() as f:
            curve = list(csv.DictReader(f))
    t0 = time.perf_counter()
    tmp = fresh_folder(out_dir)
    summary = {**old, "assets": write_assets(rep, p, prompt, curve, tmp),
               "export": p.export.model_dump(mode="json")}
    write_summary(tmp, summary)
    record_run(tmp, "distill", {**read_run(out_dir).get("distill", {}),
                                "export_seconds": round(time.perf_counter() - t0, 2),
                                "export_compute": describe(priors.device, priors.precision)})
    replace_folder(tmp, out_dir)
    if log:
        log(f"{old['slug']}: re-exported ({old['key']})")
    return summary


def model_digest(folder: str | Path) -> str:
    """A model folder's content as DVC sees it: every file but the untracked run.json (wall
    time of the run that trained it), so a retrained, byte-identical model keeps its digest."""
    folder = Path(folder)
    h = hashlib.sha256()
    for f in sorted(f for f in folder.rglob("*") if f.is_file() and f.name != RUN_FILE):
        h.update(str(f.relative_to(folder)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def distill_prompt(p: DistillParams, slug: str, prompt: str, out_dir: Path, work_dir: Path,
                   priors: PriorCache | None = None, log: Callable[[str], None] | None = None,
                   stop_after: int | None = None) -> dict:
    """data/distill/<slug>: skipped when its summary already has this run's key. The work
    runs on `priors.device` at `priors.precision` (a PriorCache on the CPU at fp32 when
    None); the precision is part of the key, the device is not (and is recorded in the
    untracked run.json only)."""
    check_models(p)
    priors = priors or PriorCache()
    digests = {path: model_digest(path) for path in model_paths(p)}
    key = distill_key(p, prompt, digests, priors.precision)
    summary_path = out_dir / "summary.json"
    if summary_path.is_file():
        old = json.loads(summary_path.read_text())
        if old.get("key") == key and not (out_dir / STATE).is_file():
            if log:   # an earlier version's folder: its state is a pickle that is never loaded
                log(f"{slug}: no {STATE} beside the summary; distilling again")
        elif old.get("key") == key:
            missing = missing_exports(out_dir)
            if old.get("export") == p.export.model_dump(mode="json") and not missing:
                if log:
                    log(f"{slug}: up to date ({key})")
                return old
            if missing and log:
                log(f"{slug}: no {', '.join(missing)}; exporting again")
            # Same asset: other export settings, or a folder of a version that exported less.
            return _reexport(p, old, out_dir, log, priors)
    work_dir.mkdir(parents=True, exist_ok=True)
    result = distill(p, prompt, priors, work_dir, key, stop_after=stop_after, log=log)
    if result.steps < p.steps:
        return {"slug": slug, "prompt": prompt, "key": key, "stopped_at": result.steps}
    t0 = time.perf_counter()
    tmp = fresh_folder(out_dir)
    assets = write_assets(result.representation, p, prompt, result.curve, tmp)
    summary = {
        "slug": slug, "prompt": prompt, "key": key,
        "representation_type": p.representation_type, "guidance_type": p.guidance_type,
        "steps": result.steps,
        "final_loss": _last_mean(result.curve, "loss"), "final_opacity": _last_mean(result.curve, "opacity"),
        "models": digests, "assets": assets, "export": p.export.model_dump(mode="json"),
    }
    write_summary(tmp, summary)
    record_run(tmp, "distill", {"resumed_from": result.resumed_from, "distill_seconds": round(result.seconds, 2),
                                "iterations_per_s": result.iterations_per_s,
                                "export_seconds": round(time.perf_counter() - t0, 2),
                                **describe(priors.device, priors.precision)})
    replace_folder(tmp, out_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    return summary
