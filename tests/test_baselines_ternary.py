"""TWN and TTQ (bayesq.baselines.ternary) against their defining equations, by hand."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bayesq.baselines.ternary import (
    TTQWeight,
    ttq_codes,
    ttq_normalize_,
    ttq_ternary,
    twn_codes,
    twn_ternary,
    twn_threshold,
)

# Weight shapes of the layers: (out, in) and (out, in_channels, kh, kw).
SHAPES = st.sampled_from([(1, 1), (3, 5), (4, 2, 3, 3), (2, 1, 1, 5)])


def _weights(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rows(scale, w):
    return scale.view(-1, *[1] * (w.dim() - 1))


# --- TWN --------------------------------------------------------------------------------------------
def test_twn_threshold_is_factor_times_mean_magnitude():
    w = torch.tensor([[1.0, -2.0], [3.0, -4.0]])
    assert float(twn_threshold(w, factor=0.5)) == 1.25  # 0.5 * 10 / 4
    assert twn_threshold(w).item() == pytest.approx(0.7 * 2.5)
    assert twn_threshold(w, factor=0.5, per_row=True).tolist() == [0.75, 1.75]
    assert twn_threshold(w).dim() == 0 and twn_threshold(w, per_row=True).shape == (2,)


def test_twn_ternary_by_hand():
    # mean |w| = 3.75 / 6 = 0.625, delta = 0.4375; kept: 0.75, 1.0, 1.25, 0.5; alpha = 3.5 / 4
    w = torch.tensor([[0.25, -0.75, 1.0], [-1.25, 0.0, 0.5]])
    assert twn_ternary(w).tolist() == [[0.0, -0.875, 0.875], [-0.875, 0.0, 0.875]]


def test_twn_weight_at_the_threshold_is_dropped():
    # factor 1: delta = mean |w| = 2 exactly; |w| = 2 is not > delta, so 0; alpha = 3 (only 3 kept)
    w = torch.tensor([[2.0, 1.0, -3.0]])
    assert twn_ternary(w, factor=1.0).tolist() == [[0.0, 0.0, -3.0]]
    # factor 0.5: delta = 1, the weight 1.0 sits on it and is dropped; alpha = (2 + 3) / 2
    assert twn_ternary(w, factor=0.5).tolist() == [[2.5, 0.0, -2.5]]


def test_twn_per_row_scales():
    # row 0: mean 0.375, delta 0.2625 -> keeps 1.0 (alpha 1); row 1: mean 2, delta 1.4 -> 4, -2
    w = torch.tensor([[1.0, 0.0, 0.25, 0.25], [4.0, -2.0, 1.0, 1.0]])
    assert twn_ternary(w, per_row=True).tolist() == [[1.0, 0.0, 0.0, 0.0], [3.0, -3.0, 0.0, 0.0]]
    codes, alpha = twn_codes(w, per_row=True)
    assert alpha.tolist() == [1.0, 3.0]
    assert codes.tolist() == [[1, 0, 0, 0], [1, -1, 0, 0]]


def test_twn_zero_and_all_below_threshold_give_zeros_not_nan():
    w = torch.zeros(3, 4, requires_grad=True)
    out = twn_ternary(w)
    assert out.tolist() == torch.zeros(3, 4).tolist()
    out.sum().backward()
    assert torch.equal(w.grad, torch.ones(3, 4))
    # equal magnitudes with factor 1: delta = |w| for all, none above it
    flat = torch.full((2, 3), -0.5)
    assert torch.equal(twn_ternary(flat, factor=1.0), torch.zeros(2, 3))
    codes, alpha = twn_codes(flat, factor=1.0)
    assert float(alpha) == 0.0 and not bool(codes.any())
    assert torch.equal(twn_ternary(flat, factor=1.0, per_row=True), torch.zeros(2, 3))


def test_twn_gradient_passes_straight_through():
    w = torch.tensor([[0.25, -0.75, 1.0], [-1.25, 0.0, 0.5]], requires_grad=True)
    g = torch.arange(1.0, 7.0).view(2, 3)
    (twn_ternary(w) * g).sum().backward()
    assert torch.equal(w.grad, g)  # dropped and kept weights alike, alpha a constant


@given(shape=SHAPES, seed=st.integers(0, 1000), per_row=st.booleans())
def test_twn_codes_reproduce_the_forward_value(shape, seed, per_row):
    w = _weights(shape, seed)
    codes, alpha = twn_codes(w, per_row=per_row)
    assert codes.dtype == torch.int8 and set(codes.unique().tolist()) <= {-1, 0, 1}
    assert alpha.shape == ((shape[0],) if per_row else ())
    assert torch.equal(codes.to(w.dtype) * _rows(alpha, w), twn_ternary(w, per_row=per_row))


@given(shape=SHAPES, seed=st.integers(0, 1000))
def test_twn_alpha_is_the_optimal_scale_for_its_assignment(shape, seed):
    # for a fixed t, ||w - alpha t||^2 is minimal at alpha = <w, t> / <t, t>: the mean of |w| kept
    w = _weights(shape, seed)
    codes, alpha = twn_codes(w)
    t = codes.to(w.dtype)
    if bool(t.any()):
        assert float(alpha) == pytest.approx(float((w * t).sum() / (t * t).sum()), rel=1e-12)
    kept = w.abs() > twn_threshold(w)
    assert torch.equal(t.abs().bool(), kept)


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (torch.tensor([1.0, 2.0]), ValueError, "weight tensor"),
        (torch.zeros(0, 3), ValueError, "weight tensor"),
        (torch.tensor([[1, 2]]), TypeError, "floating-point"),
        (torch.tensor([[0.5, float("nan")]]), ValueError, "NaN"),
        (torch.tensor([[0.5, float("inf")]]), ValueError, "NaN"),
        ([[0.5, 1.0]], TypeError, "torch.Tensor"),
    ],
)
def test_twn_rejects_bad_weights(bad, error, match):
    for fn in (twn_threshold, twn_ternary, twn_codes):
        with pytest.raises(error, match=match):
            fn(bad)


@pytest.mark.parametrize("factor", [0.0, -0.7, float("nan")])
def test_twn_rejects_bad_factors(factor):
    with pytest.raises(ValueError, match="factor"):
        twn_ternary(torch.ones(2, 2), factor=factor)


# --- TTQ --------------------------------------------------------------------------------------------
W_TTQ = [[0.5, -0.02, 0.04, -1.0], [0.06, -0.05, 0.0, 0.2]]  # max |w| = 1: delta = 0.05


def test_ttq_forward_by_hand_and_the_threshold_boundary():
    w = torch.tensor(W_TTQ)
    out = ttq_ternary(w, torch.tensor(2.0), torch.tensor(0.5), threshold=0.05)
    # -0.05 sits exactly on -delta: |w| <= delta gives 0 (Eq. 1)
    assert out.tolist() == [[2.0, 0.0, 0.0, -0.5], [2.0, 0.0, 0.0, 2.0]]
    # threshold 0: every nonzero weight is +-; threshold is relative to max|w|, so scale-free
    assert ttq_ternary(w, torch.tensor(2.0), torch.tensor(0.5), 0.0)[1].tolist() == [
        2.0,
        -0.5,
        0.0,
        2.0,
    ]
    assert torch.equal(ttq_ternary(7.0 * w, torch.tensor(2.0), torch.tensor(0.5)), out)


def test_ttq_gradients_follow_eq_2_and_3():
    w = torch.tensor(W_TTQ, requires_grad=True)
    w_pos = torch.tensor(2.0, requires_grad=True)
    w_neg = torch.tensor(0.5, requires_grad=True)
    g = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    (ttq_ternary(w, w_pos, w_neg) * g).sum().backward()
    # I_p = {0.5, 0.06, 0.2} (g = 1, 5, 8); I_n = {-1.0} (g = 4); the rest in I_z
    assert float(w_pos.grad) == 1.0 + 5.0 + 8.0
    assert float(w_neg.grad) == -4.0  # w_t = -W_n there
    assert w.grad.tolist() == [[2.0, 2.0, 3.0, 2.0], [10.0, 6.0, 7.0, 16.0]]


def test_ttq_scale_gradients_are_the_true_derivatives():
    # the ternary map is piecewise constant in w, but exactly linear in W_p and W_n
    w = torch.tensor(W_TTQ, dtype=torch.float64)
    g = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    p = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    n = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: (ttq_ternary(w, a, b) * g).sum(), (p, n))


def test_ttq_all_zero_weights_give_zeros():
    w = torch.zeros(2, 3, requires_grad=True)
    w_pos = torch.tensor(1.0, requires_grad=True)
    out = ttq_ternary(w, w_pos, torch.tensor(1.0))
    assert torch.equal(out, torch.zeros(2, 3))
    out.sum().backward()
    assert torch.equal(w.grad, torch.ones(2, 3)) and float(w_pos.grad) == 0.0


def test_ttq_weight_module_learns_its_scales():
    layer = TTQWeight(threshold=0.05)
    assert [p.shape for p in layer.parameters()] == [torch.Size([]), torch.Size([])]
    assert layer.w_pos.item() == 1.0 and layer.w_neg.item() == 1.0
    w = torch.tensor(W_TTQ)
    out = layer(w)
    assert out.tolist() == [[1.0, 0.0, 0.0, -1.0], [1.0, 0.0, 0.0, 1.0]]
    loss = (out * torch.tensor([[1.0, 0.0, 0.0, 3.0], [2.0, 0.0, 0.0, -1.0]])).sum()
    loss.backward()
    # dL/dW_p = 1 + 2 - 1 = 2; dL/dW_n = -3 (w_t = -W_n at the -1.0)
    assert layer.w_pos.grad.item() == 2.0 and layer.w_neg.grad.item() == -3.0
    with torch.no_grad():  # one SGD step, learning rate 1/4
        for p in layer.parameters():
            p -= 0.25 * p.grad
    assert layer(w).tolist() == [[0.5, 0.0, 0.0, -1.75], [0.5, 0.0, 0.0, 0.5]]
    assert TTQWeight(init_scale=0.25).w_neg.item() == 0.25


def test_ttq_codes_need_equal_scales():
    w = torch.tensor(W_TTQ)
    with pytest.raises(ValueError, match="W_n == W_p"):
        ttq_codes(w, torch.tensor(2.0), torch.tensor(0.5))
    codes, scale = ttq_codes(w, torch.tensor(0.75), torch.tensor(0.75))
    assert codes.dtype == torch.int8 and codes.tolist() == [[1, 0, 0, -1], [1, 0, 0, 1]]
    assert scale.dim() == 0 and float(scale) == 0.75
    with pytest.raises(ValueError, match="W_n == W_p"):  # nearly equal is not equal
        ttq_codes(w, torch.tensor(1.0), torch.tensor(1.0 + 2**-20))
    layer = TTQWeight()
    with torch.no_grad():
        layer.w_neg.fill_(0.5)
    with pytest.raises(ValueError, match="W_n == W_p"):
        layer.codes(w)


@given(shape=SHAPES, seed=st.integers(0, 1000), threshold=st.sampled_from([0.0, 0.05, 0.5]))
def test_ttq_codes_reproduce_the_forward_value(shape, seed, threshold):
    w = _weights(shape, seed)
    layer = TTQWeight(threshold=threshold, init_scale=0.3).double()
    codes, scale = layer.codes(w)
    assert torch.equal(codes.to(w.dtype) * scale, layer(w))


def test_ttq_normalize_divides_by_the_largest_magnitude():
    w = torch.tensor([[0.5, -2.0], [1.0, 0.0]])
    assert ttq_normalize_(w) is w and w.tolist() == [[0.25, -1.0], [0.5, 0.0]]
    z = torch.zeros(2, 2)
    assert torch.equal(ttq_normalize_(z), torch.zeros(2, 2))


@pytest.mark.parametrize(
    "w_pos, error, match",
    [
        (torch.tensor(-1.0), ValueError, "w_pos must be finite and > 0"),
        (torch.tensor(0.0), ValueError, "w_pos must be finite and > 0"),
        (torch.tensor(float("nan")), ValueError, "w_pos must be finite and > 0"),
        (torch.tensor(float("inf")), ValueError, "w_pos must be finite and > 0"),
        (torch.tensor([1.0]), ValueError, "0-d"),
        (torch.tensor(1), TypeError, "floating-point"),
        (1.0, TypeError, "torch.Tensor"),
    ],
)
def test_ttq_rejects_bad_scales(w_pos, error, match):
    with pytest.raises(error, match=match):
        ttq_ternary(torch.ones(2, 2), w_pos, torch.tensor(1.0))
    with pytest.raises(error, match=match):
        ttq_codes(torch.ones(2, 2), w_pos, torch.tensor(1.0))


@pytest.mark.parametrize("threshold", [-0.1, 1.0, float("nan"), True])
def test_ttq_rejects_bad_thresholds(threshold):
    error = TypeError if threshold is True else ValueError
    with pytest.raises(error, match="threshold"):
        ttq_ternary(torch.ones(2, 2), torch.tensor(1.0), torch.tensor(1.0), threshold)
    with pytest.raises(error, match="threshold"):
        TTQWeight(threshold=threshold)


def test_ttq_rejects_bad_weights():
    one = torch.tensor(1.0)
    with pytest.raises(ValueError, match="weight tensor"):
        ttq_ternary(torch.ones(3), one, one)
    with pytest.raises(ValueError, match="NaN"):
        ttq_ternary(torch.tensor([[float("nan"), 1.0]]), one, one)
    with pytest.raises(TypeError, match="floating-point"):
        ttq_normalize_(torch.ones(2, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="init_scale"):
        TTQWeight(init_scale=0.0)
