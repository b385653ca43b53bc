#!/usr/bin/env python
"""Scale-out benchmark: the curate and render flows over shards, 1 vs 2 workers, threads vs Dask.

    python benchmarks/scaleout.py --out benchmarks/results/scaleout.json

Needs the embedded default's data/mirror and data/curated (`dvc repro curate`). Each run
writes into a fresh temp folder (nothing is reused from an earlier run), through the real
flows (flows.curate.curate_flow, flows.render.render_flow) with the task runner that
`params.execution` would select (flows.runners.with_runner). All runs share one Prefect
server, as a stage does with `task_runner: dask`. Reported per run: wall seconds, objects/s,
the median of --repeats runs. Fixed cost: a run with one no-op shard (flow start, and for
Dask the local cluster's start-up). Per-shard overhead: a no-op task mapped over --noop-shards shards, wall / shards.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

from prefect import flow, task  # noqa: E402

from dreamline.config import ExecutionParams, load_params  # noqa: E402
from flows.runners import shared_api_server, with_runner  # noqa: E402


@task(name="noop-shard")
def noop_shard(i: int) -> int:
    return i


@flow(name="noop-shards")
def noop_flow(n: int) -> int:
    return sum(f.result() for f in noop_shard.map(list(range(n))))


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def subset_curated(src: Path, dst: Path, n: int) -> int:
    """A curated folder listing the first `n` kept objects (meshes linked, not copied)."""
    import pandas as pd

    objects = pd.read_parquet(src / "objects.parquet")
    kept = objects[objects["kept"]].sort_values("uid").head(n)
    dst.mkdir(parents=True)
    kept.to_parquet(dst / "objects.parquet")
    (dst / "meshes").symlink_to((src / "meshes").resolve())
    return len(kept)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--render-objects", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2, help="runs per configuration; the median is reported")
    ap.add_argument("--noop-shards", type=int, default=64)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from flows.curate import curate_flow
    from flows.render import render_flow

    params = load_params(args.params)
    mirror, curated = REPO / "data/mirror", REPO / "data/curated"
    if not (mirror.is_dir() and (curated / "objects.parquet").is_file()):
        sys.exit("needs data/mirror and data/curated: run `dvc repro curate` first")
    configs = [ExecutionParams(task_runner=r, workers=w) for r in ("thread", "dask") for w in (1, 2)]
    results: dict = {"runs": [], "noop": []}
    tmp = Path(tempfile.mkdtemp(prefix="dreamline-scaleout-"))
    try:
        with shared_api_server(ExecutionParams(task_runner="dask")):
            sub = tmp / "curated-subset"
            n_render = subset_curated(curated, sub, args.render_objects)
            for ex in configs:
                label = f"{ex.task_runner} x{ex.workers}"
                startup = statistics.median(timed(lambda: with_runner(noop_flow, ex)(1))[0]
                                            for _ in range(args.repeats))
                noop = statistics.median(timed(lambda: with_runner(noop_flow, ex)(args.noop_shards))[0]
                                         for _ in range(args.repeats))
                results["noop"].append({"runner": label, "one_shard_s": round(startup, 2),
                                        "shards": args.noop_shards, "wall_s": round(noop, 2),
                                        "per_shard_ms": round(1000 * (noop - startup) / (args.noop_shards - 1), 1)})
                print(results["noop"][-1], flush=True)
                for stage in ("curate", "render"):
                    out = tmp / f"{stage}-{ex.task_runner}-{ex.workers}"
                    if stage == "curate":
                        run = lambda: with_runner(curate_flow, ex)(params, mirror_root=mirror, out_root=out)  # noqa: E731
                    else:
                        run = lambda: with_runner(render_flow, ex)(params, curated_root=sub, out_root=out)  # noqa: E731
                    walls = []
                    for _ in range(args.repeats):
                        wall, summary = timed(run)
                        walls.append(wall)
                        shutil.rmtree(out)
                    wall = statistics.median(walls)
                    n = summary.get("candidates", summary.get("objects")) if stage == "curate" else n_render
                    results["runs"].append({"stage": stage, "runner": label, "objects": n, "wall_s": round(wall, 2),
                                            "walls_s": [round(w, 2) for w in walls],
                                            "objects_per_s": round(n / wall, 2),
                                            "shard_size": getattr(params, stage).shard_size})
                    print(results["runs"][-1], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    by = {(r["stage"], r["runner"]): r["wall_s"] for r in results["runs"]}
    results["speedup_2_over_1"] = {f"{stage} {runner}": round(by[(stage, f'{runner} x1')] / by[(stage, f'{runner} x2')], 2)
                                   for stage in ("curate", "render") for runner in ("thread", "dask")}
    results["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    print(json.dumps(results["speedup_2_over_1"], indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
