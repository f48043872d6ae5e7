"""The builders of discrete nets before issue 13, kept verbatim as test oracles.

`from_vnq` (was `DiscreteNet.from_vnq`) and `discrete_sign_net` (was in `bayesq.quantize`): the
new road, `bayesq.quantize.quantize_posterior`, must give `torch.equal` logits on the same nets
before these are deleted.
"""

import dataclasses

import torch
from torch import nn

from bayesq.nn import VNQConv2d, VNQLayer, VNQLinear
from bayesq.ops import Sign, is_glue
from bayesq.quantizers import calibrated_activations, codebook_codes
from bayesq.runtime import DiscreteNet, QuantizedConv2d, QuantizedLinear


def _signed_bits(max_code: int) -> int:
    return max(1, max_code).bit_length() + 1


@torch.no_grad()
def from_vnq(
    net: nn.Sequential,
    calibration: torch.Tensor,
    act_bits: int = 8,
    log_alpha_threshold: float | None = None,
) -> DiscreteNet:
    """The discrete net of a fitted VNQ model (an nn.Sequential of VNQ layers and glue).

    Weights: the codebook codes of theta (-m .. m for 2m+1 levels), 0 where log alpha passes
    the threshold (default: each layer's own, as set by `quantize_vnq_`); row_scale = r; a
    row whose weights are all pruned gets 0 planes. Activations: `act_bits` bits, unsigned
    where the calibration inputs of the layer are all >= 0 (after a ReLU), signed otherwise,
    with the max-calibrated scale of `activation_scale`, measured on the float net with
    quantized weights (the net's eval mode after `quantize_vnq_`).
    """
    if not isinstance(net, nn.Sequential):
        raise ValueError("from_vnq needs an nn.Sequential of VNQ layers, ReLU, MaxPool2d, Flatten")
    ops = []
    x = calibration.to(torch.float32)
    was_training = net.training
    net.eval()
    try:
        for name, module in net.named_children():
            if isinstance(module, VNQLayer):
                ops.append(_quantized_vnq_layer(module, x, act_bits, log_alpha_threshold))
            elif is_glue(module):
                ops.append(module)
            else:
                raise ValueError(f"layer {name!r} ({type(module).__name__}) has no discrete form")
            x = module(x)
    finally:
        net.train(was_training)
    return DiscreteNet(ops)


def _packed_words(k: int) -> int:
    return -(-k // 512) * 8


def _quantized_vnq_layer(layer: VNQLayer, x: torch.Tensor, act_bits: int, threshold):
    threshold = layer.pruning.log_alpha_threshold if threshold is None else threshold
    codes = codebook_codes(layer.theta, layer.codebook_scale, layer.num_levels)
    codes = codes.masked_fill(layer.log_alpha >= threshold, 0)
    flat = codes.reshape(codes.shape[0], -1).contiguous()
    bits = _signed_bits((layer.num_levels - 1) // 2)
    row_bits = torch.where(flat.abs().amax(1) > 0, bits, 0).to(torch.int64)
    out_features = flat.shape[0]
    bias = layer.bias.detach() if layer.bias is not None else torch.zeros(out_features)
    linear = QuantizedLinear(
        weight_codes=flat,
        row_bits=row_bits,
        row_scale=torch.full((out_features,), float(layer.codebook_scale), dtype=torch.float32),
        bias=bias.to(torch.float32).contiguous(),
        **calibrated_activations(x, act_bits),
    )
    if isinstance(layer, VNQLinear):
        alive = flat.abs().amax(0) > 0
        alive[0] |= not bool(alive.any())  # keep one column of an all-pruned layer
        # Inputs every weight of which is pruned can be skipped; worth the gather only when it
        # shortens the packed rows (k is padded to whole 512-bit chunks).
        if _packed_words(int(alive.sum())) < _packed_words(flat.shape[1]):
            index = torch.nonzero(alive).flatten()
            linear = dataclasses.replace(
                linear,
                weight_codes=flat[:, index].contiguous(),
                input_index=index,
                input_features=flat.shape[1],
            )
        return linear
    if isinstance(layer, VNQConv2d):
        return QuantizedConv2d(
            linear, layer.in_channels, layer.kernel_size, layer.stride, layer.padding
        )
    raise ValueError(f"no discrete form for {type(layer).__name__}")


@torch.no_grad()
def discrete_sign_net(
    weights: list[torch.Tensor],
    biases: list[torch.Tensor],
    calibration: torch.Tensor,
    act_bits: int = 8,
):
    """The discrete net of a binary MLP with sign units (EBP-D, `EBPNet.discrete_weights`):

        v_1 = x,  v_{l+1} = sign(W_l v_l + b_l),  logits = W_L v_L + b_L

    weights: int8 codes per layer, (out, in), in {-1, +1} (binary) or {-1, 0, +1} (ternary);
    biases: (out,) each, in the units of W v. The input (flat, (N, in)) is quantized to
    `act_bits` bits with the max-calibrated scale of `calibration`; the hidden activations are
    the signs themselves, 1-bit {-1, +1} codes, so a binary layer after the first is an XNOR
    product. Returns a `bayesq.runtime.DiscreteNet`.
    """
    if len(weights) != len(biases) or not weights:
        raise ValueError("need one bias per weight matrix, and at least one layer")
    x = calibration.to(torch.float32).flatten(1)
    ops = [nn.Flatten()]
    for i, (codes, bias) in enumerate(zip(weights, biases, strict=True)):
        codes = torch.as_tensor(codes).to(torch.int8).contiguous()
        if codes.dim() != 2 or bool((codes.abs() > 1).any()):
            raise ValueError(f"layer {i}: codes must be 2-D in {{-1, 0, +1}}")
        binary = not bool((codes == 0).any())
        out = codes.shape[0]
        if i == 0:
            act = calibrated_activations(x, act_bits)
        else:
            ops.append(Sign())
            act = dict(act_bits=1, act_mode="pm1", act_scale=1.0)
        ops.append(
            QuantizedLinear(
                weight_codes=codes,
                row_bits=torch.full((out,), 1 if binary else 2, dtype=torch.int64),
                row_scale=torch.ones(out),
                bias=torch.as_tensor(bias).to(torch.float32).contiguous(),
                weight_mode="pm1" if binary else "signed",
                **act,
            )
        )
    return DiscreteNet(ops)
