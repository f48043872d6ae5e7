"""The run directory of `experiments.vnq`: reading and writing its files (a helper, not a script).

A run directory holds report.json, float.safetensors (the float net) and vnq.safetensors (the
fitted VNQ net, loadable into ``models.build(arch, variational=True)``). `experiments.vnq` writes
them; `experiments.discrete_inference` and `experiments.bits` read them through :func:`load_run`.
Every reader raises a ValueError that names the file it could not use.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import models
from bayesq.files import atomic_path
from bayesq.quantize import quantize_vnq_

__all__ = ["load_run", "load_state_into", "read_json", "save_state"]

_IN_FEATURES = {"mnist": 784, "digits": 64}


def read_json(path: Path) -> dict:
    """A JSON object from `path`; ValueError naming the file if it is missing or malformed."""
    try:
        value = json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise ValueError(f"{path}: no such file") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({err})") from err
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got a {type(value).__name__}")
    return value


def load_state_into(net: torch.nn.Module, path: Path) -> torch.nn.Module:
    """Load the safetensors state dict at `path` into `net`; ValueError naming the file if it is
    missing, unreadable (half written, say) or the state of another net."""
    try:
        state = load_file(str(path))
    except FileNotFoundError as err:
        raise ValueError(f"{path}: no such file") from err
    except (SafetensorError, OSError, RuntimeError) as err:
        raise ValueError(
            f"{path}: not a readable safetensors file ({err}); delete it to recompute it"
        ) from err
    try:
        net.load_state_dict(state)
    except RuntimeError as err:  # missing or unexpected keys, shapes that differ
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{path}: holds the state of another net ({detail})") from err
    return net


def save_state(net: torch.nn.Module, path: Path) -> None:
    """Write the state dict of `net` to `path` (safetensors) atomically."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(tmp))


def load_run(run: Path):
    """The float net and the quantized VNQ net of a run directory, and its report.

    Raises ValueError naming the file for a missing directory or file, a report without what
    this reads, or a net file that is unreadable or of another net.
    """
    if not run.is_dir():
        raise ValueError(f"--run {run}: no such run directory (made by experiments.vnq)")
    path = run / "report.json"
    report = read_json(path)
    try:
        arch, data, threshold = report["arch"], report["data"], report["log_alpha_threshold"]
        levels = len(report["layers"][0]["level_shares"])
    except (KeyError, IndexError, TypeError) as err:
        raise ValueError(f"{path}: not a report of experiments/vnq.py (no {err})") from err
    if arch not in models.ARCHITECTURES or data not in _IN_FEATURES:
        raise ValueError(f"{path}: unknown architecture {arch!r} or data set {data!r}")
    if not isinstance(threshold, int | float):
        raise ValueError(f"{path}: log_alpha_threshold {threshold!r} is not a number")
    kwargs = {} if arch == "lenet5" else {"in_features": _IN_FEATURES[data]}
    float_net = load_state_into(models.build(arch, **kwargs), run / "float.safetensors")
    vnq_net = models.build(arch, variational=True, num_levels=levels, **kwargs)
    load_state_into(vnq_net, run / "vnq.safetensors")
    quantize_vnq_(vnq_net, threshold)
    return float_net.eval(), vnq_net.eval(), report
