"""VNQ's post-training quantization of a fitted net: prune by log alpha, snap the rest to the codebook.

Switches a trained VNQ net to its discrete weights and reports what that costs
(accuracy with the posterior means vs with the quantized weights), how sparse the result is and
how many bits per weight it takes. No fine-tuning, as in VNQ.

Bits per weight are reported four ways, per layer and overall (every weight counted, pruned
ones included):
* ``stored_bits``: what the layer costs stored sparsely (`bayesq.sparse_codes`): the positions
  of the nonzero codes, their codes, the codebook step and the biases, exact bits over the
  layer's weights; ``position_bits`` is the positions' part of it. Both are `bayesq.bits`'
  count (`layer_bits` of the layer's own-level grid), the one count of bits per weight;
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

import torch
from torch import nn

from .bit_rules import BitRule
from .bits import layer_bits
from .nn import VNQLayer, layer_posterior
from .posterior import PruningRule
from .row_grids import own_level_grid
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


def _net_average(name: str) -> property:
    """A report attribute: the LayerReport field `name` averaged over all the net's weights."""

    def average(self: QuantizationReport) -> float:
        return sum(getattr(la, name) * la.weights for la in self.layers) / self.weights

    return property(average, doc=f"{name}, averaged over all the net's weights")


# The summary of `to_dict`: key -> the averaged attribute.
_SUMMARY = {
    "pruned_share": "pruned_share",
    "zero_share": "zero_share",
    "code_bits_per_weight": "code_bits",
    "entropy_bits_per_weight": "entropy_bits",
    "stored_bits_per_weight": "stored_bits",
    "position_bits_per_weight": "position_bits",
}


@dataclass
class QuantizationReport:
    """Per layer reports, the pruning threshold and the accuracies (mean / quantized weights);
    `pruned_share`, `zero_share`, `code_bits`, `entropy_bits`, `stored_bits` and
    `position_bits` average the layers' over all the net's weights."""

    layers: list[LayerReport]
    log_alpha_threshold: float
    accuracy_mean: float | None = None
    accuracy_quantized: float | None = None
    extra: dict = field(default_factory=dict)

    pruned_share = _net_average("pruned_share")
    zero_share = _net_average("zero_share")
    code_bits = _net_average("code_bits")
    entropy_bits = _net_average("entropy_bits")
    stored_bits = _net_average("stored_bits")
    position_bits = _net_average("position_bits")

    @property
    def weights(self) -> int:
        return sum(layer.weights for layer in self.layers)

    def to_dict(self) -> dict:
        summary = {"weights": self.weights}
        summary.update({key: getattr(self, attr) for key, attr in _SUMMARY.items()})
        return {
            "log_alpha_threshold": self.log_alpha_threshold,
            "accuracy_mean": self.accuracy_mean,
            "accuracy_quantized": self.accuracy_quantized,
            "summary": summary,
            "layers": [asdict(layer) for layer in self.layers],
            **self.extra,
        }


def set_eval_weights_(net: nn.Module, which: str, pruning: PruningRule | None = None) -> None:
    """Make every VNQ layer of `net` evaluate with "mean" or "quantized" weights; with a
    `pruning` rule, the quantized weights are pruned by it (else by each layer's own)."""
    if which not in ("mean", "quantized"):
        raise ValueError(f"which must be 'mean' or 'quantized', got {which!r}")
    if pruning is not None and not isinstance(pruning, PruningRule):
        raise TypeError(f"pruning must be a PruningRule, got {type(pruning).__name__}")
    for module in net.modules():
        if isinstance(module, VNQLayer):
            module.eval_weights = which
            if pruning is not None:
                module.pruning = pruning


@torch.no_grad()
def _layer_report(name: str, layer: VNQLayer, pruning: PruningRule, bits_row: dict) -> LayerReport:
    """The layer's shares of each level and its bits; `bits_row`: its `bits.bit_report` row
    (the sparse storage of its own-level codes, the one count of bits per weight)."""
    codes = layer.quantized_weight(pruning) / layer.codebook_scale
    half = (layer.num_levels - 1) // 2
    counts = torch.bincount(codes.round().flatten().long() + half, minlength=layer.num_levels)
    shares = counts.double() / codes.numel()
    nonzero = shares[shares > 0]
    return LayerReport(
        name=name,
        weights=layer.theta.numel(),
        codebook_scale=float(layer.codebook_scale),
        num_levels=layer.num_levels,
        pruned_share=float(pruning.prunes_log_alpha(layer.log_alpha).double().mean()),
        zero_share=float(shares[half]),
        level_shares=shares.tolist(),
        code_bits=math.ceil(math.log2(layer.num_levels)) if layer.num_levels > 1 else 0,
        information_bits=math.log2(layer.num_levels),
        entropy_bits=float(-(nonzero * nonzero.log2()).sum()),
        stored_bits=bits_row["mean_bits"],
        position_bits=bits_row["position_bits"],
    )


def quantize_vnq_(
    net: nn.Module,
    pruning: PruningRule | None = None,
    x: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
) -> QuantizationReport:
    """Switch `net`'s VNQ layers to quantized weights, pruned by `pruning` (default
    `PruningRule()`: log alpha >= 3), and report.

    With test data (x, y), the report carries the accuracy with posterior means and quantized.
    """
    pruning = PruningRule() if pruning is None else pruning
    if not isinstance(pruning, PruningRule):
        raise TypeError(f"pruning must be a PruningRule, got {type(pruning).__name__}")
    layers = [(n, m) for n, m in net.named_modules() if isinstance(m, VNQLayer)]
    if not layers:
        raise ValueError("net has no VNQ layers to quantize")
    rule = BitRule(pruning=pruning)
    rows = [
        asdict(layer_bits(lp, own_level_grid(lp, pruning), rule))
        for lp in (layer_posterior(n, m) for n, m in layers)
    ]
    report = QuantizationReport(
        layers=[
            _layer_report(n, m, pruning, row) for (n, m), row in zip(layers, rows, strict=True)
        ],
        log_alpha_threshold=pruning.log_alpha_threshold,
    )
    if x is not None and y is not None:
        set_eval_weights_(net, "mean", pruning)
        report.accuracy_mean = accuracy(net, x, y)
    set_eval_weights_(net, "quantized", pruning)
    if x is not None and y is not None:
        report.accuracy_quantized = accuracy(net, x, y)
    return report
