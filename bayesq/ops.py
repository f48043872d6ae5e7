"""The op vocabulary of discrete nets: the glue between quantized layers, and the code modes.

A net on the road from a posterior to the kernels is a sequence of quantized layers (linear,
conv2d) and *glue ops* between them. Every part of bayesq that names a glue op (the `Posterior`'s
structure, the builder `bayesq.quantize`, the `bayesq.artifact` header, the `bayesq.runtime`
executions) speaks this registry, so that adding an op is one `GlueOp` entry here plus the code
that executes it. An entry says:

  * ``module_type``: the torch module that runs it (in the float nets and in `DiscreteNet`);
  * its *spec*, the dict the artifact header and a saved posterior store, e.g.
    ``{"kind": "maxpool2d", "kernel_size": 2}``: ``spec_of(module)`` reads it from a module
    (refusing settings the discrete nets do not run), ``build(spec)`` makes the module again;
  * ``output_shape(spec, shape)``: the shape of one sample after the op, by arithmetic only, with
    every field of a spec read from a file checked on the way;
  * ``fuses_into``: the activation code mode of a following quantized layer whose quantizer
    already applies the op (an unsigned quantizer clamps at 0: a ReLU; a {-1, +1} quantizer takes
    the sign), so the kernels' execution skips it;
  * ``units``: how its outputs map to its inputs ("elementwise", "channelwise" pooling, or
    "flatten"), which is what `DiscreteNet.without_dead_units` needs to trace unread units.

The code modes of activations and weights (`CODE_MODES`) are named and numbered as the C++
``CodeMode`` of ``csrc/bitserial/bitpack.h`` (kUnsigned = 0, kSigned = 1, kPlusMinusOne = 2).

This module imports torch only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "CODE_MODES",
    "GLUE_OPS",
    "WEIGHT_MODES",
    "GlueOp",
    "Sign",
    "code_range",
    "glue_module",
    "glue_of",
    "glue_output_shape",
    "glue_spec",
    "is_glue",
]

# name -> the C++ CodeMode value (csrc/bitserial/bitpack.h)
CODE_MODES = {"unsigned": 0, "signed": 1, "pm1": 2}
# a weight row is two's-complement codes of its width, or one {-1, +1} plane
WEIGHT_MODES = ("signed", "pm1")


def code_range(bits: int, mode: str) -> tuple[int, int]:
    """The smallest and largest code of `bits`-bit codes in `mode`.

    unsigned: 0 .. 2^b - 1; signed (two's complement): -2^(b-1) .. 2^(b-1) - 1; pm1: -1, +1.

    >>> code_range(4, "signed")
    (-8, 7)
    """
    if mode == "unsigned":
        return 0, 2**bits - 1
    if mode == "signed":
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if mode == "pm1":
        return -1, 1
    raise ValueError(f"mode must be one of {tuple(CODE_MODES)}, got {mode!r}")


class Sign(nn.Module):
    """The sign unit of binary nets (EBP, BNN): +1 where x >= 0, else -1 (sign(0) = +1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


@dataclass(frozen=True)
class GlueOp:
    """One glue op of the vocabulary (see the module docstring for the fields)."""

    kind: str
    module_type: type[nn.Module]
    spec_of: Callable[[nn.Module, str], dict]
    build: Callable[[dict], nn.Module]
    output_shape: Callable[[dict, tuple[int, ...], str], tuple[int, ...]]
    fuses_into: str | None
    units: str


# --- the fields of specs -------------------------------------------------------------------------
def _int_field(spec: dict, key: str, lo: int, hi: int, where: str) -> int:
    v = spec.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ValueError(f"{where}: {key} must be an int in {lo}..{hi}, got {v!r}")
    return v


def _no_fields(spec: dict, where: str, *allowed: str) -> None:
    extra = sorted(set(spec) - {"kind", *allowed})
    if extra:
        raise ValueError(f"{where}: unexpected fields {extra}")


def _single(v, name: str, where: str) -> int:
    """An int, or a pair of equal ints (torch's pooling arguments), as one int."""
    if isinstance(v, tuple | list) and len(v) == 2 and v[0] == v[1]:
        v = v[0]
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError(f"{where}: only square pooling is supported, got {name}={v!r}")
    return v


# --- elementwise ops -----------------------------------------------------------------------------
def _plain(kind: str, module_type: type[nn.Module], fuses_into: str | None) -> GlueOp:
    def spec_of(module: nn.Module, where: str) -> dict:
        return {"kind": kind}

    def output_shape(spec: dict, shape: tuple[int, ...], where: str) -> tuple[int, ...]:
        _no_fields(spec, where)
        return shape

    return GlueOp(kind, module_type, spec_of, lambda spec: module_type(), output_shape,
                  fuses_into, "elementwise")  # fmt: skip


# --- flatten -------------------------------------------------------------------------------------
def _flatten_spec(module: nn.Module, where: str) -> dict:
    if module.start_dim != 1 or module.end_dim != -1:
        raise ValueError(f"{where}: only Flatten(1, -1) is supported")
    return {"kind": "flatten"}


def _flatten_shape(spec: dict, shape: tuple[int, ...], where: str) -> tuple[int, ...]:
    _no_fields(spec, where)
    size = 1
    for d in shape:
        size *= d
    return (size,)


# --- pooling over k x k windows with stride k ----------------------------------------------------
def _pool(kind: str, module_type: type[nn.Module], checks: dict) -> GlueOp:
    """A k x k pooling with stride k and no padding (`checks`: attribute -> the value allowed)."""

    def spec_of(module: nn.Module, where: str) -> dict:
        k = _single(module.kernel_size, "kernel_size", where)
        stride = k if module.stride is None else _single(module.stride, "stride", where)
        if stride != k or _single(module.padding, "padding", where) != 0:
            raise ValueError(
                f"{where}: only {module_type.__name__}(k) (stride k, no padding) is supported"
            )
        for name, allowed in checks.items():
            if getattr(module, name) != allowed:
                raise ValueError(f"{where}: only {name}={allowed!r} is supported")
        return {"kind": kind, "kernel_size": k}

    def output_shape(spec: dict, shape: tuple[int, ...], where: str) -> tuple[int, ...]:
        _no_fields(spec, where, "kernel_size")
        if len(shape) != 3:
            raise ValueError(f"{where}: needs a (C, H, W) input, gets {list(shape)}")
        k = _int_field(spec, "kernel_size", 1, min(shape[1:]), where)
        return (shape[0], shape[1] // k, shape[2] // k)

    return GlueOp(kind, module_type, spec_of, lambda spec: module_type(spec["kernel_size"]),
                  output_shape, None, "channelwise")  # fmt: skip


GLUE_OPS: dict[str, GlueOp] = {
    op.kind: op
    for op in (
        _plain("relu", nn.ReLU, fuses_into="unsigned"),
        _plain("sign", Sign, fuses_into="pm1"),
        GlueOp(
            "flatten",
            nn.Flatten,
            _flatten_spec,
            lambda spec: nn.Flatten(),
            _flatten_shape,
            None,
            "flatten",
        ),  # fmt: skip
        _pool(
            "maxpool2d", nn.MaxPool2d, {"dilation": 1, "ceil_mode": False, "return_indices": False}
        ),
        _pool("avgpool2d", nn.AvgPool2d, {"ceil_mode": False, "divisor_override": None}),
    )
}
_BY_TYPE = {op.module_type: op for op in GLUE_OPS.values()}


def is_glue(module) -> bool:
    """Whether `module` is (exactly) the module type of a glue op."""
    return type(module) in _BY_TYPE


def glue_of(module: nn.Module) -> GlueOp:
    """The registry entry of a glue module (ValueError for anything else)."""
    try:
        return _BY_TYPE[type(module)]
    except KeyError:
        raise ValueError(f"{type(module).__name__} is not a glue op of a discrete net") from None


def glue_spec(module: nn.Module, where: str = "") -> dict:
    """The spec of a glue module, e.g. {"kind": "maxpool2d", "kernel_size": 2}."""
    where = where or type(module).__name__
    if not is_glue(module):
        raise ValueError(f"{where}: {type(module).__name__} has no discrete form")
    return glue_of(module).spec_of(module, where)


def _entry(spec, where: str) -> GlueOp:
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind not in GLUE_OPS:
        raise ValueError(f"{where}: unknown kind {kind!r} (the glue ops: {sorted(GLUE_OPS)})")
    return GLUE_OPS[kind]


def glue_output_shape(
    spec: dict, shape: tuple[int, ...], where: str = "glue op"
) -> tuple[int, ...]:
    """The shape of one sample after the glue op `spec`, checking the spec's fields."""
    return _entry(spec, where).output_shape(spec, tuple(shape), where)


def glue_module(spec: dict, where: str = "glue op") -> nn.Module:
    """The module of a glue spec (the spec's fields are checked by `glue_output_shape`)."""
    return _entry(spec, where).build(spec)
