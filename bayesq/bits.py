"""Bit budgets: row grids, what an allocation of row widths costs, and meeting a budget.

The rules that say how many bits each weight asks for (bayesq's, and Bayesian Compression's
beside it) are in `bayesq.bit_rules`; their names are re-exported here. This module turns row
widths into codes and costs:

Rows and layers. The kernels store a row's codes with one width (bit planes), so the per-weight
bits aggregate to a per-row width: the largest over the row's kept weights (or a chosen
quantile); a row with no kept weight has width 0 (pruned). Averages are counted per weight
(a kept weight costs its row's width, a pruned one 0, as a sparse format would store them) or as
stored by the kernels (every weight of a row costs the width); reports give both.

Grids. `quantize_rows` puts each row on its best grid of its width (bayesq's rule: the step
among candidate ranges with the least loss) or, under a `CompressionRule`, on its layer's
fixed-point grid of step 2^-t (widened to R / (2^(b-1) - 1) where b bits cannot span the range).

Budgets. `allocate` meets an average (per weight by default) with the least expected loss: it
starts from the rule and then moves one row at a time by one width step (8 <-> ... <-> 2 <-> 0),
choosing the step with the least loss per bit saved (or the most gain per bit spent; a step that
gains nothing is not taken). The loss of a row is the drop of the Gaussian log posterior density
at the quantized weights, sum_i (q_i - theta_i)^2 / (2 sigma_i^2): rounding errors count in units
of the posterior's own uncertainty, so precisely known weights get the bits.

Discrete posteriors (EBP: probabilities per level). A weight is pruned where its zero level holds
more than `zero_mass_threshold`; a kept one takes its most probable level, whose code costs the
code width of the levels (1 bit, a {-1, +1} plane, for binary ones); the loss of a row is
-sum_i log q_i(chosen level).

References: Louizos, Ullrich, Welling, Bayesian Compression for Deep Learning (NeurIPS 2017);
Achterhold et al., Variational Network Quantization (ICLR 2018); Molchanov et al. 2017.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import asdict, dataclass

import torch

from .bit_rules import (
    MAX_BITS,
    MIN_BITS,
    PM1_WIDTH,
    WIDTHS,
    BitRule,
    CompressionRule,
    code_bits,
    compression_layer_bits,
    compression_widths,
    kept_mask,
    level_spacing,
    row_widths,
    significand_bits,
    uniform_widths,
    weight_bits,
    widths_of,
)
from .posterior import LayerPosterior, Posterior

__all__ = [
    "MAX_BITS",
    "MIN_BITS",
    "PM1_WIDTH",
    "WIDTHS",
    "BitRule",
    "CompressionRule",
    "LayerBits",
    "RowGrid",
    "allocate",
    "average_bits",
    "bit_report",
    "compression_layer_bits",
    "compression_widths",
    "kept_mask",
    "quantize_rows",
    "row_losses",
    "row_widths",
    "significand_bits",
    "uniform_widths",
    "weight_bits",
]


def average_bits(
    posterior: Posterior,
    widths: dict[str, torch.Tensor],
    rule: BitRule = BitRule(),
    stored: bool = False,
) -> float:
    """Average bits per weight of row widths, counted two ways:

    per weight (default): a kept weight costs its row's width, a pruned one 0 bits (the budget
    of the rule, as in Bayesian Compression; a sparse format stores only the kept weights);
    stored (stored=True): every weight of a row costs the row's width, what the bit-plane
    kernels hold in memory.
    """
    total = 0
    for name, layer in posterior.layers.items():
        counts = _row_costs(layer, rule, stored)
        total += int((widths[name] * counts).sum())
    return total / posterior.num_weights


def _row_costs(layer: LayerPosterior, rule: BitRule, stored: bool) -> torch.Tensor:
    """Weights of each row that a width is paid for: all of them (stored) or the kept ones."""
    if stored:
        return torch.full((layer.mean.shape[0],), layer.mean[0].numel(), dtype=torch.int64)
    return kept_mask(layer, rule).sum(1)


# --- quantization of rows onto their grids ------------------------------------------------------
@dataclass(eq=False)
class RowGrid:
    """A layer's weights on their row grids. codes: int8 (out, fan_in), two's-complement values
    in -n .. n for a row of width b (n = 2^(b-1) - 1), 0 where pruned; scale: float32 (out,),
    the step; widths: int64 (out,); loss: float64 (out,), sum (q - theta)^2 / (2 sigma^2)."""

    codes: torch.Tensor
    scale: torch.Tensor
    widths: torch.Tensor
    loss: torch.Tensor


_RANGE_QUANTILES = (1.0, 0.999, 0.99, 0.97, 0.94, 0.9, 0.8)


def _candidate_steps(
    abs_kept: torch.Tensor, counts: torch.Tensor, levels: int, codebook_scale: float | None
) -> torch.Tensor:
    """Grid steps to try per row, (out, C): ranges at quantiles of |theta| over the kept weights
    divided by n, and (for a VNQ codebook) r / j, the grids on which +-r is exactly a level."""
    ordered = abs_kept.sort(1, descending=True).values  # kept first; pruned count as 0
    steps = []
    for q in _RANGE_QUANTILES:
        index = ((1 - q) * (counts - 1).clamp(min=0)).floor().long()
        steps.append(ordered.gather(1, index[:, None])[:, 0] / levels)
    if codebook_scale is not None:
        for j in range(1, min(levels, 4) + 1):
            steps.append(torch.full_like(steps[0], codebook_scale / j))
    return torch.stack(steps, 1).clamp(min=1e-12)


def _quantize_width(mean, var, kept, width: int, codebook_scale):
    """Best grid of one width for every row: codes, step and loss of the kept weights."""
    levels = 2 ** (width - 1) - 1
    abs_kept = mean.abs() * kept
    steps = _candidate_steps(abs_kept, kept.sum(1), levels, codebook_scale)  # (out, C)
    codes = torch.round(mean[:, None, :] / steps[:, :, None]).clamp(-levels, levels)
    codes = codes * kept[:, None, :]
    error = ((codes * steps[:, :, None] - mean[:, None, :]).square() / var[:, None, :]) * kept[
        :, None, :
    ]
    loss = 0.5 * error.double().sum(2)  # (out, C)
    best = loss.argmin(1)
    pick = best[:, None, None].expand(-1, 1, mean.shape[1])
    return (
        codes.gather(1, pick)[:, 0].to(torch.int8),
        steps.gather(1, best[:, None])[:, 0].float(),
        loss.gather(1, best[:, None])[:, 0],
    )


def _fixed_step_width(mean, var, kept, width: int, layer_bits):
    """Rows on their layer's fixed-point grid (Bayesian Compression's step 2^-t), widened to
    R / n where `width` bits cannot reach the layer's largest kept |theta| R."""
    levels = 2 ** (width - 1) - 1
    step = max(layer_bits.step, layer_bits.range / levels, 1e-12)
    codes = torch.round(mean / step).clamp(-levels, levels) * kept
    loss = 0.5 * ((codes * step - mean).square() / var * kept).double().sum(1)
    return codes.to(torch.int8), torch.full((mean.shape[0],), step), loss


def _grid_of_width(layer: LayerPosterior, mean, var, kept, width: int, rule):
    """Codes, steps and loss of the kept weights of the rows (mean, var) at one width."""
    if isinstance(rule, CompressionRule):
        return _fixed_step_width(mean, var, kept, width, compression_layer_bits(layer, rule))
    return _quantize_width(mean, var, kept, width, layer.codebook_scale)


def _discrete_rows(layer: LayerPosterior, kept: torch.Tensor):
    """A discrete posterior on its own grid: codes (the most probable level of each kept weight,
    in units of the level spacing), the step, the loss -sum log q(code) of each row at its code
    width, and the loss -sum log q(0) of pruning the whole row (inf without a level 0)."""
    probs = layer.level_probs.reshape(*kept.shape, -1).double()
    best = probs.argmax(-1)
    spacing = level_spacing(layer)
    codes = torch.round(layer.levels[best] / spacing).to(torch.int8) * kept
    chosen = probs.gather(-1, best[..., None])[..., 0]
    zero = torch.nonzero(layer.levels == 0).flatten()
    p_zero = probs[..., int(zero[0])] if len(zero) else torch.zeros_like(chosen)
    kept_loss = -(torch.where(kept, chosen, p_zero)).log().sum(1)
    pruned_loss = -p_zero.log().sum(1)
    return codes, spacing, kept_loss, pruned_loss


def row_losses(layer: LayerPosterior, rule: BitRule | CompressionRule = BitRule()) -> torch.Tensor:
    """Expected loss of every row at every width, float64 (out, 9); column b is width b
    (column 1, an unsupported width, is +inf). Includes the pruned weights' term.

    Gaussian posteriors: sum (q - theta)^2 / (2 sigma^2) (see the module docstring). Discrete
    ones: -sum log q(code), the same at every width that holds the codes, +inf below it."""
    mean, var = layer.rows()
    kept = kept_mask(layer, rule)
    if layer.discrete:
        _, _, kept_loss, pruned_loss = _discrete_rows(layer, kept)
        out = torch.full((mean.shape[0], MAX_BITS + 1), math.inf, dtype=torch.float64)
        out[:, 0] = pruned_loss
        out[:, code_bits(layer) :] = kept_loss[:, None]
        return out
    pruned_term = 0.5 * (mean.square() / var * ~kept).double().sum(1)
    out = torch.full((mean.shape[0], MAX_BITS + 1), math.inf, dtype=torch.float64)
    out[:, 0] = 0.5 * (mean.square() / var).double().sum(1)
    for width in WIDTHS[1:]:
        _, _, loss = _grid_of_width(layer, mean, var, kept, width, rule)
        out[:, width] = loss + pruned_term
    return out


def quantize_rows(
    layer: LayerPosterior, widths: torch.Tensor, rule: BitRule | CompressionRule = BitRule()
) -> RowGrid:
    """Codes and steps of a layer for given row widths (0 or 2..8), on each row's best grid
    (under a `CompressionRule`: on the layer's fixed-point grid, see the module docstring)."""
    mean, var = layer.rows()
    widths = torch.as_tensor(widths, dtype=torch.int64)
    if widths.shape != (mean.shape[0],):
        raise ValueError(f"{layer.name}: widths must have shape ({mean.shape[0]},)")
    allowed = widths_of(layer)
    if not all(int(w) in allowed for w in widths.unique()):
        raise ValueError(
            f"{layer.name}: row widths must be in {allowed}, got {widths.unique().tolist()}"
        )
    kept = kept_mask(layer, rule)
    if layer.discrete:
        if bool(((widths > 0) & (widths < code_bits(layer))).any()):
            raise ValueError(
                f"{layer.name}: a row of a discrete posterior needs width 0 or >= "
                f"{code_bits(layer)} (the code width of its levels)"
            )
        codes, spacing, kept_loss, pruned_loss = _discrete_rows(layer, kept)
        on = widths > 0
        return RowGrid(
            codes=codes * on[:, None],
            scale=torch.full((mean.shape[0],), spacing),
            widths=widths.clone(),
            loss=torch.where(on, kept_loss, pruned_loss),
        )
    codes = torch.zeros(mean.shape, dtype=torch.int8)
    scale = torch.ones(mean.shape[0])
    pruned_term = 0.5 * (mean.square() / var * ~kept).double().sum(1)
    loss = 0.5 * (mean.square() / var).double().sum(1)  # width 0
    for width in widths.unique().tolist():
        if width == 0:
            continue
        rows = widths == width
        c, s, row_loss = _grid_of_width(layer, mean[rows], var[rows], kept[rows], width, rule)
        codes[rows], scale[rows], loss[rows] = c, s, row_loss + pruned_term[rows]
    return RowGrid(codes=codes, scale=scale, widths=widths.clone(), loss=loss)


# --- budgets --------------------------------------------------------------------------------------
def _next_width(width: int, down: bool, ladder: tuple[int, ...] = WIDTHS) -> int | None:
    i = ladder.index(width)
    j = i - 1 if down else i + 1
    return ladder[j] if 0 <= j < len(ladder) else None


def allocate(
    posterior: Posterior, average: float, rule: BitRule = BitRule(), stored: bool = False
) -> dict[str, torch.Tensor]:
    """Row widths with `average` bits per weight and the least expected loss.

    The average is counted per weight (pruned weights cost 0) or, with stored=True, as the
    kernels store the rows (see `average_bits`). Starts from the rule's widths, then takes
    greedy single-row width steps: down (least loss per bit saved) while above the budget, or
    up (most loss removed per bit spent) while the next step still fits. The result's average
    is at most `average` (and as close as single steps allow).
    """
    if not (math.isfinite(average) and 0 <= average <= MAX_BITS):
        raise ValueError(f"average bits must lie in 0..{MAX_BITS}, got {average}")
    widths = {name: row_widths(layer, rule) for name, layer in posterior.layers.items()}
    losses = {name: row_losses(layer, rule) for name, layer in posterior.layers.items()}
    costs = {name: _row_costs(layer, rule, stored) for name, layer in posterior.layers.items()}
    ladders = {name: widths_of(layer) for name, layer in posterior.layers.items()}
    budget = average * posterior.num_weights
    used = sum(int((widths[n] * costs[n]).sum()) for n in widths)
    down = used > budget

    def step(name: str, row: int):
        """(priority, bits moved, new width) of the next step of a row, or None."""
        w = int(widths[name][row])
        nxt = _next_width(w, down, ladders[name])
        if nxt is None or int(costs[name][row]) == 0:
            return None  # no further width, or a row of pruned weights (nothing to pay for)
        bits = abs(w - nxt) * int(costs[name][row])
        delta = float(losses[name][row, nxt] - losses[name][row, w])  # >= 0 down, <= 0 up
        if not down and not delta < 0:
            return None  # a wider row that loses nothing less (a discrete posterior's codes)
        return (delta / bits, bits, nxt)

    heap = []
    for name in widths:
        for row in range(len(widths[name])):
            s = step(name, row)
            if s is not None:
                heapq.heappush(heap, (s[0], name, row, s[1], s[2]))
    while heap and (used > budget if down else True):
        priority, name, row, bits, nxt = heapq.heappop(heap)
        if not down and used + bits > budget:
            continue  # does not fit; a cheaper step of another row may
        widths[name][row] = nxt
        used += -bits if down else bits
        s = step(name, row)
        if s is not None:
            heapq.heappush(heap, (s[0], name, row, s[1], s[2]))
    return widths


# --- report ---------------------------------------------------------------------------------------
@dataclass
class LayerBits:
    """Per layer: weights, pruned share and mean bits by the rule (per weight), the mean bits
    per weight of the allocated widths (pruned weights 0), the mean width the kernels store, the
    histogram of row widths, and bytes against float32 (as the kernels store the rows)."""

    name: str
    weights: int
    rows: int
    pruned_share: float
    rule_mean_bits: float
    mean_bits: float
    stored_mean_bits: float
    width_counts: dict[int, int]
    bytes_packed: int
    bytes_float32: int

    @property
    def compression(self) -> float:
        return self.bytes_float32 / max(1, self.bytes_packed)


def bit_report(
    posterior: Posterior, widths: dict[str, torch.Tensor], rule: BitRule = BitRule()
) -> list[dict]:
    """One LayerBits (as a dict) per layer, and a "total" entry. Packed bytes: each row's
    width x fan_in bits (rounded up to bytes) plus a float32 step and bias per row."""
    report = []
    for name, layer in posterior.layers.items():
        per_weight = weight_bits(layer, rule)
        w = widths[name]
        fan_in = per_weight.shape[1]
        packed = sum(math.ceil(int(b) * fan_in / 8) for b in w) + 8 * len(w)
        report.append(
            asdict(
                LayerBits(
                    name=name,
                    weights=per_weight.numel(),
                    rows=len(w),
                    pruned_share=float((per_weight == 0).double().mean()),
                    rule_mean_bits=float(per_weight.double().mean()),
                    mean_bits=float((w[:, None] * (per_weight > 0)).double().mean()),
                    stored_mean_bits=float(w.double().mean()),
                    width_counts={int(b): int((w == b).sum()) for b in w.unique()},
                    bytes_packed=packed,
                    bytes_float32=4 * (per_weight.numel() + len(w)),
                )
            )
        )
    total_packed = sum(r["bytes_packed"] for r in report)
    total_float = sum(r["bytes_float32"] for r in report)
    report.append(
        {
            "name": "total",
            "weights": posterior.num_weights,
            "stored_mean_bits": average_bits(posterior, widths, rule, stored=True),
            "mean_bits": average_bits(posterior, widths, rule),
            "rule_mean_bits": sum(r["rule_mean_bits"] * r["weights"] for r in report)
            / posterior.num_weights,
            "pruned_share": sum(r["pruned_share"] * r["weights"] for r in report)
            / posterior.num_weights,
            "bytes_packed": total_packed,
            "bytes_float32": total_float,
            "compression": total_float / max(1, total_packed),
        }
    )
    return report
