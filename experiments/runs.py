"""The run directory of `experiments.vnq`: reading and writing its files (a helper, not a script).

A run directory holds report.json, float.safetensors (the float net) and posterior.safetensors
(the fitted VNQ posterior, `bayesq.posterior.Posterior.save`: the structure with the tensors).
`experiments.vnq` writes them; `experiments.discrete_inference` and `experiments.bits` read them
through :func:`load_run`. Every reader raises a ValueError that names the file it could not use.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import models
from bayesq.files import atomic_path
from bayesq.posterior import Posterior, PruningRule

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


def arch_kwargs(arch: str, input_shape: tuple[int, ...]) -> dict:
    """`models.build`'s size arguments of `arch` for inputs of one sample's `input_shape`."""
    return {} if arch == "lenet5" else {"in_features": math.prod(input_shape)}


def load_run(run: Path) -> tuple[torch.nn.Module, Posterior, PruningRule, dict]:
    """The float net, the fitted posterior, its pruning rule and the report of a run directory.

    The float net's sizes come from the posterior's input shape (nothing is guessed from the
    data set's name). Raises ValueError naming the file for a missing directory or file, a report
    without what this reads, or a file that is unreadable or of another net.
    """
    if not run.is_dir():
        raise ValueError(f"--run {run}: no such run directory (made by experiments.vnq)")
    path = run / "report.json"
    report = read_json(path)
    try:
        arch, threshold = report["arch"], report["log_alpha_threshold"]
    except KeyError as err:
        raise ValueError(f"{path}: not a report of experiments.vnq (no {err})") from err
    if arch not in models.ARCHITECTURES:
        raise ValueError(f"{path}: unknown architecture {arch!r}")
    try:
        pruning = PruningRule(log_alpha_threshold=threshold)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: log_alpha_threshold {threshold!r}: {err}") from err
    posterior = Posterior.load(run / "posterior.safetensors")
    float_net = models.build(arch, **arch_kwargs(arch, posterior.input_shape))
    load_state_into(float_net, run / "float.safetensors")
    return float_net.eval(), posterior, pruning, report
