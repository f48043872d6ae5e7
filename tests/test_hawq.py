"""bayesq.hawq: HAWQ-V2's Omega on bayesq's row grids, its allocations, and Spearman's rho; and
the `losses` / `start` arguments of bayesq.bits.allocate that run its greedy on Omega."""

import itertools
import math

import pytest
import torch

from bayesq import bits, hawq
from bayesq.bit_rules import MAX_BITS, BitRule, uniform_widths
from bayesq.posterior import PruningRule
from bayesq.row_grids import row_losses
from tests.common import chain_posterior, gaussian_layer

NO_PRUNING = BitRule(pruning=PruningRule(log_alpha_threshold=1e30, zero_mass_threshold=1.0))


def _hand_layer():
    """Row 0: [1, -1, 0.5], all kept; row 1: [0.4, 0, 0], its zeros pruned (log alpha huge)."""
    return gaussian_layer([[1.0, -1.0, 0.5], [0.4, 0.0, 0.0]], [[0.01] * 3] * 2)


def test_row_omega_on_hand_computed_grids():
    post = chain_posterior(_hand_layer())
    omega = hawq.row_sensitivities(post, {"fc": torch.tensor([6.0, 3.0])})["fc"]
    assert omega.shape == (2, 9) and omega.dtype == torch.float64
    # mean traces 6 / 3 = 2 and 3 / 3 = 1. Row 0 at 2 bits: step 1 (R = 1, one level each
    # side), Q = [1, -1, 0] (0.5 rounds to even), ||Q - w||^2 = 0.25; at 3 bits, step 1/3:
    # 0.5 lands 1/6 from a level, 1/36; at 0 bits Q = 0: 1 + 1 + 0.25
    assert float(omega[0, 0]) == pytest.approx(2 * 2.25)
    assert float(omega[0, 2]) == pytest.approx(2 * 0.25)
    assert float(omega[0, 3]) == pytest.approx(2 / 36, rel=1e-5)
    # row 1: 0.4 is a level at every width (up to the float32 step n * (0.4 / n)), the pruned
    # zeros cost nothing
    assert float(omega[1, 2:].abs().max()) < 1e-13 and float(omega[1, 0]) == pytest.approx(0.16)
    assert math.isinf(omega[0, 1]) and math.isinf(omega[1, 1])  # no width 1 for this layer
    # a negative estimate (noise about a PSD block) counts as a zero trace
    flat = hawq.row_sensitivities(post, {"fc": torch.tensor([-6.0, 3.0])})["fc"]
    assert flat[0, [0, 2, 3]].tolist() == [0.0] * 3


def test_layer_omega_on_hand_computed_grids():
    post = chain_posterior(_hand_layer())
    omega = hawq.layer_sensitivities(post, {"fc": 9.0})["fc"]
    # mean trace 9 / 6 = 1.5; both rows keep a weight, so both take the layer's width
    assert float(omega[2]) == pytest.approx(1.5 * 0.25)
    assert float(omega[3]) == pytest.approx(1.5 / 36, rel=1e-5)
    assert math.isinf(omega[0]) and math.isinf(omega[1])  # a layer is never pruned whole
    assert bool((omega[2:] >= 0).all())


def test_omega_is_the_posterior_loss_where_the_curvature_is_one_over_sigma_squared():
    # equal sigma everywhere: sum (q - theta)^2 / (2 sigma^2) is Omega with mean trace
    # 1 / (2 sigma^2): the two signals agree, and so do the greedy's choices from one start
    torch.manual_seed(3)
    sigma = 0.05
    a = gaussian_layer(torch.randn(6, 10) * 0.5, torch.full((6, 10), sigma), "a")
    b = gaussian_layer(torch.randn(4, 6) * 0.5, torch.full((4, 6), sigma), "b")
    post = chain_posterior(a, b)
    traces = {n: torch.full((lp.mean.shape[0],), lp.mean.shape[1] / (2 * sigma**2))
              for n, lp in post.layers.items()}  # fmt: skip
    omega = hawq.row_sensitivities(post, traces)
    for name, layer in post.layers.items():
        torch.testing.assert_close(omega[name], row_losses(layer), rtol=1e-6, atol=0)
    top = {n: torch.full((lp.mean.shape[0],), MAX_BITS) for n, lp in post.layers.items()}
    for budget in (1.0, 2.5, 4.0):
        ours = hawq.allocate_rows(post, budget, traces)
        theirs = bits.allocate(post, budget, start=top)
        assert all(torch.equal(ours[n], theirs[n]) for n in post.layers)


def test_allocate_rows_meets_the_budget_and_follows_the_trace():
    torch.manual_seed(4)
    row = torch.randn(1, 40) * 0.3
    layer = gaussian_layer(row.expand(6, 40).clone(), torch.full((6, 40), 0.01))
    post = chain_posterior(layer)
    traces = {"fc": torch.tensor([100.0, 1.0, 1.0, 100.0, 0.01, 0.01])}
    for budget in (1.0, 2.0, 3.0, 5.0):
        for count, stored in (("total", False), ("codes", False), ("total", True)):
            widths = hawq.allocate_rows(post, budget, traces, count=count, stored=stored)["fc"]
            used = bits.average_bits(post, {"fc": widths}, count=count, stored=stored)
            assert used <= budget + 1e-12
            # identical rows: the steeper the curvature, the wider the row
            assert int(widths[[0, 3]].min()) >= int(widths[[1, 2]].max())
            assert int(widths[[1, 2]].min()) >= int(widths[[4, 5]].max())


def test_allocate_layers_is_the_exact_pareto_choice():
    torch.manual_seed(5)
    layers = [
        gaussian_layer(torch.randn(6, 30) * 0.4, torch.rand(6, 30) * 0.05 + 0.01, "a"),
        gaussian_layer(torch.randn(8, 6) * 0.4, torch.rand(8, 6) * 0.05 + 0.01, "b"),
    ]
    post = chain_posterior(*layers)
    traces = {"a": 3.0, "b": 40.0}
    for rule in (BitRule(), NO_PRUNING):
        omega = hawq.layer_sensitivities(post, traces, rule)
        for count, stored in (("total", False), ("codes", False), ("total", True)):
            # brute force: every one of the 7^2 configurations of one width per layer
            configs = []
            for combo in itertools.product(range(2, 9), repeat=2):
                chosen = dict(zip(post.layers, combo, strict=True))
                used = bits.average_bits(post, hawq.layer_widths(post, chosen, rule), rule,
                                         stored, count)  # fmt: skip
                configs.append((used, sum(float(omega[n][w]) for n, w in chosen.items())))
            lowest, highest = min(c[0] for c in configs), max(c[0] for c in configs)
            for share in (0.0, 0.2, 0.5, 0.8, 1.0):  # budgets across the reachable range
                budget = min(MAX_BITS, lowest + share * (highest - lowest))  # allocate: <= 8
                best = min(o for used, o in configs if used <= budget)
                got = hawq.allocate_layers(post, budget, traces, rule, stored, count)
                chosen = {n: int(w.max()) for n, w in got.items()}
                assert sum(float(omega[n][w]) for n, w in chosen.items()) == pytest.approx(best)
                assert bits.average_bits(post, got, rule, stored, count) <= budget


def test_allocate_layers_falls_back_to_the_narrowest_widths():
    post = chain_posterior(_hand_layer())
    widths = hawq.allocate_layers(post, 0.0, {"fc": 1.0})
    assert widths["fc"].tolist() == [2, 2]


def test_layer_widths_prune_rows_without_kept_weights():
    # row 1 of this layer keeps nothing (all three weights pruned): width 0, as uniform_widths
    layer = gaussian_layer([[1.0, -1.0, 0.5], [0.0, 0.0, 0.0]], [[0.01] * 3] * 2)
    post = chain_posterior(layer)
    assert hawq.layer_widths(post, {"fc": 4})["fc"].tolist() == [4, 0]
    assert torch.equal(
        hawq.layer_widths(post, {"fc": 4})["fc"], uniform_widths(post, 4, BitRule())["fc"]
    )
    assert hawq.layer_widths(post, {"fc": 4}, NO_PRUNING)["fc"].tolist() == [4, 4]


def test_spearman_on_hand_computed_ranks():
    assert hawq.spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([30.0, 20.0, 10.0])) == -1.0
    assert hawq.spearman(torch.tensor([1, 5, 9]), torch.tensor([0.1, 0.2, 7.0])) == 1.0
    # ties: ranks (1.5, 1.5, 3) against (1, 2, 3): cov 1.5, variances 1.5 and 2 -> 1.5 / sqrt(3)
    rho = hawq.spearman(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([1.0, 2.0, 3.0]))
    assert rho == pytest.approx(1.5 / math.sqrt(3.0), abs=1e-15)
    # ranks (2, 1, 4, 3) against (1, 2, 3, 4): 1 - 6 * sum d^2 / (n (n^2 - 1)) = 1 - 24 / 60
    rho = hawq.spearman(torch.tensor([0.5, 0.1, 9.0, 2.0]), torch.arange(4.0))
    assert rho == pytest.approx(0.6, abs=1e-15)
    assert math.isnan(hawq.spearman(torch.ones(4), torch.arange(4.0)))


def test_bad_input():
    post = chain_posterior(_hand_layer())
    traces = {"fc": torch.tensor([1.0, 1.0])}
    with pytest.raises(ValueError, match="row_traces must hold exactly the layers"):
        hawq.row_sensitivities(post, {"other": torch.ones(2)})
    with pytest.raises(ValueError, match=r"row_traces\['fc'\] must be a float of shape \(2,\)"):
        hawq.row_sensitivities(post, {"fc": torch.ones(3)})
    with pytest.raises(ValueError, match=r"row_traces\['fc'\] must be a float"):
        hawq.row_sensitivities(post, {"fc": torch.ones(2, dtype=torch.int64)})
    with pytest.raises(ValueError, match=r"row_traces\['fc'\] must be finite"):
        hawq.row_sensitivities(post, {"fc": torch.tensor([1.0, math.nan])})
    with pytest.raises(ValueError, match=r"layer_traces\['fc'\] must be finite"):
        hawq.layer_sensitivities(post, {"fc": math.inf})
    with pytest.raises(ValueError, match=r"layer_traces\['fc'\] must be a float of shape \(\)"):
        hawq.layer_sensitivities(post, {"fc": [1.0, 2.0]})
    with pytest.raises(ValueError, match="average bits must lie in 0..8"):
        hawq.allocate_rows(post, 9.0, traces)
    with pytest.raises(ValueError, match="average bits must lie in 0..8"):
        hawq.allocate_layers(post, math.nan, {"fc": 1.0})
    with pytest.raises(TypeError, match="average bits must be a number"):
        hawq.allocate_rows(post, "2", traces)
    with pytest.raises(ValueError, match="count must be one of"):
        hawq.allocate_layers(post, 2.0, {"fc": 1.0}, count="bytes")
    with pytest.raises(ValueError, match=r"widths\['fc'\] must be one of"):
        hawq.layer_widths(post, {"fc": 1})
    with pytest.raises(ValueError, match="widths must hold exactly the layers"):
        hawq.layer_widths(post, {})
    with pytest.raises(ValueError, match="a must be a 1-D torch.Tensor of length >= 2"):
        hawq.spearman(torch.ones(1), torch.ones(1))
    with pytest.raises(ValueError, match="b must hold finite real numbers"):
        hawq.spearman(torch.ones(2), torch.tensor([1.0, math.nan]))
    with pytest.raises(ValueError, match="equal lengths"):
        hawq.spearman(torch.arange(3.0), torch.arange(4.0))


def test_allocate_checks_the_signal_and_the_start_it_is_given():
    post = chain_posterior(_hand_layer())
    good = torch.zeros(2, 9, dtype=torch.float64)
    with pytest.raises(ValueError, match="losses must hold exactly the layers"):
        bits.allocate(post, 2.0, losses={"x": good})
    with pytest.raises(ValueError, match=r"losses\['fc'\] must be a floating-point torch.Tensor"):
        bits.allocate(post, 2.0, losses={"fc": good[:, :8]})
    bad = good.clone()
    bad[0, 3] = math.nan
    with pytest.raises(ValueError, match=r"losses\['fc'\] must be finite at the widths"):
        bits.allocate(post, 2.0, losses={"fc": bad})
    bad[0, 3], bad[0, 1] = 0.0, math.inf  # width 1 is not a Gaussian layer's: inf is fine there
    bits.allocate(post, 2.0, losses={"fc": bad})
    with pytest.raises(ValueError, match="start must hold exactly the layers"):
        bits.allocate(post, 2.0, start={})
    with pytest.raises(ValueError, match=r"start\['fc'\] must be an int64 torch.Tensor"):
        bits.allocate(post, 2.0, start={"fc": torch.tensor([2.0, 2.0])})
    with pytest.raises(ValueError, match=r"start\['fc'\]: row widths must be in"):
        bits.allocate(post, 2.0, start={"fc": torch.tensor([1, 2])})


def test_allocate_with_its_own_signal_given_is_unchanged():
    torch.manual_seed(6)
    a = gaussian_layer(torch.randn(6, 10) * 0.5, torch.rand(6, 10) * 0.1 + 0.005, "a")
    b = gaussian_layer(torch.randn(4, 6) * 0.5, torch.rand(4, 6) * 0.1 + 0.005, "b")
    post = chain_posterior(a, b)
    own = {n: row_losses(lp) for n, lp in post.layers.items()}
    for budget in (0.5, 2.0, 4.0):
        plain, given = bits.allocate(post, budget), bits.allocate(post, budget, losses=own)
        assert all(torch.equal(plain[n], given[n]) for n in post.layers)
