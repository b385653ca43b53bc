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
    manifests: list[dict] = field(default_factory=list)  # per data output: its table, md5, object count


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
        rec.manifests = [m for o in body.get("outs", []) if (m := manifest(root, o)) is not None]
        order.append(rec)
    return order


# A data output's manifest: the table inside it that lists its objects, and how to count them.
MANIFESTS = {
    "data/curated": ("objects.parquet", "kept objects"),
    "data/captions": ("captions.parquet", "captioned objects"),
    "data/renders": ("index.parquet", "rendered objects"),
}


def file_md5(path: Path) -> str:
    import hashlib

    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _locked_entry_md5(root: Path, dir_md5: str | None, relpath: str) -> str | None:
    """The md5 dvc.lock's directory hash records for one file in it (from the .dir listing in
    the DVC cache); None when the listing is not in this cache."""
    import json

    if not dir_md5 or not dir_md5.endswith(".dir"):
        return None
    listing = root / ".dvc/cache/files/md5" / dir_md5[:2] / dir_md5[2:]
    if not listing.is_file():
        return None
    for entry in json.loads(listing.read_text()):
        if entry.get("relpath") == relpath:
            return entry.get("md5")
    return None


def count_objects(table: Path, what: str) -> dict:
    import pandas as pd

    df = pd.read_parquet(table)
    if what == "kept objects":
        return {"objects": int(df["kept"].sum()), "candidates": len(df)}
    if what == "rendered objects":
        return {"objects": int(df["uid"].nunique()), "views": len(df)}
    return {"objects": int(df["uid"].nunique())}


def manifest(root: Path, out: dict) -> dict | None:
    """The manifest of a data output: its path, md5 in the workspace, whether that is the file
    dvc.lock recorded, and how many objects it lists."""
    spec = MANIFESTS.get(out["path"])
    if spec is None:
        return None
    name, what = spec
    table = root / out["path"] / name
    info: dict = {"path": f"{out['path']}/{name}", "counts": what}
    if not table.is_file():
        info["present"] = False
        return info
    info.update(present=True, md5=file_md5(table), **count_objects(table, what))
    locked = _locked_entry_md5(root, out.get("md5"), name)
    info["matches_lock"] = None if locked is None else locked == info["md5"]
    return info


def _flatten(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def metrics_files(root: Path) -> list[str]:
    """Metrics files dvc.yaml declares (stage `metrics:` entries and the top-level list)."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text()) or {}
    found = [m if isinstance(m, str) else next(iter(m)) for m in spec.get("metrics", [])]
    for body in (spec.get("stages") or {}).values():
        for m in body.get("metrics", []) or []:
            path = m if isinstance(m, str) else next(iter(m))
            if "${" not in path:
                found.append(path)
    return sorted(set(found))


def find_metric(key: str, root: Path = Path(".")) -> tuple[str, object]:
    """(metrics file, value) of a metric key such as `r_precision.real_test.R@1`, or of
    `file:key`; KeyError naming near misses when no metrics file has it."""
    import json

    path, sep, name = key.partition(":")
    if not (sep and PurePosixPath(path).suffix in (".json", ".yaml", ".yml")):   # keys may hold ':'
        path, name = "", key
    files = [path] if path else metrics_files(root)
    hits, keys = [], []
    for f in files:
        p = root / f
        if not p.is_file():
            continue
        flat = _flatten(json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text()))
        keys += list(flat)
        if name in flat:
            hits.append((f, flat[name]))
    if not hits:
        close = ([k for k in keys if k.endswith(name)] or [k for k in keys if name.split(".")[-1] in k])[:5]
        raise KeyError(f"{key}: not a path in dvc.lock nor a metric in {', '.join(files) or 'any metrics file'}"
                       + (f" (similar: {', '.join(close)})" if close else ""))
    if len(hits) > 1:
        raise KeyError(f"{key}: in several metrics files ({', '.join(f for f, _ in hits)}); use FILE:KEY")
    return hits[0]


def target_state(path: str, root: Path, stages: dict) -> dict:
    """Whether the workspace file at `path` is the one dvc.lock recorded."""
    found = producer(stages, path)
    out = {"path": path}
    p = root / path
    if found is None or not p.is_file():
        return out
    out["md5"] = file_md5(p)
    if found[1]["path"] == path:
        out["matches_lock"] = found[1].get("md5") == out["md5"]
    else:                                   # a file inside a directory output: its listing
        locked = _locked_entry_md5(root, found[1].get("md5"), str(PurePosixPath(path).relative_to(found[1]["path"])))
        out["matches_lock"] = None if locked is None else locked == out["md5"]
    return out


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
    # The default DreamBooth identity is a test object's renders: that one model saw it.
    booth = data / "models/dreambooth/summary.json"
    if "dreambooth" in stages and booth.is_file():
        import json

        if json.loads(booth.read_text()).get("identity_uid") == uid:
            out["models"]["trained_on_it"] = out["models"]["trained_on_it"] + ["dreambooth (identity)"]
    return out
