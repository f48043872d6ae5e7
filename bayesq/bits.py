"""Bit budgets: row grids, what an allocation of row widths costs, and meeting a budget.

The rules that say how many bits each weight asks for (bayesq's, and Bayesian Compression's
beside it) are in `bayesq.bit_rules`; their names are re-exported here. This module turns row
widths into codes and costs:

Rows and layers. The kernels store a row's codes with one width (bit planes), so the per-weight
bits aggregate to a per-row width: the largest over the row's kept weights (or a chosen
quantile); a row with no kept weight has width 0 (pruned).

What a net costs (`average_bits`, `storage_bits`, `bit_report`). A pruned weight costs nothing
to multiply, but a sparse net must still say *which* weights it kept: at 99% pruned the mask
alone carries about H(0.01) = 0.08 bits per weight, more than the kept weights' codes at
8 bits (0.08). So bits per weight are counted by default as everything the sparse layer format
of `bayesq.sparse_codes` writes, exactly: the positions of the kept (nonzero) codes (the
cheapest of a bitmap, a Deep Compression relative index and Rice-coded gaps), the codes, the
rows' steps and widths, the biases; divided by all of the net's weights. Two other figures are
given under their own names: "codes only" (a kept weight at its row's width, a pruned one at
0 bits, no positions or steps: the figure Bayesian Compression's tables give) and "stored" (every
weight of a row at the row's width: the dense bit planes the kernels hold in memory).

Grids. `quantize_rows` puts each row on its best grid of its width (bayesq's rule: the step
among candidate ranges with the least loss) or, under a `CompressionRule`, on its layer's
fixed-point grid of step 2^-t (widened to R / (2^(b-1) - 1) where b bits cannot span the range).

Budgets. `allocate` meets an average (counted in full by default) with the least expected
loss: it starts from the rule and then moves one row at a time by one width step (8 <-> ... <->
2 <-> 0), choosing the step with the least loss per bit saved (or the most gain per bit spent;
a step that gains nothing is not taken); a step's bits include the change in positions and the
row's step, not only its codes. The loss of a row is the drop of the Gaussian log posterior
density at the quantized weights, sum_i (q_i - theta_i)^2 / (2 sigma_i^2): rounding errors count
in units of the posterior's own uncertainty, so precisely known weights get the bits.

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

import numpy as np
import torch

from . import sparse_codes
from .bit_rules import (
    MAX_BITS,
    MIN_BITS,
    PM1_WIDTH,
    WIDTHS,
    BitRule,
    CompressionRule,
    Rule,
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
    "layer_storage",
    "storage_bits",
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


# --- what an allocation costs ---------------------------------------------------------------------
COUNTS = ("total", "codes")


def layer_storage(layer: LayerPosterior, grid: RowGrid) -> dict:
    """Exact bits of a layer's row grid as `bayesq.sparse_codes` stores it, by part: "positions"
    (which weights are kept: the cheapest of a bitmap, a relative index and Rice-coded gaps),
    "codes", "scales", "biases", "row_widths", "magnitudes" and their "total" (a dict of ints)."""
    bias = None if layer.bias is None else layer.bias.detach().float().numpy()
    return sparse_codes.layer_storage_bits(
        grid.codes.numpy(), grid.widths.numpy(), grid.scale.float().numpy(), bias
    )


def storage_bits(
    posterior: Posterior, widths: dict[str, torch.Tensor], rule: Rule = BitRule()
) -> dict[str, dict]:
    """`layer_storage` of every layer at the given row widths: name -> parts (bits)."""
    return {
        name: layer_storage(layer, quantize_rows(layer, widths[name], rule))
        for name, layer in posterior.layers.items()
    }


def average_bits(
    posterior: Posterior,
    widths: dict[str, torch.Tensor],
    rule: Rule = BitRule(),
    stored: bool = False,
    count: str = "total",
) -> float:
    """Average bits per weight of row widths over all the net's weights, counted as:

    count="total" (default): everything a sparse file holds (`storage_bits`): the positions of
    the kept weights, their codes, the rows' steps and widths, the biases;
    count="codes": codes only, a kept weight at its row's width and a pruned one at 0 bits (the
    figure of Bayesian Compression's tables; it leaves out where the kept weights are);
    stored=True: the bits of the dense rows the bit-plane kernels hold (every weight of a row at
    the row's width; codes only).
    """
    if count not in COUNTS:
        raise ValueError(f"count must be one of {COUNTS}, got {count!r}")
    if stored or count == "codes":
        total = 0
        for name, layer in posterior.layers.items():
            total += int((widths[name] * _paid_weights(layer, rule, stored)).sum())
        return total / posterior.num_weights
    parts = storage_bits(posterior, widths, rule)
    return sum(p["total"] for p in parts.values()) / posterior.num_weights


def _paid_weights(layer: LayerPosterior, rule: Rule, stored: bool) -> torch.Tensor:
    """Weights of each row that a width is paid for: all of them (stored) or the kept ones."""
    if stored:
        return torch.full((layer.mean.shape[0],), layer.mean[0].numel(), dtype=torch.int64)
    return kept_mask(layer, rule).sum(1)


# --- budgets --------------------------------------------------------------------------------------
@dataclass(eq=False)
class _LayerCosts:
    """One layer's rows at every width it can take, and the cost model `allocate` steps on.

    codes[w]: int8 (out, fan_in) and steps[w]: (out,) of every row at width w; losses: (out, 9);
    ladder: the widths, in order, whose loss is finite; row_cost(row, w): the bits a row costs at
    width w (exact for the codes-only counts, an estimate for the total: codes at their size,
    positions and per-row overhead at the layer's current rate per kept weight and per row)."""

    layer: LayerPosterior
    codes: dict[int, torch.Tensor]
    steps: dict[int, torch.Tensor]
    losses: torch.Tensor
    ladder: tuple[int, ...]
    paid: torch.Tensor | None  # weights paid per row (codes-only counts), else None
    nonzero: dict[int, torch.Tensor]  # kept (nonzero) codes per row at each width
    position_rate: float = 0.0  # bits of positions per kept code, at the last exact count
    row_overhead: float = 0.0  # bits of steps and magnitudes per live row
    dense: bool = False  # the encoder stores every weight of a live row (no positions)
    stacked: tuple | None = None  # (9, out, fan_in) codes and (9, out) steps, by width

    def row_cost(self, row: int, width: int) -> float:
        if width == 0:
            return 0.0
        if self.paid is not None:
            return float(width * int(self.paid[row]))
        if self.dense:
            return float(width * self.codes[width].shape[1]) + self.row_overhead
        per_code = int(sparse_codes.code_bits(np.array([width]))[0]) + self.position_rate
        return float(self.nonzero[width][row]) * per_code + self.row_overhead

    def grid(self, widths: torch.Tensor) -> RowGrid:
        if self.stacked is None:
            self.stacked = (
                torch.stack([self.codes.get(w, self.codes[0]) for w in range(MAX_BITS + 1)]),
                torch.stack([self.steps.get(w, self.steps[0]) for w in range(MAX_BITS + 1)]),
            )
        rows = torch.arange(len(widths))
        codes, steps = self.stacked[0][widths, rows], self.stacked[1][widths, rows]
        return RowGrid(codes, steps, widths.clone(), self.losses.gather(1, widths[:, None])[:, 0])

    def exact(self, widths: torch.Tensor) -> float:
        """The layer's exact bits at `widths`; refreshes the estimate's rates."""
        if self.paid is not None:
            return float((widths * self.paid).sum())
        parts = layer_storage(self.layer, self.grid(widths))
        live = int((widths > 0).sum())
        kept = sum(int(self.nonzero[w][widths == w].sum()) for w in widths.unique().tolist())
        self.dense = parts["positions"] == 0 and parts["codes"] == int(
            widths.sum() * self.codes[self.ladder[-1]].shape[1]
        )
        self.position_rate = parts["positions"] / max(1, kept)
        self.row_overhead = (parts["scales"] + parts["magnitudes"]) / max(1, live)
        return float(parts["total"])


def _layer_costs(layer: LayerPosterior, rule: Rule, paid: torch.Tensor | None) -> _LayerCosts:
    mean, var = layer.rows()
    kept = kept_mask(layer, rule)
    losses = torch.full((mean.shape[0], MAX_BITS + 1), math.inf, dtype=torch.float64)
    codes = {0: torch.zeros(mean.shape, dtype=torch.int8)}
    steps = {0: torch.ones(mean.shape[0])}
    if layer.discrete:
        c, spacing, kept_loss, pruned_loss = _discrete_rows(layer, kept)
        losses[:, 0] = pruned_loss
        for w in widths_of(layer)[1:]:
            if w >= code_bits(layer):
                codes[w], steps[w], losses[:, w] = c, torch.full_like(steps[0], spacing), kept_loss
    else:
        pruned_term = 0.5 * (mean.square() / var * ~kept).double().sum(1)
        losses[:, 0] = 0.5 * (mean.square() / var).double().sum(1)
        for w in WIDTHS[1:]:
            codes[w], steps[w], loss = _grid_of_width(layer, mean, var, kept, w, rule)
            losses[:, w] = loss + pruned_term
    ladder = tuple(w for w in widths_of(layer) if w in codes)
    nonzero = {w: (c != 0).sum(1) for w, c in codes.items()}
    return _LayerCosts(layer, codes, steps, losses, ladder, paid, nonzero)


def allocate(
    posterior: Posterior,
    average: float,
    rule: Rule = BitRule(),
    stored: bool = False,
    count: str = "total",
) -> dict[str, torch.Tensor]:
    """Row widths with `average` bits per weight and the least expected loss.

    The average is counted as `average_bits` counts it: by default everything the sparse file
    holds, so that a row's step from 0 bits to kept costs its codes, its step and the change in
    position bits; count="codes" or stored=True count codes only. Starts from the rule's widths,
    then takes greedy single-row width steps: down (least loss per bit saved) while above the
    budget, then up (most loss removed per bit spent) while the next step still fits. A step's
    bits are estimated (positions at the layer's current cost per kept weight, steps at its
    cost per row); the changed layers are recounted exactly every 256 steps and at every step
    within 1% of the budget, a step up that the exact count puts over the budget is undone, and
    steps down end only when the exact count is within it. The result's average is at most
    `average`, unless even every row at width 0 (biases and row widths only) costs more.
    """
    if not (math.isfinite(average) and 0 <= average <= MAX_BITS):
        raise ValueError(f"average bits must lie in 0..{MAX_BITS}, got {average}")
    if count not in COUNTS:
        raise ValueError(f"count must be one of {COUNTS}, got {count!r}")
    codes_only = stored or count == "codes"
    tables = {
        name: _layer_costs(layer, rule, _paid_weights(layer, rule, stored) if codes_only else None)
        for name, layer in posterior.layers.items()
    }
    widths = {name: row_widths(layer, rule) for name, layer in posterior.layers.items()}
    for name, table in tables.items():  # a rule width the grid cannot hold: the next one up
        for row, w in enumerate(widths[name].tolist()):
            if w not in table.ladder:
                widths[name][row] = min((x for x in table.ladder if x > w), default=0)
    exact = {name: tables[name].exact(widths[name]) for name in tables}
    budget = average * posterior.num_weights

    def step(name: str, row: int, down: bool):
        """(priority, new width) of the next step of a row, or None."""
        table, w = tables[name], int(widths[name][row])
        i = table.ladder.index(w) + (-1 if down else 1)
        if not 0 <= i < len(table.ladder):
            return None
        nxt = table.ladder[i]
        bits = table.row_cost(row, w) - table.row_cost(row, nxt)  # saved (down), < 0 (up)
        delta = float(table.losses[row, nxt] - table.losses[row, w])  # >= 0 down, <= 0 up
        if down:
            return (delta / bits if bits > 0 else math.inf, nxt)
        if not delta < 0:
            return None  # a wider row that loses nothing less (a discrete posterior's codes)
        return (delta / -bits if bits < 0 else -math.inf, nxt)  # a free gain goes first

    margin = max(0.01 * budget, 1024.0)  # within it, every step is recounted exactly

    def recount(names) -> float:
        for name in names:
            exact[name] = tables[name].exact(widths[name])
        return sum(exact.values())

    def run(down: bool) -> None:
        """Greedy steps one way: down until the exact count is within the budget, or up while
        each step still fits (a step up that the exact count shows over budget is undone)."""
        dirty, done = set(), 0
        used = sum(exact.values())
        heap = [
            (s[0], name, row, s[1])
            for name in tables
            for row in range(len(widths[name]))
            if (s := step(name, row, down)) is not None
        ]
        heapq.heapify(heap)
        while heap:
            if down and used <= budget:
                used, dirty = recount(dirty), set()  # the estimate may be short
                if used <= budget:
                    break
            _, name, row, nxt = heapq.heappop(heap)
            table, w = tables[name], int(widths[name][row])
            bits = table.row_cost(row, nxt) - table.row_cost(row, w)
            if not down and used + bits > budget:
                continue  # does not fit; a cheaper step of another row may
            widths[name][row] = nxt
            used += bits
            dirty.add(name)
            done += 1
            if done % 256 == 0 or abs(budget - used) < margin:
                used, dirty = recount(dirty), set()  # exact near the budget, and now and then
                if not down and used > budget:  # the estimate let it through: undo
                    widths[name][row] = w
                    used = recount([name])
                    continue
            if (s := step(name, row, down)) is not None:
                heapq.heappush(heap, (s[0], name, row, s[1]))
        recount(dirty)

    if sum(exact.values()) > budget:
        run(down=True)
    run(down=False)  # fill what the last steps down left (or the room below the budget)
    if sum(exact.values()) > budget:  # estimates far off between recounts: back under it
        run(down=True)
    return widths


# --- report ---------------------------------------------------------------------------------------
@dataclass
class LayerBits:
    """Per layer, bits per weight of the layer's weights: the rule's pruned share and mean
    (codes only); the allocated widths counted in full (`mean_bits`: positions + codes + steps,
    widths and biases, as `bayesq.sparse_codes` stores them) and by part; codes only (a kept
    weight at its row's width, a pruned one at 0: not a storage size); the mean width the
    kernels hold; the histogram of row widths; bytes: the sparse layer (`bytes_sparse`), the
    kernels' dense bit planes with a float32 step and bias per row (`bytes_packed`), float32."""

    name: str
    weights: int
    rows: int
    pruned_share: float
    rule_mean_bits: float
    mean_bits: float
    position_bits: float
    code_bits: float
    scale_bits: float
    codes_only_bits: float
    stored_mean_bits: float
    width_counts: dict[int, int]
    bytes_sparse: int
    bytes_packed: int
    bytes_float32: int

    @property
    def compression(self) -> float:
        return self.bytes_float32 / max(1, self.bytes_sparse)


def bit_report(
    posterior: Posterior, widths: dict[str, torch.Tensor], rule: Rule = BitRule()
) -> list[dict]:
    """One LayerBits (as a dict) per layer, and a "total" entry (sums, and averages over all
    the net's weights); "compression" is float32 bytes over sparse bytes."""
    report = []
    for name, layer in posterior.layers.items():
        per_weight = weight_bits(layer, rule)
        w = widths[name]
        n = per_weight.numel()
        fan_in = per_weight.shape[1]
        parts = layer_storage(layer, quantize_rows(layer, w, rule))
        kept = kept_mask(layer, rule)
        report.append(
            asdict(
                LayerBits(
                    name=name,
                    weights=n,
                    rows=len(w),
                    pruned_share=float((~kept).double().mean()),
                    rule_mean_bits=float(per_weight.double().mean()),
                    mean_bits=parts["total"] / n,
                    position_bits=parts["positions"] / n,
                    code_bits=parts["codes"] / n,
                    scale_bits=parts["scales"] / n,
                    codes_only_bits=float((w[:, None] * kept).double().mean()),
                    stored_mean_bits=float(w.double().mean()),
                    width_counts={int(b): int((w == b).sum()) for b in w.unique()},
                    bytes_sparse=math.ceil(parts["total"] / 8),
                    bytes_packed=sum(math.ceil(int(b) * fan_in / 8) for b in w) + 8 * len(w),
                    bytes_float32=4 * (n + len(w)),
                )
            )
        )
    weights = posterior.num_weights
    total = {"name": "total", "weights": weights, "rows": sum(r["rows"] for r in report)}
    for key in ("pruned_share", "rule_mean_bits", "mean_bits", "position_bits", "code_bits"):
        total[key] = sum(r[key] * r["weights"] for r in report) / weights
    for key in ("scale_bits", "codes_only_bits", "stored_mean_bits"):
        total[key] = sum(r[key] * r["weights"] for r in report) / weights
    for key in ("bytes_sparse", "bytes_packed", "bytes_float32"):
        total[key] = sum(r[key] for r in report)
    total["compression"] = total["bytes_float32"] / max(1, total["bytes_sparse"])
    report.append(total)
    return report
