"""Prefect flow of the `mirror` stage."""
from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger

from dreamline import paths
from dreamline.config import Params
from tasks.mirror import write_mirror


@flow(name="mirror")
def mirror_flow(params: Params, root: Path = paths.MIRROR) -> dict:
    logger = get_run_logger()
    started = time.time()
    summary = write_mirror(params.mirror, Path(root))
    dt = time.time() - started
    logger.info("mirror: %d objects (%d GLBs written) in %.1fs, %.1f objects/s",
                summary["objects"], summary["glbs_written"], dt, summary["objects"] / max(dt, 1e-9))
    return summary
