"""bayesq.baselines.dorefa: quantize_k, the k-bit weights, activations and stochastic gradients of
DoReFa-Net against the paper's equations on hand-made tensors; the weight codes against the
forward value (torch.equal); the gradient quantizer's unbiasedness against its variance bound."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bayesq.baselines.dorefa import (
    dorefa_activation,
    dorefa_gradient,
    dorefa_weight,
    dorefa_weight_codes,
    quantize_gradient,
    quantize_k,
)

# --- quantize_k (Eq. 5-6) ------------------------------------------------------------------------


def test_quantize_k_hand_values_ties_half_to_even_and_straight_through():
    x = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0], dtype=torch.float64, requires_grad=True)
    out = quantize_k(x, 2)
    # round(3 x) / 3: 0.6 -> 1, 1.5 -> 2 (half to even), 2.7 -> 3
    expected = torch.tensor([0.0, 1.0, 2.0, 3.0, 3.0], dtype=torch.float64) / 3
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    (out * torch.arange(1.0, 6.0, dtype=torch.float64)).sum().backward()
    assert x.grad.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    # k = 1: round(x), 0.5 -> 0 (half to even)
    one = quantize_k(torch.tensor([0.0, 0.4, 0.5, 0.6, 1.0]), 1)
    assert one.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]


def test_quantize_k_with_32_bits_is_the_identity():
    x = torch.tensor([0.0, 0.123456789, 1.0], requires_grad=True)
    assert quantize_k(x, 32) is x


@given(values=st.lists(st.floats(0, 1), min_size=1, max_size=30), bits=st.integers(1, 16))
def test_quantize_k_is_the_nearest_of_the_levels(values, bits):
    m = 2**bits - 1
    x = torch.tensor(values, dtype=torch.float64)
    out = quantize_k(x, bits)
    assert bool(((out * m - torch.round(out * m)).abs() <= 1e-9).all())  # on the grid j / m
    assert bool(((out - x).abs() <= 0.5 / m + 1e-12).all())  # within half a step


# --- weights (Eq. 7-9) ----------------------------------------------------------------------------
def test_one_bit_weights_are_the_sign_times_the_layer_mean_with_plain_straight_through():
    w = torch.tensor([[-2.0, 0.0], [1.0, 3.0]], requires_grad=True)
    out = dorefa_weight(w, 1)
    assert out.tolist() == [[-1.5, 1.5], [1.5, 1.5]]  # E|w| = 6 / 4, sign(0) = +1
    (out * torch.tensor([[1.0, 2.0], [3.0, 4.0]])).sum().backward()
    # Eq. 8: dc/dr_i = dc/dr_o everywhere, also where |w| > 1 (no clipping, unlike BNN)
    assert w.grad.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    codes, scale = dorefa_weight_codes(w, 1)
    assert codes.tolist() == [[-1, 1], [1, 1]] and codes.dtype == torch.int8
    assert scale.dim() == 0 and scale.item() == 1.5


def test_k_bit_weights_hand_values_against_eq_9():
    w = torch.tensor([-1.0, 0.0, 0.25, 2.0], dtype=torch.float64)
    # tanh: -0.7616, 0, 0.2449, 0.9640; x = tanh / (2 * 0.9640) + 1/2 = 0.105, 0.5, 0.627, 1;
    # 3 x = 0.315, 1.5 (a tie: half to even -> 2), 1.88, 3 -> codes 2 j - 3 = -3, 1, 1, 3
    out = dorefa_weight(w, 2)
    torch.testing.assert_close(
        out, torch.tensor([-3.0, 1.0, 1.0, 3.0], dtype=torch.float64) / 3, rtol=0, atol=1e-15
    )
    codes, scale = dorefa_weight_codes(w, 2)
    assert codes.tolist() == [-3, 1, 1, 3] and codes.dtype == torch.int8
    assert torch.equal(codes.double() * scale, out)
    # the literal Eq. 9 through quantize_k agrees to rounding
    t = torch.tanh(w)
    literal = 2 * quantize_k(t / (2 * t.abs().max()) + 0.5, 2) - 1
    torch.testing.assert_close(out, literal, rtol=0, atol=1e-15)


def test_k_bit_weight_gradient_is_the_chain_rule_through_tanh_and_the_max():
    w = torch.tensor([[0.3, -1.2], [0.05, 0.7]], dtype=torch.float64, requires_grad=True)
    upstream = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)
    (dorefa_weight(w, 3) * upstream).sum().backward()
    # quantize_k straight through: the gradient of 2 (tanh(w) / (2 max|tanh|) + 1/2) - 1
    v = w.detach().clone().requires_grad_(True)
    t = torch.tanh(v)
    ((t / t.abs().max()) * upstream).sum().backward()
    torch.testing.assert_close(w.grad, v.grad)
    # by hand for an entry that is not the max: 2 * (1 - tanh^2(w)) / (2 max|tanh|)
    peak = math.tanh(1.2)
    assert w.grad[0, 0].item() == pytest.approx((1 - math.tanh(0.3) ** 2) / peak, rel=1e-12)


def test_zero_layer_weights():
    zeros = torch.zeros(3, 2)
    assert dorefa_weight(zeros, 1).tolist() == [[0.0, 0.0]] * 3
    codes, scale = dorefa_weight_codes(zeros, 3)
    assert codes.tolist() == [[1, 1]] * 3 and scale.item() == pytest.approx(1 / 7)
    assert torch.equal(dorefa_weight(zeros, 3), codes.float() * scale)  # +1/7 everywhere


@pytest.mark.parametrize("bits", [*range(1, 17)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weight_codes_times_scale_equal_the_forward_exactly(bits, dtype):
    w = torch.randn(6, 3, 2, 2, dtype=dtype)
    codes, scale = dorefa_weight_codes(w, bits)
    assert torch.equal(codes.to(dtype) * scale, dorefa_weight(w, bits))
    assert scale.dim() == 0 and scale.dtype == dtype
    if bits == 1:
        assert set(codes.unique().tolist()) <= {-1, 1} and codes.dtype == torch.int8
        return
    m = 2**bits - 1
    expected_dtype = torch.int8 if bits <= 7 else torch.int16 if bits <= 15 else torch.int32
    assert codes.dtype == expected_dtype  # k + 1 bits signed
    assert bool((codes.abs() <= m).all()) and bool((codes.remainder(2) == 1).all())
    assert codes.abs().max().item() == m  # the largest |tanh| maps to +-1 exactly


def test_weights_with_32_bits_are_the_identity_and_have_no_codes():
    w = torch.randn(3, 4, requires_grad=True)
    assert dorefa_weight(w, 32) is w
    with pytest.raises(ValueError, match="not quantized"):
        dorefa_weight_codes(w, 32)


# --- activations (Eq. 10) -------------------------------------------------------------------------
def test_activation_hand_values_and_gradient_zero_outside_the_unit_interval():
    x = torch.tensor([-0.5, 0.0, 0.3, 0.5, 1.0, 1.7], dtype=torch.float64, requires_grad=True)
    out = dorefa_activation(x, 2)
    expected = torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0, 3.0], dtype=torch.float64) / 3
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    out.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    y = torch.tensor([-0.5, 0.3, 1.7], requires_grad=True)
    full = dorefa_activation(y, 32)
    assert full.tolist() == [0.0, pytest.approx(0.3), 1.0]  # the clip stays, the rounding goes
    full.sum().backward()
    assert y.grad.tolist() == [0.0, 1.0, 0.0]


# --- gradients (Eq. 12) ---------------------------------------------------------------------------
def test_gradient_quantizer_is_unbiased_and_on_the_grid():
    # three samples (axis 0) of shape (2, 2): max0 over each sample's 4 entries
    g = torch.tensor(
        [[[0.3, -1.0], [0.05, 0.6]], [[0.0, 0.0], [0.0, 0.0]], [[2.0, -0.5], [0.7, 1.1]]],
        dtype=torch.float64,
    )
    draws, bits = 20000, 2
    m = 2**bits - 1
    gen = torch.Generator().manual_seed(11)
    out = dorefa_gradient(g.repeat(draws, 1, 1), bits, gen).view(draws, *g.shape)
    peak = g.abs().flatten(1).amax(1).view(1, 3, 1, 1)
    # on the grid: max0 times an odd multiple of 1 / m in [-max0, max0]; zero rows stay 0
    assert bool(out[:, 1].eq(0).all())
    code = out[:, [0, 2]] * m / peak[:, [0, 2]]
    assert bool(((code - torch.round(code)).abs() <= 1e-9).all())
    assert bool((torch.round(code).remainder(2) == 1).all())
    assert bool((code.abs() <= m + 1e-9).all())
    # the largest entry of a sample is a grid point itself: it passes exactly
    assert bool(out[:, 0, 0, 1].eq(-1.0).all()) and bool(out[:, 2, 0, 0].eq(2.0).all())
    # unbiased: each entry's variance is at most (max0 / m)^2, so the mean of `draws` draws has a
    # standard error at most max0 / (m sqrt(draws)); 5 of them bound a correct quantizer's miss
    bound = 5 * peak / (m * math.sqrt(draws))
    assert bool(((out.mean(0) - g).abs() <= bound[0] + 1e-12).all())
    # and the variance itself stays within the bound (the spread is not larger than Eq. 12's)
    assert bool((out.var(0) <= 1.05 * (peak[0] / m) ** 2 + 1e-12).all())


def test_one_bit_gradients_take_the_two_values_plus_and_minus_max0():
    g = torch.tensor([[0.5, -0.25, 1.0, 0.0]], dtype=torch.float64).repeat(20000, 1)
    out = dorefa_gradient(g, 1, torch.Generator().manual_seed(5))
    assert set(out.unique().tolist()) <= {-1.0, 1.0}
    # P(+1) = (g / max0 + 1) / 2; standard error at most 1 / sqrt(20000), 5 of them allowed
    torch.testing.assert_close(out.mean(0), g[0], rtol=0, atol=5 / math.sqrt(20000))


def test_gradient_quantizer_per_sample_of_a_vector_and_reproducibility():
    g = torch.tensor([0.3, -2.0, 0.0])  # 1-D: each sample is one number, its own max0
    out = dorefa_gradient(g, 3, torch.Generator().manual_seed(0))
    assert out.tolist() == [pytest.approx(0.3), -2.0, 0.0]
    x = torch.randn(8, 5, dtype=torch.float64)
    a = dorefa_gradient(x, 4, torch.Generator().manual_seed(7))
    b = dorefa_gradient(x, 4, torch.Generator().manual_seed(7))
    c = dorefa_gradient(x, 4, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert dorefa_gradient(x, 32) is x


def test_quantize_gradient_is_identity_forward_and_quantizes_the_backward():
    x = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(4, 3, 2, dtype=torch.float64)
    y = quantize_gradient(x, 2, torch.Generator().manual_seed(3))
    assert torch.equal(y, x)
    (y * upstream).sum().backward()
    expected = dorefa_gradient(upstream, 2, torch.Generator().manual_seed(3))
    assert torch.equal(x.grad, expected)
    z = torch.randn(4, 3, requires_grad=True)
    out = quantize_gradient(z, 32)
    assert out is z


# --- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, 17, 31, 33, -2])
def test_bits_out_of_range(bad):
    x = torch.full((2, 2), 0.5)
    for fn in (quantize_k, dorefa_weight, dorefa_weight_codes, dorefa_activation, dorefa_gradient):
        with pytest.raises(ValueError, match="bits"):
            fn(x, bad)
    with pytest.raises(ValueError, match="bits"):
        quantize_gradient(x, bad)


@pytest.mark.parametrize("bad", [2.0, True, None])
def test_bits_of_the_wrong_type(bad):
    with pytest.raises(TypeError, match="bits"):
        dorefa_weight(torch.ones(2), bad)


def test_bad_tensors():
    nan = torch.tensor([[0.5, float("nan")]])
    for fn in (quantize_k, dorefa_weight, dorefa_weight_codes, dorefa_activation, dorefa_gradient):
        with pytest.raises(ValueError, match="NaN"):
            fn(nan, 2)
        with pytest.raises(TypeError, match="floating-point"):
            fn(torch.ones(2, 2, dtype=torch.int64), 2)
        with pytest.raises(TypeError, match="torch.Tensor"):
            fn([[0.5]], 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        quantize_k(torch.tensor([0.5, 1.5]), 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        quantize_k(torch.tensor([-0.01]), 2)
    with pytest.raises(ValueError, match="first"):
        dorefa_gradient(torch.tensor(0.5), 2)
    with pytest.raises(ValueError, match="first"):
        quantize_gradient(torch.tensor(0.5), 2)
    with pytest.raises(ValueError, match="non-empty"):
        dorefa_weight(torch.ones(0), 2)
    with pytest.raises(ValueError, match="non-empty"):
        dorefa_weight_codes(torch.ones(2, 0), 2)
