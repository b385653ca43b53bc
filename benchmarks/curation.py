#!/usr/bin/env python
"""Curation benchmark: metadata filter at Objaverse scale, geometry check per object.

    python benchmarks/curation.py --records 800000 --out benchmarks/results/curation.json

Phases (each heavy phase runs in its own fresh Python process, so one phase's memory does
not show up in another's peak):

1. mirror   write (or reuse, with --mirror DIR) an annotation-only mirror of --records
            records (dreamline.sources.mirror.write_annotation_only), timed.
2. metadata in a fresh child: curate.load_candidates(root) then
            filter_metadata(table, MetadataFilterParams()), exactly as the curate stage's
            `load-and-filter-metadata` task does. Wall seconds for load, filter and total,
            records/s, and the child's peak RSS (ru_maxrss from wait4() on that child, and
            VmHWM read inside it). Targets: total < 30 s, peak < 4 GiB.
3. geometry build the default mirror (build_mirror(MirrorParams())) with GLBs and time
            geometry.check_and_normalise on each one, split by source (procedural,
            packaged real CGAL meshes, junk) from dreamline-manifest.json.

The parent process imports only the standard library until phase 3, so children spawned
before it do not inherit a large address space (ru_maxrss survives exec()).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gzip
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GIB = 1024 ** 3
TARGET_SECONDS = 30.0
TARGET_BYTES = 4 * GIB


# --------------------------------------------------------------------------- helpers

def _repo_on_path() -> None:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def _vm_status(field: str) -> int | None:
    """A /proc/self/status memory field (VmHWM, VmRSS) in bytes, Linux only."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _run_child(args: list[str]) -> tuple[int, dict, float, float]:
    """Run this script in a fresh interpreter; return (rc, result json, ru_maxrss bytes,
    CPU seconds user+sys).

    os.wait4 gives the rusage of exactly this child (RUSAGE_CHILDREN would take the max
    over every child reaped so far, mirror writer included)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        result_path = tmp.name
    try:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args,
                                 "--child-result", result_path], cwd=str(REPO))
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        text = Path(result_path).read_text() if os.path.getsize(result_path) else "{}"
        return (proc.returncode, json.loads(text), usage.ru_maxrss * 1024,
                usage.ru_utime + usage.ru_stime)
    finally:
        os.unlink(result_path)


def _mirror_records(root: Path) -> int | None:
    try:
        manifest = json.loads((root / "dreamline-manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not (root / "hf-objaverse-v1" / "object-paths.json.gz").exists():
        return None
    if isinstance(manifest, dict) and manifest.get("annotation_only"):
        return manifest.get("records")
    return None


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _gib(b: float | None) -> str:
    return "n/a" if b is None else f"{b / GIB:.2f} GiB"


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine_info() -> dict:
    info = {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()
        info["mem_total_gib"] = round(int(mem[1]) * 1024 / GIB, 1)
    except OSError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("numpy", "pandas", "pyarrow", "trimesh", "objaverse"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# --------------------------------------------------------------------------- children

def child_write(root: str, records: int, seed: int, result: str) -> None:
    _repo_on_path()
    t0 = time.perf_counter()
    from dreamline.sources.mirror import write_annotation_only
    t1 = time.perf_counter()
    write_annotation_only(root, records, seed)
    t2 = time.perf_counter()
    Path(result).write_text(json.dumps({"import_s": t1 - t0, "write_s": t2 - t1,
                                        "vm_hwm_bytes": _vm_status("VmHWM")}))


def child_load_filter(root: str, result: str, profile_out: str | None, workers: int = 1) -> None:
    """Only load_candidates + filter_metadata, as tasks.curation.load_and_filter does."""
    _repo_on_path()
    t0 = time.perf_counter()
    from dreamline.config import MetadataFilterParams
    from dreamline.curation.candidates import load_candidates
    from dreamline.curation.metadata_filter import filter_metadata
    t1 = time.perf_counter()
    hwm_imports = _vm_status("VmHWM")

    prof = None
    if profile_out:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t2, c2 = time.perf_counter(), time.process_time()
    table = load_candidates(root, workers)
    t3, c3 = time.perf_counter(), time.process_time()
    hwm_load = _vm_status("VmHWM")
    filtered = filter_metadata(table, MetadataFilterParams())
    t4, c4 = time.perf_counter(), time.process_time()
    if prof is not None:
        prof.disable()
        prof.dump_stats(profile_out)
    hwm_filter = _vm_status("VmHWM")

    reasons = filtered.column("meta_reason").to_pylist()
    counts: dict[str, int] = {}
    for r in reasons:
        counts[r or "kept"] = counts.get(r or "kept", 0) + 1
    Path(result).write_text(json.dumps({
        "rows": filtered.num_rows,
        "import_s": t1 - t0, "load_s": t3 - t2, "filter_s": t4 - t3, "total_s": t4 - t2,
        "load_cpu_s": c3 - c2, "filter_cpu_s": c4 - c3, "total_cpu_s": c4 - c2,
        "table_nbytes": table.nbytes,
        "vm_hwm_after_imports_bytes": hwm_imports,
        "vm_hwm_after_load_bytes": hwm_load,
        "vm_hwm_bytes": hwm_filter,
        "ru_maxrss_self_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "workers": workers,
        # Largest loader process; the whole tree's peak is at most self + workers x this.
        "worker_max_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
        "reasons": dict(sorted(counts.items())),
        "profiled": bool(profile_out),
    }))


# --------------------------------------------------------------------------- phases

def phase_mirror(args, root: Path) -> dict:
    have = _mirror_records(root)
    if have == args.records:
        print(f"[mirror] reusing {root} ({have} records)", flush=True)
        return {"root": str(root), "records": have, "reused": True}
    if root.exists() and any(root.iterdir()):
        if have is None and not args.force:
            sys.exit(f"{root} is not empty and holds no annotation-only mirror; "
                     "pass --force to overwrite it")
        shutil.rmtree(root)  # a mirror of another size: rebuild from scratch
    root.mkdir(parents=True, exist_ok=True)
    print(f"[mirror] writing {args.records} annotation-only records to {root} ...", flush=True)
    t = time.perf_counter()
    rc, res, maxrss, _ = _run_child(["--child-write", str(root), "--records", str(args.records),
                                  "--seed", str(args.seed)])
    wall = time.perf_counter() - t
    if rc != 0:
        sys.exit(f"mirror writer failed (exit {rc})")
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    return {"root": str(root), "records": args.records, "reused": False,
            "write_s": res["write_s"], "child_wall_s": wall, "peak_rss_bytes": maxrss,
            "disk_bytes": size}


def phase_metadata(args, root: Path) -> dict:
    print("[metadata] load_candidates + filter_metadata in a fresh child ...", flush=True)
    load_before = os.getloadavg()
    t = time.perf_counter()
    extra = ["--profile-out", args.profile_out] if args.profile_out else []
    extra += ["--workers", str(args.workers)]
    rc, res, maxrss, cpu = _run_child(["--child-load-filter", str(root), *extra])
    wall = time.perf_counter() - t
    if rc != 0:
        sys.exit(f"load+filter child failed (exit {rc})")
    res["child_wall_s"] = wall
    res["child_cpu_s"] = cpu  # whole child, imports included
    res["peak_rss_bytes"] = maxrss  # wait4 ru_maxrss of the child
    res["records_per_s"] = res["rows"] / res["total_s"] if res["total_s"] else None
    res["loadavg_before"] = load_before
    res["loadavg_after"] = os.getloadavg()
    peak = max(maxrss, res.get("vm_hwm_bytes") or 0)
    if res.get("workers", 1) > 1:  # upper bound: every worker at its peak at once
        peak += res["workers"] * res.get("worker_max_rss_bytes", 0)
    res["peak_tree_upper_bound_bytes"] = peak
    res["targets"] = {
        "seconds": {"target": TARGET_SECONDS, "value": res["total_s"],
                    "pass": res["total_s"] < TARGET_SECONDS},
        "peak_memory": {"target_bytes": TARGET_BYTES, "value_bytes": peak,
                        "pass": peak < TARGET_BYTES},
    }
    return res


def phase_geometry(args) -> dict:
    _repo_on_path()
    import numpy as np  # noqa: F401  (imported here: the parent stays small until now)

    from dreamline.config import GeometryParams, MirrorParams
    from dreamline.curation.geometry import check_and_normalise
    from dreamline.sources.mirror import MANIFEST, VERSIONED, build_mirror

    meshes_dir = REPO / ".cache" / "cgal" / "meshes"
    tmp = Path(args.geometry_mirror) if args.geometry_mirror else Path(tempfile.mkdtemp(prefix="dl-geo-"))
    print(f"[geometry] building the default mirror in {tmp} "
          f"(packaged meshes: {meshes_dir if meshes_dir.exists() else 'none found'}) ...", flush=True)
    t = time.perf_counter()
    summary = build_mirror(MirrorParams(packaged_meshes_dir=str(meshes_dir)), tmp)
    build_s = time.perf_counter() - t

    manifest = json.loads((tmp / MANIFEST).read_text())
    paths = json.loads(gzip.decompress((tmp / VERSIONED / "object-paths.json.gz").read_bytes()))
    items = []
    for uid in sorted(paths):
        f = tmp / VERSIONED / paths[uid]
        if f.exists():  # some junk entries have no file (missing_file is not a geometry cost)
            items.append((uid, manifest.get(uid, {}).get("source", "unknown"), f.read_bytes()))
    p = GeometryParams()
    check_and_normalise(items[0][2], p)  # warm-up: lazy imports, caches

    per: dict[str, dict] = {}
    for _ in range(args.geometry_repeats):
        for uid, source, data in items:
            t = time.perf_counter()
            verdict = check_and_normalise(data, p)
            dt = time.perf_counter() - t
            g = per.setdefault(source, {"times": [], "faces": 0, "bytes": 0, "reasons": {}})
            g["times"].append(dt)
            g["faces"] += int(verdict.stats.get("n_faces", 0))
            g["bytes"] += len(data)
            key = verdict.reason or "kept"
            g["reasons"][key] = g["reasons"].get(key, 0) + 1

    def summarise(times, faces, nbytes, reasons=None):
        total = sum(times)
        out = {"objects": len(times), "seconds": total,
               "objects_per_s": len(times) / total if total else None,
               "ms_mean": 1e3 * total / len(times) if times else None,
               "ms_p50": 1e3 * _pct(times, 0.50), "ms_p95": 1e3 * _pct(times, 0.95),
               "ms_max": 1e3 * max(times) if times else None,
               "faces": faces, "faces_per_s": faces / total if total else None,
               "mb_per_s": nbytes / 1e6 / total if total else None}
        if reasons is not None:
            out["verdicts"] = dict(sorted(reasons.items()))
        return out

    by_source = {s: summarise(g["times"], g["faces"], g["bytes"], g["reasons"])
                 for s, g in sorted(per.items())}
    all_t = [x for g in per.values() for x in g["times"]]
    overall = summarise(all_t, sum(g["faces"] for g in per.values()),
                        sum(g["bytes"] for g in per.values()))
    if not args.geometry_mirror and not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"mirror": str(tmp), "mirror_summary": summary, "build_s": build_s,
            "repeats": args.geometry_repeats, "glb_files": len(items),
            "packaged_meshes_dir_present": meshes_dir.exists(),
            "by_source": by_source, "all": overall}


# --------------------------------------------------------------------------- report

def report(res: dict) -> str:
    m, info = res["machine"], res
    lines = [f"dreamline curation benchmark  {m['date']}",
             f"machine: {m['nproc']} cpus ({m.get('cpus_usable')} usable), "
             f"{m.get('mem_total_gib')} GiB, {m.get('cpu_model', m['processor'])}",
             f"python {m['python']} on {m['platform']}",
             f"loadavg at start: {res['loadavg_start']}   at end: {res.get('loadavg_end', '?')}", ""]
    mir = info.get("mirror")
    if mir:
        if mir.get("reused"):
            lines.append(f"mirror      reused {mir['root']} ({mir['records']:,} records)")
        else:
            lines.append(f"mirror      wrote {mir['records']:,} records in {mir['write_s']:.1f} s "
                         f"({mir['records'] / mir['write_s']:,.0f} records/s), "
                         f"{mir['disk_bytes'] / 1e6:.0f} MB on disk, writer peak RSS "
                         f"{_gib(mir['peak_rss_bytes'])}")
    md = info.get("metadata")
    if md:
        tg = md["targets"]
        lines += [
            "",
            f"metadata filter over {md['rows']:,} records (fresh child process)"
            + ("  [cProfile ON: timings inflated]" if md.get("profiled") else ""),
            f"  imports (not counted)      {md['import_s']:8.2f} s",
            f"  load_candidates            {md['load_s']:8.2f} s wall  {md['load_cpu_s']:8.2f} s CPU",
            f"  filter_metadata            {md['filter_s']:8.2f} s wall  {md['filter_cpu_s']:8.2f} s CPU",
            f"  total load+filter          {md['total_s']:8.2f} s wall  {md['total_cpu_s']:8.2f} s CPU   "
            f"{md['records_per_s']:,.0f} records/s",
            f"  peak RSS (wait4 maxrss)    {_gib(md['peak_rss_bytes']):>10}",
            f"  VmHWM after imports/load/filter   {_gib(md['vm_hwm_after_imports_bytes'])} / "
            f"{_gib(md['vm_hwm_after_load_bytes'])} / {_gib(md['vm_hwm_bytes'])}",
            f"  arrow table size           {_gib(md['table_nbytes']):>10}",
            f"  loadavg before/after       {' '.join(f'{x:.2f}' for x in md['loadavg_before'])} / "
            f"{' '.join(f'{x:.2f}' for x in md['loadavg_after'])}",
            f"  reasons                    {md['reasons']}",
            f"  TARGET time   < {TARGET_SECONDS:.0f} s     : {md['total_s']:.2f} s  -> "
            f"{'PASS' if tg['seconds']['pass'] else 'FAIL'}",
            f"  TARGET memory < 4 GiB    : {_gib(tg['peak_memory']['value_bytes'])}  -> "
            f"{'PASS' if tg['peak_memory']['pass'] else 'FAIL'}",
        ]
    geo = info.get("geometry")
    if geo:
        lines += ["",
                  f"geometry check_and_normalise ({geo['glb_files']} GLBs x {geo['repeats']} repeat(s); "
                  f"default mirror built in {geo['build_s']:.1f} s)",
                  f"  {'source':<11}{'objects':>8}{'obj/s':>9}{'ms mean':>9}{'ms p50':>9}"
                  f"{'ms p95':>9}{'ms max':>9}{'faces':>11}{'faces/s':>12}"]
        for name, g in [*geo["by_source"].items(), ("ALL", geo["all"])]:
            lines.append(f"  {name:<11}{g['objects']:>8}{g['objects_per_s']:>9.1f}{g['ms_mean']:>9.1f}"
                         f"{g['ms_p50']:>9.1f}{g['ms_p95']:>9.1f}{g['ms_max']:>9.1f}"
                         f"{g['faces']:>11,}{g['faces_per_s']:>12,.0f}")
        for name, g in geo["by_source"].items():
            lines.append(f"  verdicts {name}: {g['verdicts']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=800_000, help="annotation records (default 800000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mirror", help="directory for the annotation-only mirror; reused when its "
                                     "manifest says it holds --records records (default: a temp dir, removed)")
    ap.add_argument("--force", action="store_true", help="overwrite a non-mirror --mirror directory")
    ap.add_argument("--keep", action="store_true", help="keep temp mirrors")
    ap.add_argument("--out", default="benchmarks/results/curation.json", help="JSON results file")
    ap.add_argument("--skip-metadata", action="store_true")
    ap.add_argument("--skip-geometry", action="store_true")
    ap.add_argument("--geometry-mirror", help="directory for the default (GLB) mirror (default: temp)")
    ap.add_argument("--geometry-repeats", type=int, default=1)
    ap.add_argument("--profile-out", help="run load+filter under cProfile and dump pstats here "
                                          "(timings are then inflated)")
    # internal: child modes
    ap.add_argument("--child-write", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=2,
                    help="loader processes, as curate.load_workers (default 2)")
    ap.add_argument("--child-load-filter", help=argparse.SUPPRESS)
    ap.add_argument("--child-result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child_write:
        child_write(args.child_write, args.records, args.seed, args.child_result)
        return 0
    if args.child_load_filter:
        child_load_filter(args.child_load_filter, args.child_result, args.profile_out, args.workers)
        return 0

    res: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
                 "machine": machine_info(), "loadavg_start": _load(),
                 "params": {"records": args.records, "seed": args.seed}}
    tmp_root = None
    if not args.skip_metadata:
        root = Path(args.mirror) if args.mirror else Path(tempfile.mkdtemp(prefix="dl-ann-"))
        tmp_root = None if args.mirror else root
        res["mirror"] = phase_mirror(args, root)
        res["metadata"] = phase_metadata(args, root)
        if tmp_root and not args.keep:
            shutil.rmtree(tmp_root, ignore_errors=True)
    if not args.skip_geometry:
        res["geometry"] = phase_geometry(args)
    res["packages"] = package_versions()
    res["loadavg_end"] = _load()
    text = report(res)
    print("\n" + text, flush=True)
    res["report"] = text
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(f"\nwrote {out}")
    md = res.get("metadata")
    return 0 if not md or all(t["pass"] for t in md["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
