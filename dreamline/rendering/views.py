"""Per-object view planning and storage for the render stage.

Layout under the renders root, per object:
    objects/<uid>/<view_id>_rgba.png     lit colour, alpha = coverage (background not baked)
    objects/<uid>/<view_id>_ccm.png      canonical coordinates x255 (8-bit is the renderer's precision)
    objects/<uid>/<view_id>_normal.png   world normals as (n + 1) / 2 x255
    objects/<uid>/arrays.npz             depth (V,H,W float32), c2w (V,4,4), K (V,3,3)
    objects/<uid>/done.json              the work key and the view rows, written last
A view_id is "mv<set>_<k>" or "agp<k>". Cameras are seeded by (seed, uid), so an object's
views do not change when other objects are added.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import trimesh
from PIL import Image

from dreamline.atomic import write_bytes_atomic, write_json_atomic
from dreamline.config import RenderParams
from dreamline.rendering.cameras import Camera, agp_views, mvdream_view_set

# The code a rendered view comes from (the renderer is handed to render_one as an object,
# so it is named here): a change to any file it can run re-renders, nothing else does.
RENDER_CODE = ("dreamline.rendering.views", "dreamline.rendering.renderer")


def render_key(mesh_sha256: str, p: RenderParams) -> str:
    from dreamline.lineage.code import code_digest

    settings = p.model_dump(mode="json", exclude={"shard_size", "retries", "backend", "timeout_s"})
    blob = json.dumps([mesh_sha256, settings, code_digest(*RENDER_CODE)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def plan_views(uid: str, radius: float, p: RenderParams) -> list[tuple[str, str, int, Camera]]:
    """(view_id, kind, set index, camera) for one object."""
    rng = np.random.default_rng(int(hashlib.sha256(f"{p.seed}/{uid}".encode()).hexdigest()[:16], 16))
    plan = []
    for s in range(p.mv_sets):
        cams = mvdream_view_set(rng, radius, p.mv_views_per_set, p.mv_fov_deg, p.mv_elevation_deg,
                                p.distance_scale, p.resolution)
        plan += [(f"mv{s}_{k}", "mv", s, c) for k, c in enumerate(cams)]
    cams = agp_views(rng, p.agp_views, radius, p.agp_fov_deg, p.agp_elevation_deg,
                     p.distance_scale, p.resolution)
    plan += [(f"agp{k}", "agp", -1, c) for k, c in enumerate(cams)]
    return plan


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def load_mesh(path: Path) -> trimesh.Trimesh:
    mesh = trimesh.load(str(path), force="mesh", process=False)
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise ValueError(f"{path}: no triangles to render")
    return mesh


def object_folder(out_root: Path, uid: str) -> Path:
    """objects/<uid> under the render output; a uid that would lead elsewhere is refused."""
    from dreamline.paths import confine

    return confine(f"objects/{uid}", out_root, f"render folder of object {uid!r}")


def finished_result(uid: str, mesh_sha256: str, p: RenderParams, out_root: Path) -> dict | None:
    """The stored result of an object already rendered with this mesh and these settings."""
    done = object_folder(out_root, uid) / "done.json"
    try:
        prev = json.loads(done.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return {**prev, "processed": False} if prev.get("key") == render_key(mesh_sha256, p) else None


def failed_result(uid: str, reason: str) -> dict[str, Any]:
    return {"uid": uid, "error": reason[:300], "rows": [], "processed": False}


def render_one(uid: str, mesh_path: Path, mesh_sha256: str, p: RenderParams, out_root: Path,
               renderer) -> dict[str, Any]:
    """Render and save every view of one object, unless a finished result has the same key."""
    previous = finished_result(uid, mesh_sha256, p, out_root)
    if previous is not None:
        return previous
    folder = object_folder(out_root, uid)
    key = render_key(mesh_sha256, p)
    done = folder / "done.json"
    mesh = load_mesh(mesh_path)
    radius = float(np.linalg.norm(mesh.vertices, axis=1).max())  # normalised: centred at 0
    plan = plan_views(uid, radius, p)
    buffers = renderer.render(mesh, [c for *_, c in plan])
    rows = []
    for (view_id, kind, set_idx, cam), buf in zip(plan, buffers):
        rel = f"objects/{uid}/{view_id}"
        write_bytes_atomic(folder / f"{view_id}_rgba.png", _png(buf.rgba))
        write_bytes_atomic(folder / f"{view_id}_ccm.png", _png(_u8(buf.ccm)))
        write_bytes_atomic(folder / f"{view_id}_normal.png",
                           _png(np.where(buf.mask[..., None], _u8((buf.normal + 1) / 2), 0).astype(np.uint8)))
        rows.append({
            "uid": uid, "view_id": view_id, "kind": kind, "set": set_idx,
            "azimuth_deg": cam.azimuth_deg, "elevation_deg": cam.elevation_deg,
            "distance": cam.distance, "fov_deg": cam.fov_deg, "width": cam.width,
            "height": cam.height, "c2w": cam.flat16().tolist(),
            "rgba_path": f"{rel}_rgba.png", "ccm_path": f"{rel}_ccm.png",
            "normal_path": f"{rel}_normal.png", "arrays_path": f"objects/{uid}/arrays.npz",
            "coverage": float(buf.mask.mean()),
        })
    arrays = io.BytesIO()
    np.savez_compressed(arrays, depth=np.stack([b.depth for b in buffers]),
                        c2w=np.stack([b.camera.c2w for b in buffers]),
                        K=np.stack([b.camera.K for b in buffers]),
                        view_id=np.array([r["view_id"] for r in rows]))
    write_bytes_atomic(folder / "arrays.npz", arrays.getvalue())
    result = {"uid": uid, "key": key, "mesh_sha256": mesh_sha256, "rows": rows, "error": None}
    write_json_atomic(done, result)  # last: its presence means the object is complete
    return {**result, "processed": True}


def object_job(init: dict[str, Any]):
    """Job function for ``dreamline.isolation``: one renderer per child, one object per job.

    ``init``: {"params": RenderParams as JSON, "out_root": str}; a job: {"uid", "mesh_path",
    "mesh_sha256"}. An exception becomes a recorded failure; hangs and crashes are the
    parent's to time out.
    """
    from dreamline.rendering.renderer import ViewRenderer

    p = RenderParams.model_validate(init["params"])
    out_root = Path(init["out_root"])
    renderer = ViewRenderer(p.resolution, allow_multisample=p.backend != "osmesa")

    def job(j: dict[str, Any]) -> dict[str, Any]:
        try:
            return render_one(j["uid"], Path(j["mesh_path"]), j["mesh_sha256"], p, out_root, renderer)
        except Exception as err:  # one bad mesh costs only itself
            return failed_result(j["uid"], f"{type(err).__name__}: {err}")

    return job
