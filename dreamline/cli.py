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


if __name__ == "__main__":
    app()
