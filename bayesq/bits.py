"""Bit budgets: what an allocation of row widths costs, meeting a budget, and the report.

How many bits each weight asks for (bayesq's rule, and Bayesian Compression's beside it) is
`bayesq.bit_rules`; how a layer's rows are put on grids of given widths (and their loss) is
`bayesq.row_grids`. This module counts and chooses:

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

Budgets. `allocate` meets an average (counted in full by default) with the least expected
loss (`row_grids.row_losses`): it starts from the rule and then moves one row at a time by one
width step (8 <-> ... <-> 2 <-> 0), choosing the step with the least loss per bit saved (or the
most gain per bit spent; a step that gains nothing is not taken); a step's bits include the
change in positions and the row's step, not only its codes.

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
from .bit_rules import MAX_BITS, BitRule, Rule, kept_mask, row_widths, weight_bits, widths_of
from .posterior import LayerPosterior, Posterior
from .row_grids import RowGrid, losses_by_width, own_level_grid, quantize_rows, width_grids

__all__ = [
    "COUNTS",
    "LayerBits",
    "allocate",
    "average_bits",
    "bit_report",
    "layer_bits",
    "layer_storage",
    "storage_bits",
]


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


def _layer_costs(
    layer: LayerPosterior, rule: Rule, paid: torch.Tensor | None, losses: torch.Tensor | None
) -> _LayerCosts:
    grids = width_grids(layer, rule)
    codes = {w: grid.codes for w, grid in grids.items()}
    steps = {w: grid.scale for w, grid in grids.items()}
    ladder = tuple(w for w in widths_of(layer) if w in grids)
    nonzero = {w: (c != 0).sum(1) for w, c in codes.items()}
    if losses is None:
        losses = losses_by_width(grids)
    else:  # a caller's signal (bayesq.hawq): finite wherever the layer can go
        shape = (layer.mean.shape[0], MAX_BITS + 1)
        losses = _given("losses", losses, layer, shape, True).double()
        if not bool(torch.isfinite(losses[:, list(ladder)]).all()):
            raise ValueError(f"losses[{layer.name!r}] must be finite at the widths {ladder}")
    return _LayerCosts(layer, codes, steps, losses, ladder, paid, nonzero)


def _given(what: str, table, layer: LayerPosterior, shape: tuple, floating: bool) -> torch.Tensor:
    """A caller's `losses` (floating) or `start` (int64) entry of a layer, checked."""
    kind = "a floating-point" if floating else "an int64"
    dtype_ok = isinstance(table, torch.Tensor) and (
        table.dtype.is_floating_point if floating else table.dtype == torch.int64
    )
    if not dtype_ok or table.shape != shape:
        raise ValueError(f"{what}[{layer.name!r}] must be {kind} torch.Tensor of shape {shape}")
    return table


def _checked_start(posterior: Posterior, rule: Rule, start) -> dict[str, torch.Tensor]:
    """The widths `allocate` starts from: the rule's, or a caller's (checked, copied)."""
    if start is None:
        return {name: row_widths(layer, rule) for name, layer in posterior.layers.items()}
    if not isinstance(start, dict) or set(start) != set(posterior.layers):
        raise ValueError(f"start must hold exactly the layers {list(posterior.layers)}")
    widths = {}
    for name, layer in posterior.layers.items():
        w = _given("start", start[name], layer, (layer.mean.shape[0],), False)
        if not set(w.tolist()) <= set(widths_of(layer)):
            raise ValueError(f"start[{name!r}]: row widths must be in {widths_of(layer)}")
        widths[name] = w.clone()
    return widths


def allocate(
    posterior: Posterior,
    average: float,
    rule: Rule = BitRule(),
    stored: bool = False,
    count: str = "total",
    *,
    losses: dict[str, torch.Tensor] | None = None,
    start: dict[str, torch.Tensor] | None = None,
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

    losses: layer name -> float (out, 9), a row's loss at each width (column b = width b, +inf
    where not allowed) minimized in place of the posterior's (`row_grids.row_losses`), e.g.
    HAWQ-V2's Omega (`bayesq.hawq`): the same greedy on another signal. start: layer name ->
    int64 (out,) widths to start from instead of the rule's (`bit_rules.row_widths`).
    """
    if not (math.isfinite(average) and 0 <= average <= MAX_BITS):
        raise ValueError(f"average bits must lie in 0..{MAX_BITS}, got {average}")
    if count not in COUNTS:
        raise ValueError(f"count must be one of {COUNTS}, got {count!r}")
    codes_only = stored or count == "codes"
    if losses is not None and (
        not isinstance(losses, dict) or set(losses) != set(posterior.layers)
    ):
        raise ValueError(f"losses must hold exactly the layers {list(posterior.layers)}")
    tables = {
        name: _layer_costs(
            layer,
            rule,
            _paid_weights(layer, rule, stored) if codes_only else None,
            None if losses is None else losses[name],
        )
        for name, layer in posterior.layers.items()
    }
    widths = _checked_start(posterior, rule, start)
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


def layer_bits(layer: LayerPosterior, grid: RowGrid, rule: Rule = BitRule()) -> LayerBits:
    """What one layer's row grid costs, counted every way of `LayerBits` (the one count of bits
    per weight: `bit_report` and VNQ's own report, `bayesq.vnq_snap`, both use it)."""
    per_weight = weight_bits(layer, rule)
    w = grid.widths
    n = per_weight.numel()
    fan_in = per_weight.shape[1]
    parts = layer_storage(layer, grid)
    kept = kept_mask(layer, rule)
    return LayerBits(
        name=layer.name,
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


def bit_report(
    posterior: Posterior, widths: dict[str, torch.Tensor] | None = None, rule: Rule = BitRule()
) -> list[dict]:
    """One LayerBits (as a dict, `layer_bits`) per layer, and a "total" entry (sums, and
    averages over all the net's weights); "compression" is float32 bytes over sparse bytes.

    widths: layer name -> int64 (out,) row widths, each row on its best grid of its width
    (`row_grids.quantize_rows` under `rule`); or None for the posterior's own levels
    (`row_grids.own_level_grid` under the pruning of `rule`, which must then be a `BitRule`):
    a VNQ net snapped to its codebook, an EBP net on its most probable levels."""
    if widths is None and not isinstance(rule, BitRule):
        raise TypeError(
            f"the posterior's own levels (widths=None) need a BitRule, got {type(rule).__name__}"
        )
    report = []
    for name, layer in posterior.layers.items():
        if widths is None:
            grid = own_level_grid(layer, rule.pruning)
        else:
            grid = quantize_rows(layer, widths[name], rule)
        report.append(asdict(layer_bits(layer, grid, rule)))
    weights = posterior.num_weights
    total = {"name": "total", "weights": weights, "rows": sum(r["rows"] for r in report)}
    for key in ("pruned_share", "rule_mean_bits", "mean_bits", "position_bits", "code_bits",
                "scale_bits", "codes_only_bits", "stored_mean_bits"):  # fmt: skip
        total[key] = sum(r[key] * r["weights"] for r in report) / weights
    for key in ("bytes_sparse", "bytes_packed", "bytes_float32"):
        total[key] = sum(r[key] for r in report)
    total["compression"] = total["bytes_float32"] / max(1, total["bytes_sparse"])
    report.append(total)
    return report
