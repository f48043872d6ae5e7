"""Which units of a discrete net nothing reads, and the net without them (`DiscreteNet.without_dead_units`).

A row of a quantized layer (a feature, or a channel of a convolution) is dead when every weight
of the next quantized layer that reads it is 0: its output only ever meets zero weights, so every
integer product downstream is unchanged when the row itself is set to 0 (codes, width, bias),
and the logits stay identical, bit for bit. What that saves is storage (`bayesq.sparse_codes`).
The glue between two layers is traced by its `units` (`bayesq.ops`): elementwise ops keep a
unit, a flatten turns a channel into a contiguous block of features, and pooling keeps channels.

Layers are read by their fields (`weight_codes`, `row_bits`, `bias`, `input_index`, and a
convolution's `linear` and `in_channels`), so this module needs the op vocabulary only.
"""

from __future__ import annotations

import dataclasses

import torch

from .ops import glue_of

__all__ = ["units_read", "without_rows"]


def _layer(op):
    """The linear part of a quantized layer (a convolution's `linear`, else the layer)."""
    return op.linear if _is_conv(op) else op


def _is_conv(op) -> bool:
    return hasattr(op, "linear") and hasattr(op, "in_channels")


def _features_read(layer) -> torch.Tensor:
    """bool (in_features,): the input features some nonzero weight of `layer` reads."""
    columns = layer.weight_codes.ne(0).any(0)
    if layer.input_index is None:
        return columns
    read = torch.zeros(layer.in_features, dtype=torch.bool)
    read[layer.input_index[columns]] = True
    return read


def units_read(op, between: list, following) -> torch.Tensor | None:
    """bool (out,): which outputs of the quantized layer `op` the next quantized layer
    `following` reads through the glue `between`; None where the features cannot be traced
    (other glue, or shapes that do not divide)."""
    units = [glue_of(g).units for g in between]
    out = _layer(op).out_features
    read = _features_read(_layer(following))
    if not _is_conv(op):
        if "channelwise" in units or read.numel() != out:
            return None
        return read
    # a convolution: its channel c is a contiguous block of the next layer's features, whether
    # that is a convolution (unfold order: channel, kh, kw) or a linear layer after a Flatten
    flat = "flatten" in units
    if _is_conv(following) and (flat or following.in_channels != out):
        return None
    if read.numel() % out:
        return None
    return read.view(out, -1).any(1)


def without_rows(op, dead: torch.Tensor):
    """The quantized layer `op` with the rows `dead` at 0 (codes, width, bias); a gathering
    layer re-gathers the columns still read. A new layer: `op` is not changed."""
    layer = _layer(op)
    codes = layer.weight_codes.clone()
    codes[dead] = 0
    changes = dict(
        weight_codes=codes,
        row_bits=layer.row_bits.masked_fill(dead, 0),
        bias=layer.bias.masked_fill(dead, 0.0),
    )
    if layer.input_index is not None:
        alive = codes.ne(0).any(0)
        alive[0] |= not bool(alive.any())  # keep one column of an all-pruned layer
        changes.update(
            weight_codes=codes[:, alive].contiguous(), input_index=layer.input_index[alive]
        )
    layer = dataclasses.replace(layer, **changes)
    return dataclasses.replace(op, linear=layer) if _is_conv(op) else layer
