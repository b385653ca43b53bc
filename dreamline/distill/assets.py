"""What a finished distillation leaves in data/distill/<slug>/: the asset in every form
users of these systems expect, written from the representation alone."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dreamline import tensorfile
from dreamline.config import DistillParams, ExportParams
from dreamline.distill.sampling import azimuth_ring, fixed_views
from dreamline.representations.build import build_representation
from dreamline.representations.base import Representation
from dreamline.representations.export import (
    EmptyMeshError, marching_cubes_mesh, write_gaussian_ply, write_glb, write_loss_curve_csv, write_png,
    mp4_frame_size, write_turntable,
)

STATE = "state.safetensors"
LEGACY_STATE = "state.pt"   # torch.save pickles of earlier versions: refused, never loaded
VIEW_FOV = 40.0
VIEW_AZIMUTHS = (0.0, 90.0, 180.0, 270.0)
# The same turntable frames twice: a looping GIF, and an H.264 MP4 (what a browser's <video>
# or a video player takes) whose bytes depend on the frames and fps only.
TURNTABLES = ("turntable.gif", "turntable.mp4")
# Files every finished asset folder has (mesh.glb may be missing: an empty field gives no surface).
EXPORTS = (STATE, *TURNTABLES, *(f"views/view_{k}.png" for k in range(len(VIEW_AZIMUTHS))),
           "views/textureless.png")


def save_state(rep: Representation, p: DistillParams, prompt: str, folder: Path) -> Path:
    return tensorfile.save(folder / STATE, {
        "prompt": prompt, "representation_type": p.representation_type,
        "representation": p.representation_config().model_dump(mode="json"),
        "state_dict": rep.state_dict()})


def missing_exports(folder: Path) -> list[str]:
    """The EXPORTS a folder lacks, e.g. one written before the MP4 turntable existed."""
    return [name for name in EXPORTS if not (Path(folder) / name).is_file()]


def is_asset_folder(folder: Path) -> bool:
    """A finished distillation, or one of an earlier version (which load_asset refuses)."""
    return (folder / STATE).is_file() or (folder / LEGACY_STATE).is_file()


def load_asset(folder: str | Path, device: torch.device | str | None = None) -> tuple[Representation, str]:
    """(representation, prompt) of a finished distillation folder, on `device` (default CPU)."""
    from dreamline.paths import confine
    from dreamline.representations.configs import REPRESENTATIONS

    folder = Path(folder)
    path = folder / STATE
    if not path.is_file():
        if (folder / LEGACY_STATE).is_file():
            raise tensorfile.refuse_pickle(
                folder / LEGACY_STATE, f"`dvc repro distill@{folder.name}` (a params prompt) or "
                f"`dreamline generate PROMPT --out {folder}`")
        raise FileNotFoundError(f"{folder}: no {STATE} (not a finished distillation)")
    state = tensorfile.load(confine(STATE, folder, f"asset {folder}"))
    kind = state.get("representation_type") if isinstance(state, dict) else None
    if not isinstance(kind, str) or kind not in REPRESENTATIONS:
        raise ValueError(f"{path}: unknown representation_type {kind!r} "
                         f"(have: {', '.join(REPRESENTATIONS.names())})")
    config = REPRESENTATIONS.config_model(kind).model_validate(state["representation"])
    if getattr(config, "init_points", None) is not None:
        # The saved parameters replace any initialisation: never read a file the asset names.
        config = config.model_copy(update={"init": "sphere", "init_points": None})
    rep = build_representation(state["representation_type"], config, torch.Generator().manual_seed(0))
    rep.load_state_dict(state["state_dict"])
    return rep.to(device or "cpu").eval(), state["prompt"]


@torch.no_grad()
def render_views(rep: Representation, azimuths, elevation: float, resolution: int, radius: float,
                 shading: str = "lambertian", chunk: int = 4) -> np.ndarray:
    """(N, H, W, 3) uint8 deterministic renders over white at the given azimuths, made on the
    representation's device."""
    device = rep.device
    views = fixed_views(list(azimuths), elevation, VIEW_FOV, radius, resolution, device=device)
    images = []
    for i in range(0, len(views.cams), chunk):
        idx = slice(i, i + chunk)
        cams = type(views.cams)(views.cams.c2w[idx], views.cams.fov_deg[idx], resolution, resolution)
        light = type(views.light)(views.light.position[idx], views.light.ambient, views.light.diffuse)
        out = rep.render(cams, shading, light, torch.ones(len(cams), 3, resolution, resolution, device=device))
        images.append(out.rgb.clamp(0, 1))
    rgb = torch.cat(images).permute(0, 2, 3, 1).cpu().numpy()
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def export_mesh(rep: Representation, e: ExportParams, threshold: float, path: Path) -> dict:
    density = rep.density_on_grid(e.mesh_resolution)
    try:
        mesh = marching_cubes_mesh(
            density, rep.bound, threshold,
            colour_fn=lambda v: rep.albedo_at(torch.from_numpy(np.asarray(v, dtype=np.float32))).cpu().numpy())
    except EmptyMeshError as err:
        return {"error": str(err), "threshold": threshold}
    write_glb(mesh, path)
    return {"vertices": int(len(mesh.vertices)), "faces": int(len(mesh.faces)), "threshold": threshold,
            "resolution": e.mesh_resolution, "watertight": bool(mesh.is_watertight),
            "bounds": np.round(mesh.bounds, 4).tolist()}


def write_assets(rep: Representation, p: DistillParams, prompt: str, curve: list[dict], folder: Path) -> dict:
    """state.safetensors, mesh.glb, point_cloud.ply (Gaussians), turntable.gif + turntable.mp4,
    views/*.png, curve.csv.
    Returns what was written, for the summary."""
    e = p.export
    rep.eval()
    save_state(rep, p, prompt, folder)
    threshold = e.mesh_threshold if e.mesh_threshold is not None else p.representation_config().mesh_threshold
    record = {"mesh": export_mesh(rep, e, threshold, folder / "mesh.glb")}
    if hasattr(rep, "ply_arrays"):
        g = rep.ply_arrays()
        write_gaussian_ply(folder / "point_cloud.ply", g["means"], g["log_scales"], g["quats"],
                           g["opacity_logit"], g["rgb"])
        record["gaussians"] = int(g["means"].shape[0])
    radius = p.camera.radius
    for k, img in enumerate(render_views(rep, VIEW_AZIMUTHS, 15.0, e.view_resolution, radius)):
        write_png(img, folder / "views" / f"view_{k}.png")
    textureless = render_views(rep, (45.0,), 15.0, e.view_resolution, radius, shading="textureless")[0]
    write_png(textureless, folder / "views" / "textureless.png")
    frames = render_views(rep, azimuth_ring(e.turntable_frames), e.turntable_elevation_deg,
                          e.view_resolution, radius)
    for name in TURNTABLES:
        write_turntable(list(frames), folder / name, fps=e.fps)
    if curve:
        write_loss_curve_csv(curve, folder / "curve.csv")
    record["views"] = len(VIEW_AZIMUTHS) + 1
    record["turntable_frames"] = e.turntable_frames
    height, width = mp4_frame_size(*frames.shape[1:3])
    record["turntable_mp4"] = {"codec": "h264", "pix_fmt": "yuv420p", "width": width, "height": height,
                               "fps": e.fps}
    return record
