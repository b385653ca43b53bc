"""Shared Prefect task plumbing."""
from __future__ import annotations

import logging
import time
from typing import Any, Iterable

from prefect import get_run_logger
from prefect.exceptions import MissingContextError
from prefect.futures import PrefectFuture


def gather(futures: Iterable[PrefectFuture], label: str, total_items: int) -> list[Any]:
    """Wait for mapped futures in order, logging progress and throughput as shards finish."""
    logger = get_run_logger()
    futures = list(futures)
    started = time.time()
    out = []
    for i, fut in enumerate(futures, 1):
        out.append(fut.result())
        if i == len(futures) or i % max(1, len(futures) // 10) == 0:
            dt = max(time.time() - started, 1e-9)
            logger.info("%s: %d/%d shards done, %.1f items/s", label, i, len(futures),
                        total_items * i / len(futures) / dt)
    return out


def run_logger():
    """The Prefect run logger, or a plain one when task logic is called through `.fn()`."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("dreamline")


def flatten(lists: Iterable[list]) -> list:
    return [x for xs in lists for x in xs]


def compute_target(device: str, precision: str):
    """(torch.device, precision) of params `compute`, resolved once by a flow and handed to
    the library as arguments; a device or precision this machine cannot run raises
    dreamline.device.DeviceError naming the key."""
    from dreamline.device import check_precision, resolve_device

    resolved = resolve_device(device)
    check_precision(resolved, precision)
    return resolved, precision
