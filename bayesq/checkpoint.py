"""Training checkpoints without pickle: tensors in safetensors, everything else in a JSON header.

A checkpoint is a nested structure (dicts, lists, tensors, numbers, strings, None), for example a
model's state_dict next to an optimizer's state and the epoch reached. :func:`save_checkpoint`
splits it into a flat table of tensors and a JSON skeleton that says where each tensor goes;
:func:`load_checkpoint` rebuilds it and validates both halves, so a truncated or hand-edited file
raises :class:`CheckpointError` naming the file instead of loading something half-right. Writes go
through :func:`bayesq.files.atomic_path` (a temporary file, fsync, rename), so an interrupted save
never destroys the last checkpoint.

What a checkpoint *means* is its owner's business: a trainer that resumes from one checks that it
was made with the same configuration and that its counters make sense (see ``bayesq.vnq``). The
pieces every resumable fit needs are here: :func:`require` (a typed entry) and
:func:`check_config` (the same configuration); :func:`check_state_dict` (a stored state dict fits
the net, checked before anything is loaded); :func:`rng_states` and :func:`restore_rng_states`
(every random number generator a fit draws from, so that a resumed fit continues the very same
random streams and ends bit for bit where an uninterrupted one ends).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from .files import atomic_path, read_safetensors

__all__ = [
    "CheckpointError",
    "check_config",
    "check_state_dict",
    "load_checkpoint",
    "require",
    "restore_rng_states",
    "rng_states",
    "save_checkpoint",
]

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
    """Rebuild what _flatten stored; raises CheckpointError (without the file name) if malformed."""
    if isinstance(node, dict):
        if set(node) == {_TENSOR_REF}:
            key = node[_TENSOR_REF]
            if not isinstance(key, str) or key not in tensors:
                raise CheckpointError(f"header refers to a missing tensor {key!r}")
            return tensors[key]
        if set(node) == {"__dict__"} and isinstance(node["__dict__"], list):
            out = {}
            for entry in node["__dict__"]:
                if not (
                    isinstance(entry, list)
                    and len(entry) == 3
                    and isinstance(entry[0], int | str)
                    and isinstance(entry[1], bool)
                ):
                    raise CheckpointError(f"malformed dict entry in the header: {entry!r:.80}")
                key, is_int, value = entry
                if is_int and (isinstance(key, bool) or not isinstance(key, int)):
                    raise CheckpointError(f"dict key {key!r} marked as an integer is not one")
                out[key] = _unflatten(value, tensors)
            return out
        if set(node) == {"__list__"} and isinstance(node["__list__"], list):
            return [_unflatten(v, tensors) for v in node["__list__"]]
        raise CheckpointError(f"unexpected object in the header: keys {sorted(node)[:5]}")
    if isinstance(node, list):  # _flatten never writes a bare list
        raise CheckpointError("unexpected bare list in the header")
    return node


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write `state` atomically to `path` (safetensors + JSON header, no pickle)."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, tensors)
    metadata = {"format": FORMAT, "version": str(FORMAT_VERSION), "state": json.dumps(skeleton)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; raises CheckpointError if malformed."""
    path = Path(path)
    metadata, tensors = read_safetensors(
        path,
        "checkpoint",
        lambda f: (f.metadata() or {}, {key: f.get_tensor(key) for key in f.keys()}),
        CheckpointError,
    )
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
    except (KeyError, json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(f"{path}: checkpoint header is missing or not JSON ({err})") from err
    try:
        return _unflatten(skeleton, tensors)
    except RecursionError as err:
        raise CheckpointError(f"{path}: checkpoint header is nested too deeply") from err
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from err


def require(state: Any, key: str, kind: type | tuple[type, ...], path, where: str = "") -> Any:
    """``state[key]``, checked to be a dict entry of type `kind` (bool is never an int);
    otherwise CheckpointError naming the file `path` and the entry (``where`` + key)."""
    name = f"{where}{key}"
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: {where or 'checkpoint '}is not a dict")
    if key not in state:
        raise CheckpointError(f"{path}: checkpoint has no entry {name!r}")
    value = state[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise CheckpointError(
            f"{path}: checkpoint entry {name!r} is a {type(value).__name__}, expected {expected}"
        )
    return value


def check_config(path, stored: Any, current: dict[str, Any]) -> None:
    """Refuse to resume from `path` unless its configuration `stored` equals `current`, field by
    field in the order of `current`; the error names the first field that differs and both values.
    """
    if not isinstance(stored, dict):
        raise CheckpointError(f"{path}: checkpoint records no configuration (a dict)")
    for field, value in current.items():
        if field not in stored:
            raise CheckpointError(f"{path}: checkpoint configuration lacks the field {field!r}")
        was, now = _canonical(stored[field]), _canonical(value)
        if was != now:
            where, was, now = _first_difference(field, was, now)
            raise CheckpointError(
                f"{path}: checkpoint was made with {where} = {_short(was)}, this fit has "
                f"{where} = {_short(now)}; resume with the configuration it was made with, or "
                "start from a new checkpoint path"
            )
    extra = sorted(set(stored) - set(current))
    if extra:
        raise CheckpointError(f"{path}: checkpoint configuration has unknown fields {extra}")


def _canonical(value: Any) -> Any:
    """The value as it reads back from a checkpoint (tuples become lists)."""
    return json.loads(json.dumps(value))


def _first_difference(where: str, a: Any, b: Any) -> tuple[str, Any, Any]:
    """Where two JSON values first differ, as (path, a there, b there): down through dicts, and
    into one element of equally long lists (an element is kept whole: a layer, say)."""
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return f"{where}[{i}]", x, y
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        for key in a:
            if a[key] != b[key]:
                return _first_difference(f"{where}[{key!r}]", a[key], b[key])
    return where, a, b


def _short(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_state_dict(path, stored: dict, expected: dict[str, torch.Tensor]) -> None:
    """A stored state dict must hold the names, shapes and dtypes of `expected` (a module's
    ``state_dict()``) exactly; otherwise CheckpointError naming the file `path` and the entry."""
    if set(stored) != set(expected):
        missing, extra = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
        raise CheckpointError(
            f"{path}: net state does not match the net (missing {missing[:5]}, extra {extra[:5]})"
        )
    for name, tensor in stored.items():
        target = expected[name]
        if isinstance(tensor, torch.Tensor) and (tensor.shape, tensor.dtype) == (
            target.shape,
            target.dtype,
        ):
            continue
        found = (
            f"{tensor.dtype} {tuple(tensor.shape)}"
            if isinstance(tensor, torch.Tensor)
            else type(tensor).__name__
        )
        raise CheckpointError(
            f"{path}: net entry {name!r} is {found}, expected {target.dtype} {tuple(target.shape)}"
        )


# --- random number generators ---------------------------------------------------------------------
def _loader_generators(loader) -> list[torch.Generator]:
    """The distinct torch generators a DataLoader shuffles with (its own and its sampler's)."""
    found = []
    for owner in (loader, getattr(loader, "sampler", None)):
        generator = getattr(owner, "generator", None)
        if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
            found.append(generator)
    return found


def rng_states(loader) -> dict:
    """Every random number generator a fit draws from, as checkpoint contents: torch's global one
    (weight noise, Pyro's sampling and subsampling, a loader without a generator of its own),
    Python's and numpy's (which ``pyro.set_rng_seed`` seeds), and the loader's shuffle
    generator(s) (a list; `loader` may be anything with a ``generator`` or ``sampler``)."""
    version, words, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "words": list(words), "gauss": gauss},
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "loader": [g.get_state() for g in _loader_generators(loader)],
    }


def restore_rng_states(state: dict, loader, path=None) -> None:
    """Restore what :func:`rng_states` saved. A malformed state raises CheckpointError naming
    the file `path` (or, with `path` None, the KeyError / TypeError / ValueError itself)."""
    try:
        generators = _loader_generators(loader)
        loader_states = state["loader"]
        if len(loader_states) != len(generators):
            raise ValueError(
                f"{len(loader_states)} loader generator state(s) for {len(generators)} generator(s)"
            )
        py = state["python"]
        numpy_state = state["numpy"]
        key = numpy_state["key"]
        if not isinstance(key, torch.Tensor) or key.shape != (624,):
            raise ValueError("numpy state key is not 624 words")
        torch.set_rng_state(state["torch"])
        random.setstate((py["version"], tuple(py["words"]), py["gauss"]))
        np.random.set_state(
            {
                "bit_generator": "MT19937",
                "state": {"key": key.numpy().astype(np.uint32), "pos": int(numpy_state["pos"])},
                "has_gauss": int(numpy_state["has_gauss"]),
                "gauss": float(numpy_state["gauss"]),
            }
        )
        for generator, saved in zip(generators, loader_states, strict=True):
            generator.set_state(saved)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        if path is None:
            raise
        raise CheckpointError(f"{path}: malformed random number generator state ({err})") from err
