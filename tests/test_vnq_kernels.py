"""The VNQ training kernels (bayesq.vnq_kernels): the normal generator, the fused local
reparameterization sample and the KL's argument checks, on every ISA path this CPU runs."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bayesq import _kernels, vnq_kernels
from tests.common import KERNEL_ISAS

ISAS = KERNEL_ISAS


def _normal_cdf(x):
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


@pytest.mark.parametrize("isa", ISAS)
def test_standard_normal_is_standard_normal(isa):
    torch.manual_seed(0)
    z = vnq_kernels.standard_normal((400_001,), isa=isa).double()
    assert abs(z.mean()) < 5 / math.sqrt(len(z))
    assert z.var().item() == pytest.approx(1.0, abs=0.01)
    assert (z**4).mean().item() == pytest.approx(3.0, abs=0.05)
    # Kolmogorov-Smirnov distance: critical value at the 0.1% level is 1.95 / sqrt(n)
    ordered = z.sort().values
    empirical = torch.arange(1, len(z) + 1, dtype=torch.float64) / len(z)
    ks = (empirical - _normal_cdf(ordered)).abs().max().item()
    assert ks < 1.95 / math.sqrt(len(z))
    # neighbours and the two halves of each Box-Muller pair are uncorrelated
    half = len(z) // 2
    for a, b in ((z[:-1], z[1:]), (z[:half], z[half : 2 * half])):
        assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1]) < 5 / math.sqrt(len(a))


@pytest.mark.parametrize("n", [1, 2, 3, 31, 32, 33, 65, 131_073, 300_001])
def test_standard_normal_is_seeded_and_thread_invariant(n):
    out = {}
    for isa in ISAS:
        for threads in (1, 2, 3):
            buffer = torch.empty(n)
            _kernels.normal_fill(buffer, 1234, isa, threads)
            out[isa, threads] = buffer
    for isa in ISAS:
        assert torch.equal(out[isa, 1], out[isa, 2]) and torch.equal(out[isa, 1], out[isa, 3])
        torch.testing.assert_close(out[isa, 1], out["portable", 1], rtol=0, atol=1e-5)
    torch.manual_seed(5)
    a = vnq_kernels.standard_normal((n,))
    torch.manual_seed(5)
    assert torch.equal(a, vnq_kernels.standard_normal((n,)))
    if n > 1:
        assert not torch.equal(a, vnq_kernels.standard_normal((n,)))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", [(1,), (3,), (33,), (2, 5, 7), (4, 65)])
def test_fused_local_reparameterization_matches_composed_reference(isa, shape):
    mean = torch.randn(shape, requires_grad=True)
    var = (torch.rand(shape) * 2).requires_grad_()
    torch.manual_seed(11)
    fused = vnq_kernels.local_reparameterization_sample(mean, var, 1e-8, isa=isa)
    # the same noise, from the seed the wrapper drew, composed in plain torch ops
    torch.manual_seed(11)
    seed = int(torch.randint(0, 2**62, ()))
    z = torch.empty(shape)
    _kernels.normal_fill(z.view(-1), seed, isa, 1)
    reference = mean + (var + 1e-8).sqrt() * z
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-6)
    g = torch.randn(shape)
    fused_grads = torch.autograd.grad(fused, (mean, var), g)
    reference_grads = torch.autograd.grad(reference, (mean, var), g)
    for got, want in zip(fused_grads, reference_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_fused_local_reparameterization_rejects_bad_input():
    with pytest.raises(ValueError, match="float32"):
        vnq_kernels.local_reparameterization_sample(
            torch.zeros(3, dtype=torch.float64), torch.zeros(3)
        )
    with pytest.raises(ValueError, match="differ"):
        vnq_kernels.local_reparameterization_sample(torch.zeros(3), torch.zeros(4))


@pytest.mark.parametrize("n", [1, 2, 33, 70_001, 300_001])
def test_lrt_sample_does_not_depend_on_the_thread_count(n):
    """The fused LRT sample splits its pairs over the pool in 16-pair blocks: the draw and its
    slope d sample / d var are the same for any number of threads."""
    rng = np.random.default_rng(n)
    mean = rng.normal(size=n).astype(np.float32)
    var = rng.uniform(0.01, 2.0, n).astype(np.float32)
    outs, slopes = [], []
    for threads in (1, 2, 3):
        out, dout_dvar = np.empty_like(mean), np.empty_like(mean)
        _kernels.lrt_sample(mean, var, out, dout_dvar, 1234, 1e-8, None, threads)
        outs.append(out)
        slopes.append(dout_dvar)
    for out, dout_dvar in zip(outs[1:], slopes[1:], strict=True):
        np.testing.assert_array_equal(out, outs[0])
        np.testing.assert_array_equal(dout_dvar, slopes[0])


# --- bad input: the LRT sample refuses what would come back as NaN -----------------------------

WORD_SIZES = [1, 3, 31, 32, 33, 63, 64, 65, 128]
BAD_ENTRIES = {
    "negative var": ("var", -1e-3, "var has 1 negative"),
    "NaN var": ("var", math.nan, "var has 1 NaN"),
    "infinite var": ("var", math.inf, "var has 1 NaN or infinite"),
    "NaN mean": ("mean", math.nan, "mean has 1 NaN"),
    "infinite mean": ("mean", -math.inf, "mean has 1 NaN or infinite"),
}


def _lrt_reference(mean, var, floor, isa, seed):
    """The composed torch reference with the noise the wrapper would draw after manual_seed."""
    torch.manual_seed(seed)
    noise_seed = int(torch.randint(0, 2**62, ()))
    z = torch.empty(mean.shape)
    _kernels.normal_fill(z.view(-1), noise_seed, isa, 1)
    return mean + (var + floor).sqrt() * z


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", WORD_SIZES)
@pytest.mark.parametrize("kind", sorted(BAD_ENTRIES))
def test_lrt_sample_refuses_bad_entries_anywhere(isa, n, kind):
    """One bad entry, at the start, the middle (the second half of a Box-Muller pair), or the
    odd tail of the vector loop, is found by the kernel's own pass and named."""
    name, value, message = BAD_ENTRIES[kind]
    for position in sorted({0, n // 2, n - 1}):
        mean, var = torch.randn(n), torch.rand(n) + 0.1
        {"mean": mean, "var": var}[name][position] = value
        with pytest.raises(ValueError, match=message):
            vnq_kernels.local_reparameterization_sample(mean, var, 1e-8, isa=isa)


@pytest.mark.parametrize("isa", ISAS)
def test_lrt_sample_refuses_a_bad_floor_and_a_zero_standard_deviation(isa):
    mean, var = torch.randn(33), torch.rand(33)
    for floor in (-1e-8, -1.0, math.nan, math.inf, 1e39, "1e-8", None, True):
        with pytest.raises(ValueError, match="floor"):
            vnq_kernels.local_reparameterization_sample(mean, var, floor, isa=isa)
    var[7] = 0.0  # var + floor = 0: the slope z / (2 sqrt(var + floor)) is infinite
    with pytest.raises(ValueError, match="var \\+ floor is 0"):
        vnq_kernels.local_reparameterization_sample(mean, var, 0.0, isa=isa)
    # the same variance is fine with a floor, and a floor of 0 is fine with var > 0
    assert torch.isfinite(
        vnq_kernels.local_reparameterization_sample(mean, var, 1e-8, isa=isa)
    ).all()
    assert torch.isfinite(
        vnq_kernels.local_reparameterization_sample(mean, var + 1, 0, isa=isa)
    ).all()


@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=40, deadline=None)
@given(
    n=st.sampled_from(WORD_SIZES + [300, 1001]),
    floor=st.sampled_from([1e-8, 1e-3, 0.5]),
    zeros=st.integers(0, 5),
    seed=st.integers(0, 2**31 - 1),
)
def test_lrt_sample_accepts_every_valid_variance_and_matches_the_reference(
    isa, n, floor, zeros, seed
):
    """Valid input never trips the in-pass check: variances of 0 and -0.0, tiny and huge ones
    (float32 range), and the sample equals mean + sqrt(var + floor) z composed in torch."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(n, generator=g) * 10
    var = torch.exp(torch.empty(n).uniform_(-80, 80, generator=g))  # 1e-35 .. 5e34
    index = torch.randint(0, n, (zeros,), generator=g)
    var[index] = 0.0
    var[index[: zeros // 2]] = -0.0
    torch.manual_seed(seed)
    got = vnq_kernels.local_reparameterization_sample(mean, var, floor, isa=isa)
    want = _lrt_reference(mean, var, floor, isa, seed)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# --- bad input: arguments are checked before the native call -----------------------------------


def _kl_args():
    return torch.zeros(5), torch.zeros(5), torch.tensor(0.2)


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: vnq_kernels.multi_spike_kl(*_kl_args(), num_levels=3.0), "num_levels"),
        (lambda: vnq_kernels.multi_spike_kl(*_kl_args(), num_levels=True), "num_levels"),
        (lambda: vnq_kernels.multi_spike_kl(*_kl_args(), isa=5), "isa"),
        (lambda: vnq_kernels.multi_spike_kl(*_kl_args(), isa="sse9"), "isa"),
        (
            lambda: vnq_kernels.multi_spike_kl(np.zeros(5), torch.zeros(5), torch.tensor(0.2)),
            "theta",
        ),
        (lambda: vnq_kernels.multi_spike_kl(torch.zeros(5), torch.zeros(5), 0.2), "scale"),
        (lambda: vnq_kernels.standard_normal((3,), isa=5), "isa"),
        (lambda: vnq_kernels.standard_normal((3, -1)), "shape"),
        (lambda: vnq_kernels.standard_normal(2.5), "shape"),
        (lambda: vnq_kernels.standard_normal(2**34), "2\\^33"),
        (lambda: vnq_kernels.standard_normal(3, generator=5), "generator"),
        (lambda: vnq_kernels.local_reparameterization_sample(torch.zeros(3), [1.0] * 3), "var"),
        (
            lambda: vnq_kernels.local_reparameterization_sample(
                torch.zeros(3), torch.ones(3), isa=5
            ),
            "isa",
        ),
    ],
)
def test_training_kernels_name_the_bad_argument(call, argument):
    """Wrong types and ranges raise ValueError naming the argument, not nanobind's TypeError
    listing every signature, nor an AttributeError."""
    with pytest.raises(ValueError, match=argument):
        call()


def test_training_kernels_accept_numpy_integers():
    kl = vnq_kernels.multi_spike_kl(*_kl_args(), num_levels=np.int64(5))
    assert kl.shape == (5,) and torch.isfinite(kl).all()
    assert vnq_kernels.standard_normal((np.int64(2), 3)).shape == (2, 3)
