"""bayesq.baselines.binary: BNN's sign, QNN's k-bit grid, XNOR-Net / BWN weights and input scales,
each against its defining equation on hand-made tensors, and the codes companions against the
forward value (torch.equal: the forward computes codes times scale itself)."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from bayesq.baselines.binary import (
    BinaryActivation,
    QNNActivation,
    qnn_quantize,
    qnn_weight_codes,
    sign_ste,
    xnor_input,
    xnor_input_scale,
    xnor_weight,
    xnor_weight_codes,
)


def _row_view(scale, w):
    return scale.view(-1, *[1] * (w.dim() - 1))


# --- sign_ste (BNN Eq. 1 and 4) -----------------------------------------------------------------
def test_sign_maps_zero_to_plus_one_and_clips_the_straight_through_gradient():
    x = torch.tensor([-1.5, -1.0, -0.2, -0.0, 0.0, 0.7, 1.0, 1.0001, 3.0], requires_grad=True)
    out = sign_ste(x)
    assert out.tolist() == [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    (out * torch.arange(1.0, 10.0)).sum().backward()
    # g * 1{|x| <= 1}: the thresholds +-1 themselves pass, just beyond them nothing does
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 0.0, 0.0]
    tiny = torch.tensor([-1e-30, -1e-45, 1e-45], dtype=torch.float32)
    assert sign_ste(tiny).tolist() == [-1.0, -1.0, 1.0]


def test_sign_keeps_shape_and_dtype():
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    out = sign_ste(x)
    assert out.shape == x.shape and out.dtype == torch.float64
    assert torch.equal(out, torch.where(x >= 0, 1.0, -1.0).double())
    assert torch.equal(xnor_input(x), out)
    assert torch.equal(BinaryActivation()(x), out)


# --- qnn_quantize (QNN's linear quantization on 2^k levels of [-1, 1]) ----------------------------
def test_qnn_two_bits_hand_values_ties_and_clipping():
    third = 1.0 / 3.0
    x = torch.tensor(
        [-5.0, -1.0, -0.7, -0.6, -1e-30, 0.0, 0.2, 0.6, 0.7, 1.0, 2.0],
        dtype=torch.float64,
        requires_grad=True,
    )
    out = qnn_quantize(x, 2)
    # levels -1, -1/3, 1/3, 1; boundaries at -2/3, 0, 2/3; the tie at 0 goes up to +1/3
    expected = [-1.0, -1.0, -1.0, -third, -third, third, third, third, 1.0, 1.0, 1.0]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=0)
    out.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_qnn_three_bits_hand_values():
    x = torch.tensor([-0.9, -0.3, 0.1, 0.5, 0.8], dtype=torch.float64)
    # levels c / 7 for odd c: -0.9 -> -6.3 -> -7; -0.3 -> -2.1 -> -3; 0.1 -> 0.7 -> 1;
    # 0.5 -> 3.5 -> 3 (nearer than 5); 0.8 -> 5.6 -> 5
    expected = torch.tensor([-7.0, -3.0, 1.0, 3.0, 5.0], dtype=torch.float64) / 7
    torch.testing.assert_close(qnn_quantize(x, 3), expected, rtol=0, atol=1e-15)
    codes, scale = qnn_weight_codes(x, 3)
    assert codes.tolist() == [-7, -3, 1, 3, 5] and codes.dtype == torch.int8
    torch.testing.assert_close(scale, torch.tensor(1 / 7, dtype=torch.float64), rtol=0, atol=0)


@given(values=st.lists(st.floats(-3, 3, allow_nan=False, width=32), min_size=1, max_size=40))
def test_qnn_one_bit_is_sign_ste_value_and_gradient(values):
    a = torch.tensor(values, requires_grad=True)
    b = torch.tensor(values, requires_grad=True)
    assert torch.equal(qnn_quantize(a, 1), sign_ste(b))
    weights = torch.linspace(-1, 1, len(values))
    (qnn_quantize(a, 1) * weights).sum().backward()
    (sign_ste(b) * weights).sum().backward()
    assert torch.equal(a.grad, b.grad)


@given(
    values=st.lists(st.floats(-2, 2, allow_nan=False), min_size=1, max_size=40),
    bits=st.integers(1, 8),
)
def test_qnn_picks_the_nearest_of_the_two_to_the_k_levels(values, bits):
    m = 2**bits - 1
    x = torch.tensor(values, dtype=torch.float64)
    out = qnn_quantize(x, bits)
    levels = torch.arange(-m, m + 1, 2, dtype=torch.float64) / m
    assert len(levels) == 2**bits
    clipped = x.clamp(-1, 1)
    distance = (clipped[:, None] - levels[None, :]).abs()
    on_grid = (out[:, None] - levels[None, :]).abs().min(1).values
    assert bool((on_grid <= 1e-12).all())
    assert bool(((out - clipped).abs() <= distance.min(1).values + 1e-12).all())


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_qnn_codes_times_scale_equal_the_forward_exactly(bits, dtype):
    w = 1.5 * torch.randn(7, 5, 3, dtype=dtype)
    codes, scale = qnn_weight_codes(w, bits)
    m = 2**bits - 1
    assert codes.dtype == (torch.int8 if bits <= 7 else torch.int16)
    assert scale.dim() == 0 and scale.dtype == dtype
    assert bool((codes.abs() <= m).all()) and bool((codes.remainder(2) == 1).all())
    assert torch.equal(codes.to(dtype) * scale, qnn_quantize(w, bits))
    assert codes.abs().max().item() == m  # w reaches beyond +-1: the end codes are used


def test_qnn_activation_module():
    layer = QNNActivation(2)
    x = torch.tensor([-0.5, 0.0, 0.9])
    assert torch.equal(layer(x), qnn_quantize(x, 2))
    assert "bits=2" in repr(layer)


# --- xnor_weight (XNOR-Net Eq. 4-6, the gradient of Sec. 3.1) -------------------------------------
def test_xnor_weight_hand_values_and_the_papers_gradient():
    w = torch.tensor([[0.5, -1.0, 0.0, 1.5], [-0.25, 0.25, -0.5, 0.0]], requires_grad=True)
    out = xnor_weight(w)
    # alpha = mean |W_o|: 3 / 4 and 1 / 4; sign(0) = +1
    assert out.tolist() == [[0.75, -0.75, 0.75, 0.75], [-0.25, 0.25, -0.25, 0.25]]
    (out * torch.arange(8.0).view(2, 4)).sum().backward()
    # dC/dW = dC/dW~ (1/n + alpha 1{|W| <= 1}), n = 4: row 0 factor 1/4 + 3/4 = 1 inside, 1/4 at
    # |W| = 1.5; row 1 factor 1/4 + 1/4 = 1/2 everywhere
    assert w.grad.tolist() == [[0.0, 1.0, 2.0, 0.75], [2.0, 2.5, 3.0, 3.5]]


def test_xnor_weight_of_a_conv_kernel_is_per_output_filter():
    w = torch.zeros(2, 2, 2, 2, dtype=torch.float64)
    w[0] = torch.tensor([[[1.0, -2.0], [0.5, 0.5]], [[-1.0, 1.0], [2.0, 0.0]]])  # sum |w| = 8
    w[1] = -0.125  # every entry
    out = xnor_weight(w)
    assert torch.equal(out[0], torch.where(w[0] >= 0, 1.0, -1.0).double())  # alpha_0 = 8/8 = 1
    assert torch.equal(out[1], torch.full((2, 2, 2), -0.125, dtype=torch.float64))
    codes, alpha = xnor_weight_codes(w)
    assert alpha.tolist() == [1.0, 0.125] and codes.dtype == torch.int8
    assert torch.equal(codes.float() * _row_view(alpha, w), out)


def test_xnor_zero_row_has_zero_scale():
    w = torch.tensor([[0.0, 0.0], [1.0, -3.0]])
    codes, alpha = xnor_weight_codes(w)
    assert codes.tolist() == [[1, 1], [1, -1]] and alpha.tolist() == [0.0, 2.0]
    assert xnor_weight(w).tolist() == [[0.0, 0.0], [2.0, -2.0]]


@given(
    shape=st.sampled_from([(1, 1), (3, 5), (4, 1), (2, 3, 3, 3), (5, 1, 2, 2), (1, 7, 1, 1)]),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_xnor_codes_times_alpha_equal_the_forward_exactly(shape, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g, dtype=dtype)
    codes, alpha = xnor_weight_codes(w)
    assert alpha.shape == (shape[0],) and alpha.dtype == dtype
    assert set(codes.unique().tolist()) <= {-1, 1}
    assert torch.equal(codes.to(dtype) * _row_view(alpha, w), xnor_weight(w))
    torch.testing.assert_close(alpha, w.abs().flatten(1).mean(1))


# --- xnor_input_scale (XNOR-Net Sec. 3.2) ---------------------------------------------------------
def test_xnor_input_scale_of_a_linear_input():
    x = torch.tensor([[1.0, -3.0, 0.0, 4.0], [0.5, 0.5, -0.5, -0.5]], requires_grad=True)
    beta = xnor_input_scale(x)
    assert beta.tolist() == [[2.0], [0.5]] and not beta.requires_grad


def test_xnor_input_scale_of_a_conv_input_hand_values():
    c0 = torch.tensor([[1.0, -2.0, 3.0], [0.0, 4.0, -1.0], [2.0, 2.0, -2.0]])
    c1 = torch.tensor([[-1.0, 0.0, 1.0], [2.0, 0.0, -3.0], [0.0, 2.0, 2.0]])
    x = torch.stack([c0, c1])[None].double().requires_grad_(True)  # (1, 2, 3, 3)
    # A = mean over channels of |x| = [[1, 1, 2], [1, 2, 2], [1, 2, 2]]
    k = xnor_input_scale(x, kernel_size=2)
    assert k.shape == (1, 1, 2, 2) and not k.requires_grad
    assert k[0, 0].tolist() == [[1.25, 1.75], [1.5, 2.0]]
    # kernel 3, stride 2, zero padding 1: windows of the padded A sum to 5, 7, 6, 8 over 9 cells
    k = xnor_input_scale(x, kernel_size=3, stride=2, padding=1)
    expected = torch.tensor([[5.0, 7.0], [6.0, 8.0]], dtype=torch.float64) / 9
    torch.testing.assert_close(k[0, 0], expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding"), [(3, 1, 0), ((3, 2), (2, 1), (1, 0)), (1, 2, 0), (5, 3, 2)]
)
def test_xnor_input_scale_matches_a_loop_and_the_layers_output_size(kernel, stride, padding):
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    k = xnor_input_scale(x, kernel, stride, padding)
    kh, kw = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    sh, sw = stride if isinstance(stride, tuple) else (stride, stride)
    ph, pw = padding if isinstance(padding, tuple) else (padding, padding)
    layer_out = F.conv2d(
        x, torch.ones(4, 3, kh, kw, dtype=x.dtype), stride=(sh, sw), padding=(ph, pw)
    )
    assert k.shape == (2, 1, *layer_out.shape[2:])
    a = F.pad(x.abs().mean(1), (pw, pw, ph, ph))  # zero padding: |x| = 0 there
    for i in range(k.shape[2]):
        for j in range(k.shape[3]):
            window = a[:, i * sh : i * sh + kh, j * sw : j * sw + kw]
            torch.testing.assert_close(k[:, 0, i, j], window.mean((1, 2)))


# --- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [sign_ste, lambda x: qnn_quantize(x, 2), xnor_input])
def test_activation_quantizers_reject_bad_tensors(fn):
    with pytest.raises(ValueError, match="NaN"):
        fn(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="NaN"):
        fn(torch.tensor([float("inf")]))
    with pytest.raises(TypeError, match="floating-point"):
        fn(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="torch.Tensor"):
        fn([0.5, 1.0])


@pytest.mark.parametrize("bad", [0, 9, -1])
def test_qnn_rejects_bits_out_of_range(bad):
    for fn in (qnn_quantize, qnn_weight_codes):
        with pytest.raises(ValueError, match="bits"):
            fn(torch.zeros(3), bad)
    with pytest.raises(ValueError, match="bits"):
        QNNActivation(bad)


@pytest.mark.parametrize("bad", [2.0, True, "2"])
def test_qnn_rejects_bits_of_the_wrong_type(bad):
    with pytest.raises(TypeError, match="bits"):
        qnn_quantize(torch.zeros(3), bad)


def test_xnor_weight_rejects_bad_weights():
    for fn in (xnor_weight, xnor_weight_codes):
        with pytest.raises(ValueError, match="shape"):
            fn(torch.ones(4))
        with pytest.raises(ValueError, match="shape"):
            fn(torch.ones(3, 0))
        with pytest.raises(ValueError, match="NaN"):
            fn(torch.tensor([[1.0, float("nan")]]))
        with pytest.raises(TypeError, match="floating-point"):
            fn(torch.ones(2, 2, dtype=torch.int32))


def test_xnor_input_scale_rejects_bad_shapes_and_geometry():
    with pytest.raises(ValueError, match=r"\(N, in\)"):
        xnor_input_scale(torch.ones(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        xnor_input_scale(torch.ones(2, 3), kernel_size=3)
    with pytest.raises(ValueError, match="larger than the padded input"):
        xnor_input_scale(torch.ones(1, 1, 2, 2), kernel_size=3)
    with pytest.raises(ValueError, match="stride"):
        xnor_input_scale(torch.ones(1, 1, 4, 4), kernel_size=3, stride=0)
    with pytest.raises(ValueError, match="padding"):
        xnor_input_scale(torch.ones(1, 1, 4, 4), kernel_size=3, padding=-1)
    with pytest.raises(ValueError, match="kernel_size"):
        xnor_input_scale(torch.ones(1, 1, 4, 4), kernel_size=(3, 3, 3))
    with pytest.raises(TypeError, match="kernel_size"):
        xnor_input_scale(torch.ones(1, 1, 4, 4), kernel_size=2.5)
    with pytest.raises(ValueError, match="NaN"):
        xnor_input_scale(torch.tensor([[float("nan")]]))
