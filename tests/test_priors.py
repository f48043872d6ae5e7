"""The multi-spike log-uniform prior and VNQ's KL approximation."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from pyro.distributions import Normal
from torch.distributions import kl_divergence

from bayesq import vnq_kernels
from bayesq.priors import (
    K1,
    MultiSpikeLogUniform,
    NormalLogVariance,
    _kl_multi_spike_reference,
    codebook_offsets,
    kl_log_uniform,
    kl_multi_spike,
    kl_normal_multi_spike,
)
from tests.common import KERNEL_ISAS

# One generic list of distributions under test (Pyro's Fixture idea): (constructor args, shape).
FIXTURES = [
    (dict(scale=torch.tensor(0.2)), ()),
    (dict(scale=torch.tensor([0.1, 0.5])), (2,)),
    (dict(scale=torch.full((3, 2), 0.3), num_levels=5), (3, 2)),
    (dict(scale=torch.tensor(1.0), num_levels=1), ()),
]


def monte_carlo_kl(loc, scale, r, num_levels, samples=400_000, seed=0):
    """KL(N(loc, scale^2) || p) by sampling, with p's additive constant fixed so that, for one
    spike, it is Molchanov's: KL = E_q log q - E_q log p + 0.5 log(2 pi e) + k1 + log(1 / L)."""
    g = torch.Generator().manual_seed(seed)
    w = loc + scale * torch.randn(samples, generator=g, dtype=torch.float64)
    prior = MultiSpikeLogUniform(torch.tensor(r, dtype=torch.float64), num_levels)
    entropy = 0.5 * math.log(2 * math.pi * math.e * scale**2)
    constant = 0.5 * math.log(2 * math.pi * math.e) + K1 - math.log(num_levels)
    return -entropy - prior.log_prob(w).mean().item() + constant


@pytest.mark.parametrize("kwargs, shape", FIXTURES)
def test_shapes_support_expand(kwargs, shape):
    prior = MultiSpikeLogUniform(**kwargs)
    assert prior.batch_shape == torch.Size(shape)
    assert prior.event_shape == torch.Size()
    expanded = prior.expand((4, *shape))
    assert expanded.batch_shape == (4, *shape)
    assert expanded.num_levels == prior.num_levels
    value = torch.randn(4, *shape)
    assert expanded.log_prob(value).shape == (4, *shape)
    assert torch.isfinite(expanded.log_prob(value)).all()
    levels = prior.num_levels
    assert prior.codebook().shape == (*shape, levels)
    with pytest.raises(NotImplementedError, match="improper"):
        prior.sample()


@pytest.mark.parametrize("kwargs, shape", FIXTURES)
def test_log_prob_against_direct_sum(kwargs, shape):
    prior = MultiSpikeLogUniform(**kwargs)
    value = torch.randn(shape, dtype=torch.float64)
    r = kwargs["scale"].double()
    levels = kwargs.get("num_levels", 3)
    direct = sum(
        1.0 / levels / (value - k * r).abs() for k in codebook_offsets(levels, dtype=torch.float64)
    )
    torch.testing.assert_close(prior.log_prob(value).double(), direct.log(), rtol=1e-6, atol=1e-6)


def test_log_prob_finite_on_a_spike():
    prior = MultiSpikeLogUniform(torch.tensor(0.25))
    assert torch.isfinite(prior.log_prob(torch.tensor([0.0, 0.25, -0.25]))).all()


@pytest.mark.parametrize("bad", [0, 2, -3, 4])
def test_even_or_nonpositive_levels_rejected(bad):
    with pytest.raises(ValueError, match="odd"):
        MultiSpikeLogUniform(torch.tensor(0.2), num_levels=bad)


def test_nonpositive_scale_rejected():
    with pytest.raises(ValueError):
        MultiSpikeLogUniform(torch.tensor(-0.2), validate_args=True)


@pytest.mark.parametrize("log_alpha", [-6.0, -3.0, -1.0, 0.0, 1.0, 2.0, 4.0])
def test_single_spike_kl_matches_monte_carlo(log_alpha):
    # Molchanov's approximation is within about 0.01 nats of the exact KL at every alpha.
    loc = 0.7
    scale = math.sqrt(math.exp(log_alpha)) * loc
    mc = monte_carlo_kl(loc, scale, r=1.0, num_levels=1)
    approx = kl_log_uniform(torch.tensor(log_alpha)).item()
    assert approx == pytest.approx(mc, abs=0.02)


@pytest.mark.parametrize("num_levels", [3])  # the codebook VNQ built its weighting for
@pytest.mark.parametrize("offset", [-0.05, 0.0, 0.04])
@pytest.mark.parametrize("log_sigma2_over_r2", [-8.0, -6.0])
def test_multi_spike_kl_matches_monte_carlo_near_spikes(num_levels, offset, log_sigma2_over_r2):
    # Near a spike, with a posterior narrow against the spacing, the spike-weighted approximation
    # must agree with the sampled KL; VNQ's weighting leaks a little KL from the neighbouring
    # spikes: Omega of a neighbour is about 0.03 at distance r, times its KL of about 4.6 nats
    # for a posterior this narrow, so up to 2 x 0.14 at the zero spike; hence 0.35 nats.
    r = 0.2
    scale = r * math.exp(0.5 * log_sigma2_over_r2)
    for level in codebook_offsets(num_levels).tolist():
        loc = level * r + offset * r
        mc = monte_carlo_kl(loc, scale, r, num_levels)
        approx = kl_normal_multi_spike(
            torch.tensor(loc, dtype=torch.float64),
            torch.tensor(scale, dtype=torch.float64),
            torch.tensor(r, dtype=torch.float64),
            num_levels,
        ).item()
        assert approx == pytest.approx(mc, abs=0.35), (level, offset)


def test_multi_spike_kl_largest_deviation_as_in_the_paper():
    # Over a grid spanning the codebook and sigma up to r / 3, the approximation stays within
    # about the 1.07 nats VNQ reports as its worst case.
    r = 0.2
    worst = 0.0
    for loc in torch.linspace(-1.5 * r, 1.5 * r, 13).tolist():
        for log_sigma2_over_r2 in (-8.0, -5.0, -2.2):
            scale = r * math.exp(0.5 * log_sigma2_over_r2)
            mc = monte_carlo_kl(loc, scale, r, 3, samples=100_000)
            approx = kl_normal_multi_spike(
                torch.tensor(loc), torch.tensor(scale), torch.tensor(r)
            ).item()
            worst = max(worst, abs(approx - mc))
    assert worst < 1.2


@pytest.mark.parametrize("num_levels", [3, 5])
def test_kl_is_minimized_at_the_spikes(num_levels):
    r = 0.2
    theta = torch.linspace(-(num_levels // 2 + 0.5) * r, (num_levels // 2 + 0.5) * r, 4001)
    kl = kl_normal_multi_spike(theta, torch.full_like(theta, 0.01), torch.tensor(r), num_levels)
    interior = (kl[1:-1] < kl[:-2]) & (kl[1:-1] < kl[2:])
    minima = theta[1:-1][interior]
    expected = codebook_offsets(num_levels) * r
    assert len(minima) == num_levels
    torch.testing.assert_close(minima, expected, atol=2e-3, rtol=0)
    # and the KL at a spike is far below the KL halfway between spikes (not 0: the neighbours'
    # windows leak about 2 x 0.03 x 3.6 nats into the zero spike at this sigma)
    assert kl[theta.abs().argmin()] < 0.1 * kl[(theta - r / 2).abs().argmin()]


def test_registered_kl_is_used_by_torch_and_sums_over_events():
    prior = MultiSpikeLogUniform(torch.tensor(0.2)).expand((3, 4))
    q = Normal(torch.randn(3, 4) * 0.2, torch.full((3, 4), 0.05))
    elementwise = kl_divergence(q, prior)
    assert elementwise.shape == (3, 4)
    torch.testing.assert_close(
        elementwise, kl_normal_multi_spike(q.loc, q.scale, torch.tensor(0.2))
    )
    summed = kl_divergence(q.to_event(2), prior.to_event(2))
    torch.testing.assert_close(summed, elementwise.sum())


def test_kl_gradient_reaches_the_codebook_scale():
    r = torch.tensor(0.2, requires_grad=True)
    kl = kl_normal_multi_spike(torch.tensor([0.15, -0.22]), torch.tensor([0.01, 0.01]), r)
    kl.sum().backward()
    assert r.grad is not None and torch.isfinite(r.grad) and r.grad != 0


ISAS = KERNEL_ISAS


@pytest.mark.parametrize("isa", ISAS)
@given(
    n=st.sampled_from([1, 3, 15, 16, 17, 31, 33, 64, 65, 1000]),
    half=st.integers(0, 3),
    r=st.floats(0.01, 1.0),
    spread=st.floats(0.1, 3.0),
    seed=st.integers(0, 2**16),
)
def test_native_kl_matches_reference(isa, n, half, r, spread, seed):
    g = torch.Generator().manual_seed(seed)
    num_levels = 2 * half + 1
    theta = (torch.randn(n, generator=g) * spread * r).requires_grad_()
    log_sigma2 = (torch.rand(n, generator=g) * 11 - 10).requires_grad_()
    scale = torch.tensor(r, requires_grad=True)
    # float64 reference: the float32 kernel must agree to float32 accuracy
    ref = _kl_multi_spike_reference(theta.double(), log_sigma2.double(), scale.double(), num_levels)
    ref_grads = torch.autograd.grad(ref.sum(), (theta, log_sigma2, scale), allow_unused=True)
    native = vnq_kernels.multi_spike_kl(theta, log_sigma2, scale, num_levels, isa=isa)
    native_grads = torch.autograd.grad(native.sum(), (theta, log_sigma2, scale))
    torch.testing.assert_close(native.double(), ref.detach(), rtol=1e-4, atol=1e-5)
    for got, want in zip(native_grads, ref_grads, strict=True):
        want = torch.zeros_like(got, dtype=torch.float64) if want is None else want
        want = want.double()
        torch.testing.assert_close(
            got.double(), want, rtol=2e-3, atol=2e-3 * (1 + want.abs().max())
        )


def test_native_kl_used_by_default_and_rejects_bad_input():
    theta, log_sigma2 = torch.randn(5, 4) * 0.2, torch.full((5, 4), -6.0)
    r = torch.tensor(0.2)
    auto = kl_multi_spike(theta, log_sigma2, r)
    torch.testing.assert_close(auto, kl_multi_spike(theta, log_sigma2, r, backend="reference"))
    with pytest.raises(ValueError, match="float32"):
        vnq_kernels.multi_spike_kl(theta.double(), log_sigma2.double(), r)
    with pytest.raises(ValueError, match="differ"):
        vnq_kernels.multi_spike_kl(theta, log_sigma2[:2], r)
    with pytest.raises(ValueError, match="0-d"):
        vnq_kernels.multi_spike_kl(theta, log_sigma2, torch.tensor([0.2]))
    with pytest.raises(ValueError, match="scale"):
        vnq_kernels.multi_spike_kl(theta, log_sigma2, torch.tensor(float("nan")))
    with pytest.raises(ValueError, match="num_levels"):
        vnq_kernels.multi_spike_kl(theta, log_sigma2, r, num_levels=4)
    with pytest.raises(ValueError, match="non-finite"):
        vnq_kernels.multi_spike_kl(theta.clone().fill_(float("nan")), log_sigma2, r)
    with pytest.raises(ValueError, match="backend"):
        kl_multi_spike(theta, log_sigma2, r, backend="fast")


def test_normal_log_variance_has_the_kl_and_gradients_of_the_same_normal():
    """VNQ's posterior keeps log sigma^2 so the KL skips log(sqrt(exp(.))): same value, same
    gradients as the KL from the equal Normal; it expands like a Normal."""
    loc = torch.randn(4, 3, requires_grad=True)
    log_variance = (torch.rand(4, 3) * 6 - 9).requires_grad_()
    prior = MultiSpikeLogUniform(torch.tensor(0.3)).expand((4, 3))
    kept = kl_divergence(NormalLogVariance(loc, log_variance), prior)
    plain = kl_divergence(Normal(loc, (0.5 * log_variance).exp()), prior)
    torch.testing.assert_close(kept, plain, rtol=1e-5, atol=1e-6)
    g = torch.randn(4, 3)
    for a, b in zip(
        torch.autograd.grad(kept, (loc, log_variance), g),
        torch.autograd.grad(plain, (loc, log_variance), g),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    wide = NormalLogVariance(torch.zeros(3), torch.zeros(3)).expand((2, 3))
    assert isinstance(wide, NormalLogVariance) and wide.log_variance.shape == (2, 3)
    assert wide.scale.shape == (2, 3)
