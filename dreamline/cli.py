"""`dreamline` command line: sampling from trained models (more commands join per stage)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

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
           threads: Optional[int] = typer.Option(None, help="torch threads")):
    """Write a grid PNG of samples for PROMPT: one row per sample, one column per view."""
    import torch

    from dreamline.models.grid import grid_image
    from dreamline.training.common import load_base_pipeline, orbit_cameras

    if threads:
        torch.set_num_threads(threads)
    try:
        pipe = load_base_pipeline(model)
    except FileNotFoundError as err:
        raise typer.BadParameter(str(err), param_hint="--model") from None
    has_camera = pipe.unet.class_embedding is not None
    cameras = orbit_cameras(views, elevation, distance) if has_camera else None
    g = torch.Generator().manual_seed(seed)
    images = pipe([prompt] * rows, cameras=cameras, num_inference_steps=steps, guidance_scale=guidance,
                  guidance_rescale=rescale, generator=g, output_type="np").images
    out.parent.mkdir(parents=True, exist_ok=True)
    grid_image(images, nrow=views if has_camera else rows).save(out)
    typer.echo(f"wrote {out} ({len(images)} images, {type(pipe).__name__} from {model})")


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
    block["prompts"] = {folder.name: prompt}
    try:
        checked = parse_params(base, f"{params} + command line")
    except ParamsError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    from dreamline.distill.run import check_models

    try:
        check_models(checked.distill)
    except FileNotFoundError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    from flows.distill import distill_flow
    from flows.runners import shared_api_server

    slug = folder.name
    with shared_api_server(checked.execution):
        summary = distill_flow(checked, [slug], out_root=folder.parent,
                               checkpoints=Path("data/checkpoints/distill"))
    typer.echo(yaml.safe_dump({"asset": str(folder.parent / slug), **summary[slug]}, sort_keys=False))


if __name__ == "__main__":
    app()
