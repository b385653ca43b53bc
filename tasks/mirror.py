from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from dreamline.config import MirrorParams
from dreamline.sources.mirror import build_mirror


@task(name="write-mirror", cache_policy=NO_CACHE)
def write_mirror(p: MirrorParams, root: Path) -> dict:
    return build_mirror(p, root)
