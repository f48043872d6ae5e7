"""VNQ's post-training quantization of a fitted net: prune by log alpha, snap the rest to the codebook.

Switches a trained VNQ net to its discrete weights and reports what that costs
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
from .posterior import PruningRule
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
def _layer_report(name: str, layer: VNQLayer, pruning: PruningRule) -> LayerReport:
    pruned = pruning.prunes_log_alpha(layer.log_alpha)
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
    report = QuantizationReport(
        layers=[_layer_report(n, m, pruning) for n, m in layers],
        log_alpha_threshold=pruning.log_alpha_threshold,
    )
    if x is not None and y is not None:
        set_eval_weights_(net, "mean", pruning)
        report.accuracy_mean = accuracy(net, x, y)
    set_eval_weights_(net, "quantized", pruning)
    if x is not None and y is not None:
        report.accuracy_quantized = accuracy(net, x, y)
    return report
