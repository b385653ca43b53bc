#!/usr/bin/env python
"""Render benchmark: dreamline's OSMesa renderer against Blender 3.4 Cycles, side by side.

    python benchmarks/render.py --out benchmarks/results/render.json

A fixed, seeded sample of curated objects (default 8 procedural + 4 packaged real meshes
from data/curated) and, per object, the views the render stage plans for it
(dreamline.rendering.views.plan_views with RenderParams at each resolution: 2 MVDream sets
of 4 + 4 AGP views = 12). For each resolution (default 64, the stage default, and 256):

1. dreamline  ViewRenderer.render(mesh, cameras): RGBA + depth + mask + normals + CCM for
              every view of an object (timed; mesh loading is not), then the whole stage
              work per object, views.render_one (load, plan, render, PNG/npz writes into a
              temp dir). One warm-up render first, not timed.
2. blender    blender_render.py in `blender -b --factory-startup`: Cycles on the CPU,
              --samples (16, Cap3D's Objaverse setting) per pixel, no adaptive sampling, no
              denoising, transparent film, the same cameras and GLBs; RGBA PNG + Z pass +
              Normal pass + the CCM as an AOV, written by compositor File Output nodes.
              Only the per-view render call is timed; startup and import are reported
              apart. Once per --blender-threads value (0 = Blender's own count).
3. agreement  the two renderers' buffers for each view: mask IoU (Blender alpha > 0.5),
              |depth difference| on pixels both cover, |CCM difference| and normal angle on
              interior pixels (our mask eroded by one pixel and Blender alpha > 0.99,
              so pixel-filter blending at silhouettes is left out).

Cores: wall and CPU seconds (process-wide, all threads) are taken around each timed
call. "views/s/thread" divides views/s by the threads the renderer is given (1 for
dreamline, which renders in one Python thread; Blender's thread count); "views/CPU-s"
divides views by CPU seconds actually spent, i.e. views per second per busy core.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from curation import _load, _pct, machine_info  # benchmarks/ is sys.path[0] when run as a script

REPO = Path(__file__).resolve().parent.parent
CURATED = REPO / "data" / "curated"
MANIFEST = REPO / "data" / "mirror" / "dreamline-manifest.json"
BLENDER_SCRIPT = Path(__file__).resolve().parent / "blender_render.py"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")  # before anything imports OpenGL

import numpy as np  # noqa: E402

from dreamline.config import RenderParams  # noqa: E402
from dreamline.rendering.renderer import ViewRenderer, ccm_normaliser  # noqa: E402
from dreamline.rendering.views import load_mesh, plan_views, render_one  # noqa: E402


# --------------------------------------------------------------------------- objects and views

def _sources(table) -> list[str]:
    """procedural / packaged per row: the mirror's manifest knows; objects.parquet's own
    `source` column names the mirror instead."""
    if set(table["source"]) <= {"procedural", "packaged"}:
        return list(table["source"])
    manifest = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}
    return [manifest.get(uid, {}).get("source", "unknown") for uid in table["uid"]]


def sample_objects(n_procedural: int, n_packaged: int, seed: int) -> list[dict]:
    import pandas as pd

    table = pd.read_parquet(CURATED / "objects.parquet")
    table = table[table["kept"]].sort_values("uid").reset_index(drop=True)
    table["bench_source"] = _sources(table)
    rng = np.random.default_rng(seed)
    picked = []
    for source, n in (("procedural", n_procedural), ("packaged", n_packaged)):
        rows = table[table["bench_source"] == source]
        if len(rows) < n:
            sys.exit(f"only {len(rows)} kept {source} objects in {CURATED}, {n} asked for")
        for i in sorted(rng.choice(len(rows), size=n, replace=False)):
            r = rows.iloc[int(i)]
            picked.append({"uid": r["uid"], "source": source, "name": r["name"],
                           "mesh_path": str(CURATED / r["mesh_path"]), "mesh_sha256": r["mesh_sha256"]})
    return picked


def plan_object(obj: dict, p: RenderParams) -> dict:
    """Mesh, cameras and CCM box for one object, exactly as render_one derives them."""
    mesh = load_mesh(Path(obj["mesh_path"]))
    radius = float(np.linalg.norm(mesh.vertices, axis=1).max())  # as render_one: centred at 0
    plan = plan_views(obj["uid"], radius, p)
    return {**obj, "mesh": mesh, "faces": len(mesh.faces), "normaliser": ccm_normaliser(mesh),
            "view_ids": [v for v, *_ in plan], "cameras": [c for *_, c in plan]}


# --------------------------------------------------------------------------- timing

def _machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores, all processes), from
    /proc/stat: set against a phase's own CPU time it shows what else was running."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Phase:
    """Wall seconds and machine-wide busy cores over a block."""

    def __enter__(self):
        self.t, self.busy = time.perf_counter(), _machine_busy_s()
        return self

    def __exit__(self, *exc):
        self.wall_s = time.perf_counter() - self.t
        self.machine_cores = (_machine_busy_s() - self.busy) / self.wall_s

    def others(self, own_cpu_s: float) -> float:
        """Cores busy with other processes over the phase (never below 0)."""
        return max(0.0, self.machine_cores - own_cpu_s / self.wall_s)


def _timed(fn, *args, **kwargs):
    t, c = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t, time.process_time() - c


# --------------------------------------------------------------------------- dreamline

def _stacked(bufs) -> dict:
    return {k: np.stack([getattr(b, k) for b in bufs]) for k in ("mask", "depth", "normal", "ccm")}


def bench_dreamline(planned: list[dict], p: RenderParams) -> tuple[dict, dict, dict]:
    """Timings of render() and render_one() per object; the render() buffers by uid as the
    stage renders them (single-sided), and double-sided ones (untimed) for the comparison."""
    single, double, rows = {}, {}, []
    t = time.perf_counter()
    with ViewRenderer(p.resolution) as renderer:
        context_s = time.perf_counter() - t
        renderer.render(planned[0]["mesh"], planned[0]["cameras"][:1])  # warm-up: shaders
        with Phase() as render_phase:
            for obj in planned:
                bufs, wall, cpu = _timed(renderer.render, obj["mesh"], obj["cameras"])
                single[obj["uid"]] = _stacked(bufs)
                rows.append({"uid": obj["uid"], "source": obj["source"], "faces": obj["faces"],
                             "n_views": len(bufs), "render_s": wall, "render_cpu_s": cpu})
        with tempfile.TemporaryDirectory(prefix="dl-render-bench-") as tmp, Phase() as one_phase:
            for obj, row in zip(planned, rows):
                res, wall, cpu = _timed(render_one, obj["uid"], Path(obj["mesh_path"]),
                                        obj["mesh_sha256"], p, Path(tmp), renderer)
                assert res["processed"] and len(res["rows"]) == row["n_views"]
                row["render_one_s"], row["render_one_cpu_s"] = wall, cpu
        # Cycles draws both sides of every face; the stage culls back faces, which opens
        # holes in non-closed meshes. Like is compared with like (not timed).
        for obj in planned:
            double[obj["uid"]] = _stacked(renderer.render(obj["mesh"], obj["cameras"], double_sided=True))
    own = lambda key: sum(r[key] for r in rows)  # noqa: E731
    return ({"context_s": context_s, "objects": rows,
             "others_cores_render": render_phase.others(own("render_cpu_s")),
             "others_cores_render_one": one_phase.others(own("render_one_cpu_s"))},
            single, double)


# --------------------------------------------------------------------------- blender

def blender_version(blender: str) -> str | None:
    try:
        out = subprocess.run([blender, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout else None


def bench_blender(blender: str, planned: list[dict], res: int, samples: int, threads: int,
                  work: Path) -> dict:
    """One Blender process renders every object's views; returns its timings (the view
    buffers are left in work/<uid>/blender.npz)."""
    work.mkdir(parents=True, exist_ok=True)
    job = {"resolution": res, "samples": samples, "threads": threads, "out_dir": str(work),
           "objects": [{"uid": o["uid"], "glb": o["mesh_path"],
                        "lo": [float(x) for x in o["normaliser"][0]],
                        "hi": [float(x) for x in o["normaliser"][1]],
                        "views": [{"view_id": v, "c2w": c.c2w.reshape(16).tolist(), "fov_deg": c.fov_deg}
                                  for v, c in zip(o["view_ids"], o["cameras"])]}
                       for o in planned]}
    (work / "job.json").write_text(json.dumps(job))
    cmd = [blender, "-b", "--factory-startup", "-noaudio", "--python-exit-code", "1",
           "-P", str(BLENDER_SCRIPT), "--", str(work / "job.json"), str(work / "result.json")]
    with open(work / "blender.log", "w") as log, Phase() as phase:
        spawn = time.time()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(work))
        _, status, usage = os.wait4(proc.pid, 0)
        process_s = time.time() - spawn
    if os.waitstatus_to_exitcode(status) != 0 or not (work / "result.json").exists():
        tail = (work / "blender.log").read_text()[-3000:]
        raise RuntimeError(f"blender exited with {os.waitstatus_to_exitcode(status)}:\n{tail}")
    out = json.loads((work / "result.json").read_text())
    out["startup_s"] = out.pop("t_script_start") - spawn  # launch until our script runs
    out["process_s"], out["process_cpu_s"] = process_s, usage.ru_utime + usage.ru_stime
    out["others_cores"] = phase.others(out["process_cpu_s"])  # over the whole process
    for o, src in zip(out["objects"], planned):
        o["source"], o["n_views"] = src["source"], len(o["views"])
        o["render_s"] = sum(v["wall_s"] for v in o["views"])
        o["render_cpu_s"] = sum(v["cpu_s"] for v in o["views"])
    return out


# --------------------------------------------------------------------------- agreement

def _eroded(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 4-neighbours are all inside the mask (V,H,W)."""
    m = mask.copy()
    m[:, 1:, :] &= mask[:, :-1, :]
    m[:, :-1, :] &= mask[:, 1:, :]
    m[:, :, 1:] &= mask[:, :, :-1]
    m[:, :, :-1] &= mask[:, :, 1:]
    m[:, [0, -1], :] = False
    m[:, :, [0, -1]] = False
    return m


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter, union = (a & b).sum(axis=(1, 2)), (a | b).sum(axis=(1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def agreement(ours: dict, stage: dict, planned: list[dict], work: Path) -> dict:
    """Blender's buffers against ours (double-sided, `ours`); mask IoU also against the
    stage's single-sided buffers (`stage`)."""
    ious, stage_ious, depth_d, depth_rel, ccm_d, angles, per_object = [], [], [], [], [], [], []
    for obj in planned:
        a, b = ours[obj["uid"]], np.load(work / obj["uid"] / "blender.npz")
        assert list(b["view_id"]) == obj["view_ids"]
        b_mask = b["alpha"] > 0.5
        iou = _iou(a["mask"], b_mask)
        ious += iou.tolist()
        stage_iou = _iou(stage[obj["uid"]]["mask"], b_mask)
        stage_ious += stage_iou.tolist()
        # Cycles writes Z from the first sample only; one that missed leaves 1e10 there.
        both = a["mask"] & b_mask & (b["depth"] < 1e9)
        d = np.abs(a["depth"][both] - b["depth"][both])
        depth_d.append(d)
        depth_rel.append(d / a["depth"][both])
        inner = _eroded(a["mask"]) & (b["alpha"] > 0.99)
        ccm_d.append(np.abs(a["ccm"][inner] - b["ccm"][inner]).max(axis=-1))
        # Blender's Normal pass is in its Z-up world: (x, y, z) -> glTF (x, z, -y).
        bn = b["normal"][inner]
        bn = np.stack([bn[:, 0], bn[:, 2], -bn[:, 1]], axis=-1)
        bn /= np.maximum(np.linalg.norm(bn, axis=-1, keepdims=True), 1e-9)
        cos = np.clip((a["normal"][inner] * bn).sum(-1), -1.0, 1.0)
        angles.append(np.degrees(np.arccos(cos)))
        per_object.append({"uid": obj["uid"], "iou_min": float(iou.min()), "iou_mean": float(iou.mean()),
                           "stage_iou_min": float(stage_iou.min()),
                           "depth_abs_median": float(np.median(d)) if d.size else None})
    depth_d, depth_rel = np.concatenate(depth_d), np.concatenate(depth_rel)
    ccm_d, angles = np.concatenate(ccm_d), np.concatenate(angles)
    q = lambda x, f: float(np.quantile(x, f)) if x.size else float("nan")  # noqa: E731
    return {"iou_mean": float(np.mean(ious)), "iou_min": float(np.min(ious)),
            "iou_p5": float(np.quantile(ious, 0.05)), "views": len(ious),
            "stage_iou_mean": float(np.mean(stage_ious)), "stage_iou_min": float(np.min(stage_ious)),
            "stage_views_iou_below_0_95": int(np.sum(np.array(stage_ious) < 0.95)),
            "depth_pixels": int(depth_d.size), "depth_abs_median": q(depth_d, 0.5),
            "depth_abs_p95": q(depth_d, 0.95), "depth_rel_median": q(depth_rel, 0.5),
            "ccm_pixels": int(ccm_d.size), "ccm_abs_median": q(ccm_d, 0.5), "ccm_abs_p95": q(ccm_d, 0.95),
            "normal_deg_median": q(angles, 0.5), "normal_deg_p95": q(angles, 0.95),
            "per_object": per_object}


# --------------------------------------------------------------------------- summary and report

def throughput(rows: list[dict], wall_key: str, cpu_key: str, threads: int) -> dict:
    views = sum(r["n_views"] for r in rows)
    wall, cpu = sum(r[wall_key] for r in rows), sum(r[cpu_key] for r in rows)
    per_view = [r[wall_key] / r["n_views"] for r in rows]
    return {"views": views, "wall_s": wall, "cpu_s": cpu, "threads": threads,
            "cores_busy": cpu / wall, "views_per_s": views / wall,
            "views_per_s_per_thread": views / wall / threads, "views_per_cpu_s": views / cpu,
            "ms_per_view_object_p50": 1e3 * _pct(per_view, 0.5),
            "ms_per_view_object_max": 1e3 * max(per_view)}


def by_source(rows: list[dict], wall_key: str, cpu_key: str, threads: int) -> dict:
    return {s: throughput([r for r in rows if r["source"] == s], wall_key, cpu_key, threads)
            for s in sorted({r["source"] for r in rows})}


def report(res: dict) -> str:
    m = res["machine"]
    lines = [f"dreamline render benchmark  {m['date']}",
             f"machine: {m['nproc']} cpus ({m.get('cpus_usable')} usable), "
             f"{m.get('mem_total_gib')} GiB, {m.get('cpu_model', m['processor'])}",
             f"python {m['python']} on {m['platform']}; {res['gl_renderer']}; "
             f"{res.get('blender') or 'blender: not run'}",
             f"loadavg at start: {res['loadavg_start']}   at end: {res.get('loadavg_end', '?')}",
             f"objects: {len(res['objects'])} ({res['params']['counts']}), seed {res['params']['seed']}; "
             f"views per object: {res['params']['views_per_object']} (plan_views, RenderParams defaults)",
             f"buffers: RGBA + depth + normal + CCM; blender: Cycles CPU, {res['params']['samples']} samples, "
             "no adaptive sampling, no denoising, persistent data"]
    if res["resolutions"]:
        faces = {r["uid"]: r["faces"] for r in res["resolutions"][0]["dreamline"]["objects"]}
        lines.append("  " + ", ".join(f"{o['name']} ({faces[o['uid']]:,} faces)" for o in res["objects"]))
    head = (f"  {'renderer':<40}{'views':>6}{'wall s':>8}{'CPU s':>8}{'cores':>7}"
            f"{'views/s':>9}{'/thread':>9}{'/CPU-s':>8}{'ms/view p50':>12}{'others':>8}")
    for r in res["resolutions"]:
        n, dl = r["resolution"], r["dreamline"]
        lines += ["", f"{n}x{n}", head]
        rows = [("dreamline render()", dl["render"], dl["others_cores_render"]),
                ("dreamline render_one() (+load, writes)", dl["render_one"], dl["others_cores_render_one"])]
        rows += [(f"blender cycles {b['threads']} thread(s)", b["render"], b["others_cores"])
                 for b in r["blender"]]
        for name, t, others in rows:
            lines.append(f"  {name:<40}{t['views']:>6}{t['wall_s']:>8.2f}{t['cpu_s']:>8.2f}"
                         f"{t['cores_busy']:>7.2f}{t['views_per_s']:>9.2f}"
                         f"{t['views_per_s_per_thread']:>9.2f}{t['views_per_cpu_s']:>8.2f}"
                         f"{t['ms_per_view_object_p50']:>12.1f}{others:>8.2f}")
        for b in r["blender"]:
            lines.append(f"  blender {b['threads']} thread(s), not counted: startup {b['startup_s']:.2f} s, "
                         f"setup+warm-up {b['setup_s']:.2f} s, import {b['import_s']:.2f} s "
                         f"({1e3 * b['import_s'] / len(res['objects']):.0f} ms/object), "
                         f"whole process {b['process_s']:.1f} s")
        for name, key in (("render()", "dreamline"), *((f"cycles {b['threads']}t", b) for b in r["blender"])):
            src = r["dreamline"]["render_by_source"] if key == "dreamline" else key["render_by_source"]
            lines.append(f"  by source, {name:<12}" + "   ".join(
                f"{s}: {t['views_per_s']:.2f} views/s" for s, t in src.items()))
        if r["blender"]:
            d, b = r["dreamline"]["render"], r["blender"][0]["render"]
            lines.append(f"  dreamline render() vs blender {r['blender'][0]['threads']} thread(s): "
                         f"{d['views_per_s'] / b['views_per_s']:.1f}x views/s, "
                         f"{d['views_per_s_per_thread'] / b['views_per_s_per_thread']:.1f}x views/s/thread, "
                         f"{d['views_per_cpu_s'] / b['views_per_cpu_s']:.1f}x views/CPU-s")
        a = r.get("agreement")
        if a:
            lines += [f"  agreement over {a['views']} views (ours double-sided, as Cycles): mask IoU mean "
                      f"{a['iou_mean']:.3f} min {a['iou_min']:.3f} p5 {a['iou_p5']:.3f}",
                      f"    the stage's single-sided masks: IoU mean {a['stage_iou_mean']:.3f} min "
                      f"{a['stage_iou_min']:.3f}, {a['stage_views_iou_below_0_95']} views below 0.95",
                      f"    depth |diff| on {a['depth_pixels']:,} shared px: median {a['depth_abs_median']:.2e} "
                      f"p95 {a['depth_abs_p95']:.2e} (relative median {a['depth_rel_median']:.2e})",
                      f"    CCM max-channel |diff| on {a['ccm_pixels']:,} interior px: median "
                      f"{a['ccm_abs_median']:.4f} p95 {a['ccm_abs_p95']:.4f}; normal angle median "
                      f"{a['normal_deg_median']:.2f} deg p95 {a['normal_deg_p95']:.2f} deg"]
    return "\n".join(lines)


def gl_renderer() -> str:
    try:
        with ViewRenderer(16):
            from OpenGL import GL

            return GL.glGetString(GL.GL_RENDERER).decode()
    except Exception as exc:  # informative only
        return f"GL renderer unknown ({exc})"


# --------------------------------------------------------------------------- main

def run_resolution(args, objects: list[dict], res: int, work: Path) -> dict:
    p = RenderParams(resolution=res)
    planned = [plan_object(o, p) for o in objects]
    print(f"[{res}] dreamline: {sum(len(o['cameras']) for o in planned)} views ...", flush=True)
    dl, stage_buffers, buffers = bench_dreamline(planned, p)
    out = {"resolution": res, "dreamline": {
        **dl, "render": throughput(dl["objects"], "render_s", "render_cpu_s", 1),
        "render_one": throughput(dl["objects"], "render_one_s", "render_one_cpu_s", 1),
        "render_by_source": by_source(dl["objects"], "render_s", "render_cpu_s", 1)},
        "blender": []}
    if args.skip_blender:
        return out
    for i, threads in enumerate(args.blender_threads):
        print(f"[{res}] blender, threads={threads or 'auto'} ...", flush=True)
        bwork = work / f"blender-{res}-t{threads}"
        b = bench_blender(args.blender, planned, res, args.samples, threads, bwork)
        b["import_s"] = sum(o["import_s"] for o in b["objects"])
        b["render"] = throughput(b["objects"], "render_s", "render_cpu_s", b["threads"])
        b["render_by_source"] = by_source(b["objects"], "render_s", "render_cpu_s", b["threads"])
        if i == 0:  # the buffers do not depend on the thread count
            out["agreement"] = agreement(buffers, stage_buffers, planned, bwork)
        out["blender"].append(b)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results/render.json", help="JSON results file")
    ap.add_argument("--resolutions", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--procedural", type=int, default=8, help="procedural objects (default 8)")
    ap.add_argument("--packaged", type=int, default=4, help="packaged real meshes (default 4)")
    ap.add_argument("--seed", type=int, default=0, help="object sample seed")
    ap.add_argument("--samples", type=int, default=16, help="Cycles samples per pixel (default 16)")
    ap.add_argument("--blender", default=shutil.which("blender") or "blender")
    ap.add_argument("--blender-threads", type=int, nargs="+", default=[0, 1],
                    help="Cycles thread counts to run, 0 = Blender's automatic count (default: 0 1)")
    ap.add_argument("--skip-blender", action="store_true")
    ap.add_argument("--keep", help="keep Blender's outputs in this directory (default: temp, removed)")
    args = ap.parse_args(argv)

    version = None if args.skip_blender else blender_version(args.blender)
    if not args.skip_blender and version is None:
        sys.exit(f"cannot run {args.blender!r} (apt-get install blender python3-numpy), "
                 "or pass --skip-blender")
    objects = sample_objects(args.procedural, args.packaged, args.seed)
    views_per_object = len(plan_views("x", 1.0, RenderParams()))
    res: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
                 "machine": machine_info(), "loadavg_start": _load(), "gl_renderer": gl_renderer(),
                 "blender": version,
                 "params": {"seed": args.seed, "samples": args.samples,
                            "counts": f"{args.procedural} procedural, {args.packaged} packaged",
                            "views_per_object": views_per_object,
                            "blender_threads": args.blender_threads,
                            "render_params": RenderParams().model_dump(mode="json")},
                 "objects": [{k: o[k] for k in ("uid", "source", "name")} for o in objects],
                 "resolutions": []}
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="dl-blender-bench-"))
    try:
        for r in args.resolutions:
            res["resolutions"].append(run_resolution(args, objects, r, work))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    res["loadavg_end"] = _load()
    text = report(res)
    print("\n" + text, flush=True)
    res["report"] = text
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
