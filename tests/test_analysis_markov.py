"""SR-SGD as a Markov chain: the exact transition matrix against quadrature and simulation,
the stationary solve and the mixing time against brute force, and the learning-rate behaviour."""

import math

import numpy as np
import pytest
import torch

from bayesq.analysis import markov

LRS = (1.0, 0.1, 0.01, 0.001, 0.0001)


@pytest.fixture(scope="module")
def well():
    return markov.tilted_double_well()


@pytest.fixture(scope="module")
def exact(well):
    """Per learning rate: (P, pi, t_mix) of the 1-D chain with gradient noise sd 2."""
    out = {}
    for lr in LRS:
        P = markov.sr_sgd_transition(well, lr, 2.0)
        pi = markov.stationary_distribution(P)
        out[lr] = (P, pi, markov.mixing_time(P, 0.25, pi))
    return out


def _quadrature_row(well, x, lr, noise_std):
    """Landing probabilities from x by brute-force integration over the Gaussian noise."""
    axis = well.axes()[0]
    xi = np.linspace(-9, 9, 180_001)
    weight = np.exp(-(xi**2) / 2)
    weight /= weight.sum()
    y = np.clip(x - lr * (well.grad(np.array([[x]]))[0, 0] + noise_std * xi), well.lo, well.hi)
    hats = np.maximum(0.0, 1 - np.abs(y[:, None] - axis[None, :]) / well.delta)
    return weight @ hats


@pytest.mark.parametrize("lr", [1.0, 0.3, 0.01])
def test_transition_rows_match_quadrature(well, lr):
    P = markov.sr_sgd_transition(well, lr, 2.0)
    assert P.shape == (41, 41) and np.allclose(P.sum(1), 1) and (P >= 0).all()
    for i in (0, 3, 12, 20, 33, 40):
        np.testing.assert_allclose(
            P[i], _quadrature_row(well, well.states()[i, 0], lr, 2.0), atol=2e-6
        )


def test_noise_free_transition_moves_to_the_two_neighbours_of_the_target(well):
    P = markov.sr_sgd_transition(well, 0.05, 0.0)
    x = well.states()[:, 0]
    target = np.clip(x - 0.05 * well.grad(well.states())[:, 0], well.lo, well.hi)
    mean_landing = P @ x
    np.testing.assert_allclose(mean_landing, target, atol=1e-12)  # unbiased rounding
    assert ((P > 1e-12).sum(1) <= 2).all()  # the rest is round-off of the psi differences


def test_two_d_transition_is_the_product_of_coordinate_roundings():
    prob = markov.tilted_double_well_2d(delta=0.5)
    P = markov.sr_sgd_transition(prob, 0.2, 1.0)
    n = len(prob.axes()[0])
    assert P.shape == (n * n, n * n) and np.allclose(P.sum(1), 1)
    s = prob.states()
    mean = (P @ s) - s  # expected move = -lr * grad inside the box (projection aside)
    inside = np.all(np.abs(s) <= 1.0, axis=1)
    np.testing.assert_allclose(mean[inside], -0.2 * prob.grad(s)[inside], atol=0.02)
    i = 7
    rows = P[i].reshape(n, n)
    np.testing.assert_allclose(rows, np.outer(rows.sum(1), rows.sum(0)), atol=1e-14)


def _brute_mixing_time(P, pi, eps=0.25):
    Pt = np.eye(len(P))
    for t in range(1, 10_000):
        Pt = Pt @ P
        if markov.worst_case_tv(Pt, pi) <= eps:
            return t
    raise AssertionError("did not mix")


def test_stationary_solve_and_mixing_time_against_brute_force():
    rng = np.random.default_rng(0)
    for n, laziness in ((2, 0.9), (5, 0.97), (12, 0.99)):
        Q = rng.random((n, n)) ** 3
        Q /= Q.sum(1, keepdims=True)
        P = laziness * np.eye(n) + (1 - laziness) * Q  # slow enough to exercise the bisection
        pi = markov.stationary_distribution(P)
        np.testing.assert_allclose(pi @ P, pi, atol=1e-12)
        assert markov.mixing_time(P, 0.25, pi) == _brute_mixing_time(P, pi)
    p, q = 0.01, 0.03  # two states: pi = (q, p) / (p + q)
    P = np.array([[1 - p, p], [q, 1 - q]])
    np.testing.assert_allclose(markov.stationary_distribution(P), [0.75, 0.25])
    assert markov.mixing_time(P) == _brute_mixing_time(P, np.array([0.75, 0.25]))


def test_reducible_chain_and_bad_inputs_raise():
    with pytest.raises(ValueError, match="reducible"):
        markov.stationary_distribution(np.eye(3))
    with pytest.raises(ValueError, match="row-stochastic"):
        markov.stationary_distribution(np.array([[0.5, 0.6], [0.5, 0.5]]))
    with pytest.raises(ValueError, match="whole number"):
        markov.lattice(-1.0, 1.0, 0.3)
    with pytest.raises(ValueError, match="lr"):
        markov.sr_sgd_transition(markov.tilted_double_well(), 0.0, 1.0)
    with pytest.raises(ValueError, match="method"):
        markov.simulate("adam", markov.tilted_double_well(), 0.1, 1.0, torch.zeros(2, 1), 1, None)


@pytest.mark.parametrize("lr", [1.0, 0.1])
def test_stationary_distribution_matches_a_long_simulated_run(well, exact, lr):
    _, pi, t_mix = exact[lr]
    emp = markov.empirical_distribution("sr", well, lr, 2.0, 4000, 10 * t_mix, 20, t_mix, seed=5)
    assert markov.tv_distance(emp, pi) < 0.02


def test_two_d_stationary_distribution_matches_a_long_simulated_run():
    prob = markov.tilted_double_well_2d()
    P = markov.sr_sgd_transition(prob, 1.0, 2.0)
    pi = markov.stationary_distribution(P)
    t_mix = markov.mixing_time(P, 0.25, pi)
    # 441 states: the sampling part of the TV distance ~ sum sqrt(pi / N), so N = 320k samples
    emp = markov.empirical_distribution("sr", prob, 1.0, 2.0, 16000, 10 * t_mix, 20, t_mix, seed=6)
    assert markov.tv_distance(emp, pi) < 0.02


def test_mixing_time_grows_as_the_learning_rate_shrinks(exact):
    t = [exact[lr][2] for lr in LRS]
    assert all(b > a for a, b in zip(t, t[1:], strict=False)), t
    # once lr |g| << Delta, P = I + (lr / Delta) M: the mixing time scales like 1 / lr
    for small, smaller in ((0.01, 0.001), (0.001, 0.0001)):
        assert 9.0 < exact[smaller][2] / exact[small][2] < 11.0


def test_sr_stationary_distribution_stops_concentrating_float_sgd_does_not(well, exact):
    pis = [exact[lr][1] for lr in LRS]
    # the limit as lr -> 0 exists and is reached: 1e-3 and 1e-4 give the same distribution
    assert markov.tv_distance(pis[3], pis[4]) < 1e-3
    dist = [markov.sr_expected_distance(well, pi) for pi in pis]
    assert dist[4] > 0.1 and abs(dist[4] - dist[2]) < 0.01 * dist[2]
    # float SGD at lr 0.01 and 0.001 (simulated, 20 / lr steps from uniform lattice starts):
    # its spread shrinks like sqrt(lr) and falls below SR's
    gen = torch.Generator().manual_seed(0)
    start = torch.from_numpy(well.states())[torch.randint(41, (400,), generator=gen)]
    spread = {}
    for lr in (0.01, 0.001):
        w = markov.simulate("float", well, lr, 2.0, start, math.ceil(20 / lr), gen)
        spread[lr] = well.distance_to_minimizers(w.numpy()).mean()
    assert spread[0.001] < spread[0.01] / 2 and spread[0.001] < dist[4] / 4


def test_small_learning_rate_limit_is_a_gibbs_density_at_the_grid_temperature(well, exact):
    # birth-death balance with rates lr E(g + sigma xi)_+- / Delta gives, for |g| << sigma,
    # pi ~ exp(-sqrt(2 pi) f / (sigma Delta)): a temperature set by sigma and Delta, not by lr
    f = well.f(well.states())
    gibbs = np.exp(-math.sqrt(2 * math.pi) * (f - f.min()) / (2.0 * well.delta))
    assert markov.tv_distance(exact[0.0001][1], gibbs / gibbs.sum()) < 0.02
