"""The convex bounds of Li et al. (2017): values, limits, the BC floor's two readings."""

import math

import numpy as np
import pytest
import torch

from bayesq.analysis import bounds
from bayesq.quantizers import stochastic_round


def test_strongly_convex_bounds_match_hand_computed_values():
    mu, G, delta, d, T, D, L2 = 0.5, 3.0, 0.1, 16, 100, 8.0, 0.2
    sgd = (1 + math.log(101)) * 9.0 / (2 * 0.5 * 100)
    assert bounds.sgd_strongly_convex_term(mu, G, T) == pytest.approx(sgd)
    assert bounds.sr_floor(G, delta, d) == pytest.approx(4 * 0.1 * 3 / 2)
    assert bounds.sr_strongly_convex_bound(mu, G, delta, d, T) == pytest.approx(sgd + 0.6)
    published = 8.0 * 0.2 * 4 * 0.1 / 2
    corrected = 8.0 * 0.2 * (16 * 0.01 / 4) / 2
    assert bounds.bc_floor_published(D, L2, delta, d) == pytest.approx(published)
    assert bounds.bc_floor_corrected(D, L2, 16 * 0.01 / 4) == pytest.approx(corrected)
    got = bounds.bc_strongly_convex_bound(mu, G, delta, d, T, D, L2)
    assert got == pytest.approx(sgd + corrected)
    got = bounds.bc_strongly_convex_bound(mu, G, delta, d, T, D, L2, floor="published")
    assert got == pytest.approx(sgd + published)


def test_convex_forms_match_hand_computed_values():
    c, G, delta, d, T, D = 0.3, 2.0, 0.05, 9, 400, 6.0
    sgd = 36 / (2 * 0.3 * 20) + 0.3 * 4 / 20
    assert bounds.sgd_convex_term(c, G, D, T) == pytest.approx(sgd)
    assert bounds.sr_convex_bound(c, G, delta, d, T, D) == pytest.approx(sgd + 3 * 0.05)
    assert bounds.bc_convex_bound(c, G, delta, d, T, D, 0.0) == pytest.approx(sgd)


def test_limits_floors_stay_sgd_terms_vanish_quadratics_have_no_bc_floor():
    T = np.array([1e2, 1e4, 1e6, 1e8])
    sr = bounds.sr_strongly_convex_bound(1.0, 2.0, 0.1, 4, T)
    assert np.all(np.diff(sr) < 0)
    assert sr[-1] == pytest.approx(bounds.sr_floor(2.0, 0.1, 4), rel=1e-5)
    # float SGD is the Delta = 0 case; BC on a quadratic (L2 = 0) is float SGD
    np.testing.assert_allclose(
        bounds.sr_strongly_convex_bound(1.0, 2.0, 0.0, 4, T),
        bounds.sgd_strongly_convex_term(1.0, 2.0, T),
    )
    for floor in ("corrected", "published"):
        np.testing.assert_allclose(
            bounds.bc_strongly_convex_bound(1.0, 2.0, 0.1, 4, T, D=3.0, L2=0.0, floor=floor),
            bounds.sgd_strongly_convex_term(1.0, 2.0, T),
        )
    # the SR floor is linear in Delta, the corrected BC floor quadratic
    deltas = np.array([0.01, 0.02, 0.04])
    assert np.allclose(np.diff(np.log2(bounds.sr_floor(1.0, deltas, 10))), 1)
    ms = bounds.sr_mean_sq_rounding_error_bound(deltas, 10)
    assert np.allclose(np.diff(np.log2(bounds.bc_floor_corrected(1.0, 1.0, ms))), 2)


def test_published_and_corrected_bc_floors_cross_at_sqrt_d_delta_four():
    d, D, L2 = 25, 3.0, 0.7
    for delta, published_larger in ((0.5, True), (0.79, True), (0.81, False), (2.0, False)):
        corrected = bounds.bc_floor_corrected(
            D, L2, bounds.sr_mean_sq_rounding_error_bound(delta, d)
        )
        assert (bounds.bc_floor_published(D, L2, delta, d) > corrected) == published_larger


def test_the_bc_bias_is_half_l2_times_the_mean_squared_rounding_error():
    # The step of the BC proof: |E f'(w + r) - f'(w)| <= (L2 / 2) E r^2 for unbiased rounding r.
    # For f''' = L2 constant (f = L2 w^3 / 6) it is an equality: the bias is quadratic in Delta,
    # which is the corrected floor's order, not the published floor's linear one.
    L2, delta = 0.8, 0.25
    g = torch.Generator().manual_seed(0)
    for w in (0.1, 0.37, -0.61):
        x = torch.full((200_000,), w, dtype=torch.float64)
        q = stochastic_round(x, delta, g)
        bias = (L2 * q**2 / 2).mean().item() - L2 * w**2 / 2
        p = (w - delta * math.floor(w / delta)) / delta
        exact = (L2 / 2) * delta**2 * p * (1 - p)
        assert bias == pytest.approx(exact, rel=0.03)
        assert exact <= (L2 / 2) * delta**2 / 4 + 1e-15


@pytest.mark.parametrize(
    "call",
    [
        lambda: bounds.sgd_strongly_convex_term(0.0, 1.0, 10),
        lambda: bounds.sgd_strongly_convex_term(1.0, -1.0, 10),
        lambda: bounds.sgd_strongly_convex_term(1.0, 1.0, 0),
        lambda: bounds.sr_floor(1.0, float("nan"), 3),
        lambda: bounds.sr_floor(1.0, 0.1, 0),
        lambda: bounds.sgd_convex_term(0.0, 1.0, 1.0, 10),
        lambda: bounds.bc_strongly_convex_bound(1, 1, 0.1, 2, 10, 1, 1, floor="paper"),
        lambda: bounds.bc_floor_corrected(1.0, 1.0, -0.1),
    ],
)
def test_bad_arguments_raise(call):
    with pytest.raises(ValueError):
        call()
