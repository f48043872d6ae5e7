"""A posterior on disk: one safetensors file with a JSON header that holds the structure too.

`Posterior.save` / `Posterior.load` (`bayesq.posterior`) call these. The file holds tensors
"<layer>.mean", ".variance", ".levels", ".level_probs", ".bias" and, for a discrete posterior
with per-row units, ".row_scale" (float32), and the metadata entry "bayesq", a JSON header:

    {"format": "bayesq.posterior", "version": 1, "input_shape": [1, 28, 28],
     "ops": [{"kind": "layer", "name": "conv1"}, {"kind": "maxpool2d", "kernel_size": 2}, ...],
     "layers": [{"name", "discrete", "codebook_scale", "conv", "bias"[, "row_scale": true]}, ...]}

so that a reader rebuilds the net's discrete form without the trainer or the model's code. Like
the artifact (`bayesq.artifact`), nothing in a file is trusted: the header's fields, every
tensor's name, dtype and shape (checked before it is read, and the weights' total bounded by
MAX_WEIGHTS), the values (by `LayerPosterior`) and that the layers chain (by `Posterior`); any
fault raises a ValueError naming the file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from .files import atomic_path, json_header, read_safetensors
from .posterior import LayerPosterior, Posterior

__all__ = ["MAX_LEVELS", "MAX_WEIGHTS", "POSTERIOR_FORMAT", "POSTERIOR_VERSION",
           "load_posterior", "save_posterior"]  # fmt: skip

POSTERIOR_FORMAT = "bayesq.posterior"
POSTERIOR_VERSION = 1
MAX_LEVELS = 255
MAX_WEIGHTS = 2**27  # weights summed over layers (their level masses: L float32 each)


def save_posterior(posterior: Posterior, path: str | os.PathLike) -> Path:
    """Write `posterior` to `path` atomically (`bayesq.files`); returns the path."""
    path = Path(path)
    tensors, layers = {}, []
    for name, layer in posterior.layers.items():
        for part in ("mean", "variance", "levels", "level_probs"):
            tensors[f"{name}.{part}"] = getattr(layer, part).to(torch.float32).contiguous()
        if layer.bias is not None:
            tensors[f"{name}.bias"] = layer.bias.to(torch.float32).contiguous()
        entry = {
            "name": name,
            "discrete": layer.discrete,
            "codebook_scale": layer.codebook_scale,
            "conv": layer.conv,
            "bias": layer.bias is not None,
        }
        if layer.row_scale is not None:  # absent in files without it (their format unchanged)
            tensors[f"{name}.row_scale"] = layer.row_scale.to(torch.float32).contiguous()
            entry["row_scale"] = True
        layers.append(entry)
    header = {
        "format": POSTERIOR_FORMAT,
        "version": POSTERIOR_VERSION,
        "input_shape": list(posterior.input_shape),
        "ops": posterior.ops,
        "layers": layers,
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"bayesq": json.dumps(header)})
    return path


def load_posterior(path: str | os.PathLike) -> Posterior:
    """Read and validate the posterior file at `path` (ValueError naming the file)."""

    def read(f) -> Posterior:
        header = _posterior_header(f.metadata() or {})
        tensors = _read_layer_tensors(f, header["layers"])
        layers = {spec["name"]: _layer_from_file(spec, tensors) for spec in header["layers"]}
        return Posterior(layers, header["ops"], tuple(header["input_shape"]))

    return read_safetensors(path, "posterior", read)


def _posterior_header(metadata: dict) -> dict:
    header = json_header(metadata, POSTERIOR_FORMAT, "posterior file")
    if header.get("version") != POSTERIOR_VERSION:
        raise ValueError(
            f"posterior version {header.get('version')!r}, this bayesq reads {POSTERIOR_VERSION}"
        )
    for key, kind in (("input_shape", list), ("ops", list), ("layers", list)):
        if not isinstance(header.get(key), kind):
            raise ValueError(f"the header's {key!r} must be a {kind.__name__}")
    names = set()
    entry_keys = {"name", "discrete", "codebook_scale", "conv", "bias"}
    for spec in header["layers"]:
        if not isinstance(spec, dict) or set(spec) - {"row_scale"} != entry_keys:
            raise ValueError(
                "a layer entry must hold name, discrete, codebook_scale, conv, bias (and "
                f"optionally row_scale): {spec!r}"
            )
        if spec.get("row_scale", True) is not True:
            raise ValueError(f"a layer entry's row_scale must be true when given: {spec!r}")
        name = spec["name"]
        if not isinstance(name, str) or not name or "." in name or name in names:
            raise ValueError(
                f"layer names must be distinct non-empty strings without '.', got {name!r}"
            )
        names.add(name)
        if not isinstance(spec["discrete"], bool) or not isinstance(spec["bias"], bool):
            raise ValueError(f"{name}: 'discrete' and 'bias' must be true or false")
        scale = spec["codebook_scale"]
        if scale is not None and (
            isinstance(scale, bool)
            or not isinstance(scale, int | float)
            or not 0 < scale < math.inf
        ):
            raise ValueError(f"{name}: codebook_scale must be null or a finite number > 0")
    return header


def _read_layer_tensors(f, layers: list[dict]) -> dict[str, torch.Tensor]:
    """The layers' tensors, each checked for name, dtype and size before it is read."""
    wanted = {}
    for spec in layers:
        parts = ("mean", "variance", "levels", "level_probs") + (("bias",) if spec["bias"] else ())
        parts += ("row_scale",) if spec.get("row_scale") else ()
        wanted.update({f"{spec['name']}.{part}": part for part in parts})
    present = set(f.keys())
    if present != set(wanted):
        extra, missing = sorted(present - set(wanted)), sorted(set(wanted) - present)
        raise ValueError(f"tensors {missing} are missing, {extra} unexpected")
    dims = {"mean": (2, 4), "variance": (2, 4), "levels": (1,), "level_probs": (3, 5), "bias": (1,),
            "row_scale": (1,)}  # fmt: skip
    total = 0
    for key, part in wanted.items():
        info = f.get_slice(key)
        shape = info.get_shape()
        if info.get_dtype() != "F32" or len(shape) not in dims[part]:
            raise ValueError(f"tensor {key!r} must be float32 with {dims[part]} axes")
        if part == "levels" and not 1 <= shape[0] <= MAX_LEVELS:
            raise ValueError(f"tensor {key!r}: 1..{MAX_LEVELS} levels")
        if part == "mean":
            total += math.prod(shape)
            if total > MAX_WEIGHTS:
                raise ValueError(f"the layers hold more than {MAX_WEIGHTS} weights")
    return {key: f.get_tensor(key) for key in wanted}


def _layer_from_file(spec: dict, tensors: dict[str, torch.Tensor]) -> LayerPosterior:
    """A layer of the file: LayerPosterior checks its values (finite, variance > 0, increasing
    levels, masses in [0, 1], conv settings, bias)."""
    name = spec["name"]
    return LayerPosterior(
        name=name,
        mean=tensors[f"{name}.mean"],
        variance=tensors[f"{name}.variance"],
        levels=tensors[f"{name}.levels"],
        level_probs=tensors[f"{name}.level_probs"],
        bias=tensors.get(f"{name}.bias"),
        conv=spec["conv"],
        codebook_scale=spec["codebook_scale"],
        discrete=spec["discrete"],
        row_scale=tensors.get(f"{name}.row_scale"),
    )
