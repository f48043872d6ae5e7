"""Post-training quantization of a VNQ net: prune by log alpha, snap the rest to the codebook.

First version: switches a trained VNQ net to its discrete weights and reports what that costs
(accuracy with the posterior means vs with the quantized weights), how sparse the result is and
how many bits per weight it takes. No fine-tuning, as in VNQ.

Bits per weight are reported four ways, per layer and overall (every weight counted, pruned
ones included):
* ``stored_bits``: what the layer costs stored sparsely (`bayesq.sparse_codes`): the positions
  of the nonzero codes, their codes, the codebook step and the biases, exact bits over the
  layer's weights; ``position_bits`` is the positions' part of it;
* ``code_bits``: a dense fixed-width code for every weight, ceil(log2(num_levels)) (2 for
  ternary), what the dense bit-plane kernels hold; no positions needed, no steps counted;
* ``information_bits``: log2(num_levels) (1.58 for ternary);
* ``entropy_bits``: the empirical entropy of the codes (zeros included), what an ideal entropy
  coder of the code stream would need (positions included, steps and biases not).

References: Achterhold et al. Variational Network Quantization. ICLR 2018 (Sec. 3.3, Table 1).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from . import sparse_codes
from .nn import VNQLayer
from .quantizers import codebook_codes
from .train import accuracy

__all__ = ["LayerReport", "QuantizationReport", "quantize_vnq_", "set_eval_weights_"]


@dataclass
class LayerReport:
    """What quantizing one VNQ layer did. Shares are fractions of the layer's weights."""

    name: str
    weights: int
    codebook_scale: float
    num_levels: int
    pruned_share: float  # log alpha >= threshold
    zero_share: float  # code 0 after quantization (pruned, or nearest level 0)
    level_shares: list[float]  # share of each code -m..m
    code_bits: int
    information_bits: float
    entropy_bits: float
    stored_bits: float  # sparse storage: positions + codes + step + biases, per weight
    position_bits: float  # the positions' part of stored_bits


@dataclass
class QuantizationReport:
    layers: list[LayerReport]
    log_alpha_threshold: float
    accuracy_mean: float | None = None
    accuracy_quantized: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def weights(self) -> int:
        return sum(layer.weights for layer in self.layers)

    def _weighted(self, attribute: str) -> float:
        return sum(getattr(la, attribute) * la.weights for la in self.layers) / self.weights

    @property
    def pruned_share(self) -> float:
        return self._weighted("pruned_share")

    @property
    def zero_share(self) -> float:
        return self._weighted("zero_share")

    @property
    def code_bits(self) -> float:
        return self._weighted("code_bits")

    @property
    def entropy_bits(self) -> float:
        return self._weighted("entropy_bits")

    @property
    def stored_bits(self) -> float:
        return self._weighted("stored_bits")

    @property
    def position_bits(self) -> float:
        return self._weighted("position_bits")

    def to_dict(self) -> dict:
        summary = {
            "weights": self.weights,
            "pruned_share": self.pruned_share,
            "zero_share": self.zero_share,
            "code_bits_per_weight": self.code_bits,
            "entropy_bits_per_weight": self.entropy_bits,
            "stored_bits_per_weight": self.stored_bits,
            "position_bits_per_weight": self.position_bits,
        }
        return {
            "log_alpha_threshold": self.log_alpha_threshold,
            "accuracy_mean": self.accuracy_mean,
            "accuracy_quantized": self.accuracy_quantized,
            "summary": summary,
            "layers": [asdict(layer) for layer in self.layers],
            **self.extra,
        }


def set_eval_weights_(net: nn.Module, which: str) -> None:
    """Make every VNQ layer of `net` evaluate with "mean" or "quantized" weights."""
    if which not in ("mean", "quantized"):
        raise ValueError(f"which must be 'mean' or 'quantized', got {which!r}")
    for module in net.modules():
        if isinstance(module, VNQLayer):
            module.eval_weights = which


@torch.no_grad()
def _layer_report(name: str, layer: VNQLayer, threshold: float) -> LayerReport:
    pruned = layer.log_alpha >= threshold
    codes = codebook_codes(layer.theta, layer.codebook_scale, layer.num_levels).masked_fill(
        pruned, 0
    )
    half = (layer.num_levels - 1) // 2
    counts = torch.bincount((codes.flatten().long() + half), minlength=layer.num_levels).double()
    shares = counts / counts.sum()
    nonzero = shares[shares > 0]
    rows = codes.reshape(codes.shape[0], -1)
    width = half.bit_length() + 1 if half else 0  # two's complement holding -half .. half
    bias = None if layer.bias is None else layer.bias.detach().float().numpy()
    stored = sparse_codes.layer_storage_bits(
        rows.numpy(),
        np.where(rows.any(1).numpy(), width, 0),
        np.full(rows.shape[0], float(layer.codebook_scale), np.float32),
        bias,
    )
    return LayerReport(
        name=name,
        weights=layer.theta.numel(),
        codebook_scale=float(layer.codebook_scale),
        num_levels=layer.num_levels,
        pruned_share=float(pruned.double().mean()),
        zero_share=float(shares[half]),
        level_shares=shares.tolist(),
        code_bits=math.ceil(math.log2(layer.num_levels)) if layer.num_levels > 1 else 0,
        information_bits=math.log2(layer.num_levels),
        entropy_bits=float(-(nonzero * nonzero.log2()).sum()),
        stored_bits=stored["total"] / rows.numel(),
        position_bits=stored["positions"] / rows.numel(),
    )


def quantize_vnq_(
    net: nn.Module,
    log_alpha_threshold: float = 3.0,
    x: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
) -> QuantizationReport:
    """Switch `net`'s VNQ layers to quantized weights (pruned at `log_alpha_threshold`) and report.

    With test data (x, y), the report carries the accuracy with posterior means and quantized.
    """
    layers = [(n, m) for n, m in net.named_modules() if isinstance(m, VNQLayer)]
    if not layers:
        raise ValueError("net has no VNQ layers to quantize")
    if not math.isfinite(log_alpha_threshold):
        raise ValueError(f"log_alpha_threshold must be finite, got {log_alpha_threshold}")
    report = QuantizationReport(
        layers=[_layer_report(n, m, log_alpha_threshold) for n, m in layers],
        log_alpha_threshold=log_alpha_threshold,
    )
    for _, layer in layers:
        layer.log_alpha_threshold = log_alpha_threshold
    if x is not None and y is not None:
        set_eval_weights_(net, "mean")
        report.accuracy_mean = accuracy(net, x, y)
    set_eval_weights_(net, "quantized")
    if x is not None and y is not None:
        report.accuracy_quantized = accuracy(net, x, y)
    return report


# --- second version: posterior + row widths -> discrete net --------------------------------------
@torch.no_grad()
def quantize_posterior(
    posterior,
    widths: dict[str, torch.Tensor],
    calibration: torch.Tensor,
    act_bits: int = 8,
    rule=None,
):
    """The discrete net of a posterior at given row widths (from `bayesq.bits`).

    Every layer's rows go onto their best grid of their width (`bits.quantize_rows`: integer
    codes and a step per row; pruned weights and 0-width rows are 0). Activations get `act_bits`
    bits, unsigned where the calibration inputs of a layer are all >= 0 (after a ReLU), signed
    otherwise, with max-calibrated scales measured on the float net with the quantized weights.
    Returns a `bayesq.runtime.DiscreteNet` (save it with `bayesq.artifact.save_artifact`).
    """
    import torch.nn.functional as F

    from . import bits as bits_module
    from .runtime import DiscreteNet, QuantizedConv2d, QuantizedLinear, calibrated_activations

    rule = bits_module.BitRule() if rule is None else rule
    missing = set(posterior.layers) - set(widths)
    if missing:
        raise ValueError(f"no row widths for layers {sorted(missing)}")
    x = calibration.to(torch.float32)
    if tuple(x.shape[1:]) != tuple(posterior.input_shape):
        raise ValueError(
            f"calibration inputs {tuple(x.shape[1:])} differ from the net's {posterior.input_shape}"
        )
    ops = []
    after_sign = False
    for op in posterior.ops:
        if op[0] != "layer":
            glue = _glue_module(op)
            ops.append(glue)
            x = glue(x)
            after_sign = op[0] == "sign"
            continue
        layer = posterior.layers[op[1]]
        grid = bits_module.quantize_rows(layer, widths[op[1]], rule)
        out = grid.codes.shape[0]
        bias = layer.bias if layer.bias is not None else torch.zeros(out)
        # sign units give exactly -1 / +1: one pm1 plane holds them (the Sign op folds into it)
        act = (
            dict(act_bits=1, act_mode="pm1", act_scale=1.0)
            if after_sign
            else calibrated_activations(x, act_bits)
        )
        # width-1 rows are {-1, +1} planes (a binary discrete posterior): the whole layer in
        # pm1 mode, which holds no other width but 0
        pm1 = bool((grid.widths == bits_module.PM1_WIDTH).any())
        if pm1 and not bool((grid.widths <= bits_module.PM1_WIDTH).all()):
            raise ValueError(
                f"{op[1]}: 1-bit ({{-1, +1}}) rows and wider rows cannot share a layer"
            )
        linear = QuantizedLinear(
            weight_codes=grid.codes,
            row_bits=grid.widths,
            row_scale=grid.scale.to(torch.float32),
            bias=bias.to(torch.float32).contiguous(),
            weight_mode="pm1" if pm1 else "signed",
            **act,
        )
        weight = (grid.codes.float() * grid.scale[:, None]).reshape(layer.mean.shape)
        if layer.kind == "linear":
            ops.append(linear)
            x = F.linear(x, weight, bias)
        else:
            stride, padding = tuple(layer.conv["stride"]), tuple(layer.conv["padding"])
            ops.append(
                QuantizedConv2d(
                    linear, layer.mean.shape[1], tuple(layer.mean.shape[2:]), stride, padding
                )
            )
            x = F.conv2d(x, weight, bias, stride=stride, padding=padding)
    return DiscreteNet(ops)


def _glue_module(op: tuple) -> nn.Module:
    if op[0] == "relu":
        return nn.ReLU()
    if op[0] == "flatten":
        return nn.Flatten()
    if op[0] == "maxpool2d":
        return nn.MaxPool2d(int(op[1]))
    if op[0] == "sign":
        from .runtime import Sign

        return Sign()
    raise ValueError(f"unknown op {op!r}")


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
    from .runtime import DiscreteNet, QuantizedLinear, Sign, calibrated_activations

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
