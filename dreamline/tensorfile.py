"""Nested state (dicts, lists, tuples, tensors, numbers, strings) in one safetensors file.

Everything dreamline writes and later reads back with tensors in it (distilled assets,
distillation and training checkpoints) goes through here instead of ``torch.save``: the
tensors are safetensors' raw little-endian buffers and the structure around them is JSON
in the file's metadata. Loading parses JSON and copies bytes, so a crafted file cannot run
code the way a pickle (``torch.save`` output) can when it is loaded.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch

from dreamline.atomic import write_bytes_atomic

TREE_KEY = "dreamline.tree"
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")   # protocol-2+ pickle; torch.save's zip container


class UnsafeFormatError(ValueError):
    """A file in a format that can run code when loaded (pickle / torch.save)."""


def refuse_pickle(path: Path, regenerate: str) -> UnsafeFormatError:
    return UnsafeFormatError(
        f"{path}: a pickle file (torch.save) from an earlier dreamline version; it is not loaded "
        f"because unpickling can run code. Regenerate it: {regenerate}")


def _encode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, torch.Tensor):
        name = f"t{len(tensors)}"
        # A private contiguous copy: safetensors refuses views that share storage.
        tensors[name] = node.detach().to("cpu").contiguous().clone()
        return {"tensor": name}
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, dict):
        for k in node:
            if not (k is None or isinstance(k, (bool, int, float, str))):
                raise TypeError(f"dict key {k!r} ({type(k).__name__}) cannot be stored")
        return {"dict": [[k, _encode(v, tensors)] for k, v in node.items()]}
    if isinstance(node, tuple):
        return {"tuple": [_encode(v, tensors) for v in node]}
    if isinstance(node, list):
        return [_encode(v, tensors) for v in node]
    raise TypeError(f"{type(node).__name__} cannot be stored in a tensor file")


def _decode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if isinstance(node, dict):
        if set(node) == {"tensor"}:
            return tensors[node["tensor"]]
        if set(node) == {"tuple"}:
            return tuple(_decode(v, tensors) for v in node["tuple"])
        if set(node) == {"dict"}:
            return {k: _decode(v, tensors) for k, v in node["dict"]}
        raise ValueError(f"malformed tree node with keys {sorted(node)}")
    return node


def dumps(tree: Any) -> bytes:
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(tree, tensors)
    return save(tensors, metadata={TREE_KEY: json.dumps(skeleton, separators=(",", ":"))})


def _metadata(data: bytes) -> dict[str, str]:
    # The safetensors header: an 8-byte little-endian length, then that many bytes of JSON.
    if len(data) < 8:
        raise ValueError("too short for a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError("truncated safetensors header")
    return json.loads(data[8:8 + n]).get("__metadata__") or {}


def loads(data: bytes, source: str = "<bytes>") -> Any:
    from safetensors.torch import load

    if data[:4].startswith(_PICKLE_MAGIC):
        raise UnsafeFormatError(f"{source}: a pickle file, not safetensors; refusing to load it")
    try:
        meta = _metadata(data)
        skeleton = json.loads(meta[TREE_KEY])
        tensors = load(data)
        return _decode(skeleton, tensors)
    except UnsafeFormatError:
        raise
    except Exception as exc:  # truncated, corrupt or foreign: one clear error type
        raise ValueError(f"{source}: not a dreamline tensor file ({type(exc).__name__}: {exc})") from None


def save(path: str | Path, tree: Any) -> Path:
    """Write atomically: a reader never sees a half-written file."""
    return write_bytes_atomic(Path(path), dumps(tree))


def load(path: str | Path) -> Any:
    path = Path(path)
    return loads(path.read_bytes(), str(path))
