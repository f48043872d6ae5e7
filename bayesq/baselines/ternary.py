"""Ternary weights: TWN (Li et al. 2016) and TTQ (Zhu et al. 2017).

Both methods keep a full-precision latent weight w and compute with a ternary one.

* TWN (:func:`twn_ternary`): w_t = alpha * t, t in {-1, 0, +1}, t = sign(w) where |w| > delta.
  The threshold delta and the scale alpha approximately minimise ||w - alpha t||^2 (the paper's
  objective); alpha and delta are recomputed from w at every forward pass and the gradient reaches
  w straight through, unchanged.
* TTQ (:func:`ttq_ternary`, :class:`TTQWeight`): w_t in {-W_n, 0, +W_p} with two trained scales
  per layer; the gradient reaching w is scaled by them and they receive gradients of their own.

Export: :func:`twn_codes` and :func:`ttq_codes` return int8 codes in {-1, 0, 1} and a scale with
``codes * scale`` equal to the forward value (TTQ only when W_n == W_p: its asymmetric values are
not codes times one scale).

Weight tensors are (out, in) or (out, in_channels, kh, kw); both methods are per layer (one
threshold and one scale per weight tensor), as the papers define them. TWN also offers
``per_row=True`` (one threshold and scale per output row), the variant of the authors' later
PyTorch release.

References:
    F. Li, B. Zhang, B. Liu. Ternary Weight Networks. arXiv:1605.04711 (v2, 2016).
    C. Zhu, S. Han, H. Mao, W. J. Dally. Trained Ternary Quantization. ICLR 2017 (arXiv:1612.01064).
"""

from __future__ import annotations

import torch
from torch import nn

from ..checks import number, positive, tensor, weight_tensor

__all__ = [
    "TTQTernarize",
    "TTQWeight",
    "TWNTernarize",
    "ttq_codes",
    "ttq_normalize_",
    "ttq_ternary",
    "twn_codes",
    "twn_ternary",
    "twn_threshold",
]


def _rows(s: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A per-layer (0-d) or per-row ((out,)) statistic shaped to broadcast against w."""
    return s if s.dim() == 0 else s.view(-1, *[1] * (w.dim() - 1))


# --- TWN ------------------------------------------------------------------------------------------
def twn_threshold(w: torch.Tensor, factor: float = 0.7, per_row: bool = False) -> torch.Tensor:
    """TWN's threshold delta = factor * E|W| = factor / n * sum_i |W_i| (Li et al. 2016, Sec. 2).

    The exact threshold maximises (sum_{i in I_delta} |W_i|)^2 / |I_delta| over delta, with
    I_delta = {i : |W_i| > delta}; the paper replaces it by the rule of thumb delta* ~ 0.7 E|W|,
    between the optimum for uniform weights (delta* = a/3 = 2/3 E|W| on [-a, a]) and for Gaussian
    weights (delta* ~ 0.6 sigma ~ 0.75 E|W|). Returns a 0-d tensor (one per layer), or shape (out,)
    with ``per_row``, in the dtype of w; no gradient flows through it.

    >>> twn_threshold(torch.tensor([[1.0, -2.0], [3.0, -4.0]]), factor=0.5)
    tensor(1.2500)
    """
    weight_tensor("w", w)
    factor = positive("factor", factor)
    a = w.detach().abs()
    return factor * (a.flatten(1).mean(1) if per_row else a.mean())


def _twn_parts(w: torch.Tensor, factor: float, per_row: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(t in {-1, 0, 1} as w's dtype, alpha): the ternary assignment and its scale."""
    delta = twn_threshold(w, factor, per_row)
    a = w.detach().abs()
    kept = a > _rows(delta, w)  # strictly above: |W_i| <= delta maps to 0
    t = torch.sign(w.detach()) * kept
    kept_abs = (a * kept).flatten(1) if per_row else (a * kept).reshape(1, -1)
    count = kept.flatten(1).sum(1) if per_row else kept.sum().reshape(1)
    # alpha*_delta = mean of |W_i| over I_delta; an empty I_delta (all weights at or below the
    # threshold, e.g. all zero) gives alpha = 0 (the sum is 0 too), never 0/0
    alpha = kept_abs.sum(1) / count.clamp(min=1).to(w.dtype)
    return t, alpha if per_row else alpha.reshape(())


class TWNTernarize(torch.autograd.Function):
    """TWN's forward alpha * t with the straight-through gradient dL/dw = dL/dw_t (Li et al.
    2016, Sec. 2: the ternary weights serve the forward and backward passes, and the gradient
    they receive updates the float weights). alpha and delta are constants of the backward pass."""

    @staticmethod
    def forward(ctx, weights: torch.Tensor, factor: float, per_row: bool) -> torch.Tensor:
        t, alpha = _twn_parts(weights, factor, per_row)
        return _rows(alpha, weights) * t

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output, None, None


def twn_ternary(w: torch.Tensor, factor: float = 0.7, per_row: bool = False) -> torch.Tensor:
    """TWN's ternary weight alpha * t, the shape and dtype of w (Li et al. 2016, Sec. 2).

    t_i = +1 if W_i > delta, 0 if |W_i| <= delta, -1 if W_i < -delta (the threshold-based ternary
    function), delta = :func:`twn_threshold`, and alpha = (1 / |I_delta|) sum_{i in I_delta} |W_i|,
    the optimal scale for that delta. A tensor with no weight above delta gives zeros (alpha = 0).
    The gradient passes straight through to w (:class:`TWNTernarize`).

    >>> twn_ternary(torch.tensor([[0.25, -0.75, 1.0], [-1.25, 0.0, 0.5]])).tolist()
    [[0.0, -0.875, 0.875], [-0.875, 0.0, 0.875]]
    """
    weight_tensor("w", w)
    factor = positive("factor", factor)
    return TWNTernarize.apply(w, factor, bool(per_row))


def twn_codes(
    w: torch.Tensor, factor: float = 0.7, per_row: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, alpha): int8 codes t in {-1, 0, 1} (shape of w) and TWN's scale, 0-d or (out,)
    with ``per_row``, so that ``codes * alpha.view(-1, 1, ...)`` equals :func:`twn_ternary`."""
    weight_tensor("w", w)
    factor = positive("factor", factor)
    with torch.no_grad():
        t, alpha = _twn_parts(w, factor, bool(per_row))
    return t.to(torch.int8), alpha


# --- TTQ ------------------------------------------------------------------------------------------
def _check_scale(name: str, s) -> torch.Tensor:
    tensor(name, s)
    if not torch.is_floating_point(s):
        raise TypeError(f"{name} must be a floating-point tensor, got {s.dtype}")
    if s.dim() != 0:
        raise ValueError(f"{name} must be a 0-d tensor (one per layer), got shape {tuple(s.shape)}")
    value = float(s.detach())
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return s


def _check_threshold(threshold) -> float:
    threshold = number("threshold", threshold)
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1) (a fraction of max|w|), got {threshold}")
    return threshold


class TTQTernarize(torch.autograd.Function):
    """TTQ's forward and its gradients (Zhu et al. 2017, Eq. 1-3).

    Forward (Eq. 1): W_p where w > delta, -W_n where w < -delta, 0 where |w| <= delta.
    Backward: dL/dW_p = sum_{i in I_p} dL/dw_t(i) (Eq. 2); dL/dW_n = -sum_{i in I_n} dL/dw_t(i):
    the paper's Eq. 2 prints this sum without the minus sign, but w_t = -W_n on I_n, so the chain
    rule (and the authors' TensorFlow code, which differentiates automatically) gives the minus.
    dL/dw = W_p g on I_p, g on I_z, W_n g on I_n (Eq. 3). delta is a constant of the backward pass.
    """

    @staticmethod
    def forward(
        ctx, weights: torch.Tensor, w_pos: torch.Tensor, w_neg: torch.Tensor, delta: torch.Tensor
    ) -> torch.Tensor:
        pos, neg = weights > delta, weights < -delta
        ctx.save_for_backward(pos, neg, w_pos, w_neg)
        p, n = w_pos.to(weights.dtype), w_neg.to(weights.dtype)
        return torch.where(pos, p, torch.where(neg, -n, weights.new_zeros(())))

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        pos, neg, w_pos, w_neg = ctx.saved_tensors
        g = grad_output
        p, n = w_pos.to(g.dtype), w_neg.to(g.dtype)
        grad_w = g * torch.where(pos, p, torch.where(neg, n, g.new_ones(())))
        grad_pos = (g * pos).sum().to(w_pos.dtype)
        grad_neg = -(g * neg).sum().to(w_neg.dtype)
        return grad_w, grad_pos, grad_neg, None


def ttq_ternary(
    w: torch.Tensor, w_pos: torch.Tensor, w_neg: torch.Tensor, threshold: float = 0.05
) -> torch.Tensor:
    """TTQ's ternary weight in {-W_n, 0, +W_p}, the shape and dtype of w (Zhu et al. 2017, Eq. 1).

    delta = threshold * max|w| (the paper's threshold heuristic, t = 0.05 in its CIFAR-10 and
    ImageNet runs); w_pos = W_p and w_neg = W_n are positive 0-d tensors, usually the Parameters
    of a :class:`TTQWeight`. Gradients reach w, w_pos and w_neg (:class:`TTQTernarize`).

    Normalisation: the paper first divides the full-precision weights by their largest magnitude
    (to [-1, 1]). This function does not expect that: the ternary assignment is invariant to a
    positive rescaling of w, since delta scales with max|w|, and the gradient is with respect to w
    as passed (the authors' code does not normalise either). To start from the paper's point,
    normalise a pre-trained latent weight once with :func:`ttq_normalize_`.

    >>> w = torch.tensor([[0.5, -0.02, 0.04, -1.0], [0.06, -0.05, 0.0, 0.2]])
    >>> ttq_ternary(w, torch.tensor(2.0), torch.tensor(0.5)).tolist()
    [[2.0, 0.0, 0.0, -0.5], [2.0, 0.0, 0.0, 2.0]]
    """
    weight_tensor("w", w)
    _check_scale("w_pos", w_pos)
    _check_scale("w_neg", w_neg)
    threshold = _check_threshold(threshold)
    delta = threshold * w.detach().abs().amax()
    return TTQTernarize.apply(w, w_pos, w_neg, delta)


def ttq_codes(
    w: torch.Tensor, w_pos: torch.Tensor, w_neg: torch.Tensor, threshold: float = 0.05
) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, scale): int8 codes in {-1, 0, 1} (shape of w) and the 0-d scale W_p, so that
    ``codes * scale`` equals :func:`ttq_ternary`.

    Raises ValueError unless W_n == W_p: TTQ's values {-W_n, 0, +W_p} are integer codes times one
    scale only in that case (export the two values separately otherwise).
    """
    weight_tensor("w", w)
    _check_scale("w_pos", w_pos)
    _check_scale("w_neg", w_neg)
    threshold = _check_threshold(threshold)
    if not bool(w_pos.detach() == w_neg.detach()):
        raise ValueError(
            f"TTQ's values {{-W_n, 0, +W_p}} are codes times one scale only when W_n == W_p, "
            f"got W_p = {float(w_pos.detach())}, W_n = {float(w_neg.detach())}"
        )
    with torch.no_grad():
        delta = threshold * w.abs().amax()
        codes = (w > delta).to(torch.int8) - (w < -delta).to(torch.int8)
        scale = w_pos.detach().to(w.dtype).clone()
    return codes, scale


@torch.no_grad()
def ttq_normalize_(weight: torch.Tensor) -> torch.Tensor:
    """Divide `weight` in place by its largest magnitude, to [-1, 1] (Zhu et al. 2017, Sec. 3: the
    first step, applied to the pre-trained full-precision weights). An all-zero weight is left
    as it is. Returns `weight`."""
    weight_tensor("weight", weight)
    peak = weight.abs().amax()
    if bool(peak > 0):
        weight.div_(peak)
    return weight


class TTQWeight(nn.Module):
    """The trained scales of one TTQ layer: Parameters ``w_pos`` (W_p) and ``w_neg`` (W_n), 0-d.

    ``module(w)`` is :func:`ttq_ternary` (w, W_p, W_n, threshold): the layer's ternary weight,
    with gradients to w and to both scales.

    Initialisation: W_p = W_n = ``init_scale`` = 1.0 by default. The paper does not state a value
    beyond its latent weights living in [-1, 1]; 1.0 is what the authors' released code uses, and
    with latent weights normalised to [-1, 1] (:func:`ttq_normalize_`) it starts the ternary
    weights at +-(the largest latent weight). For a latent weight kept in its original units,
    pass ``init_scale = max|w|`` for the same start.
    """

    def __init__(self, threshold: float = 0.05, init_scale: float = 1.0) -> None:
        super().__init__()
        self.threshold = _check_threshold(threshold)
        init_scale = positive("init_scale", init_scale)
        self.w_pos = nn.Parameter(torch.tensor(init_scale))
        self.w_neg = nn.Parameter(torch.tensor(init_scale))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return ttq_ternary(weight, self.w_pos, self.w_neg, self.threshold)

    def codes(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`ttq_codes` of `weight` with this layer's scales and threshold."""
        return ttq_codes(weight, self.w_pos, self.w_neg, self.threshold)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"
