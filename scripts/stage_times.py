"""Wall time of each DVC stage's latest run, from the log every stage process appends to.

    python scripts/stage_times.py                                  # every stage's latest run
    python scripts/stage_times.py --since 2026-12-01T09:30:00Z     # only runs started since then

One row per stage command (`distill --prompt a_cat` and `distill --prompt a_bunny` are two),
its latest run, in the order they started: seconds, share of the total, and the exit code
when it failed. The log (stages/_common.py record_stage_time) is logs/stage_times.jsonl,
or the file DREAMLINE_STAGE_TIMES names.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOG = "logs/stage_times.jsonl"          # stages/_common.py STAGE_TIMES, relative to the project root


def parse_time(text: str) -> datetime:
    """An ISO 8601 time; one without a zone is UTC ("Z" is accepted on Python 3.10 too)."""
    text = text.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    t = datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def read_runs(path: Path) -> tuple[list[dict], int]:
    """The log's runs, each with its `started` parsed; and how many lines were unreadable."""
    runs, bad = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            run = json.loads(line)
            run["started"] = parse_time(run["started"])
            run["seconds"] = float(run["seconds"])
            run["label"] = " ".join([run["stage"], *run.get("argv", [])])
        except (ValueError, KeyError, TypeError):
            bad += 1
            continue
        runs.append(run)
    return runs, bad


def latest(runs: list[dict], since: datetime | None = None) -> list[dict]:
    """Each stage command's latest run (started at or after `since`), in the order they started."""
    last: dict[str, dict] = {}
    for run in runs:
        if since is not None and run["started"] < since:
            continue
        if run["label"] not in last or run["started"] >= last[run["label"]]["started"]:
            last[run["label"]] = run
    return sorted(last.values(), key=lambda r: r["started"])


def table(rows: list[dict]) -> str:
    total = sum(r["seconds"] for r in rows)
    width = max([len("stage"), len("total")] + [len(r["label"]) for r in rows])
    lines = [f"{'stage':<{width}}  {'seconds':>9}  {'share':>6}"]
    for r in rows:
        share = r["seconds"] / total if total > 0 else 0.0
        failed = "" if r.get("ok", r.get("rc", 0) == 0) else f"  failed (exit {r.get('rc')})"
        lines.append(f"{r['label']:<{width}}  {r['seconds']:>9.1f}  {share:>6.1%}{failed}")
    lines.append(f"{'total':<{width}}  {total:>9.1f}  {1 if rows else 0:>6.1%}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, default=Path(os.environ.get("DREAMLINE_STAGE_TIMES") or ROOT / LOG))
    parser.add_argument("--since", type=parse_time, metavar="ISO_TIME",
                        help="only runs started at or after this time (UTC unless it names a zone)")
    a = parser.parse_args(argv)
    try:
        runs, bad = read_runs(a.log)
    except FileNotFoundError:
        print(f"no stage times yet: {a.log} does not exist", file=sys.stderr)
        return 0
    if bad:
        print(f"{a.log}: {bad} unreadable line(s) left out", file=sys.stderr)
    rows = latest(runs, a.since)
    if not rows:
        print("no stage ran" + (f" since {a.since.isoformat()}" if a.since else ""))
        return 0
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
