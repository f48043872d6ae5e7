"""Bit budgets from the posterior: how many bits each weight, each row and each layer needs.

The rule (per weight). A weight is pruned, 0 bits, where its posterior makes 0 plausible: log alpha
at or above a threshold (Sparse VD / VNQ prune at 3), or the posterior mass of the zero level's
cell above a share (a discrete posterior that mostly says 0). A kept weight w ~ N(theta, sigma^2)
is stored on its row's symmetric grid: b-bit two's-complement codes -n .. n with n = 2^(b-1) - 1,
times a step Delta, spanning [-R, R] with R the largest |theta| kept in the row, so
Delta = R / n. Rounding moves a weight by at most Delta / 2; we ask that the step stay below a
multiple c of the weight's posterior standard deviation, Delta <= c sigma, so that rounding
moves it by less than the posterior is unsure about anyway (Bayesian Compression, Louizos et al.
2017, sets a layer's precision from the variance the same way). Solving R / (2^(b-1) - 1) <= c sigma:

    b = 1 + ceil(log2(R / (c sigma) + 1)),   clipped to 2 .. 8

(2 bits is the smallest symmetric grid with a zero: ternary). A narrow posterior asks for many
bits, a wide one for few.

Rows and layers. The kernels store a row's codes with one width (bit planes), so the per-weight
bits aggregate to a per-row width: the largest over the row's kept weights (or a chosen
quantile); a row with no kept weight has width 0 (pruned). Averages are counted per weight
(a kept weight costs its row's width, a pruned one 0, as a sparse format would store them) or as
stored by the kernels (every weight of a row costs the width); reports give both.

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

from .posterior import LayerPosterior, Posterior

__all__ = [
    "BitRule",
    "LayerBits",
    "RowGrid",
    "allocate",
    "average_bits",
    "bit_report",
    "kept_mask",
    "quantize_rows",
    "row_losses",
    "row_widths",
    "uniform_widths",
    "weight_bits",
]

MIN_BITS, MAX_BITS = 2, 8
WIDTHS = (0, 2, 3, 4, 5, 6, 7, 8)  # the row widths a signed bit-plane row can have


@dataclass(frozen=True)
class BitRule:
    """The parameters of the rule. step_multiple: c in Delta <= c sigma; row_quantile: None for
    the row maximum, or q in (0, 1] for that quantile of the row's kept weights' bits."""

    step_multiple: float = 1.0
    log_alpha_threshold: float = 3.0
    zero_mass_threshold: float = 0.5
    row_quantile: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.step_multiple) and self.step_multiple > 0):
            raise ValueError(f"step_multiple must be finite and > 0, got {self.step_multiple}")
        if not math.isfinite(self.log_alpha_threshold):
            raise ValueError("log_alpha_threshold must be finite")
        if not 0 < self.zero_mass_threshold <= 1:
            raise ValueError("zero_mass_threshold must lie in (0, 1]")
        if self.row_quantile is not None and not 0 < self.row_quantile <= 1:
            raise ValueError("row_quantile must be None or lie in (0, 1]")


def kept_mask(layer: LayerPosterior, rule: BitRule = BitRule()) -> torch.Tensor:
    """Bool (out, fan_in): the weights the rule keeps (not pruned)."""
    zero_dominates = layer.zero_mass > rule.zero_mass_threshold
    if layer.discrete:  # a categorical posterior: its own zero level decides, not a variance
        return ~zero_dominates.reshape(layer.mean.shape[0], -1)
    pruned = layer.log_alpha >= rule.log_alpha_threshold
    if len(layer.levels) > 1:  # with one level (Sparse VD's prior) its cell holds all the mass
        pruned |= zero_dominates
    return ~pruned.reshape(layer.mean.shape[0], -1)


def _row_range(mean: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    return (mean.abs() * kept).amax(1)


def _level_spacing(layer: LayerPosterior) -> float:
    """The grid step of a discrete posterior's evenly spaced, symmetric codebook: the spacing of
    its levels, or half of it without a level 0 ({-1, +1} = {-1, +1} x 1 on a grid of step 1:
    the levels are then odd multiples of half the spacing)."""
    steps = torch.diff(layer.levels.double())
    if len(steps) == 0 or not torch.allclose(steps, steps[0].expand_as(steps)):
        raise ValueError(f"{layer.name}: a discrete posterior needs >= 2 evenly spaced levels")
    has_zero = bool((layer.levels == 0).any())
    return float(steps[0]) if has_zero else float(steps[0]) / 2


PM1_WIDTH = 1  # one {-1, +1} plane: the rows of a binary discrete posterior (levels -c, +c)


def _is_binary(layer: LayerPosterior) -> bool:
    return layer.discrete and len(layer.levels) == 2 and not bool((layer.levels == 0).any())


def _code_bits(layer: LayerPosterior) -> int:
    """Bits of the code of a discrete posterior's levels: 1 for {-c, +c} (a pm1 plane), else
    the width of a two's-complement code holding every level, >= 2."""
    if _is_binary(layer):
        return PM1_WIDTH
    largest = int(round(float(layer.levels.abs().max()) / _level_spacing(layer)))
    return max(MIN_BITS, largest.bit_length() + 1)


def _widths_of(layer: LayerPosterior) -> tuple[int, ...]:
    """The row widths a layer can have, in order: a binary discrete layer's rows also 1 (pm1)."""
    return (0, PM1_WIDTH, *WIDTHS[1:]) if _is_binary(layer) else WIDTHS


def weight_bits(layer: LayerPosterior, rule: BitRule = BitRule()) -> torch.Tensor:
    """Bits per weight by the rule, int64 (out, fan_in): 0 where pruned, else 2..8 (or 1).

    A discrete posterior (EBP) already says which level each weight takes: a kept weight costs
    the code width of its levels (1 bit, a {-1, +1} plane, for binary levels; 2 bits for
    {-1, 0, +1}), whatever its probabilities."""
    kept = kept_mask(layer, rule)
    if layer.discrete:
        return torch.where(kept, _code_bits(layer), 0).to(torch.int64)
    mean, var = layer.rows()
    span = _row_range(mean, kept)[:, None]
    ratio = span / (rule.step_multiple * var.sqrt())
    bits = 1 + torch.ceil(torch.log2(ratio + 1))
    bits = bits.clamp(MIN_BITS, MAX_BITS).to(torch.int64)
    return torch.where(kept & (span > 0), bits, 0)


def row_widths(
    layer: LayerPosterior, rule: BitRule = BitRule(), per_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Width per row, int64 (out,): max (or rule.row_quantile) of the kept weights' bits."""
    bits = weight_bits(layer, rule) if per_weight is None else per_weight
    if rule.row_quantile is None:
        return bits.amax(1)
    widths = torch.zeros(bits.shape[0], dtype=torch.int64)
    for r in range(bits.shape[0]):
        kept = bits[r][bits[r] > 0]
        if len(kept):
            widths[r] = int(torch.quantile(kept.double(), rule.row_quantile).ceil())
    return widths


def uniform_widths(
    posterior: Posterior, bits: int, rule: BitRule | None = None
) -> dict[str, torch.Tensor]:
    """The same width for every row of every layer (the baseline allocation).

    With a rule, the rule's pruning is kept: rows without a kept weight get width 0 (and the
    pruned weights of the other rows are zeros, as in `quantize_rows`), so that this baseline
    differs from `allocate` only in how it spreads the bits over the kept weights.
    """
    if bits not in WIDTHS:
        raise ValueError(f"a row width must be one of {WIDTHS}, got {bits}")
    widths = {}
    for name, layer in posterior.layers.items():
        width = torch.full((layer.mean.shape[0],), bits, dtype=torch.int64)
        widths[name] = width if rule is None else width * kept_mask(layer, rule).any(1)
    return widths


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


def _discrete_rows(layer: LayerPosterior, kept: torch.Tensor):
    """A discrete posterior on its own grid: codes (the most probable level of each kept weight,
    in units of the level spacing), the step, the loss -sum log q(code) of each row at its code
    width, and the loss -sum log q(0) of pruning the whole row (inf without a level 0)."""
    probs = layer.level_probs.reshape(*kept.shape, -1).double()
    best = probs.argmax(-1)
    spacing = _level_spacing(layer)
    codes = torch.round(layer.levels[best] / spacing).to(torch.int8) * kept
    chosen = probs.gather(-1, best[..., None])[..., 0]
    zero = torch.nonzero(layer.levels == 0).flatten()
    p_zero = probs[..., int(zero[0])] if len(zero) else torch.zeros_like(chosen)
    kept_loss = -(torch.where(kept, chosen, p_zero)).log().sum(1)
    pruned_loss = -p_zero.log().sum(1)
    return codes, spacing, kept_loss, pruned_loss


def row_losses(layer: LayerPosterior, rule: BitRule = BitRule()) -> torch.Tensor:
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
        out[:, _code_bits(layer) :] = kept_loss[:, None]
        return out
    pruned_term = 0.5 * (mean.square() / var * ~kept).double().sum(1)
    out = torch.full((mean.shape[0], MAX_BITS + 1), math.inf, dtype=torch.float64)
    out[:, 0] = 0.5 * (mean.square() / var).double().sum(1)
    for width in WIDTHS[1:]:
        _, _, loss = _quantize_width(mean, var, kept, width, layer.codebook_scale)
        out[:, width] = loss + pruned_term
    return out


def quantize_rows(
    layer: LayerPosterior, widths: torch.Tensor, rule: BitRule = BitRule()
) -> RowGrid:
    """Codes and steps of a layer for given row widths (0 or 2..8), on each row's best grid."""
    mean, var = layer.rows()
    widths = torch.as_tensor(widths, dtype=torch.int64)
    if widths.shape != (mean.shape[0],):
        raise ValueError(f"{layer.name}: widths must have shape ({mean.shape[0]},)")
    allowed = _widths_of(layer)
    if not all(int(w) in allowed for w in widths.unique()):
        raise ValueError(
            f"{layer.name}: row widths must be in {allowed}, got {widths.unique().tolist()}"
        )
    kept = kept_mask(layer, rule)
    if layer.discrete:
        if bool(((widths > 0) & (widths < _code_bits(layer))).any()):
            raise ValueError(
                f"{layer.name}: a row of a discrete posterior needs width 0 or >= "
                f"{_code_bits(layer)} (the code width of its levels)"
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
        c, s, row_loss = _quantize_width(
            mean[rows], var[rows], kept[rows], width, layer.codebook_scale
        )
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
    ladders = {name: _widths_of(layer) for name, layer in posterior.layers.items()}
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
