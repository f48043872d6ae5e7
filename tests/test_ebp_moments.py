"""The math of one EBP layer (bayesq.ebp_moments): the weight moments against their definition,
the layer caches against those moments, the forward moments against the module docstring's sums,
the backward signals and the magnitude update against autograd derivatives of ln P."""

import math

import pytest
import torch

from bayesq.ebp_moments import (
    Workspace,
    hidden_signal,
    layer_cache,
    magnitude_update,
    output_signal,
    preactivation_moments,
    ternary_moments,
)

F64 = torch.float64


def _enumerated_ternary(h, a):
    """(mean, variance) of q(W = s) ~ exp(h s + a s^2) by summing over s in {-1, 0, +1}."""
    logits = torch.stack([a - h, torch.zeros_like(h), a + h], -1)
    p = torch.softmax(logits, -1)
    levels = torch.tensor([-1.0, 0.0, 1.0], dtype=h.dtype)
    mean = (p * levels).sum(-1)
    return mean, (p * levels**2).sum(-1) - mean.square()


def _weight_moments(family, h, a, real_var):
    """(Wbar, Var W) of every weight from the definition of its family."""
    if family == "binary":
        return torch.tanh(h), 1 - torch.tanh(h).square()
    if family == "ternary":
        return _enumerated_ternary(h, a)
    return h, torch.full_like(h, real_var)


def test_ternary_moments_are_the_enumerated_ones_and_stay_finite_at_extremes():
    g = torch.Generator().manual_seed(0)
    h = 3 * torch.randn(40, 30, generator=g, dtype=F64)
    a = 3 * torch.randn(40, 30, generator=g, dtype=F64)
    mean, var = ternary_moments(h, a)
    expected_mean, expected_var = _enumerated_ternary(h, a)
    torch.testing.assert_close(mean, expected_mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(var, expected_var, rtol=1e-9, atol=1e-14)
    # exponents of several hundred: exp would overflow without the shift by the maximum
    h = torch.tensor([500.0, -500.0, 0.0, 0.0, 1e-3], dtype=torch.float32)
    a = torch.tensor([200.0, 200.0, 500.0, -500.0, 0.0], dtype=torch.float32)
    mean, var = ternary_moments(h, a)
    assert bool(torch.isfinite(mean).all()) and bool((var >= 0).all())
    assert mean.tolist()[:4] == [1.0, -1.0, 0.0, 0.0]
    # certain weights: the other levels count with relative probability e^-60 at least, and the
    # variance (no cancellation of E W^2 - Wbar^2) is that small, not a rounding residue
    assert all(0 < v < 1e-25 for v in var[[0, 1, 3]].tolist())
    assert var[2] == 1.0  # -1 and +1 equally likely, 0 not at all


@pytest.mark.parametrize("family", ["binary", "ternary", "real"])
@pytest.mark.parametrize("layer", [0, 1])
def test_layer_cache_holds_the_weight_moments(family, layer):
    g = torch.Generator().manual_seed(layer)
    h = 2 * torch.randn(7, 5, generator=g, dtype=F64)
    a = torch.randn(7, 5, generator=g, dtype=F64) if family == "ternary" else None
    mean, var = _weight_moments(family, h, a, 0.3)
    cache = layer_cache(family, layer, h, a, 0.3, Workspace())
    torch.testing.assert_close(cache.mean, mean, rtol=1e-12, atol=1e-14)
    if layer == 0:
        assert cache.mean_sq is None and cache.var_rows is None
        if family == "real":
            assert cache.var == 0.3
        else:
            torch.testing.assert_close(cache.var, var, rtol=1e-9, atol=1e-14)
    else:
        assert cache.var is None
        torch.testing.assert_close(cache.mean_sq, mean.square(), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(cache.var_rows, var.sum(1), rtol=1e-9, atol=1e-12)


def test_workspace_reuses_a_buffer_while_shape_and_dtype_hold():
    work = Workspace()
    like = torch.zeros(3, 4)
    first = work.get(0, "mean", like)
    assert work.get(0, "mean", torch.ones(3, 4)) is first
    assert work.get(1, "mean", like) is not first and work.get(0, "var", like) is not first
    assert work.get(0, "mean", like.double()).dtype == F64
    assert work.get(0, "mean", torch.zeros(2, 4)).shape == (2, 4)
    assert bool((work.get(0, "ones", like, fill=1.0) == 1).all())


@pytest.mark.parametrize("family", ["binary", "ternary", "real"])
def test_preactivation_moments_are_the_sums_of_the_module_docstring(family):
    """mu = (vbar Wbar^T + b) / sqrt(K + 1), sigma2 = (sum_j [Var W E v^2 + Wbar^2 Var v] +
    noise_var) / (K + 1), with x deterministic (Var v = 0) and sign units (E v^2 = 1) below."""
    g = torch.Generator().manual_seed(1)
    h = torch.randn(6, 9, generator=g, dtype=F64)
    a = torch.randn(6, 9, generator=g, dtype=F64) if family == "ternary" else None
    bias = torch.randn(6, generator=g, dtype=F64)
    x = torch.randn(4, 9, generator=g, dtype=F64)
    vbar = torch.rand(4, 9, generator=g, dtype=F64) * 2 - 1
    var_v = 1 - vbar.square()
    mean, var = _weight_moments(family, h, a, 0.5)
    for layer, v, v_var, second in ((0, x, None, x.square()), (1, vbar, var_v, torch.ones_like(x))):
        cache = layer_cache(family, layer, h, a, 0.5, Workspace())
        mu, s2 = preactivation_moments(cache, bias, v, v_var, noise_var=0.7)
        spread = second @ var.T + (0 if v_var is None else v_var @ mean.square().T)
        torch.testing.assert_close(mu, (v @ mean.T + bias) / math.sqrt(10))
        torch.testing.assert_close(s2, (spread + 0.7) / 10)


def _signals_and_derivatives(output_layer):
    """g from the module and (dl/dmu, dl/dsigma2) of l = ln P by autograd, for one layer.

    Output: l = ln Phi(y mu / sigma). Hidden: l is linear in the unit's mean vbar =
    erf(mu / sqrt(2 sigma2)) with slope delta / 2 (delta is twice d ln P / d vbar)."""
    g = torch.Generator().manual_seed(2 + output_layer)
    mu = torch.randn(5, 3, generator=g, dtype=F64).requires_grad_()
    s2 = (torch.rand(5, 3, generator=g, dtype=F64) + 0.2).requires_grad_()
    y = torch.where(torch.rand(5, 3, generator=g) < 0.5, -1.0, 1.0).double()
    delta = torch.randn(5, 3, generator=g, dtype=F64)
    root = math.sqrt(8 + 1)
    if output_layer:
        logp = torch.special.log_ndtr(y * mu / s2.sqrt())
    else:
        logp = 0.5 * delta * torch.erf(mu / (2 * s2).sqrt())
    dmu, ds2 = torch.autograd.grad(logp.sum(), [mu, s2])
    mu, s2 = mu.detach(), s2.detach()
    sigma = s2.sqrt()
    if output_layer:
        signal = output_signal(y, mu / sigma, sigma, root)
    else:
        signal = hidden_signal(delta, mu / sigma, sigma, root)
    return signal, mu / sigma, sigma, root, dmu, ds2


@pytest.mark.parametrize("output_layer", [True, False])
def test_signals_are_twice_the_mean_derivative_over_sqrt_k_plus_1(output_layer):
    """E = 2 / sqrt(K + 1) d ln P / d mu: the h rule h += 1/2 E^T vbar is d ln P / d Wbar."""
    signal, *_, root, dmu, _ = _signals_and_derivatives(output_layer)
    torch.testing.assert_close(signal, 2 / root * dmu, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("output_layer", [True, False])
@pytest.mark.parametrize("first", [True, False])
def test_magnitude_update_is_the_heat_equation_coefficient(output_layer, first):
    """a += sum_batch [E v^2 dl/dsigma2 - 1/2 vbar^2 (dl/dmu)^2] / (K + 1) (the docstring's da),
    with E v^2 = x^2 for the deterministic first layer and 1 for sign units."""
    signal, z, sigma, root, dmu, ds2 = _signals_and_derivatives(output_layer)
    vbar = torch.randn(5, 8, dtype=F64) if first else torch.rand(5, 8, dtype=F64) * 2 - 1
    second = vbar.square() if first else torch.ones_like(vbar)
    start = torch.randn(3, 8, dtype=F64)
    a = start.clone()
    magnitude_update(a, signal, z, sigma, root, vbar, first)
    expected = (ds2.T @ second - 0.5 * dmu.square().T @ vbar.square()) / root**2
    torch.testing.assert_close(a - start, expected, rtol=1e-10, atol=1e-14)


def test_far_tail_signals_are_finite_and_never_subnormal():
    """A confidently right output has a density e^-800 (0) and a wrong one a Mills ratio of
    |w|: both finite; nothing below 1e-30 reaches the GEMMs (subnormals are a slow path)."""
    z = torch.tensor([[40.0, -40.0, 13.0, -13.0]])
    sigma = torch.full_like(z, 0.5)
    y = torch.ones_like(z)
    out = output_signal(y, z, sigma, 2.0)
    hidden = hidden_signal(torch.ones_like(z), z, sigma, 2.0)
    for g in (out, hidden):
        assert bool(torch.isfinite(g).all())
        assert bool(((g == 0) | (g.abs() >= 1e-30)).all())
    assert out[0, 0] == 0 and hidden[0, 0] == 0 and hidden[0, 1] == 0
    torch.testing.assert_close(out[0, 1], torch.tensor(40.0 / 0.5), rtol=1e-3, atol=0)
