"""BNN / QNN and XNOR-Net / BWN: binary and k-bit quantizers with straight-through gradients.

BNN (Hubara et al. 2016) binarizes weights and activations with sign, 0 -> +1, and passes the
gradient straight through where |x| <= 1 (:func:`sign_ste`). QNN (Hubara et al. 2018) extends
this to k bits with a uniform grid on [-1, 1] (:func:`qnn_quantize`). BWN (Rastegari et al. 2016)
scales the signs of each output filter by the mean |W| of that filter (:func:`xnor_weight`);
XNOR-Net also binarizes the layer's input (:func:`xnor_input`) and multiplies the layer's output
by a per-position input scale K (:func:`xnor_input_scale`).

Each weight quantizer has a ``*_codes`` companion returning the integer codes and scale(s) that
the quantized weight equals exactly (``torch.equal``): ``codes.to(w.dtype) * scale`` with the
scale broadcast per output row as ``scale.view(-1, *[1] * (w.dim() - 1))`` or a 0-d tensor,
because the forward pass itself computes its value as that product.

References:
    Hubara, Courbariaux, Soudry, El-Yaniv, Bengio. Binarized Neural Networks. NeurIPS 2016.
    Hubara, Courbariaux, Soudry, El-Yaniv, Bengio. Quantized Neural Networks: Training Neural
    Networks with Low Precision Weights and Activations. JMLR 18(187), 2018.
    Rastegari, Ordonez, Redmon, Farhadi. XNOR-Net: ImageNet Classification Using Binary
    Convolutional Neural Networks. ECCV 2016.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import float_tensor, integer, weight_tensor

__all__ = [
    "BinaryActivation",
    "QNNActivation",
    "qnn_quantize",
    "qnn_weight_codes",
    "sign_ste",
    "xnor_input",
    "xnor_input_scale",
    "xnor_weight",
    "xnor_weight_codes",
]

QNN_MAX_BITS = 8


def _qnn_bits(bits) -> int:
    bits = integer("bits", bits)
    if bits > QNN_MAX_BITS:
        raise ValueError(f"bits must be an integer in [1, {QNN_MAX_BITS}], got {bits}")
    return bits


def _signs(x: torch.Tensor) -> torch.Tensor:
    """sign(x) in {-1, +1} as x's dtype, 0 -> +1 (BNN's Sign: x >= 0 gives +1)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


# --- BNN: sign with the clipped straight-through estimator ----------------------------------------
class SignSTE(torch.autograd.Function):
    """Forward sign(x) in {-1, +1}, 0 -> +1; backward g * 1{|x| <= 1} (BNN Eq. 4, Algorithm 1).

    The indicator cancels the gradient where |x| is large; BNN reports that not cancelling it
    there significantly worsens performance.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return _signs(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad_output * (x.abs() <= 1).to(grad_output.dtype)


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """BNN's deterministic binarization x^b = Sign(x) (Hubara et al. 2016, Eq. 1), 0 -> +1, with
    the clipped straight-through gradient g_r = g_q 1{|r| <= 1} (Eq. 4, Algorithm 1).

    For activations and weights alike; any shape, same shape and dtype out.

    >>> x = torch.tensor([-1.5, -0.2, 0.0, 0.7, 1.0, 3.0], requires_grad=True)
    >>> sign_ste(x).tolist()
    [-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]
    >>> sign_ste(x).sum().backward(); x.grad.tolist()
    [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    """
    return SignSTE.apply(float_tensor("x", x))


# --- QNN: k-bit uniform quantization on [-1, 1] ---------------------------------------------------
def _qnn_codes(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Odd integer codes c in [-(2^k - 1), 2^k - 1] (as x's dtype) and the 0-d scale 1/(2^k - 1):
    c * scale is the grid point nearest to clip(x, -1, 1), ties toward +infinity."""
    if bits == 1:
        # Sign itself: the formula below would flush a tiny negative x * 1/2 to -0 and give +1
        return _signs(x), torch.ones((), dtype=x.dtype, device=x.device)
    m = 2**bits - 1
    # The levels are the odd integers c in [-m, m] over m; the odd integer nearest to y = x m is
    # 2 floor(y / 2) + 1, the boundaries (even y) going up. Scaling x by m / 2 keeps the sign of
    # x exactly, so the tie at 0 and every value on either side of it fall the right way.
    c = 2.0 * torch.floor(x.clamp(-1.0, 1.0) * (m / 2)) + 1.0
    scale = torch.tensor(1.0, dtype=x.dtype, device=x.device) / m
    return c, scale


class QNNQuantizeSTE(torch.autograd.Function):
    """Forward: the k-bit QNN grid point of clip(x, -1, 1) (see :func:`qnn_quantize`); backward:
    g * 1{|x| <= 1}, the clipped straight-through estimator of BNN used by QNN for k bits."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bits: int) -> torch.Tensor:
        ctx.save_for_backward(x)
        codes, scale = _qnn_codes(x, bits)
        return codes * scale

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad_output * (x.abs() <= 1).to(grad_output.dtype), None


def qnn_quantize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """QNN's deterministic k-bit quantizer of x clipped to [-1, 1], straight-through gradient.

    Grid: the 2^k levels -1 + 2j / (2^k - 1), j = 0 .. 2^k - 1, i.e. the odd multiples of
    1 / (2^k - 1) in [-1, 1] (k = 2: -1, -1/3, 1/3, 1), each x going to the nearest level.
    QNN's linear quantization is LinearQuant(x, Delta) = Clip(round(x / Delta) Delta, minV, maxV)
    (Hubara et al. 2018), which leaves Delta, minV, maxV to be fixed for a k-bit code; a grid
    through 0 that is symmetric on [-1, 1] has an odd number of levels and wastes one of the 2^k
    codes. We take Delta = 2 / (2^k - 1), [minV, maxV] = [-1, 1] and the grid shifted by
    Delta / 2: exactly 2^k levels, symmetric about 0, and for k = 1 BNN's Sign (Eq. 1). Ties
    between two levels go up (round half toward +infinity), so 0 -> +1/(2^k - 1) as Sign maps
    0 -> +1, and ``qnn_quantize(x, 1)`` is ``sign_ste(x)``, value and gradient.

    Gradient: g * 1{|x| <= 1}, BNN's clipped straight-through estimator (Eq. 4).
    x any shape; bits in 1..8. Returns x's shape and dtype.

    >>> qnn_quantize(torch.tensor([-2.0, -0.5, 0.0, 0.2, 0.9]), 2).tolist()  # step 2/3
    [-1.0, -0.3333333432674408, 0.3333333432674408, 0.3333333432674408, 1.0]
    """
    x = float_tensor("x", x)
    bits = _qnn_bits(bits)
    return SignSTE.apply(x) if bits == 1 else QNNQuantizeSTE.apply(x, bits)


def qnn_weight_codes(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The codes and scale of ``qnn_quantize(w, bits)``: (codes, scale) with
    ``codes.to(w.dtype) * scale`` equal (torch.equal) to the quantized weight.

    codes: w's shape, the odd integers in [-(2^k - 1), 2^k - 1]; int8 for bits <= 7, int16 for
    bits = 8 (+-255 needs 9 bits signed). scale: 0-d tensor 1 / (2^k - 1) in w's dtype (one scale
    per layer: QNN's grid is fixed on [-1, 1]). Any shape of w.
    """
    w = float_tensor("w", w)
    bits = _qnn_bits(bits)
    with torch.no_grad():
        codes, scale = _qnn_codes(w, bits)
    return codes.to(torch.int8 if bits <= 7 else torch.int16), scale


# --- XNOR-Net / BWN -------------------------------------------------------------------------------
def _filter_mean_abs(w: torch.Tensor) -> torch.Tensor:
    """alpha (out,): mean |W| over each output filter, (1/n) ||W_o||_l1 (XNOR-Net Eq. 6)."""
    return w.abs().mean(dim=tuple(range(1, w.dim())))


def _per_row(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *[1] * (like.dim() - 1))


class XNORWeight(torch.autograd.Function):
    """Forward alpha_o sign(W) (XNOR-Net Eq. 4-6); backward the paper's gradient
    dC/dW = dC/dW~ (1/n + alpha 1{|W| <= 1}) (Sec. 3.1, "Training Binary-Weights-Networks")."""

    @staticmethod
    def forward(ctx, w: torch.Tensor) -> torch.Tensor:
        alpha = _filter_mean_abs(w)
        ctx.save_for_backward(w, alpha)
        return _signs(w) * _per_row(alpha, w)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        w, alpha = ctx.saved_tensors
        n = w[0].numel()
        inside = (w.abs() <= 1).to(grad_output.dtype)
        return grad_output * (1.0 / n + _per_row(alpha, w) * inside)


def xnor_weight(w: torch.Tensor) -> torch.Tensor:
    """BWN / XNOR-Net binary weights W~ = alpha_o sign(W_o), alpha_o = (1/n) ||W_o||_l1 the mean
    |W| over output filter o (Rastegari et al. 2016, Eq. 4-6: the alpha and B = sign(W) that
    minimize ||W - alpha B||^2), sign(0) = +1.

    Gradient: the paper's dC/dW_i = dC/dW~_i (1/n + alpha 1{|W_i| <= 1}), n = weights per filter
    (Sec. 3.1). This is the diagonal of the exact Jacobian (the alpha term's cross terms
    sign(W_i) sign(W_j) / n, i != j, are dropped, as in the paper), with the sign's derivative
    replaced by BNN's clipped straight-through 1{|W| <= 1}.

    w: (out, in) or (out, in_channels, kh, kw) (any shape of >= 2 dims, per row = dim 0).
    Returns w's shape and dtype. BWN is this weight with float inputs; XNOR-Net adds
    :func:`xnor_input` and :func:`xnor_input_scale`.

    >>> xnor_weight(torch.tensor([[0.5, -1.0, 0.0, 1.5], [-0.25, 0.25, -0.5, 0.0]])).tolist()
    [[0.75, -0.75, 0.75, 0.75], [-0.25, 0.25, -0.25, 0.25]]
    """
    return XNORWeight.apply(weight_tensor("w", w))


def xnor_weight_codes(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The codes and scales of ``xnor_weight(w)``: codes int8 in {-1, +1} (w's shape) and
    alpha (out,) in w's dtype, with ``codes.to(w.dtype) * alpha.view(-1, *[1] * (w.dim() - 1))``
    equal (torch.equal) to ``xnor_weight(w)``. A row of zeros has alpha 0 (codes +1)."""
    w = weight_tensor("w", w)
    with torch.no_grad():
        return torch.where(w >= 0, 1, -1).to(torch.int8), _filter_mean_abs(w)


def _pair(name: str, value, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints, each >= minimum, as a pair (kernel size, stride, padding)."""
    values = tuple(value) if isinstance(value, tuple | list) else (value, value)
    if len(values) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return tuple(integer(name, v, minimum) for v in values)


def xnor_input_scale(
    x: torch.Tensor,
    kernel_size: int | tuple[int, int] | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
) -> torch.Tensor:
    """XNOR-Net's input scale (Rastegari et al. 2016, Sec. 3.2), detached (no gradient: it is a
    scale computed from the input, as in the paper's forward pass; the trainable path is the
    binary input's straight-through gradient).

    Linear (``kernel_size=None``): x (N, in) -> beta (N, 1) = (1/n) ||X||_l1, the mean |x| over
    the features (the beta of the binary dot product, Eq. 7-10).

    Convolution: x (N, C, H, W) -> K (N, 1, H', W'). A = sum_c |x_c| / C, (N, 1, H, W), and
    K = A * k, the convolution with the box filter k_ij = 1 / (kh kw) at the layer's stride and
    zero padding, so that K[n, 0, i, j] is the mean |x| over the receptive field of output (i, j)
    (Eq. 11: I * W ~ (sign(I) (*) sign(W)) . K alpha); H', W' are the layer's output size. Zero
    padding counts as |x| = 0, as in the layer's zero-padded input. kernel_size, stride, padding:
    an int or an (h, w) pair, as for ``torch.nn.Conv2d`` (no dilation).

    >>> xnor_input_scale(torch.tensor([[1.0, -3.0], [0.5, 0.5]])).tolist()
    [[2.0], [0.5]]
    """
    x = float_tensor("x", x)
    if kernel_size is None:
        if x.dim() != 2:
            raise ValueError(f"x of a linear layer must be (N, in), got shape {tuple(x.shape)}")
        return x.detach().abs().mean(dim=1, keepdim=True)
    if x.dim() != 4:
        raise ValueError(f"x of a conv layer must be (N, C, H, W), got shape {tuple(x.shape)}")
    kh, kw = _pair("kernel_size", kernel_size, 1)
    stride = _pair("stride", stride, 1)
    padding = _pair("padding", padding, 0)
    if x.shape[2] + 2 * padding[0] < kh or x.shape[3] + 2 * padding[1] < kw:
        raise ValueError(
            f"kernel_size {(kh, kw)} is larger than the padded input {tuple(x.shape[2:])} + "
            f"2 * {padding}"
        )
    with torch.no_grad():
        a = x.abs().mean(dim=1, keepdim=True)
        box = torch.full((1, 1, kh, kw), 1.0 / (kh * kw), dtype=x.dtype, device=x.device)
        return F.conv2d(a, box, stride=stride, padding=padding)


def xnor_input(x: torch.Tensor) -> torch.Tensor:
    """XNOR-Net's binary input sign(I) (Rastegari et al. 2016, Sec. 3.2), 0 -> +1, with the
    clipped straight-through gradient (:func:`sign_ste`). The layer multiplies its output by
    K = :func:`xnor_input_scale` and by alpha (Eq. 11). Any shape."""
    return sign_ste(x)


# --- thin module wrappers -------------------------------------------------------------------------
class BinaryActivation(nn.Module):
    """BNN's binary activation: forward :func:`sign_ste` (any shape)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sign_ste(x)


class QNNActivation(nn.Module):
    """QNN's k-bit activation: forward :func:`qnn_quantize` with the given bits (1..8)."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = _qnn_bits(bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return qnn_quantize(x, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"
