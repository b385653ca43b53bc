from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from dreamline.captioning import captions as cap
from dreamline.captioning.base import CaptionInput, Captioner
from dreamline.config import CaptionParams


@lru_cache(maxsize=2)
def _captioner(params_json: str, device: str, precision: str) -> Captioner:
    # One captioner per process and setting: the image captioner loads its model once,
    # not once per shard.
    captioner = cap.build_captioner(CaptionParams.model_validate_json(params_json))
    if hasattr(captioner, "place"):      # a captioner that runs a model: on the compute device
        captioner.place(device, precision)
    return captioner


def captioner_for(p: CaptionParams, device: str = "cpu", precision: str = "fp32") -> Captioner:
    return _captioner(json.dumps(p.model_dump(mode="json"), sort_keys=True), str(device), precision)


@task(name="caption-shard", cache_policy=NO_CACHE)
def caption_shard(items: list[CaptionInput], keys: list[str], p: CaptionParams,
                  out_root: Path, device: str = "cpu", precision: str = "fp32") -> list[str]:
    texts = captioner_for(p, device, precision).caption(items)
    cap.write_part(out_root, keys, texts)  # a killed run keeps its finished shards
    return texts
