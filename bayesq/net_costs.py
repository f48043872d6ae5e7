"""What a discrete net costs: bytes on disk, counted honestly, and bit operations (BOPs).

Bytes are those of `bayesq.artifact` (`storage_bits`): codes, scales, biases, and where the kept
weights are (positions: a mask's entropy-coded form or a sparse index, whichever
`bayesq.sparse_codes` finds smaller), so a pruned weight is not free. BOPs count the work of a
forward pass in bit operations, as Bayesian Bits (van Baalen et al. 2020, Sec. 4, after Baskin
et al. 2018) does: a multiply-accumulate of a b_w-bit weight and a b_a-bit activation costs
b_w * b_a. Two counts per layer: over the weights of the rows the net keeps ("dense": what a
dense kernel multiplies) and over the kept weights only ("sparse": what a kernel that skips
zeros multiplies). A float32 net's count is MACs * 32 * 32, an int8 net's MACs * 8 * 8
(:func:`reference_bops`).

References:
    M. van Baalen, C. Louizos, M. Nagel, R. A. Amjad, Y. Wang, T. Blankevoort, M. Welling.
    Bayesian Bits: Unifying Quantization and Pruning. NeurIPS 2020.
"""

from __future__ import annotations

import torch
from torch import nn

from .artifact import storage_bits
from .ops import glue_output_shape, glue_spec
from .runtime import DiscreteNet, QuantizedConv2d

__all__ = ["layer_costs", "net_costs", "reference_bops"]


def _positions(op, shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """(output positions per sample, output shape) of a quantized layer on input `shape`."""
    if isinstance(op, QuantizedConv2d):
        if len(shape) != 3:
            raise ValueError(f"a convolution needs (C, H, W) inputs, got {shape}")
        (kh, kw), (sh, sw), (ph, pw) = op.kernel_size, op.stride, op.padding
        oh, ow = (shape[1] + 2 * ph - kh) // sh + 1, (shape[2] + 2 * pw - kw) // sw + 1
        out = op.linear.weight_codes.shape[0]
        return oh * ow, (out, oh, ow)
    return 1, (op.weight_codes.shape[0],)


def layer_costs(net: DiscreteNet, input_shape: tuple[int, ...]) -> list[dict]:
    """Per quantized layer of `net` on inputs of one sample's `input_shape`: "kind", "weights"
    (out x fan_in), "kept" (non-zero codes), "positions" (outputs per sample per row), "macs"
    (the weights of the live rows x positions, over the input columns the kernels read: a
    column whose every weight is pruned is skipped, `QuantizedLinear.input_index`), "act_bits", "bops_dense" and "bops_sparse" (see the
    module docstring; a row's weights cost its width, a {-1, +1} row 1 bit)."""
    if not isinstance(net, DiscreteNet):
        raise TypeError(f"net must be a DiscreteNet, got {type(net).__name__}")
    shape, costs = tuple(input_shape), []
    for i, op in enumerate(net.ops):
        if isinstance(op, nn.Module):
            shape = glue_output_shape(glue_spec(op), shape, f"op {i}")
            continue
        positions, out_shape = _positions(op, shape)
        linear = op.linear if isinstance(op, QuantizedConv2d) else op
        codes = linear.weight_codes
        row_bits = linear.row_bits.to(torch.int64)
        kept_per_row = codes.ne(0).sum(1).to(torch.int64)
        live_rows = row_bits > 0
        fan_in = linear.input_features or codes.shape[1]
        columns = codes.shape[1]  # what the kernels multiply (pruned input columns dropped)
        act_bits = linear.act_bits
        costs.append(
            {
                "kind": "conv2d" if isinstance(op, QuantizedConv2d) else "linear",
                "weights": int(codes.shape[0] * fan_in),
                "kept": int(kept_per_row.sum()),
                "positions": positions,
                "macs": int(live_rows.sum()) * columns * positions,
                "act_bits": act_bits,
                "bops_dense": int((row_bits * live_rows).sum()) * columns * positions * act_bits,
                "bops_sparse": int((row_bits * kept_per_row).sum()) * positions * act_bits,
            }
        )
        shape = out_shape
    return costs


def net_costs(net: DiscreteNet, input_shape: tuple[int, ...]) -> dict:
    """Totals over the layers (`layer_costs`) and the artifact's storage: "weights", "kept",
    "macs", "bops_dense", "bops_sparse", "bytes" (the layers' bits rounded up to bytes, as
    `save_artifact` writes them, without the file's JSON header), "bits_per_weight" (all the
    stored bits over all the weights), and "storage_bits" by part (positions, codes, scales,
    biases, ...)."""
    layers = layer_costs(net, input_shape)
    parts = storage_bits(net)
    totals = {key: sum(c[key] for c in layers) for key in ("weights", "kept", "macs")}
    totals.update({key: sum(c[key] for c in layers) for key in ("bops_dense", "bops_sparse")})
    totals["bytes"] = -(-parts["total"] // 8)
    totals["bits_per_weight"] = parts["total"] / max(1, parts["weights"])
    totals["storage_bits"] = parts
    totals["layers"] = layers
    return totals


def reference_bops(net: nn.Module, input_shape: tuple[int, ...], bits: int = 32) -> dict:
    """MACs of a float net's Linear and Conv2d layers on one sample and their BOPs at `bits`
    bits for weights and activations alike (32: float32; 8: an int8 net)."""
    macs = 0

    def count(module, inputs, output):
        nonlocal macs
        if isinstance(module, nn.Linear):
            macs += module.in_features * module.out_features
        else:
            per_output = module.in_channels // module.groups * module.kernel_size[0]
            macs += per_output * module.kernel_size[1] * output[0].numel()

    hooks = [
        m.register_forward_hook(count)
        for m in net.modules()
        if isinstance(m, nn.Linear | nn.Conv2d)
    ]
    try:
        was_training = net.training
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, *input_shape))
        net.train(was_training)
    finally:
        for hook in hooks:
            hook.remove()
    return {"macs": macs, "bops": macs * bits * bits}
