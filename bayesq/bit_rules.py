"""How many bits a posterior asks for: bayesq's rule, and Bayesian Compression's beside it.

**bayesq's rule** (`BitRule`; per weight, then per row). A weight is pruned, 0 bits, where its
posterior makes 0 plausible: log alpha = log sigma^2 - log theta^2 at or above a threshold
(Sparse VD / VNQ prune at 3), or the posterior mass of the zero level's cell above a share (a
discrete posterior that mostly says 0). Each weight is pruned on its own (unstructured). A kept
weight w ~ N(theta, sigma^2) is stored on its row's symmetric grid: b-bit two's-complement
codes -n .. n, n = 2^(b-1) - 1, times a step Delta = R / n, with R the largest kept |theta| of
the row. Rounding moves a weight by at most Delta / 2; the rule asks that the step stay below a
multiple c of the weight's posterior *standard deviation*, Delta <= c sigma (a length compared
with a length), so that rounding moves it by less than the posterior is unsure about anyway.
Solving R / (2^(b-1) - 1) <= c sigma:

    b = 1 + ceil(log2(R / (c sigma) + 1)),   clipped to 2 .. 8

(2 bits is the smallest symmetric grid with a zero: ternary). The row's width is the largest of
its kept weights' b (or a chosen quantile), so no kept weight of the row gets a coarser step
than it asks for.

**Bayesian Compression's rule** (`CompressionRule`; Louizos, Ullrich, Welling 2017, and the
unit round-off test of its authors' tutorial code), offered so that both can be compared on the
same posterior. It differs from bayesq's in four ways:

1. *What the step is compared with.* A weight needs t significand bits, the most t in 1 .. 23
   whose unit round-off 2^-t stays above twice its posterior *variance*: 2^-t > 2 Var(w), so
   t = ceil(-log2(2 Var)) - 1 (= floor(-log2 Var) - 1 unless Var is a power of 2). A step is
   compared with a variance, a squared weight, so the answer changes if the weights are scaled
   (bayesq's Delta <= c sigma does not).
2. *Where it is averaged.* The layer takes the mean of t over its kept weights, rounded up: one
   precision per layer (half of its weights get fewer bits than their own test asks), where
   bayesq takes a row's maximum.
3. *The grid.* An absolute fixed-point grid of step 2^-t for the whole layer; a code needs a
   sign and the bits of the largest |theta| / 2^-t, so the width of a two's-complement code on
   that grid is 1 + ceil(log2(R_layer 2^t + 1)), R_layer the largest kept |theta| of the layer.
   (The paper's code counts "exponent bits" from log2 of the largest weight, which breaks when
   every |theta| < 1; the fixed-point width above needs no exponent.)
4. *Pruning.* Whole groups, never single weights: the output neurons (filters) and input units
   (input columns; all of an input channel's weights in a convolution) whose group log alpha is
   at or above a threshold. The paper has a scale z per group (an input unit of a layer, which
   is an output unit of the layer before) and prunes the groups whose log sigma_z^2 - log mu_z^2
   passes a threshold its authors chose per layer; 3, Sparse VD's value, is the default here. A
   Gaussian posterior without group scales has no z, so the group's log alpha here is that of
   the group as one vector, log(sum sigma^2 / sum theta^2) over its weights: the noise-to-signal
   ratio of the group, equal to Sparse VD's log alpha for a one-weight group.
   A weight is kept where its row and its column both survive; the positions then cost only a
   row mask and a column mask, not a mask over single weights.

References: Louizos, Ullrich, Welling, Bayesian Compression for Deep Learning (NeurIPS 2017);
Achterhold et al., Variational Network Quantization (ICLR 2018); Molchanov et al., Variational
Dropout Sparsifies Deep Neural Networks (ICML 2017).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .posterior import LayerPosterior, Posterior, PruningRule

__all__ = [
    "MAX_BITS",
    "MIN_BITS",
    "PM1_WIDTH",
    "WIDTHS",
    "BitRule",
    "CompressionLayerBits",
    "CompressionRule",
    "compression_layer_bits",
    "compression_widths",
    "group_log_alpha",
    "kept_mask",
    "row_widths",
    "significand_bits",
    "uniform_widths",
    "weight_bits",
]

MIN_BITS, MAX_BITS = 2, 8
WIDTHS = (0, 2, 3, 4, 5, 6, 7, 8)  # the row widths a signed bit-plane row can have
PM1_WIDTH = 1  # one {-1, +1} plane: the rows of a binary discrete posterior (levels -c, +c)


@dataclass(frozen=True)
class BitRule:
    """The parameters of bayesq's rule. step_multiple: c in Delta <= c sigma; pruning: which
    weights cost nothing but their position (`bayesq.posterior.PruningRule`, the one rule the
    builder and VNQ's own snapping use too); row_quantile: None for the row maximum, or q in
    (0, 1] for that quantile of the row's kept weights' bits."""

    step_multiple: float = 1.0
    pruning: PruningRule = PruningRule()
    row_quantile: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.step_multiple) and self.step_multiple > 0):
            raise ValueError(f"step_multiple must be finite and > 0, got {self.step_multiple}")
        if not isinstance(self.pruning, PruningRule):
            raise TypeError(f"pruning must be a PruningRule, got {type(self.pruning).__name__}")
        if self.row_quantile is not None and not 0 < self.row_quantile <= 1:
            raise ValueError("row_quantile must be None or lie in (0, 1]")


@dataclass(frozen=True)
class CompressionRule:
    """The parameters of Bayesian Compression's rule (see the module docstring).

    group_log_alpha_threshold: a group is pruned at or above it; prune_rows / prune_inputs:
    which groups are tested (output neurons or filters / input units or channels);
    max_significand_bits: the largest t tried (23, a float32 significand)."""

    group_log_alpha_threshold: float = 3.0
    prune_rows: bool = True
    prune_inputs: bool = True
    max_significand_bits: int = 23

    def __post_init__(self) -> None:
        if not math.isfinite(self.group_log_alpha_threshold):
            raise ValueError("group_log_alpha_threshold must be finite")
        if not 1 <= self.max_significand_bits <= 52:
            raise ValueError("max_significand_bits must lie in 1..52")


Rule = BitRule | CompressionRule


def _check_rule(rule) -> None:
    if not isinstance(rule, BitRule | CompressionRule):
        raise TypeError(f"rule must be a BitRule or a CompressionRule, got {type(rule).__name__}")


# --- the codes of discrete posteriors ---------------------------------------------------------------
def level_spacing(layer: LayerPosterior) -> float:
    """The grid step of a discrete posterior's evenly spaced, symmetric codebook: the spacing of
    its levels, or half of it without a level 0 ({-1, +1} = {-1, +1} x 1 on a grid of step 1:
    the levels are then odd multiples of half the spacing)."""
    steps = torch.diff(layer.levels.double())
    if len(steps) == 0 or not torch.allclose(steps, steps[0].expand_as(steps)):
        raise ValueError(f"{layer.name}: a discrete posterior needs >= 2 evenly spaced levels")
    has_zero = bool((layer.levels == 0).any())
    return float(steps[0]) if has_zero else float(steps[0]) / 2


def is_binary(layer: LayerPosterior) -> bool:
    return layer.discrete and len(layer.levels) == 2 and not bool((layer.levels == 0).any())


def code_bits(layer: LayerPosterior) -> int:
    """Bits of the code of a discrete posterior's levels: 1 for {-c, +c} (a pm1 plane), else
    the width of a two's-complement code holding every level, >= 2."""
    if is_binary(layer):
        return PM1_WIDTH
    largest = int(round(float(layer.levels.abs().max()) / level_spacing(layer)))
    return max(MIN_BITS, largest.bit_length() + 1)


def widths_of(layer: LayerPosterior) -> tuple[int, ...]:
    """The row widths a layer can have, in order: a binary discrete layer's rows also 1 (pm1)."""
    return (0, PM1_WIDTH, *WIDTHS[1:]) if is_binary(layer) else WIDTHS


# --- bayesq's rule ----------------------------------------------------------------------------------
def kept_mask(layer: LayerPosterior, rule: Rule = BitRule()) -> torch.Tensor:
    """Bool (out, fan_in): the weights the rule keeps (not pruned)."""
    _check_rule(rule)
    if isinstance(rule, CompressionRule):
        return structured_kept_mask(layer, rule)
    return ~rule.pruning.pruned(layer).reshape(layer.mean.shape[0], -1)


def weight_bits(layer: LayerPosterior, rule: Rule = BitRule()) -> torch.Tensor:
    """Bits per weight by the rule, int64 (out, fan_in): 0 where pruned, else 2..8 (or 1).

    A discrete posterior (EBP) already says which level each weight takes: a kept weight costs
    the code width of its levels (1 bit, a {-1, +1} plane, for binary levels; 2 bits for
    {-1, 0, +1}), whatever its probabilities. Under a `CompressionRule` every kept weight of a
    layer costs the layer's code width (clipped to 2..8, the widths the kernels hold)."""
    kept = kept_mask(layer, rule)
    if isinstance(rule, CompressionRule):
        width = min(MAX_BITS, max(MIN_BITS, compression_layer_bits(layer, rule).code_bits))
        return torch.where(kept, width, 0).to(torch.int64)
    if layer.discrete:
        return torch.where(kept, code_bits(layer), 0).to(torch.int64)
    mean, var = layer.rows()
    span = (mean.abs() * kept).amax(1)[:, None]
    ratio = span / (rule.step_multiple * var.sqrt())
    bits = 1 + torch.ceil(torch.log2(ratio + 1))
    bits = bits.clamp(MIN_BITS, MAX_BITS).to(torch.int64)
    return torch.where(kept & (span > 0), bits, 0)


def row_widths(
    layer: LayerPosterior, rule: Rule = BitRule(), per_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Width per row, int64 (out,): max (or rule.row_quantile) of the kept weights' bits."""
    bits = weight_bits(layer, rule) if per_weight is None else per_weight
    quantile = getattr(rule, "row_quantile", None)
    if quantile is None:
        return bits.amax(1)
    widths = torch.zeros(bits.shape[0], dtype=torch.int64)
    for r in range(bits.shape[0]):
        kept = bits[r][bits[r] > 0]
        if len(kept):
            widths[r] = int(torch.quantile(kept.double(), quantile).ceil())
    return widths


def uniform_widths(
    posterior: Posterior, bits: int, rule: Rule | None = None
) -> dict[str, torch.Tensor]:
    """The same width for every row of every layer (the baseline allocation).

    With a rule, the rule's pruning is kept: rows without a kept weight get width 0 (and the
    pruned weights of the other rows are zeros, as in `row_grids.quantize_rows`), so that this
    baseline differs from `bits.allocate` only in how it spreads the bits over the kept weights.
    """
    if bits not in WIDTHS:
        raise ValueError(f"a row width must be one of {WIDTHS}, got {bits}")
    widths = {}
    for name, layer in posterior.layers.items():
        width = torch.full((layer.mean.shape[0],), bits, dtype=torch.int64)
        widths[name] = width if rule is None else width * kept_mask(layer, rule).any(1)
    return widths


# --- Bayesian Compression's rule ------------------------------------------------------------------
def significand_bits(variance: torch.Tensor, max_bits: int = 23) -> torch.Tensor:
    """Bayesian Compression's bits per weight, int64 (variance's shape): the most t in
    0 .. max_bits with 2^-t > 2 Var, i.e. ceil(-log2(2 Var)) - 1 clipped to 0 .. max_bits."""
    t = torch.ceil(-torch.log2(2 * variance.double())) - 1
    return t.clamp(0, max_bits).to(torch.int64)


def group_log_alpha(layer: LayerPosterior) -> tuple[torch.Tensor, torch.Tensor]:
    """The log alpha of each output group (row: neuron or filter) and input group (column of a
    linear layer, input channel of a convolution): log(sum sigma^2 / sum theta^2) over the
    group's weights, float64 (out,) and (in,)."""
    mean, var = layer.mean.double(), layer.variance.double()
    by_input = (1, 0, *range(2, mean.dim()))  # in -> first axis, then the rest
    noise_rows = var.reshape(mean.shape[0], -1).sum(1)
    signal_rows = mean.square().reshape(mean.shape[0], -1).sum(1)
    noise_in = var.permute(by_input).reshape(mean.shape[1], -1).sum(1)
    signal_in = mean.square().permute(by_input).reshape(mean.shape[1], -1).sum(1)
    tiny = 1e-300  # a group of exact zeros has an infinite log alpha, not a NaN
    return (
        noise_rows.log() - (signal_rows + tiny).log(),
        noise_in.log() - (signal_in + tiny).log(),
    )


def structured_kept_mask(layer: LayerPosterior, rule: CompressionRule) -> torch.Tensor:
    """Bool (out, fan_in): the weights whose row and input group both survive the rule."""
    if layer.discrete:
        raise ValueError(f"{layer.name}: the Bayesian Compression rule needs a Gaussian posterior")
    rows, inputs = group_log_alpha(layer)
    threshold = rule.group_log_alpha_threshold
    keep_rows = rows < threshold if rule.prune_rows else torch.ones(len(rows), dtype=torch.bool)
    keep_in = inputs < threshold if rule.prune_inputs else torch.ones(len(inputs), dtype=torch.bool)
    per_input = layer.mean[0].numel() // layer.mean.shape[1]  # kh * kw (1 for a linear layer)
    return keep_rows[:, None] & keep_in.repeat_interleave(per_input)[None, :]


@dataclass(frozen=True)
class CompressionLayerBits:
    """Bayesian Compression's precision of one layer. significand_bits: ceil of the mean of t
    over the kept weights (0 with none); step: 2^-significand_bits, the fixed-point grid step;
    range: the largest kept |theta|; code_bits: the width of a two's-complement code on that
    grid, 1 + ceil(log2(range / step + 1)) (0 with no kept weight), which may exceed 8."""

    significand_bits: int
    step: float
    range: float
    code_bits: int


def compression_layer_bits(layer: LayerPosterior, rule: CompressionRule) -> CompressionLayerBits:
    """Bayesian Compression's layer-level precision of `layer` (see the module docstring)."""
    kept = structured_kept_mask(layer, rule)
    mean, var = layer.rows()
    if not bool(kept.any()):
        return CompressionLayerBits(0, 1.0, 0.0, 0)
    t = significand_bits(var[kept], rule.max_significand_bits)
    bits = math.ceil(float(t.double().mean()))
    step = 2.0**-bits
    span = float(mean[kept].abs().max())
    return CompressionLayerBits(bits, step, span, 1 + math.ceil(math.log2(span / step + 1)))


def compression_widths(posterior: Posterior, rule: CompressionRule) -> dict[str, torch.Tensor]:
    """Row widths of Bayesian Compression's rule: every row with a kept weight at its layer's
    code width (clipped to 2 .. 8), the others 0. `row_grids.quantize_rows` with the same rule puts
    the rows on the layer's fixed-point grid."""
    return {name: row_widths(layer, rule) for name, layer in posterior.layers.items()}
