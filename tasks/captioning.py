from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from dreamline.captioning.base import CaptionInput
from dreamline.captioning.captions import build_captioner
from dreamline.config import CaptionParams


@task(name="caption-shard", cache_policy=NO_CACHE)
def caption_shard(items: list[CaptionInput], p: CaptionParams) -> list[str]:
    return build_captioner(p).caption(items)
