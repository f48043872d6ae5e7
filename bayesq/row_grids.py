"""Row grids: a layer's weights as integer codes, with one width and one step per row.

The kernels store a row's codes with one width (bit planes), so a layer quantized for them is,
row by row, a width b (0 = pruned row; 1 = a {-1, +1} plane; b >= 2 = two's-complement codes
-n .. n, n = 2^(b-1) - 1) and a step Delta, each weight becoming code x Delta (`RowGrid`).
This module puts a posterior's rows on such grids; what a grid costs and how widths are chosen
under a budget are `bayesq.bits`; how many bits a weight asks for is `bayesq.bit_rules`.

Three ways onto a grid:

* `quantize_rows`, given row widths: each row on its best grid of its width (bayesq's rule: the
  step among candidate ranges with the least loss; the ranges are quantiles of the row's kept
  |theta| and, for a VNQ codebook of scale r, the r / j on which +-r is a level) or, under a
  `CompressionRule`, on its layer's fixed-point grid of step 2^-t (widened to R / (2^(b-1) - 1)
  where b bits cannot span the layer's largest kept |theta| R);
* `width_grids`: every row at every width it can take (what a budget chooses among);
* `own_level_grid`: every weight on the posterior's own levels: a VNQ posterior's nearest
  codebook level (codes -m .. m for 2m + 1 levels, the codebook scale r as every row's step;
  Achterhold et al. 2018, Sec. 3.3), a discrete posterior's most probable level (EBP-D).

The loss of a row (`row_losses`). Gaussian posteriors: the drop of the log posterior density at
the quantized weights, sum_i (q_i - theta_i)^2 / (2 sigma_i^2), pruned weights at q_i = 0:
rounding errors count in units of the posterior's own uncertainty, so precisely known weights
get the bits. Discrete posteriors (probabilities q_i per level): a weight is pruned where its
zero level holds more than the rule's `zero_mass_threshold`; a kept one takes its most probable
level, whose code costs the code width of the levels (1 bit for binary ones); the loss of a row
is -sum_i log q_i(chosen level), a pruned weight's chosen level being 0 (+inf without a level 0).

References: Achterhold et al., Variational Network Quantization (ICLR 2018); Louizos, Ullrich,
Welling, Bayesian Compression for Deep Learning (NeurIPS 2017); Soudry, Hubara, Meir,
Expectation Backpropagation (NIPS 2014).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .bit_rules import (
    MAX_BITS,
    MIN_BITS,
    WIDTHS,
    BitRule,
    CompressionRule,
    code_bits,
    compression_layer_bits,
    kept_mask,
    level_spacing,
    widths_of,
)
from .posterior import LayerPosterior, PruningRule
from .quantizers import codebook_codes

__all__ = [
    "RowGrid",
    "losses_by_width",
    "own_level_grid",
    "quantize_rows",
    "row_losses",
    "width_grids",
]


@dataclass(eq=False)
class RowGrid:
    """A layer's weights on their row grids. codes: int8 (out, fan_in), two's-complement values
    in -n .. n for a row of width b >= 2 (n = 2^(b-1) - 1), -1 or +1 in a row of width 1, 0
    where pruned; scale: float32 (out,), the step; widths: int64 (out,); loss: float64 (out,),
    the row's loss (module docstring; `row_losses`)."""

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


def _zero_losses(mean, var, kept) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, float64 (out,): the loss of every weight at 0 (the row pruned), and that of its
    pruned weights alone (which every width adds to the kept weights' loss)."""
    ratio = mean.square() / var
    return 0.5 * ratio.double().sum(1), 0.5 * (ratio * ~kept).double().sum(1)


def _discrete_rows(layer: LayerPosterior, kept: torch.Tensor):
    """A discrete posterior on its own grid: codes (the most probable level of each kept weight,
    in units of the level spacing), each row's step (out,) (the spacing, times the row's
    row_scale where it has one), the loss -sum log q(code) of each row at its code width, and
    the loss -sum log q(0) of pruning the whole row (inf without a level 0)."""
    probs = layer.level_probs.reshape(*kept.shape, -1).double()
    best = probs.argmax(-1)
    spacing = level_spacing(layer)
    steps = torch.full((kept.shape[0],), spacing, dtype=torch.float32)
    if layer.row_scale is not None:
        steps = steps * layer.row_scale.to(torch.float32)
    codes = torch.round(layer.levels[best] / spacing).to(torch.int8) * kept
    chosen = probs.gather(-1, best[..., None])[..., 0]
    zero = torch.nonzero(layer.levels == 0).flatten()
    p_zero = probs[..., int(zero[0])] if len(zero) else torch.zeros_like(chosen)
    kept_loss = -(torch.where(kept, chosen, p_zero)).log().sum(1)
    pruned_loss = -p_zero.log().sum(1)
    return codes, steps, kept_loss, pruned_loss


def width_grids(
    layer: LayerPosterior, rule: BitRule | CompressionRule = BitRule()
) -> dict[int, RowGrid]:
    """Every row of a layer at every width it can take: width -> the `RowGrid` of all rows at
    that width, in the order of `bit_rules.widths_of` (0 first). A Gaussian posterior takes 0
    and 2..8 (each row on its best grid of the width, as `quantize_rows`); a discrete one 0 and
    the widths that hold the code width of its levels (the same codes at each)."""
    mean, var = layer.rows()
    kept = kept_mask(layer, rule)
    out = mean.shape[0]
    zeros, ones = torch.zeros(mean.shape, dtype=torch.int8), torch.ones(out)

    def at(width: int) -> torch.Tensor:
        return torch.full((out,), width, dtype=torch.int64)

    if layer.discrete:
        codes, steps, kept_loss, pruned_loss = _discrete_rows(layer, kept)
        grids = {0: RowGrid(zeros, ones, at(0), pruned_loss)}
        for width in widths_of(layer)[1:]:
            if width >= code_bits(layer):
                grids[width] = RowGrid(codes, steps, at(width), kept_loss)
        return grids
    everything, pruned_term = _zero_losses(mean, var, kept)
    grids = {0: RowGrid(zeros, ones, at(0), everything)}
    for width in WIDTHS[1:]:
        codes, steps, loss = _grid_of_width(layer, mean, var, kept, width, rule)
        grids[width] = RowGrid(codes, steps, at(width), loss + pruned_term)
    return grids


def losses_by_width(grids: dict[int, RowGrid]) -> torch.Tensor:
    """The losses of `width_grids` as one table, float64 (out, 9): column b is width b, +inf
    where the layer cannot take it."""
    out = len(next(iter(grids.values())).loss)
    table = torch.full((out, MAX_BITS + 1), math.inf, dtype=torch.float64)
    for width, grid in grids.items():
        table[:, width] = grid.loss
    return table


def row_losses(layer: LayerPosterior, rule: BitRule | CompressionRule = BitRule()) -> torch.Tensor:
    """Expected loss of every row at every width, float64 (out, 9); column b is width b
    (column 1 is +inf but for a binary discrete posterior). Includes the pruned weights' term.

    Gaussian posteriors: sum (q - theta)^2 / (2 sigma^2) (see the module docstring). Discrete
    ones: -sum log q(code), the same at every width that holds the codes, +inf below it."""
    return losses_by_width(width_grids(layer, rule))


def quantize_rows(
    layer: LayerPosterior, widths: torch.Tensor, rule: BitRule | CompressionRule = BitRule()
) -> RowGrid:
    """Codes and steps of a layer for given row widths, int64 (out,) in `bit_rules.widths_of`
    (0 or 2..8; also 1 for a binary discrete posterior), on each row's best grid of its width
    (under a `CompressionRule`: on the layer's fixed-point grid, see the module docstring).
    A discrete posterior's rows need width 0 or at least the code width of its levels."""
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
        codes, steps, kept_loss, pruned_loss = _discrete_rows(layer, kept)
        on = widths > 0
        return RowGrid(
            codes=codes * on[:, None],
            scale=steps,
            widths=widths.clone(),
            loss=torch.where(on, kept_loss, pruned_loss),
        )
    codes = torch.zeros(mean.shape, dtype=torch.int8)
    scale = torch.ones(mean.shape[0])
    loss, pruned_term = _zero_losses(mean, var, kept)  # width 0: every weight at 0
    for width in widths.unique().tolist():
        if width == 0:
            continue
        rows = widths == width
        c, s, row_loss = _grid_of_width(layer, mean[rows], var[rows], kept[rows], width, rule)
        codes[rows], scale[rows], loss[rows] = c, s, row_loss + pruned_term[rows]
    return RowGrid(codes=codes, scale=scale, widths=widths.clone(), loss=loss)


def own_level_grid(layer: LayerPosterior, pruning: PruningRule = PruningRule()) -> RowGrid:
    """Every weight on the posterior's own levels, 0 where `pruning` prunes it.

    A Gaussian posterior with a codebook of 2m + 1 >= 3 levels (VNQ): each weight's nearest
    level, codes -m .. m (ties half to even), every row's step the codebook scale r, a row's
    width the two's-complement width of m (2 bits for ternary). A Gaussian posterior with fewer
    than 3 levels (Sparse VD's single level 0): every weight at level 0, every row width 0,
    step 1. A discrete posterior (EBP): each weight's most probable level in units of the level
    spacing, width the code width of its levels (1, a {-1, +1} plane, for binary ones). A row
    whose codes are all 0 has width 0. The loss is the one `row_losses` defines for the
    posterior's kind, at these codes. Raises ValueError for a Gaussian posterior with >= 3
    levels and no codebook scale (it has no evenly spaced grid to snap to).
    """
    if not isinstance(pruning, PruningRule):
        raise TypeError(f"pruning must be a PruningRule, got {type(pruning).__name__}")
    out = layer.mean.shape[0]
    pruned = pruning.pruned(layer)
    if layer.discrete:
        codes, steps, kept_loss, pruned_loss = _discrete_rows(layer, ~pruned.reshape(out, -1))
        widths = torch.where(codes.ne(0).any(1), code_bits(layer), 0).to(torch.int64)
        loss = torch.where(widths > 0, kept_loss, pruned_loss)
        return RowGrid(codes, steps, widths, loss)
    mean, var = layer.rows()
    levels = len(layer.levels)
    if levels < 3:  # no level but 0 to snap to: the whole layer is pruned
        codes, spacing, width = torch.zeros(mean.shape, dtype=torch.int8), 1.0, 0
    elif layer.codebook_scale is None:
        raise ValueError(
            f"{layer.name}: a Gaussian posterior with {levels} levels and no codebook scale has "
            "no grid of its own; give row widths (quantize_rows)"
        )
    else:
        spacing = float(layer.codebook_scale)
        codes = codebook_codes(layer.mean, spacing, levels).masked_fill(pruned, 0)
        codes = codes.reshape(out, -1).contiguous()
        width = max(MIN_BITS, ((levels - 1) // 2).bit_length() + 1)  # holds -m .. m
    widths = torch.where(codes.ne(0).any(1), width, 0).to(torch.int64)
    loss = 0.5 * ((codes.float() * spacing - mean).square() / var).double().sum(1)
    return RowGrid(codes, torch.full((out,), spacing, dtype=torch.float32), widths, loss)
