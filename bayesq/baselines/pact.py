"""PACT: activations clipped at a learned level alpha, then quantized to k bits (Choi et al. 2018).

PACT replaces ReLU by y = clip(x, 0, alpha) with alpha a trained parameter (Eq. 1), quantizes y
uniformly to k bits on [0, alpha] (Eq. 2), and trains alpha by the straight-through gradient
dy_q / dalpha = 1{x >= alpha} (Eq. 3): the activations that the clip cut push alpha up, the L2
regularization of alpha (:func:`pact_penalty`) pulls it down, so the clip settles where the
quantization error and the clipping error balance.

References:
    Choi, Wang, Venkataramani, Chuang, Srinivasan, Gopalakrishnan. PACT: Parameterized Clipping
    Activation for Quantized Neural Networks. arXiv:1805.06085, 2018.
"""

from __future__ import annotations

import torch
from torch import nn

from ..checks import integer, positive, tensor
from .dorefa import FULL_PRECISION, MAX_BITS, checked_bits

__all__ = ["FULL_PRECISION", "MAX_BITS", "PACT", "pact", "pact_penalty"]


def _broadcast_alpha(alpha: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """alpha viewed to broadcast against x: 0-d as is, (C,) as (1, C, 1, ...) on x's axis 1."""
    return alpha if alpha.dim() == 0 else alpha.view(1, -1, *[1] * (x.dim() - 2))


class PACTFunction(torch.autograd.Function):
    """Forward y_q = round(y (2^k - 1) / alpha) alpha / (2^k - 1), y = clip(x, 0, alpha) (Eq. 1-2);
    backward dy_q/dx = 1{0 <= x < alpha} (straight through the rounding) and
    dy_q/dalpha = 1{x >= alpha} (Eq. 3), summed over the entries that share an alpha."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:
        a = _broadcast_alpha(alpha, x)
        ctx.save_for_backward(x, alpha)
        y = torch.minimum(x.clamp(min=0.0), a)
        if bits == FULL_PRECISION:
            return y
        m = 2**bits - 1
        return torch.round(y * m / a) * (a / m)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        x, alpha = ctx.saved_tensors
        a = _broadcast_alpha(alpha, x)
        grad_x = grad_output * ((x >= 0) & (x < a)).to(grad_output.dtype)
        grad_alpha = grad_output * (x >= a).to(grad_output.dtype)
        if alpha.dim() == 0:
            grad_alpha = grad_alpha.sum()
        else:  # one alpha per channel: sum over every axis but the channel axis 1
            grad_alpha = grad_alpha.transpose(0, 1).reshape(alpha.shape[0], -1).sum(dim=1)
        return grad_x, grad_alpha, None


def pact(x: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:
    """PACT's activation (Choi et al. 2018): y = clip(x, 0, alpha) = 0.5 (|x| - |x - alpha| +
    alpha) (Eq. 1), y_q = round(y (2^k - 1) / alpha) alpha / (2^k - 1) (Eq. 2), the 2^k levels
    j alpha / (2^k - 1), j = 0 .. 2^k - 1; round is half to even (torch.round).

    Gradients: dy_q/dx = 1 for 0 <= x < alpha, else 0 (the rounding passed straight through,
    the clip's derivative; x = alpha goes to alpha's side, as Eq. 3 counts it there);
    dy_q/dalpha = 1{x >= alpha} (Eq. 3: the rounding straight through, dy/dalpha of the clip),
    summed over the entries sharing each alpha.

    x: any shape; with a per-channel alpha, (N, C, ...) with channels on axis 1. alpha: a
    positive finite tensor of x's dtype, 0-d (one per layer, as in the paper) or (C,) (one per
    channel of axis 1). bits in 1..16, or 32: clip only. Returns x's shape and dtype.

    >>> pact(torch.tensor([-1.0, 0.4, 1.2, 2.6, 5.0]), torch.tensor(3.0), 2).tolist()  # step 1
    [0.0, 0.0, 1.0, 3.0, 3.0]
    """
    x = tensor("x", x)
    alpha = tensor("alpha", alpha)
    bits = checked_bits(bits)
    if not torch.is_floating_point(x):
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if alpha.dtype != x.dtype:
        raise TypeError(f"alpha must have x's dtype {x.dtype}, got {alpha.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or infinity")
    if alpha.dim() == 1:
        if x.dim() < 2 or x.shape[1] != alpha.shape[0]:
            raise ValueError(
                f"a per-channel alpha of shape {tuple(alpha.shape)} needs x (N, C, ...) with "
                f"C = {alpha.shape[0]}, got x of shape {tuple(x.shape)}"
            )
    elif alpha.dim() != 0:
        raise ValueError(f"alpha must be 0-d or (C,), got shape {tuple(alpha.shape)}")
    if not bool(torch.isfinite(alpha).all()) or not bool((alpha > 0).all()):
        raise ValueError(f"alpha must be finite and > 0, got {alpha.detach().tolist()}")
    return PACTFunction.apply(x, alpha, bits)


class PACT(nn.Module):
    """PACT's activation layer: :func:`pact` with alpha a trained ``nn.Parameter``.

    alpha starts at ``alpha_init`` (10.0 by default: large, so that at first the clip cuts
    almost nothing and the net starts close to a ReLU net). alpha is 0-d by default, or one per
    channel with ``channels`` (alpha (channels,), x (N, channels, ...)). Add
    ``weight_decay * pact_penalty(net)`` to the loss to regularize alpha as the paper does.
    """

    def __init__(self, bits: int, alpha_init: float = 10.0, channels: int | None = None) -> None:
        super().__init__()
        self.bits = checked_bits(bits)
        alpha_init = positive("alpha_init", alpha_init)
        shape = () if channels is None else (integer("channels", channels),)
        self.alpha = nn.Parameter(torch.full(shape, alpha_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pact(x, self.alpha, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, alpha shape={tuple(self.alpha.shape)}"


def pact_penalty(net: nn.Module) -> torch.Tensor:
    """sum of alpha^2 over every :class:`PACT` module of `net` (every entry of a per-channel
    alpha): the paper's L2 regularization of alpha (Choi et al. 2018), which the trainer
    multiplies by its weight decay and adds to the loss. A 0-d tensor, differentiable in each
    alpha; 0 for a net without PACT modules."""
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    alphas = [m.alpha for m in net.modules() if isinstance(m, PACT)]
    if not alphas:
        return torch.zeros(())
    return torch.stack([a.square().sum() for a in alphas]).sum()
