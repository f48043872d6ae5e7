"""Checks of a function's arguments: the right type and range, or an error that names the argument.

A wrong type raises ``TypeError`` (a bool is never taken for a number), a value out of range
``ValueError``; each message says which argument and what was expected. Each check returns the
value as the type it vouches for, so a caller writes ``self.lr = positive("lr", lr)``.
(``bayesq.cli`` holds the argparse converters of the scripts, which read strings.)

>>> positive("lr", 1e-3), integer("epochs", 3)
(0.001, 3)
"""

from __future__ import annotations

import math

import torch

__all__ = ["integer", "number", "positive", "tensor"]


def number(name: str, value) -> float:
    """A finite real number (int or float, not bool), as float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def positive(name: str, value) -> float:
    """A finite number > 0, as float."""
    if number(name, value) <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def integer(name: str, value, minimum: int = 1) -> int:
    """An int (not bool) >= `minimum` (1 by default: a count of epochs, a batch size)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def tensor(name: str, value) -> torch.Tensor:
    """A torch.Tensor (any shape and dtype: the caller checks those)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def float_tensor(name: str, value) -> torch.Tensor:
    """A finite floating-point torch.Tensor (any shape), or a TypeError / ValueError naming it."""
    value = tensor(name, value)
    if not torch.is_floating_point(value):
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if not bool(torch.isfinite(value.detach()).all()):
        raise ValueError(f"{name} contains NaN or infinity")
    return value


def weight_tensor(name: str, value) -> torch.Tensor:
    """A layer's weights: a finite floating-point tensor (out, in) or (out, in_channels, kh, kw),
    at least 2-D and not empty."""
    value = tensor(name, value)
    if not torch.is_floating_point(value):
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if value.dim() < 2 or value.numel() == 0:
        raise ValueError(
            f"{name} must be a non-empty weight tensor (out, in) or (out, in_channels, kh, kw), "
            f"got shape {tuple(value.shape)}"
        )
    return float_tensor(name, value)
