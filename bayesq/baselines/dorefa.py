"""DoReFa-Net: k-bit weights, activations and gradients (Zhou et al. 2016).

Every quantizer of DoReFa-Net is built on one rounding of [0, 1] to k bits,
quantize_k(r) = round((2^k - 1) r) / (2^k - 1), passed straight through in the backward pass
(:func:`quantize_k`, Eq. 5-6). Weights: for 1 bit the sign scaled by the layer's mean |w|
(Eq. 7-8), for k > 1 bits the tanh-squashed weights mapped to [0, 1], quantized and mapped back
to [-1, 1] (:func:`dorefa_weight`, Eq. 9). Activations: quantize_k of the activation clipped to
[0, 1] (:func:`dorefa_activation`, Eq. 10). Gradients: quantize_k with uniform noise of half a
step, scaled per sample by the largest |gradient| (:func:`dorefa_gradient`, Eq. 12), applied in
the backward pass by :func:`quantize_gradient`.

A bit width of 32 means "not quantized" for each of W, A and G, as in the paper's tables:
``dorefa_weight(w, 32)`` is w, ``dorefa_activation(x, 32)`` is clip(x, 0, 1) (the clip is the
net's nonlinearity, which stays; only the rounding goes), ``dorefa_gradient(g, 32)`` is g.

References:
    Zhou, Wu, Ni, Zhou, Wen, Zou. DoReFa-Net: Training Low Bitwidth Convolutional Neural
    Networks with Low Bitwidth Gradients. arXiv:1606.06160, 2016.
"""

from __future__ import annotations

import torch

from ..checks import float_tensor, integer

__all__ = [
    "FULL_PRECISION",
    "MAX_BITS",
    "checked_bits",
    "dorefa_activation",
    "dorefa_gradient",
    "dorefa_weight",
    "dorefa_weight_codes",
    "quantize_gradient",
    "quantize_k",
]

FULL_PRECISION = 32  # the bit width that means "not quantized"
MAX_BITS = 16  # codes up to 2^16 - 1 in magnitude: exact integers in float32 (24-bit significand)


def checked_bits(bits) -> int:
    """bits in 1..MAX_BITS, or FULL_PRECISION (32) for "not quantized" (also PACT's)."""
    bits = integer("bits", bits)
    if bits > MAX_BITS and bits != FULL_PRECISION:
        raise ValueError(
            f"bits must be an integer in [1, {MAX_BITS}] or {FULL_PRECISION} (not quantized), "
            f"got {bits}"
        )
    return bits


def _code_dtype(signed_bits: int) -> torch.dtype:
    """The narrowest signed integer dtype holding `signed_bits`-bit signed codes."""
    return torch.int8 if signed_bits <= 8 else torch.int16 if signed_bits <= 16 else torch.int32


# --- quantize_k: the k-bit rounding of [0, 1] -----------------------------------------------------
class QuantizeK(torch.autograd.Function):
    """Forward round((2^k - 1) x) / (2^k - 1); backward the gradient unchanged (Eq. 5-6)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bits: int) -> torch.Tensor:
        m = 2**bits - 1
        return torch.round(x * m) / m

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output, None


def quantize_k(x: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa's k-bit quantizer of x in [0, 1] (Zhou et al. 2016, Eq. 5):
    r_o = round((2^k - 1) r_i) / (2^k - 1), with the straight-through gradient
    dc/dr_i = dc/dr_o (Eq. 6). round is half to even (torch.round).

    x any shape, every entry in [0, 1] (the equation's domain; a ValueError otherwise);
    bits in 1..16, or 32: identity. Returns x's shape and dtype.

    >>> quantize_k(torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0]), 2).tolist()  # levels 0, 1/3, 2/3, 1
    [0.0, 0.3333333432674408, 0.6666666865348816, 1.0, 1.0]
    """
    x = float_tensor("x", x)
    bits = checked_bits(bits)
    if bool(((x < 0) | (x > 1)).any()):
        raise ValueError("quantize_k is defined on [0, 1]: x has entries outside it")
    return x if bits == FULL_PRECISION else QuantizeK.apply(x, bits)


# --- weights --------------------------------------------------------------------------------------
def _unit_weight(w: torch.Tensor) -> torch.Tensor:
    """x = tanh(w) / (2 max|tanh(w)|) + 1/2 in [0, 1], the argument of quantize_k in Eq. 9."""
    t = torch.tanh(w)
    peak = t.abs().max()
    # an all-zero layer has tanh = 0 everywhere: any divisor gives the 1/2 of Eq. 9's limit
    return t / torch.where(peak > 0, 2.0 * peak, torch.ones_like(peak)) + 0.5


def _odd_codes(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """2 quantize_k(x) - 1 as codes (x's dtype) and a 0-d scale: (2 round(m x) - m) and 1 / m,
    m = 2^k - 1. x = 1/2 (w = 0) gives m x = 2^(k-1) - 1/2, a tie that rounds half to even up
    to 2^(k-1): the code +1."""
    m = 2**bits - 1
    return 2.0 * torch.round(x * m) - m, torch.tensor(1.0, dtype=x.dtype, device=x.device) / m


def _sign_mean(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sign(w) in {-1, +1} (0 -> +1) as w's dtype and E(|w|) over the whole layer (Eq. 7)."""
    return torch.where(w >= 0, 1.0, -1.0).to(w.dtype), w.abs().mean()


class DoReFaSign(torch.autograd.Function):
    """Forward sign(w) E(|w|) (Eq. 7); backward the gradient unchanged (Eq. 8)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor) -> torch.Tensor:
        codes, scale = _sign_mean(w)
        return codes * scale

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output


class OddGrid(torch.autograd.Function):
    """Forward 2 quantize_k(x) - 1, computed as codes * (1 / (2^k - 1)) so that it equals the
    exported codes times scale bit for bit; backward 2 g (quantize_k straight through, Eq. 6)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bits: int) -> torch.Tensor:
        codes, scale = _odd_codes(x, bits)
        return codes * scale

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return 2.0 * grad_output, None


def dorefa_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa's k-bit weights (Zhou et al. 2016, Sec. 2.2).

    bits = 1: r_o = sign(r_i) E(|r_i|), E the mean over the whole layer (Eq. 7), sign(0) = +1
    (the usual sign(0) = 0 would make a third level; we keep two, so the codes stay 1-bit); backward
    dc/dr_i = dc/dr_o (Eq. 8), E held constant as the paper's straight-through rule says.
    bits = k > 1: r_o = 2 quantize_k(tanh(r_i) / (2 max|tanh(r)|) + 1/2) - 1 (Eq. 9), max over
    the layer, values the odd multiples of 1 / (2^k - 1) in [-1, 1]; the gradient is the chain
    rule through tanh and the max with quantize_k straight through (Eq. 6). An all-zero layer
    maps to +1 / (2^k - 1) (Eq. 9 divides by 0 there; we read its ratio as 0, and w = 0 always
    rounds up, see :func:`dorefa_weight_codes`). bits = 32: w unchanged.

    w any shape (one layer); returns w's shape and dtype, equal (torch.equal) to
    ``codes.to(w.dtype) * scale`` of :func:`dorefa_weight_codes`.

    >>> dorefa_weight(torch.tensor([-2.0, 0.0, 1.0, 3.0]), 1).tolist()  # E|w| = 1.5
    [-1.5, 1.5, 1.5, 1.5]
    """
    w = float_tensor("w", w)
    bits = checked_bits(bits)
    if w.numel() == 0:
        raise ValueError("w must be a non-empty weight tensor")
    if bits == FULL_PRECISION:
        return w
    return DoReFaSign.apply(w) if bits == 1 else OddGrid.apply(_unit_weight(w), bits)


def dorefa_weight_codes(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The integer codes and 0-d scale of ``dorefa_weight(w, bits)``, with
    ``codes.to(w.dtype) * scale`` equal (torch.equal) to it.

    bits = 1: codes in {-1, +1} (int8), scale E|w| (a layer of zeros: scale 0). bits = k > 1:
    the odd codes 2 round((2^k - 1) x) - (2^k - 1) in [-(2^k - 1), 2^k - 1] (x the argument of
    quantize_k in Eq. 9), scale 1 / (2^k - 1). These codes need k + 1 bits signed (2^k odd
    values spaced by 2; stored as (c + 2^k - 1) / 2 they fit k bits unsigned): int8 for k <= 7,
    int16 for k <= 15, int32 for k = 16. bits = 32 has no codes (a ValueError).
    """
    w = float_tensor("w", w)
    bits = checked_bits(bits)
    if bits == FULL_PRECISION:
        raise ValueError("bits = 32 means not quantized: there are no codes")
    if w.numel() == 0:
        raise ValueError("w must be a non-empty weight tensor")
    with torch.no_grad():
        codes, scale = _sign_mean(w) if bits == 1 else _odd_codes(_unit_weight(w), bits)
    return codes.to(_code_dtype(1 if bits == 1 else bits + 1)), scale


# --- activations ----------------------------------------------------------------------------------
def dorefa_activation(x: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa's k-bit activation f_alpha^k(r) = quantize_k(r) of r = clip(x, 0, 1) (Zhou et al.
    2016, Eq. 10; the paper bounds activations by such a clip before quantizing).

    Gradient: 1 on [0, 1] (the clip's, ends included, times quantize_k's straight-through 1),
    0 outside. bits = 32: clip(x, 0, 1) unrounded. x any shape; returns x's shape and dtype.

    >>> dorefa_activation(torch.tensor([-0.5, 0.3, 0.5, 1.7]), 2).tolist()
    [0.0, 0.3333333432674408, 0.6666666865348816, 1.0]
    """
    x = float_tensor("x", x)
    bits = checked_bits(bits)
    # torch.clamp passes the gradient where min <= x <= max and cancels it elsewhere
    y = x.clamp(0.0, 1.0)
    return y if bits == FULL_PRECISION else QuantizeK.apply(y, bits)


# --- gradients ------------------------------------------------------------------------------------
def dorefa_gradient(
    g: torch.Tensor, bits: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """DoReFa's stochastic k-bit gradient quantizer (Zhou et al. 2016, Eq. 12):

        g~ = 2 max0(|g|) [quantize_k(g / (2 max0(|g|)) + 1/2 + N(k)) - 1/2],
        N(k) = sigma / (2^k - 1), sigma ~ Uniform(-1/2, 1/2) per entry,

    max0 the max over all axes but the first (per sample: g is (N, ...), N the batch). The
    noise makes it unbiased: with y = (2^k - 1)(g / (2 max0) + 1/2), round(y + sigma) is
    ceil(y) with probability y - floor(y), so E g~ = g, and each entry's variance is at most
    (max0 / (2^k - 1))^2 (a quarter of the squared step 2 max0 / (2^k - 1)). Values: max0 times
    the odd multiples of 1 / (2^k - 1) in [-1, 1]. A row of zeros stays zero (Eq. 12 divides by
    0 there; its max0 factor makes the result 0). The final clamp of the rounded y to
    [0, 2^k - 1] only catches float rounding of y + sigma at the two ends (exact arithmetic never
    leaves it: sigma < 1/2).

    g: (N, ...) with N >= 1 axis; bits in 1..16, or 32: g unchanged; ``generator`` seeds sigma
    (the global generator when None). Returns g's shape and dtype; not differentiable (it is
    applied to gradients inside the backward pass, :func:`quantize_gradient`).
    """
    g = float_tensor("g", g)
    bits = checked_bits(bits)
    if g.dim() < 1:
        raise ValueError("g must have a first (batch) axis: max0 is over all axes but the first")
    if bits == FULL_PRECISION or g.numel() == 0:
        return g
    m = 2**bits - 1
    rows = g.detach().reshape(g.shape[0], -1)
    peak = rows.abs().amax(dim=1, keepdim=True)
    safe = torch.where(peak > 0, peak, torch.ones_like(peak))
    sigma = torch.rand(rows.shape, generator=generator, dtype=g.dtype, device=g.device) - 0.5
    # m (g / (2 max0) + 1/2 + sigma / m) = m (g / (2 max0) + 1/2) + sigma: the noise in steps
    level = torch.round(m * (rows / (2.0 * safe) + 0.5) + sigma).clamp(0, m)
    # 2 max0 (level / m - 1/2) written as max0 (2 level - m) / m: the odd code times the step
    return (peak * (2.0 * level - m) / m).reshape(g.shape)


class QuantizeGradient(torch.autograd.Function):
    """Identity forward; backward :func:`dorefa_gradient` of the incoming gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bits: int, generator: torch.Generator | None):
        ctx.bits, ctx.generator = bits, generator
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return dorefa_gradient(grad_output, ctx.bits, ctx.generator), None, None


def quantize_gradient(
    x: torch.Tensor, bits: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """x unchanged in the forward pass; in the backward pass the gradient reaching x is replaced
    by ``dorefa_gradient(grad, bits, generator)`` (Zhou et al. 2016, Sec. 2.4 and Algorithm 1:
    the gradient with respect to each layer's output is quantized before it propagates back).

    The training loop puts it on each layer's output, ``y = quantize_gradient(layer(x), bits_g)``.
    x (N, ...) any floating shape with a batch axis; bits in 1..16, or 32: x returned as is.
    ``generator`` seeds the noise of every backward pass through this call.
    """
    x = float_tensor("x", x)
    bits = checked_bits(bits)
    if x.dim() < 1:
        raise ValueError("x must have a first (batch) axis: max0 is over all axes but the first")
    return x if bits == FULL_PRECISION else QuantizeGradient.apply(x, bits, generator)
