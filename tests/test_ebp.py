"""Expectation backpropagation: forward moments against Monte Carlo, the update against a literal
loop implementation of the paper's equations, determinism, exported posterior (and the bit
budgets of bayesq.bits read from it), input checks."""

import importlib
import json
import math
from pathlib import Path

import pytest
import torch

from bayesq import bit_rules, bits, plots
from bayesq.ebp import FAMILIES, EBPNet, one_vs_all
from tests.common import toy_classification

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    """EBP on these sizes is a string of tiny GEMMs; on a loaded machine a second intra-op
    thread waiting for a time slice makes each of them cost milliseconds instead of microseconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomized(sizes, family, seed=1, **kw):
    """A float64 net whose posterior is far from its initial state: varied means, some certain."""
    net = EBPNet(sizes, family, seed=seed, dtype=torch.float64, **kw)
    g = torch.Generator().manual_seed(seed)
    for layer in range(len(net.h)):
        net.h[layer] = torch.randn(net.h[layer].shape, generator=g, dtype=torch.float64)
        net.bias[layer] = 2.0 * torch.randn(net.bias[layer].shape, generator=g, dtype=torch.float64)
        if family == "real":
            net.h[layer] *= 0.3
        if family == "ternary":
            net.a[layer] = torch.rand(net.h[layer].shape, generator=g, dtype=torch.float64) * 3 - 2
    net._refresh()
    return net


def _sample_weights(net, layer, draws, g):
    """Weights of one layer drawn from the mean-field posterior: (draws, out, in)."""
    shape = (draws, *net.h[layer].shape)
    if net.family == "real":
        noise = torch.randn(shape, generator=g, dtype=torch.float64)
        return net.h[layer] + math.sqrt(net.real_var) * noise
    probs = net.level_probabilities()[f"fc{layer + 1}"]
    cdf = probs["probs"].double().cumsum(-1)
    u = torch.rand(shape, generator=g, dtype=torch.float64)
    index = (u[..., None] > cdf[..., :-1]).sum(-1)  # inverse CDF over the levels
    return probs["levels"].double()[index]


def _monte_carlo_preactivations(net, x, draws, chunk=1000, seed=0):
    """Per layer, the normalized pre-activations (W v + b + noise) / sqrt(K+1) of the sign net
    with every weight and noise term drawn afresh per draw: list of (draws, B, out)."""
    g = torch.Generator().manual_seed(seed)
    out = [[] for _ in net.h]
    for _ in range(draws // chunk):
        v = x.double().expand(chunk, *x.shape)
        for layer in range(len(net.h)):
            w = _sample_weights(net, layer, chunk, g)
            noise = torch.randn(chunk, len(x), w.shape[1], generator=g, dtype=torch.float64)
            u = v @ w.transpose(1, 2) + net.bias[layer] + math.sqrt(net.noise_var) * noise
            u = u / math.sqrt(net.sizes[layer] + 1)
            out[layer].append(u)
            v = torch.where(u >= 0, 1.0, -1.0).double()
    return [torch.cat(u) for u in out]


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_moments_match_monte_carlo(family):
    net = _randomized([120, 40, 5], family)
    x = torch.rand(3, 120, dtype=torch.float64)
    draws = 20_000
    sampled = _monte_carlo_preactivations(net, x, draws)
    moments = net.moments(x)
    for layer, (u, (mu, s2)) in enumerate(zip(sampled, moments, strict=True)):
        se = u.std(0) / math.sqrt(draws)
        # layer 1 is exact (deterministic input); deeper layers take P(v = +1) = Phi(mu / sigma)
        # from the CLT for the layer below, which on 120 inputs is off by about 1e-2
        slack = 0.0 if layer == 0 else 0.03
        assert ((u.mean(0) - mu).abs() <= 5 * se + slack).all(), (layer, u.mean(0) - mu)
        torch.testing.assert_close(u.var(0), s2, rtol=0.05 + slack, atol=1e-3)
    # and the hidden means the next layer reads: vbar = 2 Phi(mu / sigma) - 1
    vbar = torch.erf(moments[0][0] / (2 * moments[0][1]).sqrt())
    sampled_vbar = torch.where(sampled[0] >= 0, 1.0, -1.0).mean(0)
    assert (sampled_vbar - vbar).abs().max() < 0.03


# ---------------------------------------------------------------------------------------------
# The reference: the paper's equations written out one weight and one example at a time.


def _phi(z):  # standard normal CDF
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _gauss_at_zero(mu, s2):  # N(0; mu, s2)
    return math.exp(-0.5 * mu * mu / s2) / math.sqrt(2.0 * math.pi * s2)


def _weight_stats(net, layer, k, j):
    """(mean, E[W^2]) of one weight, from its definition."""
    h = float(net.h[layer][k, j])
    if net.family == "binary":
        return math.tanh(h), 1.0
    if net.family == "real":
        return h, h * h + net.real_var
    a = float(net.a[layer][k, j])
    weight = {-1: math.exp(a - h), 0: 1.0, 1: math.exp(a + h)}
    total = sum(weight.values())
    return (weight[1] - weight[-1]) / total, (weight[1] + weight[-1]) / total


def _reference_forward(net, x, ebar, ew2):
    """Per layer, per unit (mu, s2) and the unit means; loops only."""
    vbar, v2, deterministic = list(x), [xi * xi for xi in x], True
    layers = []
    for layer in range(len(net.h)):
        fan_in, fan_out = net.sizes[layer], net.sizes[layer + 1]
        mus, s2s = [], []
        for k in range(fan_out):
            mu = sum(ebar[layer][k][j] * vbar[j] for j in range(fan_in)) + float(net.bias[layer][k])
            if deterministic:  # sum_j Var(W) x^2
                s2 = sum((ew2[layer][k][j] - ebar[layer][k][j] ** 2) * v2[j] for j in range(fan_in))
            else:  # sum_j (E W^2 E v^2 - Wbar^2 vbar^2), E v^2 = 1
                s2 = sum(
                    ew2[layer][k][j] - ebar[layer][k][j] ** 2 * vbar[j] ** 2 for j in range(fan_in)
                )
            mus.append(mu / math.sqrt(fan_in + 1))
            s2s.append((s2 + net.noise_var) / (fan_in + 1))
        layers.append((list(vbar), list(v2), mus, s2s))
        vbar = [2.0 * _phi(m / math.sqrt(s)) - 1.0 for m, s in zip(mus, s2s, strict=True)]
        v2, deterministic = [1.0] * fan_out, False
    return layers


def _reference_update(net, xs, ys):
    """New (h, b, a) after one mini-batch: Algorithm 1 of Soudry et al. (2014) one example and one
    weight at a time, the B updates summed with the same posterior. For the ternary magnitude
    update, d ln P / d sigma2 and d ln P / d mu are central finite differences."""
    num_layers = len(net.h)
    ebar = [[[0.0] * net.sizes[i] for _ in range(net.sizes[i + 1])] for i in range(num_layers)]
    ew2 = [[[0.0] * net.sizes[i] for _ in range(net.sizes[i + 1])] for i in range(num_layers)]
    for i in range(num_layers):
        for k in range(net.sizes[i + 1]):
            for j in range(net.sizes[i]):
                ebar[i][k][j], ew2[i][k][j] = _weight_stats(net, i, k, j)
    dh = [torch.zeros_like(h) for h in net.h]
    db = [torch.zeros_like(b) for b in net.bias]
    da = [torch.zeros_like(h) for h in net.h]
    step = net.real_var if net.family == "real" else 1.0
    for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
        layers = _reference_forward(net, x, ebar, ew2)
        delta = None
        for i in reversed(range(num_layers)):
            vbar, v2, mus, s2s = layers[i]
            fan_in, fan_out = net.sizes[i], net.sizes[i + 1]
            root = math.sqrt(fan_in + 1)
            e = [0.0] * fan_out
            dlogp_dmu, dlogp_ds2 = [0.0] * fan_out, [0.0] * fan_out
            for k in range(fan_out):
                mu, s2 = mus[k], s2s[k]
                eps, eps_mu = 1e-6 * s2, 1e-6 * math.sqrt(s2)
                if i == num_layers - 1:
                    g = 2.0 * _gauss_at_zero(mu, s2) / _phi(y[k] * mu / math.sqrt(s2)) / root
                    e[k] = y[k] * g
                    f = lambda m, s, yk=y[k]: math.log(_phi(yk * m / math.sqrt(s)))  # noqa: E731
                    factor = 1.0
                else:
                    g = 2.0 * _gauss_at_zero(mu, s2) / root
                    e[k] = delta[k] * g
                    f = lambda m, s: 2.0 * _phi(m / math.sqrt(s)) - 1.0  # noqa: E731
                    # delta is twice d ln P / d vbar (Algorithm 1's factor 2 convention)
                    factor = 0.5 * delta[k]
                dlogp_ds2[k] = factor * (f(mu, s2 + eps) - f(mu, s2 - eps)) / (2 * eps)
                dlogp_dmu[k] = factor * (f(mu + eps_mu, s2) - f(mu - eps_mu, s2)) / (2 * eps_mu)
            if i > 0:
                delta = [sum(ebar[i][k][j] * e[k] for k in range(fan_out)) for j in range(fan_in)]
            for k in range(fan_out):
                db[i][k] += 0.5 * e[k]
                for j in range(fan_in):
                    dh[i][k, j] += 0.5 * step * e[k] * vbar[j]
                    # the s^2 coefficient of ln P(y | W = s) to order 1 / (K + 1): the variance
                    # term and the mean's second-order term (module docstring)
                    da[i][k, j] += (
                        dlogp_ds2[k] * v2[j] - 0.5 * vbar[j] ** 2 * dlogp_dmu[k] ** 2
                    ) / (fan_in + 1)
    h = [h + d for h, d in zip(net.h, dh, strict=True)]
    b = [b + d for b, d in zip(net.bias, db, strict=True)]
    a = None if net.a is None else [a + d for a, d in zip(net.a, da, strict=True)]
    return h, b, a


@pytest.mark.parametrize(
    "family, kw",
    [
        ("binary", {}),
        ("ternary", {"magnitude_update": False}),
        ("ternary", {"magnitude_update": True}),
        ("real", {}),
    ],
)
def test_update_matches_reference_loops(family, kw):
    net = _randomized([5, 4, 3, 3], family, seed=2, **kw)
    g = torch.Generator().manual_seed(3)
    for _ in range(2):  # two steps: the second must read the posterior the first one left
        x = torch.randn(4, 5, generator=g, dtype=torch.float64)
        labels = torch.randint(0, 3, (4,), generator=g)
        y = one_vs_all(labels, 3, torch.float64)
        h, b, a = _reference_update(net, x, y)
        a_before = None if net.a is None else [t.clone() for t in net.a]
        net.update(x, y)
        for layer in range(3):
            torch.testing.assert_close(net.h[layer], h[layer], rtol=1e-9, atol=1e-10)
            torch.testing.assert_close(net.bias[layer], b[layer], rtol=1e-9, atol=1e-10)
            if net.magnitude_update:
                torch.testing.assert_close(net.a[layer], a[layer], rtol=1e-5, atol=1e-8)
            elif a is not None:  # without the magnitude update, a keeps its value
                assert torch.equal(net.a[layer], a_before[layer])


def _moment_forward(net, means, variances, vbar, var_v, first=0):
    """Forward moments from the weights' (mean, variance) matrices, layers first..end: per layer
    (vbar_in, Var v_in, mu, s2), each (B, width). Deterministic inputs have Var v = 0."""
    layers = []
    for layer in range(first, len(net.h)):
        fan_in = net.sizes[layer] + 1
        mu = (vbar @ means[layer].T + net.bias[layer]) / math.sqrt(fan_in)
        raw = (vbar.square() + var_v) @ variances[layer].T + var_v @ means[layer].square().T
        s2 = (raw + net.noise_var) / fan_in
        layers.append((vbar, var_v, mu, s2))
        vbar = torch.erf(mu / (2.0 * s2).sqrt())
        var_v = 1.0 - vbar.square()
    return layers


def _exact_adf_coefficients(net, x, y):
    """The exact online-Bayes (ADF) update of a ternary net's natural parameters, by enumeration.

    For every weight W_ij and s in {-1, 0, +1}: L(s) = ln P(y | x, W_ij = s), the other weights
    of the layer left at their posterior (unit i's pre-activation Gaussian with the weight's mean
    and variance contribution replaced by s v_j). In a hidden layer unit i's sign is summed over
    exactly, P = P(y | v_i = +1) Phi(z) + P(y | v_i = -1) Phi(-z), the two from forward moments.
    q(W = s) exp(L(s)) is again of the form exp(h s + a s^2), so the exact update is
    dh = (L(1) - L(-1)) / 2, da = (L(1) + L(-1)) / 2 - L(0), summed over the mini-batch like
    EBPNet.update. Returns per layer (dh, da), each (out, in)."""
    means, variances = zip(*(net.weight_moments(i) for i in range(len(net.h))), strict=True)
    forward = _moment_forward(net, means, variances, x, torch.zeros_like(x))
    result = []
    for layer, (vbar, var_v, mu, s2) in enumerate(forward):
        root = math.sqrt(net.sizes[layer] + 1)
        mean, var = means[layer], variances[layer]
        rest_mu = mu[:, :, None] - mean * vbar[:, None, :] / root  # (B, out, in)
        rest_s2 = (
            s2[:, :, None]
            - (var * (vbar.square() + var_v)[:, None, :] + mean.square() * var_v[:, None, :])
            / root**2
        )
        if layer < len(net.h) - 1:  # ln P(y | v_i = +-1), (2, B, out)
            clamped = []
            for sign in (1.0, -1.0):
                rows = []
                for unit in range(mean.shape[0]):
                    vbar_next, var_next = (
                        forward[layer + 1][0].clone(),
                        forward[layer + 1][1].clone(),
                    )
                    vbar_next[:, unit], var_next[:, unit] = sign, 0.0
                    *_, mu_out, s2_out = _moment_forward(
                        net, means, variances, vbar_next, var_next, layer + 1
                    )[-1]
                    rows.append(torch.special.log_ndtr(y * mu_out / s2_out.sqrt()).sum(1))
                clamped.append(torch.stack(rows, 1))
        logp = []
        for s in (-1.0, 0.0, 1.0):
            z = (rest_mu + s * vbar[:, None, :] / root) / (
                rest_s2 + s * s * var_v[:, None, :] / root**2
            ).sqrt()
            if layer == len(net.h) - 1:
                logp.append(torch.special.log_ndtr(y[:, :, None] * z).sum(0))
            else:
                logp.append(
                    torch.logaddexp(
                        clamped[0][:, :, None] + torch.special.log_ndtr(z),
                        clamped[1][:, :, None] + torch.special.log_ndtr(-z),
                    ).sum(0)
                )
        result.append(((logp[2] - logp[0]) / 2, (logp[2] + logp[0]) / 2 - logp[1]))
    return result


def _agreement(update, exact):
    """(correlation, share of equal signs, relative error) of two (out, in) tensors."""
    u, e = update.flatten(), exact.flatten()
    corr = float(torch.corrcoef(torch.stack([u, e]))[0, 1])
    return corr, float((u.sign() == e.sign()).double().mean()), float((u - e).norm() / e.norm())


@pytest.mark.parametrize(
    "sizes, steps", [([30, 3], 0), ([60, 10], 20), ([100, 30, 5], 0), ([120, 40, 30, 4], 20)]
)
def test_ternary_update_is_the_exact_adf_coefficient(sizes, steps):
    """Both natural parameters move as the exact ADF update to the order EBP keeps.

    h's update is the s coefficient of ln P(y | W = s) to order 1 / sqrt(K + 1), a's the s^2
    coefficient to order 1 / (K + 1): each is off by a relative order 1 / sqrt(K + 1) (here
    0.6% to 19%, largest in the first layer, whose inputs x_j ~ N(0, 1) move mu the most).
    Without the mean's second-order term in a (-vbar^2 g^2 / 8), a's update had correlation
    -0.30 and -0.34 with the exact one in the first two output layers, and 0.74 and 0.86 (with
    31% equal signs) in the 100-30-5 net."""
    g = torch.Generator().manual_seed(sum(sizes) + steps)
    teacher = torch.randn(sizes[-1], sizes[0], generator=g, dtype=torch.float64)

    def batch():
        x = torch.randn(10, sizes[0], generator=g, dtype=torch.float64)
        return x, one_vs_all((x @ teacher.T).argmax(1), sizes[-1], torch.float64)

    net = EBPNet(sizes, "ternary", seed=steps, dtype=torch.float64)
    for _ in range(steps):  # a posterior with some weights decided, as in training
        net.update(*batch())
    x, y = batch()
    exact = _exact_adf_coefficients(net, x, y)
    before = [(h.clone(), a.clone()) for h, a in zip(net.h, net.a, strict=True)]
    net.update(x, y)
    for layer, ((h, a), (dh, da)) in enumerate(zip(before, exact, strict=True)):
        corr, same_sign, error = _agreement(net.h[layer] - h, dh)
        assert corr > 0.975 and same_sign > 0.93 and error < 0.25, (
            "h",
            layer,
            corr,
            same_sign,
            error,
        )
        corr, same_sign, error = _agreement(net.a[layer] - a, da)
        assert corr > 0.975 and same_sign > 0.92 and error < 0.2, (
            "a",
            layer,
            corr,
            same_sign,
            error,
        )


def test_update_is_the_gradient_with_variances_held():
    """h += d ln P(y | x, q) / d Wbar with every sigma held fixed (the paper's approximation)."""
    net = _randomized([6, 5, 4], "binary", seed=4)
    x = torch.randn(3, 6, dtype=torch.float64)
    y = one_vs_all(torch.tensor([0, 3, 1]), 4, torch.float64)
    means = [torch.tanh(h).requires_grad_() for h in net.h]
    sigmas = [s2.sqrt() for _, s2 in net.moments(x)]
    v = x
    for layer, (w, sigma) in enumerate(zip(means, sigmas, strict=True)):
        mu = (v @ w.T + net.bias[layer]) / math.sqrt(net.sizes[layer] + 1)
        v = torch.erf(mu / (math.sqrt(2) * sigma))
    log_p = torch.special.log_ndtr(y * mu / sigma).sum()
    grads = torch.autograd.grad(log_p, means)
    before = [h.clone() for h in net.h]
    net.update(x, y)
    for layer in range(2):
        torch.testing.assert_close(net.h[layer] - before[layer], grads[layer])


def test_far_tail_output_update_stays_finite_and_correct():
    """A confidently wrong output (Phi(y mu / sigma) underflows to 0 in float32): the update must be
    finite and equal to the float64 value, which tends to -2 y mu / s2 / sqrt(K + 1) per unit."""
    nets = [EBPNet([3, 2], seed=0, dtype=dt) for dt in (torch.float32, torch.float64)]
    nets[1].h[0] = nets[0].h[0].double()  # the same posterior in both precisions
    for net in nets:
        net.bias[0] = torch.tensor([-40.0, 40.0], dtype=net.dtype)
        net._refresh()
        net.update(torch.ones(1, 3), one_vs_all(torch.tensor([0]), 2))
    assert all(torch.isfinite(b).all() for b in nets[0].bias)
    torch.testing.assert_close(nets[0].bias[0].double(), nets[1].bias[0], rtol=1e-3, atol=0)
    assert nets[1].bias[0][0] > -40 and nets[1].bias[0][1] < 40  # both pushed the right way


def test_training_is_deterministic_under_a_seed():
    x, y = toy_classification(n=200, features=8, classes=3)
    runs = []
    for seed in (7, 7, 8):
        net = EBPNet([8, 16, 3], "ternary", seed=seed, magnitude_update=True)
        net.fit(x, y, epochs=3, batch_size=10)
        runs.append(net)
    for p, q in zip(
        runs[0].h + runs[0].a + runs[0].bias, runs[1].h + runs[1].a + runs[1].bias, strict=True
    ):
        assert torch.equal(p, q)
    assert not torch.equal(runs[0].h[0], runs[2].h[0])
    assert torch.equal(runs[0].output_means(x), runs[1].output_means(x))


@pytest.mark.parametrize("family", FAMILIES)
def test_learns_a_separable_problem(family):
    x, y = toy_classification(n=400, features=10, classes=4)
    accuracies = []
    net = EBPNet([10, 32, 4], family, seed=0)
    net.fit(
        x[:300],
        y[:300],
        epochs=5,
        callback=lambda e, n: accuracies.append(n.accuracy(x[300:], y[300:])),
    )
    assert len(accuracies) == 5
    assert net.accuracy(x[300:], y[300:]) > 0.9
    assert net.accuracy(x[300:], y[300:], mode="deterministic") > 0.85


@pytest.mark.parametrize("family", ["binary", "ternary"])
def test_level_probabilities_and_discrete_weights(family):
    net = _randomized([7, 6, 3], family, seed=5)
    net.h[0][0, 0] = 0.0  # an undecided binary weight codes as +1
    net._refresh()
    posterior = net.level_probabilities()
    codes = net.discrete_weights()
    assert list(posterior) == ["fc1", "fc2"]
    for layer, (name, spec) in enumerate(posterior.items()):
        levels, probs = spec["levels"], spec["probs"]
        assert probs.shape == (*net.h[layer].shape, len(levels)) and probs.dtype == torch.float32
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
        mean, var = net.weight_moments(layer)
        torch.testing.assert_close((probs * levels).sum(-1), mean.float())
        torch.testing.assert_close(
            (probs * levels**2).sum(-1) - mean.float() ** 2, var.float(), atol=1e-6, rtol=1e-5
        )
        torch.testing.assert_close(spec["bias"], net.bias[layer].float())
        assert codes[layer].dtype == torch.int8 and codes[layer].shape == net.h[layer].shape
        # the code is the most probable level (ties aside, which the random posterior avoids)
        expected = levels[probs.argmax(-1)].to(torch.int8)
        if layer == 0 and family == "binary":
            expected[0, 0] = 1
        elif (
            layer == 0
        ):  # ternary, h = 0: the nonzero levels tie; +1 unless 0 is at least as likely
            expected[0, 0] = 1 if net.a[0][0, 0] > 0 else 0
        assert torch.equal(codes[layer], expected), name
    if family == "ternary":
        assert (codes[0] == 0).any() and (codes[0] != 0).any()
    # EBP-D is the sign net on these codes
    x = torch.randn(9, 7, dtype=torch.float64)
    hidden = torch.where(x @ codes[0].double().T + net.bias[0] >= 0, 1.0, -1.0).double()
    logits = hidden @ codes[1].double().T + net.bias[1]
    torch.testing.assert_close(net.deterministic_outputs(x), logits)
    assert torch.equal(net.predict(x, "deterministic"), logits.argmax(1))


def test_real_weights_have_no_levels():
    net = EBPNet([4, 3, 2], "real")
    for method in (
        net.level_probabilities,
        net.discrete_weights,
        net.natural_parameters,
        net.posterior,
    ):
        with pytest.raises(ValueError, match="real"):
            method()
    x = torch.randn(5, 4)
    expected = torch.where(x @ net.h[0].T >= 0, 1.0, -1.0) @ net.h[1].T  # biases start at 0
    torch.testing.assert_close(net.deterministic_outputs(x), expected)


def test_one_vs_all():
    y = one_vs_all(torch.tensor([2, 0]), 3)
    assert y.tolist() == [[-1.0, -1.0, 1.0], [1.0, -1.0, -1.0]]
    with pytest.raises(ValueError, match="0..2"):
        one_vs_all(torch.tensor([3]), 3)
    with pytest.raises(ValueError, match="integer"):
        one_vs_all(torch.tensor([0.0]), 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sizes=[4]), "sizes"),
        (dict(sizes=[4, 0, 2]), "sizes"),
        (dict(sizes=[4, 3, 1]), "2 output classes"),
        (dict(sizes=[4, 2], weights="quaternary"), "weights"),
        (dict(sizes=[4, 2], sigma_w=0.0), "sigma_w"),
        (dict(sizes=[4, 2], noise_var=float("nan")), "noise_var"),
        (dict(sizes=[4, 2], noise_var=-1.0), "noise_var"),
        (dict(sizes=[4, 2], noise_var=0.0), "noise_var"),
        (dict(sizes=[4, 2], noise_var=0), "noise_var"),
        (dict(sizes=[4, 2], noise_var=float("inf")), "noise_var"),
        (dict(sizes=[4, 2], noise_var=1e-300), "noise_var"),  # 0 in float32
        (dict(sizes=[4, 2], sigma_w=float("nan")), "sigma_w"),
        (dict(sizes=[4, 2], weights="real", real_var=0.0), "real_var"),
        (dict(sizes=[4, 2], seed=-1), "seed"),
        (dict(sizes=[4, 2], weights="real", real_var=-2.0), "real_var"),
        (dict(sizes=[4, 2], zero_logit=float("inf")), "zero_logit"),
        (dict(sizes=[4, 2], magnitude_update=True), "ternary"),
        (dict(sizes=[4, 2], dtype=torch.float16), "dtype"),
    ],
)
def test_bad_construction_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EBPNet(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sizes=[4, 2], noise_var="1"), "noise_var"),
        (dict(sizes=[4, 2], noise_var=True), "noise_var"),
        (dict(sizes=[4, 2], sigma_w=None), "sigma_w"),
        (dict(sizes=[4, 2], zero_logit=True), "zero_logit"),
        (dict(sizes=[4, 2], seed=1.5), "seed"),
        (dict(sizes=[4, 2], seed="0"), "seed"),
        (dict(sizes=[4, 2], weights="ternary", magnitude_update="yes"), "magnitude_update"),
    ],
)
def test_wrong_constructor_types_raise_type_error(kwargs, match):
    with pytest.raises(TypeError, match=match):
        EBPNet(**kwargs)


def test_certain_weights_keep_the_update_finite_and_exact():
    """With every weight certain, sigma2 is noise_var / (K + 1) alone: noise_var = 0 made the
    update 0 / 0 (h and the biases turned NaN), so it is refused. A small noise_var puts a wrong
    output at w = y mu / sigma ~ -1e7, where the Mills ratio phi(w) / Phi(w) = |w| (1 + 1 / w^2 -
    ...) must still be exact (exp(ln phi - ln Phi) was 78% off at -1e8 and inf at -1e15)."""
    with pytest.raises(ValueError, match="noise_var"):
        EBPNet([3, 2], noise_var=0.0)
    for noise_var in (1e-12, 1e-28):
        net = EBPNet([3, 2], noise_var=noise_var, dtype=torch.float64)
        net.h[0] = torch.tensor([[30.0, -30.0, 30.0], [-30.0, 30.0, -30.0]], dtype=torch.float64)
        net._refresh()  # tanh 30 = 1 in float64: certain weights, sum Var W = 0
        x, y = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64), torch.tensor([1])
        mu, s2 = net.moments(x)[0]
        w = -(mu / s2.sqrt()).abs()  # unit 0 is on (mu > 0) but the label says off, and back
        assert bool((w < -1e5).all())
        expected = (2.0 / math.sqrt(3 + 1)) * one_vs_all(y, 2, torch.float64) * w.abs() / s2.sqrt()
        before = net.bias[0].clone()
        net.update(x, one_vs_all(y, 2, torch.float64))
        assert all(bool(torch.isfinite(t).all()) for t in net.h + net.bias)
        torch.testing.assert_close(net.bias[0] - before, 0.5 * expected[0], rtol=1e-9, atol=0)


def test_diverged_state_is_reported_not_returned():
    net = EBPNet([3, 2], "ternary")
    net.a[0][0, 0] = float("nan")  # as a diverged update would leave it
    with pytest.raises(FloatingPointError, match="a of layer 1"):
        net.fit(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))


def test_bad_input_types_and_values_name_the_argument():
    net = EBPNet([4, 3, 2])
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 0, 1])
    targets = one_vs_all(y, 2)
    for bad_x, error in [
        (x.numpy(), TypeError),  # not a tensor
        (x.tolist(), TypeError),
        (torch.randint(0, 2, (6, 4)), TypeError),  # integer pixels: say so, not "finite"
        (torch.randn(6, 4, 1), ValueError),
        (torch.randn(6), ValueError),
        (torch.full((6, 4), float("nan")), ValueError),
        (torch.full((6, 4), float("-inf")), ValueError),
        (torch.full((6, 4), 1e20), ValueError),  # finite, but x^2 overflows float32
        (torch.full((6, 4), 1e300, dtype=torch.float64), ValueError),  # inf in float32
    ]:
        with pytest.raises(error, match="x"):
            net.fit(bad_x, y)
        with pytest.raises(error, match="x"):
            net.update(bad_x, targets)
        with pytest.raises(error, match="x"):
            net.predict(bad_x)
    with pytest.raises(TypeError, match="labels"):
        net.fit(x, y.tolist())
    with pytest.raises(ValueError, match="labels"):
        net.fit(x, y.double())
    with pytest.raises(ValueError, match="labels"):
        net.fit(x, y[:, None])
    with pytest.raises(TypeError, match="targets"):
        net.update(x, targets.numpy())
    with pytest.raises(ValueError, match="targets"):
        net.update(x, targets[:, :1])
    with pytest.raises(ValueError, match="targets"):
        net.update(x, torch.full((6, 2), float("nan")))
    with pytest.raises(TypeError, match="epochs"):
        net.fit(x, y, epochs=2.0)
    with pytest.raises(TypeError, match="callback"):
        net.fit(x, y, callback="print")
    with pytest.raises(TypeError, match="labels"):
        net.accuracy(x, y.double())
    with pytest.raises(TypeError, match="labels"):
        net.accuracy(x, y.tolist())


def test_bad_inputs_raise():
    net = EBPNet([4, 3, 2])
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        net.moments(torch.randn(6, 5))
    with pytest.raises(ValueError, match="finite"):
        net.predict(torch.full((2, 4), float("nan")))
    with pytest.raises(ValueError, match="targets"):
        net.update(x, torch.zeros(6, 2))
    with pytest.raises(ValueError, match="same number"):
        net.fit(x, y[:4])
    with pytest.raises(ValueError, match="0..1"):
        net.fit(x, y + 1)
    with pytest.raises(ValueError, match="epochs"):
        net.fit(x, y, epochs=0)
    with pytest.raises(TypeError, match="batch_size"):
        net.fit(x, y, batch_size=True)
    with pytest.raises(ValueError, match="mode"):
        net.predict(x, mode="mean")
    with pytest.raises(ValueError, match="labels"):
        net.accuracy(x, y[:3])


@pytest.mark.parametrize("family", ["binary", "ternary"])
def test_ebp_d_runs_on_the_kernels_with_the_reference_predictions(family, tmp_path):
    """EBP-D exported as a discrete artifact: the kernels give the PyTorch integer reference's
    logits exactly, and the predictions of EBP's own deterministic net."""
    from bayesq.artifact import load_artifact, save_artifact
    from bayesq.quantize import quantize_posterior

    x, y = toy_classification(n=300, features=24, classes=4, seed=3)
    x = (x - x.min()) / (x.max() - x.min())  # in [0, 1], as images
    net = EBPNet([24, 40, 30, 4], family, seed=0)
    net.fit(x[:200], y[:200], epochs=3)
    discrete = quantize_posterior(net.posterior(), x[:200], act_bits=8)
    path = save_artifact(discrete, tmp_path / "ebp.safetensors", (24,))
    loaded, _ = load_artifact(path)
    test = x[200:]
    logits = loaded(test)
    assert torch.equal(logits, loaded.reference(test))
    assert torch.equal(logits, discrete(test))
    agree = (logits.argmax(1) == net.predict(test, "deterministic")).float().mean()
    assert agree >= 0.97  # the only difference: the input quantized to 8 bits


# ---------------------------------------------------------------------------------------------
# The posterior handed to bayesq.posterior, and the bit budgets of bayesq.bits read from it.


def _trained(family):
    """A small EBP net trained on separable blobs (the ternary one holds weights settled on 0)."""
    x, y = toy_classification(n=400, features=16, classes=4, seed=0)
    return EBPNet([16, 24, 4], family, seed=0).fit(x, y, epochs=5), x


@pytest.mark.parametrize("family", ["binary", "ternary"])
def test_posterior_is_the_nets_posterior(family):
    net, _ = _trained(family)
    post = net.posterior()
    assert post.ops == [
        {"kind": "layer", "name": "fc1"},
        {"kind": "sign"},
        {"kind": "layer", "name": "fc2"},
    ]
    assert post.input_shape == (16,) and post.num_weights == 16 * 24 + 24 * 4
    codes = net.discrete_weights()
    for layer, fc in enumerate(post.layers.values()):
        assert fc.discrete and fc.kind == "linear"
        mean, var = net.weight_moments(layer)
        torch.testing.assert_close(fc.mean, mean.float())
        torch.testing.assert_close(fc.variance, var.float().clamp(min=1e-12), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(fc.bias, net.bias[layer].float())
        # the most probable level is the EBP-D code (no exact ties after training)
        assert torch.equal(fc.levels[fc.level_probs.argmax(-1)].to(torch.int8), codes[layer])


@pytest.mark.parametrize("family", ["binary", "ternary"])
def test_bit_budgets_read_the_ebp_posterior(family):
    """What bayesq.bits gets right on a discrete posterior already: a weight whose zero level has
    more than half the mass costs 0 bits, and a budget is met and reported."""
    net, _ = _trained(family)
    post = net.posterior()
    zero = {name: fc.zero_mass > 0.5 for name, fc in post.layers.items()}
    zero_share = sum(int(z.sum()) for z in zero.values()) / post.num_weights
    if family == "binary":  # no zero level: nothing is mostly 0
        assert zero_share == 0
    else:  # the magnitude update settles some weights on 0; else this test would check nothing
        assert 0.05 < zero_share < 0.5
        assert all(
            bool((codes[z] == 0).all())
            for codes, z in zip(net.discrete_weights(), zero.values(), strict=True)
        )
    for name, fc in post.layers.items():
        per_weight = bit_rules.weight_bits(fc)
        assert (per_weight[zero[name]] == 0).all()
    widths = bits.allocate(post, 2.0)
    assert bits.average_bits(post, widths) <= 2.0
    report = bits.bit_report(post, widths)
    assert [r["name"] for r in report] == ["fc1", "fc2", "total"]
    assert report[-1]["pruned_share"] >= zero_share
    assert report[-1]["mean_bits"] == pytest.approx(bits.average_bits(post, widths))


@pytest.mark.parametrize("family, code_bits", [("binary", 1), ("ternary", 2)])
def test_discrete_ebp_weights_cost_their_code_width(family, code_bits):
    """A kept EBP weight costs the code of its level, whatever its probabilities (a Gaussian
    reading of the same moments would ask 2..8 bits): one {-1, +1} plane for a binary weight,
    a 2-bit signed code for a ternary one, none where its zero level has more than half the
    mass. A budget of 1 bit per weight holds the binary net whole."""
    post = _trained(family)[0].posterior()
    for fc in post.layers.values():
        kept = fc.zero_mass <= 0.5
        assert torch.equal(bit_rules.weight_bits(fc), torch.where(kept, code_bits, 0))
        assert torch.equal(bit_rules.row_widths(fc), torch.where(kept.any(1), code_bits, 0))
    if family == "binary":
        widths = bits.allocate(post, 1.0, count="codes")  # codes only: positions, steps aside
        assert all(bool((w == 1).all()) for w in widths.values())
        assert bits.average_bits(post, widths, count="codes") == 1.0


@pytest.mark.parametrize("family", ["binary", "ternary"])
def test_quantize_posterior_builds_the_ebp_d_net(family):
    """The discrete net of an EBP posterior is its EBP-D net: the same predictions as
    EBPNet.predict(x, "deterministic") up to the 8-bit input."""
    from bayesq.quantize import quantize_posterior

    net, x = _trained(family)
    post = net.posterior()
    widths = {name: bit_rules.row_widths(fc) for name, fc in post.layers.items()}
    discrete = quantize_posterior(post, x[:200], widths=widths, act_bits=8)
    agree = (discrete(x).argmax(1) == net.predict(x, "deterministic")).float().mean()
    assert agree >= 0.97


# ---------------------------------------------------------------------------------------------
# experiments/ebp.py: files, arguments, reruns.


def _experiment():
    return importlib.import_module("experiments.ebp")


def test_experiment_tiny_keeps_explicit_flags_and_writes_atomically(tmp_path, monkeypatch):
    """--tiny supplies defaults only (it used to replace an explicit --epochs and --seeds), and
    every file the script writes goes through bayesq.files."""
    script = _experiment()
    written = []

    def recording(function):
        def wrapper(path, *args, **kwargs):
            written.append(Path(path).name)
            return function(path, *args, **kwargs)

        return wrapper

    for name in ("atomic_write_json", "atomic_write_text"):
        monkeypatch.setattr(script, name, recording(getattr(script, name)))
    monkeypatch.setattr(plots, "atomic_path", recording(plots.atomic_path))  # the figures
    args = ["--tiny", "--families", "ternary", "--baselines", "--epochs", "1", "--seeds", "3"]
    script.main([*args, "--archs", "8", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert {(r["arch"], r["seed"], r["epochs"]) for r in saved["runs"]} == {("64-8-10", 3, 1)}
    assert sorted(set(written)) == sorted(p.name for p in tmp_path.iterdir())
    assert {"results.json", "table.md", "curves_64-8-10.png"} <= set(written)


def test_experiment_does_not_reuse_runs_of_the_old_magnitude_update(tmp_path):
    """A results.json written before the fix holds ternary runs of the old rule: a rerun trains
    them again and the table keeps the two apart."""
    script = _experiment()
    args = ["--tiny", "--families", "ternary", "--baselines", "--epochs", "1", "--out"]
    script.main([*args, str(tmp_path)])
    path = tmp_path / "results.json"
    saved = json.loads(path.read_text())
    for run in saved["runs"]:
        del run["settings"]["ternary_update"]  # as saved by the old script
    path.write_text(json.dumps(saved))
    report = script.main([*args, str(tmp_path)])
    assert len(json.loads(path.read_text())["runs"]) == 4
    labels = [row["method"] for row in report["table"]]
    assert "EBP-P ternary" in labels
    assert "EBP-P ternary, first-order magnitude update of before issue 12" in labels


@pytest.mark.parametrize(
    "content, match",
    [
        (b'{"runs": [', "not a readable JSON"),
        (b"\xff\xfe", "not a readable JSON"),
        (b"[]", '"runs" list'),
        (b'{"runs": [{"arch": "64-16-10"}]}', "run 0"),
        (b'{"runs": [], "config": 3}', "config"),
    ],
)
def test_experiment_names_a_bad_results_file(tmp_path, content, match):
    (tmp_path / "results.json").write_bytes(content)
    with pytest.raises(ValueError, match=match) as caught:
        _experiment().main(["--tiny", "--plot-only", "--out", str(tmp_path)])
    assert str(tmp_path / "results.json") in str(caught.value)


def test_experiment_command_line_errors_are_one_line(tmp_path):
    """Through run_main: a bad file is `ebp.py: error: <file>: ...` and exit status 2; a bad
    argument is argparse's error (status 2) before any data is loaded or net trained."""
    import subprocess
    import sys

    (tmp_path / "results.json").write_text("{")
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments/ebp.py"), "--plot-only", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("ebp.py: error: ") and "results.json" in result.stderr
    assert "Traceback" not in result.stderr
    script = _experiment()
    for bad in (
        ["--epochs", "0"],
        ["--seeds", "-1"],
        ["--archs", "5a0"],
        ["--threads", "0"],
        ["--lr", "nan"],
        ["--batch-size", "0"],
        ["--zero-logit", "inf"],
    ):
        with pytest.raises(SystemExit) as caught:
            script.main([*bad, "--out", str(tmp_path / "never")])
        assert caught.value.code == 2, bad
    assert not (tmp_path / "never").exists()


def test_experiment_validation_split_holds_out_training_rows_only():
    from bayesq.data import Split

    script = _experiment()
    x, y = toy_classification(n=50, features=3, classes=2)
    data = Split("toy", x[:40], y[:40], x[40:], y[40:], 2)
    val = script.validation_split(data, 10)
    assert len(val.y_train) == 30 and len(val.y_test) == 10
    rows = torch.cat([val.x_train, val.x_test])
    assert torch.equal(rows[torch.argsort(rows[:, 0])], data.x_train[torch.argsort(x[:40, 0])])
    assert not any(bool((data.x_test == row).all(1).any()) for row in rows)  # never the test set
    for size in (0, 40):
        with pytest.raises(ValueError, match="--validation"):
            script.validation_split(data, size)
