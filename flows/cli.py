"""`dreamline` command line: sampling, distilling one prompt, serving the deployments, lineage.

It runs flows, so it lives with them, outside the library (`dreamline/` never imports the
orchestration layer); like the stage entry points it makes the process-wide settings."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")   # before anything imports OpenGL

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="dreamline: text-to-3D pipeline tools (stages run through `dvc repro`).")


@app.callback()
def main() -> None:
    """dreamline: text-to-3D pipeline tools (stages run through `dvc repro`)."""


@app.command()
def sample(prompt: str = typer.Argument(..., help="text prompt"),
           model: Path = typer.Option(Path("data/models/mv"), help="a diffusers folder of this project "
                                      "(base, mv, agp, dreambooth) or an SD 2.1-layout folder"),
           out: Path = typer.Option(Path("sample.png"), help="grid PNG to write"),
           views: int = typer.Option(4, min=1, max=32, help="cameras around the object (camera models)"),
           elevation: float = typer.Option(15.0, help="camera elevation in degrees"),
           distance: float = typer.Option(2.0, min=0.1, help="camera distance (normalised objects)"),
           rows: int = typer.Option(1, min=1, max=16, help="independent samples (grid rows)"),
           steps: int = typer.Option(50, min=1, max=1000, help="DDIM steps"),
           guidance: float = typer.Option(1.0, min=0.0, help="classifier-free guidance scale"),
           rescale: float = typer.Option(0.0, min=0.0, max=1.0, help="CFG rescale"),
           seed: int = typer.Option(0),
           threads: Optional[int] = typer.Option(None, help="torch threads"),
           params: Path = typer.Option(Path("params.yaml"), help="params file: its compute block (device, "
                                       "precision) when it exists, else auto / fp32"),
           device: Optional[str] = typer.Option(None, help="compute.device instead: auto | cpu | cuda | cuda:N"),
           precision: Optional[str] = typer.Option(None, help="compute.precision instead: fp32 | bf16 | fp16")):
    """Write a grid PNG of samples for PROMPT: one row per sample, one column per view."""
    import torch

    from dreamline.device import autocast
    from dreamline.models.grid import grid_image
    from dreamline.models.sampling import place
    from dreamline.training.common import load_base_pipeline, orbit_cameras

    target, dtype_name = _compute(params, device, precision)
    if threads:
        torch.set_num_threads(threads)
    try:
        pipe = place(load_base_pipeline(model), target, dtype_name)
    except FileNotFoundError as err:
        raise typer.BadParameter(str(err), param_hint="--model") from None
    has_camera = pipe.unet.class_embedding is not None
    cameras = orbit_cameras(views, elevation, distance) if has_camera else None
    g = torch.Generator().manual_seed(seed)    # on the CPU: the same noise on every device
    with autocast(target, dtype_name):
        images = pipe([prompt] * rows, cameras=cameras, num_inference_steps=steps, guidance_scale=guidance,
                      guidance_rescale=rescale, generator=g, output_type="np").images
    out.parent.mkdir(parents=True, exist_ok=True)
    grid_image(images, nrow=views if has_camera else rows).save(out)
    typer.echo(f"wrote {out} ({len(images)} images, {type(pipe).__name__} from {model})")


def _compute(params: Path, device: str | None, precision: str | None):
    """(torch.device, precision) from the params file's `compute` block (defaults when the
    file does not exist) with the command line's overrides; exit 2 naming the key when this
    machine cannot run them."""
    from dreamline.config import ComputeParams, ParamsError, load_params
    from dreamline.device import DeviceError
    from tasks.common import compute_target

    try:
        base = load_params(params).compute if params.exists() else ComputeParams()
        chosen = ComputeParams.model_validate({**base.model_dump(), **{k: v for k, v in (
            ("device", device), ("precision", precision)) if v is not None}})
    except (ParamsError, ValueError) as err:
        typer.echo(f"compute: {err}", err=True)
        raise typer.Exit(2) from None
    try:
        return compute_target(chosen.device, chosen.precision)
    except DeviceError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:64] or "prompt"


def _parse_sets(items: list[str]) -> dict:
    """["a.b=1", "c=x"] -> {"a": {"b": 1}, "c": "x"}; values are YAML (numbers, lists, ...)."""
    import yaml

    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--set")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


@app.command()
def generate(prompt: str = typer.Argument(..., help="text prompt"),
             out: Optional[Path] = typer.Option(None, help="asset folder (default data/distill/<slug>)"),
             params: Path = typer.Option(Path("params.yaml"), help="params file; its distill block is the base"),
             guidance: Optional[str] = typer.Option(None, help="guidance_type, e.g. sds, mv-sds+agp, ism"),
             representation: Optional[str] = typer.Option(None, help="representation_type: voxel | gaussians"),
             steps: Optional[int] = typer.Option(None, min=1, help="optimisation steps"),
             seed: Optional[int] = typer.Option(None),
             set_: list[str] = typer.Option([], "--set", help="any distill key, e.g. "
                                            "--set guidance.ism.delta_t=100 (repeatable)")):
    """Distil PROMPT into a 3D asset with the `distill` stage's flow and any settings."""
    import yaml

    from dreamline.config import ParamsError, load_params, parse_params

    try:
        base = load_params(params).model_dump(mode="json")
    except ParamsError as err:
        raise typer.BadParameter(str(err), param_hint="--params") from None
    folder = out or Path("data/distill") / _slug(prompt)
    block = base["distill"]
    if representation is not None and representation != block["representation_type"]:
        block["representation"] = {}            # the old block belongs to another representation
    for key, value in (("guidance_type", guidance), ("representation_type", representation),
                       ("steps", steps), ("seed", seed)):
        if value is not None:
            block[key] = value
    for key, value in _parse_sets(set_).items():
        block[key] = ({**block.get(key, {}), **value} if isinstance(value, dict) and isinstance(block.get(key), dict)
                      else value)
    if _slug(folder.name) != folder.name:
        raise typer.BadParameter(f"the folder name {folder.name!r} must be a slug (a-z, 0-9, -)",
                                 param_hint="--out")
    # Added to (not replacing) the prompt map: other sections (the ablation) refer to its keys.
    block["prompts"] = {**block["prompts"], folder.name: prompt}
    try:
        checked = parse_params(base, f"{params} + command line")
    except ParamsError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    from dreamline.device import DeviceError
    from tasks.common import compute_target

    try:   # the flow resolves compute.device / compute.precision again; fail here, before any work
        compute_target(checked.compute.device, checked.compute.precision)
    except DeviceError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    from dreamline.distill.run import check_models
    from dreamline.models.weights import UnsafeWeightsError

    try:
        check_models(checked.distill)
    except (FileNotFoundError, UnsafeWeightsError) as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    from flows.distill import distill_flow
    from flows.runners import shared_api_server
    from stages._common import configure_process

    configure_process("distill", checked)     # the distill stage's threads and float mode
    slug = folder.name
    with shared_api_server(checked.execution):
        summary = distill_flow(checked, [slug], out_root=folder.parent,
                               checkpoints=Path("data/checkpoints/distill"))
    typer.echo(yaml.safe_dump({"asset": str(folder.parent / slug), **summary[slug]}, sort_keys=False))


def _echo_json(obj) -> None:
    import json

    typer.echo(json.dumps(obj, indent=2, default=str))


@app.command()
def lineage(target: str = typer.Argument(..., help="an output path (or a file inside one), e.g. data/eval/metrics.json, "
                                         "or a metric key, e.g. r_precision.real_test.R@1 (or FILE:KEY)"),
            as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """The chain of stages that produced TARGET: parameters, code and input hashes (dvc.lock),
    the git commit, and for data outputs their manifest's md5 and object count."""
    from dataclasses import asdict

    from dreamline.lineage import trace

    metric = None
    try:
        stages = trace.load_lock(Path("."))
        path = target
        if trace.producer(stages, target) is None and not Path(target).exists():
            file, value = trace.find_metric(target)
            metric, path = {"key": target, "value": value, "file": file}, file
        records = trace.lineage(path)
    except (KeyError, FileNotFoundError) as err:
        typer.echo(str(err).strip("'\""), err=True)
        raise typer.Exit(2) from None
    commit = trace.git_commit()
    state = trace.target_state(path, Path("."), stages)
    if as_json:
        _echo_json({"target": target, "metric": metric, "workspace": state, "git_commit": commit,
                    "stages": [asdict(r) for r in records]})
        return
    if metric:
        typer.echo(f"metric {metric['key']} = {metric['value']}  (in {metric['file']})")
    fresh = {True: "matches dvc.lock", False: "DIFFERS from dvc.lock: run `dvc status`", None: ""}
    typer.echo(f"{path}  md5 {state.get('md5', '-')}  {fresh[state.get('matches_lock')]}  (git {commit})")
    for r in records:
        typer.echo(f"\n[{r.name}]  {r.cmd}")
        for key, value in r.params.items():
            typer.echo(f"  param {key} = {value}")
        for dep in r.inputs:
            extra = f", {dep['nfiles']} files" if "nfiles" in dep else ""
            typer.echo(f"  input {dep['path']}  md5 {dep['md5']}{extra}  <- {dep['stage'] or 'source'}")
        for dep in r.code:
            typer.echo(f"  code  {dep['path']}  md5 {dep['md5']}")
        for out in r.outputs:
            extra = f", {out['nfiles']} files" if "nfiles" in out else ""
            typer.echo(f"  out   {out['path']}  md5 {out['md5']}{extra}")
        for m in r.manifests:
            if not m["present"]:
                typer.echo(f"  manifest {m['path']}: not in this workspace (dvc pull / dvc checkout)")
                continue
            counts = ", ".join(f"{m[k]} {k}" for k in ("objects", "candidates", "views") if k in m)
            typer.echo(f"  manifest {m['path']}  md5 {m['md5']}  {counts} ({m['counts']})  "
                       f"{fresh[m['matches_lock']]}")


@app.command()
def why(uid: str = typer.Argument(..., help="an object uid")):
    """One object's journey: kept or rejected and why, caption, split, views, models that saw it."""
    from dreamline.lineage.trace import why as journey

    try:
        _echo_json(journey(uid))
    except (KeyError, FileNotFoundError) as err:
        typer.echo(str(err).strip("'\""), err=True)
        raise typer.Exit(2) from None


@app.command()
def diff(rev_a: str = typer.Argument("HEAD"), rev_b: Optional[str] = typer.Argument(None, help="default: the workspace"),
         as_json: bool = typer.Option(False, "--json")):
    """Params and metrics that changed between two revisions, in one table (dvc params/metrics diff)."""
    import json
    import subprocess

    rows = []
    for kind in ("params", "metrics"):
        cmd = ["dvc", kind, "diff", rev_a] + ([rev_b] if rev_b else []) + ["--json"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            typer.echo(f"{' '.join(cmd)} failed: {proc.stderr.strip()}", err=True)
            raise typer.Exit(2)
        for path, changes in (json.loads(proc.stdout or "{}") or {}).items():
            for key, change in changes.items():
                rows.append({"kind": kind, "file": path, "key": key, "old": change.get("old"),
                             "new": change.get("new"), "diff": change.get("diff")})
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        typer.echo("no params or metrics changed")
        return
    width = max(len(r["key"]) for r in rows)
    typer.echo(f"{'kind':8} {'key':{width}}  old -> new (change)")
    for r in rows:
        change = f" ({r['diff']:+.4g})" if isinstance(r["diff"], (int, float)) else ""
        typer.echo(f"{r['kind']:8} {r['key']:{width}}  {r['old']} -> {r['new']}{change}")


@app.command()
def serve(config: Path = typer.Option(Path("prefect.yaml"), help="the deployments file `prefect deploy` reads"),
          deployment: list[str] = typer.Option([], "--deployment", "-d", help="serve only these (repeatable)"),
          list_only: bool = typer.Option(False, "--list", help="print the deployments and exit")):
    """Serve prefect.yaml's deployments from this process (no work pool or worker needed).

    With no PREFECT_API_URL set, a local Prefect server is started on 127.0.0.1 first and
    stopped on exit; scheduled runs and `prefect deployment run dvc-pipeline/<name>` run here."""
    from flows.serve import DeploymentFileError, read_deployments, serve as serve_deployments

    try:
        specs = read_deployments(config)
    except DeploymentFileError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    if list_only:
        for s in specs:
            when = ", ".join(f"cron {c['cron']} {c['timezone']}" for c in s.schedules) or "on demand"
            typer.echo(f"{s.name:20} {when:28} {s.entrypoint}  {s.parameters}")
        return
    try:
        serve_deployments(config, Path.cwd(), deployment or None)
    except DeploymentFileError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None


if __name__ == "__main__":
    app()
