"""Lineage from dvc.lock (read as YAML: the library never imports dvc).

`lineage(path)` walks from the stage that wrote `path` up through every stage whose outputs
it depends on, giving each stage's command, parameter values, and the hashes of its code and
data inputs and outputs as the lock recorded them. `why(uid)` follows one object through
the curation, caption and render tables and says which trained models saw it.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml

CODE_PREFIXES = ("dreamline", "stages", "flows", "tasks")


@dataclass
class StageRecord:
    name: str
    cmd: str
    params: dict
    code: list[dict] = field(default_factory=list)     # {path, md5}
    inputs: list[dict] = field(default_factory=list)   # data deps {path, md5, nfiles, stage}
    outputs: list[dict] = field(default_factory=list)  # {path, md5, nfiles}


def _inside(path: str, parent: str) -> bool:
    p, q = PurePosixPath(path), PurePosixPath(parent)
    return p == q or q in p.parents


def load_lock(root: Path) -> dict:
    lock = root / "dvc.lock"
    if not lock.is_file():
        raise FileNotFoundError(f"{lock}: no dvc.lock (run `dvc repro` first)")
    return (yaml.safe_load(lock.read_text()) or {}).get("stages", {})


def producer(stages: dict, path: str) -> tuple[str, dict] | None:
    """The stage whose output is `path` or contains it (an image inside data/renders)."""
    best = None
    for name, body in stages.items():
        for out in body.get("outs", []):
            if _inside(path, out["path"]) and (best is None or len(out["path"]) > len(best[1]["path"])):
                best = (name, out)
    return best


def _entry(item: dict) -> dict:
    out = {"path": item["path"], "md5": item.get("md5")}
    if "nfiles" in item:
        out["nfiles"] = item["nfiles"]
    return out


def lineage(path: str, root: Path = Path(".")) -> list[StageRecord]:
    """Stages that produced `path`, the producer first, then its upstream in BFS order."""
    stages = load_lock(root)
    path = str(PurePosixPath(path))
    first = producer(stages, path)
    if first is None:
        raise KeyError(f"{path}: no stage in dvc.lock writes it")
    order, queue, seen = [], [first[0]], set()
    while queue:
        name = queue.pop(0)
        if name in seen:
            continue
        seen.add(name)
        body = stages[name]
        rec = StageRecord(name, body.get("cmd", ""),
                          {k: v for f in (body.get("params") or {}).values() for k, v in f.items()})
        for dep in body.get("deps", []):
            up = producer(stages, dep["path"])
            if up is None:
                # Also a dep that CONTAINS other stages' outputs (data/distill for evaluate).
                ups = sorted(n for n, b in stages.items()
                             for o in b.get("outs", []) if _inside(o["path"], dep["path"]))
                if ups:
                    rec.inputs.append({**_entry(dep), "stage": ups})
                    queue += ups
                elif dep["path"].split("/")[0] in CODE_PREFIXES:
                    rec.code.append(_entry(dep))
                else:
                    rec.inputs.append({**_entry(dep), "stage": None})
            else:
                rec.inputs.append({**_entry(dep), "stage": up[0]})
                queue.append(up[0])
        rec.outputs = [_entry(o) for o in body.get("outs", [])]
        order.append(rec)
    return order


def git_commit(root: Path = Path(".")) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+uncommitted changes" if dirty else "")


def _clean(value):
    """Parquet nulls (None, NaN, "") as None; numpy scalars as Python values."""
    if value is None or (isinstance(value, float) and value != value) or value == "":
        return None
    return value.item() if hasattr(value, "item") else value


def why(uid: str, root: Path = Path(".")) -> dict:
    """One object's journey through curate, caption and render, and the models that saw it."""
    import pandas as pd

    data = root / "data"
    objects = pd.read_parquet(data / "curated/objects.parquet")
    row = objects[objects["uid"] == uid]
    if row.empty:
        raise KeyError(f"{uid}: not a candidate in data/curated/objects.parquet")
    r = row.iloc[0]
    out = {"uid": uid, "source": _clean(r.get("source")), "sha256": _clean(r.get("sha256")), "kept": bool(r["kept"]),
           "reject_reason": _clean(r.get("reject_reason")), "reject_stage": _clean(r.get("reject_stage")),
           "reject_detail": _clean(r.get("reject_detail"))}
    if not out["kept"]:
        return out
    caps = pd.read_parquet(data / "captions/captions.parquet")
    c = caps[caps["uid"] == uid]
    if not c.empty:
        c = c.iloc[0]
        out.update({"split": c["split"], "caption": c["caption"], "original_text": _clean(c["original_text"]),
                    "captioner": _clean(c.get("captioner"))})
    index_path = data / "renders/index.parquet"
    if index_path.exists():
        views = pd.read_parquet(index_path, columns=["uid", "kind"])
        kinds = views[views["uid"] == uid]["kind"].value_counts().to_dict()
        out["views"] = {str(k): int(v) for k, v in sorted(kinds.items())}
    split = out.get("split")
    stages = load_lock(root) if (root / "dvc.lock").is_file() else {}
    trained = [n for n in ("train_base", "train_mv", "train_mv_3d", "train_agp", "train_evaluator") if n in stages]
    # train: every training stage learns from it; val: their held-out checks score it;
    # test: only the evaluate stage sees it (the real-render ceiling row).
    out["models"] = {
        "trained_on_it": trained if split == "train" else [],
        "held_out_evaluation": trained if split == "val" else [],
        "evaluate_ceiling_row": split == "test" and "evaluate" in stages,
    }
    return out
