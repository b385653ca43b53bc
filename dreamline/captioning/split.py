"""Deterministic train / val / test split by uid.

Each uid maps to a point in [0, 1) by a hash of (seed, uid); the split depends on nothing
else, so adding or removing objects never moves an existing object to another split.
"""
from __future__ import annotations

import hashlib

from dreamline.config import SplitParams


def unit_hash(uid: str, seed: int) -> float:
    h = hashlib.sha256(f"split/{seed}/{uid}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def assign_split(uid: str, p: SplitParams) -> str:
    u = unit_hash(uid, p.seed)
    if u < p.test_fraction:
        return "test"
    if u < p.test_fraction + p.val_fraction:
        return "val"
    return "train"
