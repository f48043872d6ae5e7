"""Training checkpoints without pickle: tensors in safetensors, everything else in a JSON header.

A checkpoint is a nested structure (dicts, lists, tensors, numbers, strings, None), for example a
model's state_dict next to an optimizer's state and the epoch reached. :func:`save_checkpoint`
splits it into a flat table of tensors and a JSON skeleton that says where each tensor goes;
:func:`load_checkpoint` rebuilds it and validates both halves, so a truncated or hand-edited file
raises :class:`CheckpointError` instead of loading something half-right. Writes go to a temporary
file first and are renamed into place, so an interrupted save never destroys the last checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint"]

FORMAT = "bayesq-checkpoint"
FORMAT_VERSION = 1
_TENSOR_REF = "__tensor__"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, of another format or inconsistent."""


def _flatten(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON skeleton of node; tensors are moved into `tensors` under a fresh key each."""
    if isinstance(node, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = node.detach().cpu().contiguous()
        return {_TENSOR_REF: key}
    if isinstance(node, dict):
        # JSON keys are strings; record int keys (torch optimizer states use them) explicitly.
        return {
            "__dict__": [[k, isinstance(k, int), _flatten(v, tensors)] for k, v in node.items()]
        }
    if isinstance(node, (list, tuple)):
        return {"__list__": [_flatten(v, tensors) for v in node]}
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    raise TypeError(f"cannot store a {type(node).__name__} in a checkpoint")


def _unflatten(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, dict):
        if _TENSOR_REF in node:
            key = node[_TENSOR_REF]
            if key not in tensors:
                raise CheckpointError(f"checkpoint header refers to a missing tensor {key!r}")
            return tensors[key]
        if "__dict__" in node:
            return {
                (int(k) if is_int else k): _unflatten(v, tensors)
                for k, is_int, v in node["__dict__"]
            }
        if "__list__" in node:
            return [_unflatten(v, tensors) for v in node["__list__"]]
        raise CheckpointError(f"unexpected object in checkpoint header: keys {sorted(node)}")
    return node


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write `state` atomically to `path` (safetensors + JSON header, no pickle)."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, tensors)
    metadata = {"format": FORMAT, "version": str(FORMAT_VERSION), "state": json.dumps(skeleton)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; raises CheckpointError if malformed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a bayesq checkpoint (format {metadata.get('format')!r})"
        )
    if metadata.get("version") != str(FORMAT_VERSION):
        raise CheckpointError(
            f"{path}: checkpoint version {metadata.get('version')!r}, expected {FORMAT_VERSION}"
        )
    try:
        skeleton = json.loads(metadata["state"])
    except (KeyError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: checkpoint header is missing or not JSON ({err})") from err
    return _unflatten(skeleton, tensors)
