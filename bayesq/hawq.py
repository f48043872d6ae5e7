"""HAWQ-V2's bit allocation (Hessian trace x quantization perturbation) on bayesq's row grids.

HAWQ-V2 (Dong et al. 2020, Sec. 3.3; Eq. 2.11 of arXiv:1911.03852) measures how much a block
of weights W_i (a layer there) suffers from b-bit quantization by

    Omega_i(b) = Tr(H_i) / n_i * ||Q_b(W_i) - W_i||^2,

the average Hessian trace of the block (its trace over its n_i weights, `bayesq.hessian`) times
the squared perturbation of the quantizer: the second-order Taylor term of the loss with H_i
replaced by its mean eigenvalue times I (the 1/2 of the Taylor term is left out, as in the
paper; it scales every Omega alike). The allocation then minimizes sum_i Omega_i over the bit
configurations that fit a size budget (the paper's Pareto frontier). bayesq's own allocation
(`bayesq.bits.allocate`) minimizes the drop of the log posterior density,
sum (q - theta)^2 / (2 sigma^2), instead: a posterior variance is an inverse curvature (at a
Gaussian posterior's optimum 1/sigma^2 ~ the data's curvature + the prior's), but per weight.
This module puts the two on one footing, so that they differ only in the signal:

* the same weights: W is the posterior mean, the same pruning rule zeroes the same weights
  (`bit_rules.kept_mask`), and Q_b(W) is bayesq's grid of width b (`row_grids.width_grids`:
  each row on its best grid of the width, the one `quantize_posterior(widths=...)` builds);
* the same widths: rows take 0 (the row pruned: Q_0(W) = 0, Omega = mean trace x ||w||^2) and
  2..8, as bayesq's rows do (HAWQ-V2 itself never prunes; a row at 0 is the greedy's choice);
* the same budget, counted the same way (`bits.average_bits`: everything a sparse file holds by
  default).

Per row (`row_sensitivities`, `allocate_rows`): each output row is a block, its average trace
Tr(H_rr) / fan_in (the row traces of `bayesq.hessian`), and `bits.allocate`'s greedy runs with
Omega in place of the posterior loss. It starts from every row at 8 bits (the posterior rule's
widths would hand HAWQ the other signal's choices) and steps down by the least Omega per bit
saved. Per layer (`layer_sensitivities`, `allocate_layers`): every row of a layer that keeps a
weight takes the layer's width (2..8; a layer is never pruned whole), and the configuration is
HAWQ-V2's exact Pareto choice: the layers' (bits, Omega) options merged one layer at a time,
dominated ones dropped, the least total Omega within the budget kept.

A negative trace estimate (the true block of a within-layer Hessian of a ReLU net's
cross-entropy is positive semi-definite; a negative estimate is Hutchinson noise) counts as 0.

References: Dong, Yao, Arfeen, Gholami, Mahoney, Keutzer, HAWQ-V2: Hessian Aware
trace-Weighted Quantization of Neural Networks (NeurIPS 2020); Achterhold et al., Variational
Network Quantization (ICLR 2018); Spearman, The proof and measurement of association between
two things (Am. J. Psychol. 1904).
"""

from __future__ import annotations

import math

import torch

from . import bits
from .bit_rules import MAX_BITS, BitRule, Rule, code_bits, kept_mask, widths_of
from .posterior import LayerPosterior, Posterior
from .row_grids import quantize_rows, width_grids

__all__ = [
    "allocate_layers",
    "allocate_rows",
    "layer_sensitivities",
    "layer_widths",
    "row_sensitivities",
    "spearman",
]


def _squared_errors(layer: LayerPosterior, rule: Rule) -> torch.Tensor:
    """||Q_b(w_r) - w_r||^2 of every row r at every width b, float64 (out, 9), +inf where the
    layer cannot take b; Q_b is the row's grid of `row_grids.width_grids` (pruned weights 0)."""
    mean = layer.mean.reshape(layer.mean.shape[0], -1).double()
    table = torch.full((mean.shape[0], MAX_BITS + 1), math.inf, dtype=torch.float64)
    for width, grid in width_grids(layer, rule).items():
        quantized = grid.codes.double() * grid.scale.double()[:, None]
        table[:, width] = (quantized - mean).square().sum(1)
    return table


def _checked_traces(posterior: Posterior, traces, per_row: bool) -> dict[str, torch.Tensor]:
    """Traces for every layer, finite, as float64 (out,) per row or () per layer; negative
    estimates count as 0 (module docstring)."""
    what = "row_traces" if per_row else "layer_traces"
    if not isinstance(traces, dict) or set(traces) != set(posterior.layers):
        raise ValueError(f"{what} must hold exactly the layers {list(posterior.layers)}")
    checked = {}
    for name, layer in posterior.layers.items():
        value = torch.as_tensor(traces[name])
        shape = (layer.mean.shape[0],) if per_row else ()
        if not value.dtype.is_floating_point or value.shape != shape:
            raise ValueError(f"{what}[{name!r}] must be a float of shape {shape}")
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{what}[{name!r}] must be finite")
        checked[name] = value.double().clamp(min=0)
    return checked


def row_sensitivities(
    posterior: Posterior, row_traces: dict[str, torch.Tensor], rule: Rule = BitRule()
) -> dict[str, torch.Tensor]:
    """HAWQ-V2's Omega of every row at every width: layer name -> float64 (out, 9), column b
    = Tr(H_rr) / fan_in * ||Q_b(w_r) - w_r||^2, +inf where the layer cannot take b.

    row_traces: layer name -> (out,) block trace of each row (`bayesq.hessian.HessianTrace.
    row_traces`, the sum over the row, not its mean); Q_b: the rows' grids under `rule`."""
    traces = _checked_traces(posterior, row_traces, per_row=True)
    out = {}
    for name, layer in posterior.layers.items():
        fan_in = layer.mean[0].numel()
        out[name] = (traces[name] / fan_in)[:, None] * _squared_errors(layer, rule)
    return out


def layer_widths(
    posterior: Posterior, widths: dict[str, int], rule: Rule = BitRule()
) -> dict[str, torch.Tensor]:
    """Row widths with one width per layer: every row that keeps a weight under `rule` at the
    layer's width (an int of `bit_rules.widths_of`), the rows that keep none at 0."""
    if not isinstance(widths, dict) or set(widths) != set(posterior.layers):
        raise ValueError(f"widths must hold exactly the layers {list(posterior.layers)}")
    rows = {}
    for name, layer in posterior.layers.items():
        width = widths[name]
        if isinstance(width, bool) or not isinstance(width, int) or width not in widths_of(layer):
            raise ValueError(f"widths[{name!r}] must be one of {widths_of(layer)}, got {width!r}")
        rows[name] = _rows_at(layer, width, rule)
    return rows


def _rows_at(layer: LayerPosterior, width: int, rule: Rule) -> torch.Tensor:
    return torch.where(kept_mask(layer, rule).any(1), width, 0).to(torch.int64)


def _layer_options(posterior: Posterior) -> dict[str, list[int]]:
    """The widths each layer may take as a whole: those above 0 its grids hold (a discrete
    posterior's at least the code width of its levels, as `row_grids.width_grids`)."""
    return {
        name: [
            w for w in widths_of(layer) if w > 0 and (not layer.discrete or w >= code_bits(layer))
        ]
        for name, layer in posterior.layers.items()
    }


def layer_sensitivities(
    posterior: Posterior, layer_traces: dict[str, float], rule: Rule = BitRule()
) -> dict[str, torch.Tensor]:
    """HAWQ-V2's Omega of every layer at every width: layer name -> float64 (9,), entry b =
    Tr(H_l) / n_l * ||Q_b(W_l) - W_l||^2 with the layer's rows at `layer_widths` b, +inf where
    the layer cannot take b as a whole (0 included).

    layer_traces: layer name -> the layer's trace (`bayesq.hessian.HessianTrace.traces`)."""
    traces = _checked_traces(posterior, layer_traces, per_row=False)
    options = _layer_options(posterior)
    out = {}
    for name, layer in posterior.layers.items():
        errors = _squared_errors(layer, rule)
        keeps = kept_mask(layer, rule).any(1)
        omega = torch.full((MAX_BITS + 1,), math.inf, dtype=torch.float64)
        for width in options[name]:
            per_row = torch.where(keeps, errors[:, width], errors[:, 0])
            omega[width] = traces[name] / layer.mean.numel() * per_row.sum()
        out[name] = omega
    return out


def _layer_bits(layer: LayerPosterior, widths: torch.Tensor, rule: Rule, stored, count) -> int:
    """A layer's bits at row widths, counted as `bits.average_bits` counts them (times the
    weights); layers are counted apart, so a net's bits are the sum of its layers'."""
    if stored:
        return int((widths * layer.mean[0].numel()).sum())
    if count == "codes":
        return int((widths * kept_mask(layer, rule).sum(1)).sum())
    return int(bits.layer_storage(layer, quantize_rows(layer, widths, rule))["total"])


def _checked_budget(average: float, count: str) -> None:
    if isinstance(average, bool) or not isinstance(average, int | float):
        raise TypeError(f"average bits must be a number, got {type(average).__name__}")
    if not (math.isfinite(average) and 0 <= average <= MAX_BITS):
        raise ValueError(f"average bits must lie in 0..{MAX_BITS}, got {average}")
    if count not in bits.COUNTS:
        raise ValueError(f"count must be one of {bits.COUNTS}, got {count!r}")


def allocate_rows(
    posterior: Posterior,
    average: float,
    row_traces: dict[str, torch.Tensor],
    rule: Rule = BitRule(),
    stored: bool = False,
    count: str = "total",
) -> dict[str, torch.Tensor]:
    """HAWQ-V2 per row: row widths (0, 2..8) with `average` bits per weight (counted as
    `bits.average_bits` with `stored` and `count`) and the least total Omega
    (`row_sensitivities`), by `bits.allocate`'s greedy started from every row at 8 bits.
    Layer name -> int64 (out,); at most `average`, unless every row at 0 costs more."""
    _checked_budget(average, count)
    omega = row_sensitivities(posterior, row_traces, rule)
    top = {
        name: torch.full((layer.mean.shape[0],), MAX_BITS, dtype=torch.int64)
        for name, layer in posterior.layers.items()
    }
    return bits.allocate(posterior, average, rule, stored, count, losses=omega, start=top)


def allocate_layers(
    posterior: Posterior,
    average: float,
    layer_traces: dict[str, float],
    rule: Rule = BitRule(),
    stored: bool = False,
    count: str = "total",
) -> dict[str, torch.Tensor]:
    """HAWQ-V2 per layer: one width per layer (`layer_widths`), the configuration of least
    total Omega (`layer_sensitivities`) whose bits (`bits.average_bits` with `stored`, `count`)
    fit `average` per weight, found exactly (the Pareto frontier, merged layer by layer).
    Layer name -> int64 (out,) row widths; every layer at its narrowest width where even that
    does not fit."""
    _checked_budget(average, count)
    omega = layer_sensitivities(posterior, layer_traces, rule)
    options = _layer_options(posterior)
    cost = {
        name: {w: _layer_bits(layer, _rows_at(layer, w, rule), rule, stored, count) for w in ws}
        for (name, layer), ws in zip(posterior.layers.items(), options.values(), strict=True)
    }
    budget = average * posterior.num_weights
    # the least each later layer can cost: an option that leaves them no room is dropped early
    rest = [sum(min(cost[n].values()) for n in list(cost)[i + 1 :]) for i in range(len(cost))]
    front = [(0, 0.0, {})]  # (bits, Omega, widths) of the layers so far, Pareto-optimal
    for i, name in enumerate(posterior.layers):
        merged = sorted(
            (
                (c + cost[name][w], o + float(omega[name][w]), {**chosen, name: w})
                for c, o, chosen in front
                for w in options[name]
                if c + cost[name][w] + rest[i] <= budget
            ),
            key=lambda entry: entry[:2],
        )  # by bits, then Omega: the first of equal bits is the best of them
        front, best = [], math.inf
        for entry in merged:
            if entry[1] < best:  # cheaper entries all have more Omega: keep only improvements
                front.append(entry)
                best = entry[1]
    chosen = front[-1][2] if front else _narrowest(options)
    return layer_widths(posterior, chosen, rule)


def _narrowest(options: dict[str, list[int]]) -> dict[str, int]:
    return {name: min(widths) for name, widths in options.items()}


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two 1-D tensors of equal length >= 2: the Pearson
    correlation of their ranks, tied values taking the mean of their ranks; NaN where either
    is constant (no ranking to compare)."""
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, torch.Tensor) or x.dim() != 1 or len(x) < 2:
            raise ValueError(f"{name} must be a 1-D torch.Tensor of length >= 2")
        if x.is_complex() or not bool(torch.isfinite(x.double()).all()):
            raise ValueError(f"{name} must hold finite real numbers")
    if len(a) != len(b):
        raise ValueError(f"a and b must have equal lengths, got {len(a)} and {len(b)}")
    ra, rb = _ranks(a.double()), _ranks(b.double())
    da, db = ra - ra.mean(), rb - rb.mean()
    scale = math.sqrt(float(da.square().sum() * db.square().sum()))
    return math.nan if scale == 0 else float((da * db).sum()) / scale


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of x (float64), ties at the mean of the ranks they span."""
    ranks = torch.empty_like(x)
    ranks[torch.argsort(x, stable=True)] = torch.arange(1, len(x) + 1, dtype=x.dtype)
    _, group = torch.unique(x, return_inverse=True)
    sums = torch.zeros(int(group.max()) + 1, dtype=x.dtype).index_add_(0, group, ranks)
    return (sums / torch.bincount(group).to(x.dtype))[group]
