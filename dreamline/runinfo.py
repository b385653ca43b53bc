"""How a run went — wall time, throughput, where it resumed from — kept beside a stage's
outputs in `run.json`, which .dvcignore keeps out of DVC's hashes.

A DVC output must be a pure function of its inputs: a retrained model with the same weights
must hash the same, or every downstream stage reruns. Timings differ from run to run, and
"resumed from step N" differs between a killed-and-resumed run and an unbroken one with
identical results, so neither goes into a tracked file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dreamline.atomic import write_json_atomic

RUN_FILE = "run.json"


def record_run(folder: str | Path, section: str, info: dict[str, Any]) -> Path:
    """Merge `info` under `section` into folder/run.json (atomically)."""
    path = Path(folder) / RUN_FILE
    current: dict[str, Any] = {}
    if path.is_file():
        try:
            current = json.loads(path.read_text())
        except ValueError:   # a torn file of a crashed writer: start it again
            current = {}
    current[section] = info
    return write_json_atomic(path, current)


def read_run(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
