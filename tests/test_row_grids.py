"""bayesq.row_grids: rows on their best grid of a width, every width at once, the posterior's own
levels, and the row loss each of them reports."""

import math

import pytest
import torch

from bayesq.bit_rules import BitRule, CompressionRule, kept_mask
from bayesq.posterior import LayerPosterior, Posterior, PruningRule, gaussian_cell_mass
from bayesq.row_grids import own_level_grid, quantize_rows, row_losses, width_grids
from tests.common import compression_example, gaussian_layer, sparse_vd_layer


def test_quantize_rows_codes_steps_and_error():
    torch.manual_seed(1)
    lp = gaussian_layer(torch.randn(5, 64) * 0.3, torch.full((5, 64), 0.05))
    widths = torch.tensor([0, 2, 3, 5, 8])
    grid = quantize_rows(lp, widths)
    assert grid.codes.dtype == torch.int8 and not grid.codes[0].any()
    assert grid.scale.dtype == torch.float32 and grid.loss.dtype == torch.float64
    kept = kept_mask(lp)
    for r, w in enumerate(widths.tolist()[1:], start=1):
        n = 2 ** (w - 1) - 1
        assert int(grid.codes[r].abs().max()) <= n
        # inside the grid's range every kept weight is within half a step
        inside = kept[r] & (lp.mean[r].abs() <= n * grid.scale[r])
        err = (grid.codes[r].float() * grid.scale[r] - lp.mean[r]).abs()
        assert bool((err[inside] <= grid.scale[r] / 2 + 1e-6).all())
    # more bits, less loss (the best grid of each width)
    losses = row_losses(lp)
    assert math.isinf(losses[0, 1])
    finite = losses[:, [2, 3, 4, 5, 6, 7, 8]]
    assert bool((finite[:, 1:] <= finite[:, :-1] + 1e-9).all())
    with pytest.raises(ValueError, match="widths"):
        quantize_rows(lp, torch.tensor([1, 2, 2, 2, 2]))
    with pytest.raises(ValueError, match="shape"):
        quantize_rows(lp, torch.tensor([2, 2]))


def test_vnq_grid_represents_the_codebook_exactly():
    """On a VNQ-like posterior (weights at -r, 0, r), 2-bit rows give back the ternary net."""
    r = 0.37
    mean = torch.tensor([[r, -r, r, 0.0], [-r, -r, 0.0, 0.0]])
    std = torch.tensor([[0.01, 0.01, 0.01, 10.0], [0.01, 0.01, 10.0, 10.0]])
    lp = gaussian_layer(mean, std, scale=r)
    grid = quantize_rows(lp, torch.tensor([2, 2]))
    torch.testing.assert_close(grid.codes.float() * grid.scale[:, None], mean)


def test_compression_rule_puts_rows_on_the_layers_fixed_point_grid():
    lp = compression_example()
    rule = CompressionRule()
    # the layer's t = 8 (tests/test_bits.py): step 2^-8 (0.05 * 256 = 12.8 -> 13)
    grid = quantize_rows(lp, torch.tensor([8, 0, 8]), rule)
    assert grid.scale[[0, 2]].tolist() == [2**-8] * 2
    assert grid.codes.tolist() == [[64, -32, 0, 13], [0] * 4, [16, 64, 0, -64]]
    # a narrower row cannot span 0.25 on that step: its grid widens to 0.25 / 3
    narrow = quantize_rows(lp, torch.tensor([3, 0, 8]), rule)
    assert narrow.scale[0] == pytest.approx(0.25 / 3) and narrow.codes[0].tolist() == [3, -2, 0, 1]


@pytest.mark.parametrize("rule", [BitRule(), CompressionRule()], ids=["bayesq", "compression"])
def test_every_width_at_once_is_quantize_rows_at_each_width(rule):
    torch.manual_seed(3)
    lp = sparse_vd_layer(torch.randn(6, 30) * 0.3, torch.rand(6, 30) * 0.02 + 1e-4)
    grids = width_grids(lp, rule)
    assert tuple(grids) == (0, 2, 3, 4, 5, 6, 7, 8)
    losses = row_losses(lp, rule)
    for width, grid in grids.items():
        alone = quantize_rows(lp, torch.full((6,), width), rule)
        assert torch.equal(grid.codes, alone.codes) and torch.equal(grid.scale, alone.scale)
        assert torch.equal(grid.loss, alone.loss) and torch.equal(grid.loss, losses[:, width])
        assert grid.widths.tolist() == [width] * 6
    assert bool(torch.isinf(losses[:, 1]).all())


def _discrete(levels, probs):
    probs = torch.tensor(probs)
    spec = {"fc": {"levels": levels, "probs": probs, "bias": None}}
    ops = [{"kind": "layer", "name": "fc"}]
    return Posterior.from_discrete(spec, ops, (probs.shape[1],)).layers["fc"]


def test_own_levels_of_a_vnq_posterior_are_its_nearest_codebook_levels():
    """Codes -1, 0, 1 of the nearest level of r [-1, 0, 1] (r = 0.5), 0 where pruned; width 2
    (0 for a row of zeros); step r; loss sum (q - theta)^2 / (2 sigma^2), pruned at q = 0."""
    r = 0.5
    mean = torch.tensor([[0.6, -0.1, -0.3, 0.3], [0.1, -0.12, 0.0, 0.01]])
    std = torch.tensor([[0.1, 0.1, 0.05, 2.0], [0.05, 0.1, 1.0, 1.0]])
    lp = gaussian_layer(mean, std, scale=r)
    grid = own_level_grid(lp)
    # (0, 3) would snap to r but log alpha prunes it
    assert lp.log_alpha[0, 3] > 3 and lp.log_alpha[0, [0, 2]].max() < 3
    assert grid.codes.tolist() == [[1, 0, -1, 0], [0, 0, 0, 0]]
    assert grid.widths.tolist() == [2, 0] and grid.scale.tolist() == [pytest.approx(r)] * 2
    assert grid.scale.dtype == torch.float32 and grid.codes.dtype == torch.int8
    q = grid.codes.float() * r
    expected = ((q - mean).square() / (2 * std.square())).double().sum(1)
    torch.testing.assert_close(grid.loss, expected)
    # the loss is row_losses' at the row's width wherever that grid is the codebook's
    torch.testing.assert_close(grid.loss[1], row_losses(lp)[1, 0])
    everything = own_level_grid(lp, PruningRule(log_alpha_threshold=-1e9))
    assert not everything.codes.any() and not everything.widths.any()
    with pytest.raises(TypeError, match="PruningRule"):
        own_level_grid(lp, BitRule())


def test_a_five_level_codebook_takes_three_bit_rows():
    mean, std = torch.tensor([[0.41, -0.19, 0.0]]), torch.full((1, 3), 0.01)
    levels = torch.tensor([-0.4, -0.2, 0.0, 0.2, 0.4])
    cells = gaussian_cell_mass(mean, std, levels)
    lp = LayerPosterior("fc", mean, std.square(), levels, cells, codebook_scale=0.2)
    grid = own_level_grid(lp)
    assert grid.codes.tolist() == [[2, -1, 0]] and grid.widths.tolist() == [3]


def test_sparse_vd_has_only_level_zero_and_a_codebook_less_posterior_no_grid():
    """One level (0): every weight snaps to it, every row width 0, the loss of pruning it all."""
    torch.manual_seed(4)
    lp = sparse_vd_layer(torch.randn(3, 5), torch.rand(3, 5) + 0.1)
    grid = own_level_grid(lp)
    assert not grid.codes.any() and grid.widths.tolist() == [0, 0, 0]
    torch.testing.assert_close(grid.loss, row_losses(lp)[:, 0])
    no_codebook = gaussian_layer(torch.ones(2, 2), torch.ones(2, 2))  # 3 levels, no scale
    with pytest.raises(ValueError, match="no grid of its own"):
        own_level_grid(no_codebook)


@pytest.mark.parametrize("binary", [True, False])
def test_own_levels_of_a_discrete_posterior_are_its_most_probable_levels(binary):
    if binary:  # levels -c, +c: a {-1, +1} plane, no level 0 to prune to
        levels = [-0.5, 0.5]
        probs = [[[0.9, 0.1], [0.3, 0.7]], [[0.4, 0.6], [0.2, 0.8]]]
        codes, widths = [[-1, 1], [1, 1]], [1, 1]
    else:  # ternary: level 0 dominant (> 0.5) prunes
        levels = [-0.5, 0.0, 0.5]
        probs = [[[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], [[0.1, 0.8, 0.1], [0.3, 0.4, 0.3]]]
        codes, widths = [[-1, 1], [0, 0]], [2, 0]
    lp = _discrete(levels, probs)
    grid = own_level_grid(lp)
    assert grid.codes.tolist() == codes and grid.widths.tolist() == widths
    # the same codes, steps and losses as quantize_rows at those widths (row_losses' loss)
    rows = quantize_rows(lp, grid.widths)
    assert torch.equal(rows.codes, grid.codes) and torch.equal(rows.scale, grid.scale)
    assert torch.equal(rows.loss, grid.loss)
    chosen = torch.tensor(probs).amax(-1)
    if binary:
        torch.testing.assert_close(grid.loss, -chosen.double().log().sum(1))
