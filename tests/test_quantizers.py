"""Codebook snapping and pruning against an obvious loop."""

from fractions import Fraction

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bayesq.quantizers import codebook_codes, snap_to_codebook


@given(
    values=st.lists(st.floats(-3, 3, allow_nan=False), min_size=1, max_size=50),
    scale=st.floats(0.01, 2.0),
    half=st.integers(0, 4),
)
def test_snapping_picks_the_nearest_level(values, scale, half):
    num_levels = 2 * half + 1
    x = torch.tensor(values, dtype=torch.float64)
    snapped = snap_to_codebook(x, scale, num_levels)
    levels = [k * scale for k in range(-half, half + 1)]
    for v, s in zip(values, snapped.tolist(), strict=True):
        best = min(abs(v - level) for level in levels)
        assert abs(v - s) <= best + 1e-9
        assert min(abs(s - level) for level in levels) < 1e-9


def test_pruning_mask_zeroes_weights():
    x = torch.tensor([0.3, -0.3, 0.05, 0.31])
    mask = torch.tensor([True, False, False, False])
    out = snap_to_codebook(x, 0.3, 3, prune_mask=mask)
    torch.testing.assert_close(out, torch.tensor([0.0, -0.3, 0.0, 0.3]))
    codes = codebook_codes(x, 0.3, 3)
    assert codes.dtype == torch.int8 and codes.tolist() == [1, -1, 0, 1]


@pytest.mark.parametrize("bad_levels", [0, 2, 256])
def test_bad_level_counts(bad_levels):
    with pytest.raises(ValueError, match="num_levels"):
        codebook_codes(torch.zeros(2), 0.1, bad_levels)


def test_bad_scale_and_values():
    with pytest.raises(ValueError, match="scale"):
        codebook_codes(torch.zeros(2), 0.0, 3)
    with pytest.raises(ValueError, match="scale"):
        codebook_codes(torch.zeros(2), float("nan"), 3)
    with pytest.raises(ValueError, match="NaN"):
        codebook_codes(torch.tensor([0.0, float("nan")]), 0.1, 3)
    with pytest.raises(ValueError, match="prune_mask"):
        snap_to_codebook(torch.zeros(3), 0.1, 3, prune_mask=torch.zeros(2, dtype=torch.bool))


# --- Grid rounding and BinaryConnect (Li et al. 2017; Courbariaux et al. 2015) -----------------

from bayesq.quantizers import (  # noqa: E402
    binary_connect,
    binary_connect_stochastic,
    deterministic_round,
    stochastic_round,
)


@given(
    values=st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=40),
    delta=st.sampled_from([0.03, 0.1, 0.25, 1.0]),
)
def test_deterministic_round_is_the_nearest_grid_point_ties_away_from_zero(values, delta):
    out = deterministic_round(torch.tensor(values, dtype=torch.float64), delta).tolist()
    for v, q in zip(values, out, strict=True):
        k = round(q / delta)
        assert abs(q - k * delta) < 1e-12  # on the grid
        assert abs(v - q) <= delta / 2 + 1e-12  # the nearest grid point
        # a tie (|v| / delta exactly k + 1/2, in exact arithmetic) goes away from zero; a value a
        # rounding error off a tie (0.15 / 0.1 is 1.4999999999999998) may go either way
        ratio = abs(Fraction(v) / Fraction(delta))
        if ratio - int(ratio) == Fraction(1, 2):
            assert abs(q) > abs(v)


def test_deterministic_round_matches_the_paper_formula_and_broadcasts():
    w = torch.tensor([[-0.75, -0.25, 0.0, 0.24, 0.26], [-0.75, -0.25, 0.0, 0.24, 0.26]])
    delta = torch.tensor([[0.5], [0.1]])
    expected = torch.sign(w) * delta * torch.floor(w.abs() / delta + 0.5)
    torch.testing.assert_close(deterministic_round(w, delta), expected)
    assert deterministic_round(w, delta)[0].tolist() == [-1.0, -0.5, 0.0, 0.0, 0.5]


def test_stochastic_round_lands_on_a_neighbour_without_bias():
    g = torch.Generator().manual_seed(1)
    w = torch.tensor([-1.3, -0.05, 0.0, 0.2, 0.37, 2.0], dtype=torch.float64)
    draws = stochastic_round(w.expand(20000, -1), 0.25, g)
    below = torch.floor(w / 0.25) * 0.25
    assert bool(((draws == below) | (draws == below + 0.25)).all())
    p_up = (w - below) / 0.25
    # mean within 5 standard errors of w: unbiased; exact on grid points (-0 variance)
    se = 0.25 * torch.sqrt(p_up * (1 - p_up) / 20000)
    assert bool(((draws.mean(0) - w).abs() <= 5 * se + 1e-12).all())
    assert draws[:, 2].eq(0.0).all() and draws[:, 5].eq(2.0).all()


def test_stochastic_round_is_reproducible_with_a_generator():
    w = torch.linspace(-1, 1, 101, dtype=torch.float64)
    a = stochastic_round(w, 0.1, torch.Generator().manual_seed(7))
    b = stochastic_round(w, 0.1, torch.Generator().manual_seed(7))
    c = stochastic_round(w, 0.1, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_stochastic_round_error_lemma_behind_the_sr_floor():
    # From a grid point w, a step s rounds back with E||Q_s(w + s) - (w + s)||^2 <= Delta ||s||_1
    # (and <= d Delta^2 / 4): the inequality the SR floor sqrt(d) Delta G / 2 rests on.
    g = torch.Generator().manual_seed(2)
    delta = 0.25
    w = torch.tensor([0.5, -0.75, 0.0, 1.0], dtype=torch.float64)
    for scale in (0.01, 0.1, 0.3):
        s = scale * torch.tensor([1.0, -0.5, 0.2, -2.0], dtype=torch.float64)
        y = (w + s).expand(40000, -1)
        err = ((stochastic_round(y, delta, g) - y) ** 2).sum(1).mean().item()
        assert err <= 1.05 * min(delta * s.abs().sum().item(), 4 * delta**2 / 4)


def test_binary_connect_forward_and_straight_through_gradient():
    w = torch.tensor([-1.5, -0.3, 0.0, 0.4, 1.0, 2.0], requires_grad=True)
    out = binary_connect(w, scale=1.0)
    assert out.tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]
    (out * torch.arange(6.0)).sum().backward()
    # gradient passes where |w| <= scale, is cancelled outside
    assert w.grad.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 0.0]
    assert binary_connect(torch.tensor([0.2, -0.2]), scale=0.5).tolist() == [0.5, -0.5]


def test_binary_connect_stochastic_is_unbiased_inside_the_clip_range():
    g = torch.Generator().manual_seed(3)
    w = torch.tensor([-2.0, -0.5, 0.0, 0.3, 0.9, 1.5], dtype=torch.float64)
    draws = binary_connect_stochastic(w.expand(20000, -1), scale=1.0, generator=g)
    assert bool((draws.abs() == 1.0).all())
    expected = w.clamp(-1, 1)  # 2 hard_sigmoid(w) - 1
    se = torch.sqrt((1 - expected**2) / 20000)
    assert bool(((draws.mean(0) - expected).abs() <= 5 * se + 1e-12).all())
    wg = torch.tensor([0.3, 1.7], requires_grad=True)
    binary_connect_stochastic(wg, generator=g).sum().backward()
    assert wg.grad.tolist() == [1.0, 0.0]


@pytest.mark.parametrize("bad", [0.0, -0.1, float("nan"), float("inf")])
def test_grid_quantizers_reject_bad_steps(bad):
    x = torch.zeros(3)
    for fn in (deterministic_round, stochastic_round):
        with pytest.raises(ValueError, match="delta"):
            fn(x, bad)
    for fn in (binary_connect, binary_connect_stochastic):
        with pytest.raises(ValueError, match="scale"):
            fn(x, bad)


def test_grid_quantizers_reject_nan_and_integer_values():
    nan = torch.tensor([0.0, float("nan")])
    for fn in (deterministic_round, stochastic_round, binary_connect, binary_connect_stochastic):
        with pytest.raises(ValueError, match="NaN"):
            fn(nan, 0.5)
        with pytest.raises(ValueError, match="floating-point"):
            fn(torch.tensor([1, 2]), 0.5)
