"""Quantizers: small pure functions from real weights to grid points or codes.

Each names its scheme. They hold no state, so trainers, the analysis module and the artifact
writer can share them.

Grid rounding (Li et al. 2017, Sec. 2): a uniform grid of step ``delta`` (the points k * delta,
k integer), reached by deterministic rounding (:func:`deterministic_round`) or by unbiased
stochastic rounding (:func:`stochastic_round`). BinaryConnect (Courbariaux et al. 2015): weights
binarized to +-scale in the forward pass, deterministically (:func:`binary_connect`) or
stochastically (:func:`binary_connect_stochastic`), with a straight-through gradient.

Activation codes of the discrete nets (`bayesq.runtime`): :func:`quantize_codes` (the reference
of the kernels' fused quantizer), with max-calibrated scales (:func:`activation_scale`,
:func:`calibrated_activations`).

References:
    Li, De, Xu, Studer, Samet, Goldstein. Training Quantized Nets: A Deeper Understanding.
    NeurIPS 2017.
    Courbariaux, Bengio, David. BinaryConnect: Training Deep Neural Networks with binary weights
    during propagations. NeurIPS 2015.
"""

from __future__ import annotations

import torch

from .ops import code_range

__all__ = [
    "activation_scale",
    "calibrated_activations",
    "quantize_codes",
    "BinaryConnectDeterministic",
    "BinaryConnectStochastic",
    "binary_connect",
    "binary_connect_stochastic",
    "codebook_codes",
    "deterministic_round",
    "snap_to_codebook",
    "stochastic_round",
]


def codebook_codes(
    values: torch.Tensor, scale: torch.Tensor | float, num_levels: int
) -> torch.Tensor:
    """Index of the nearest value of the symmetric codebook scale * [-m, ..., m] (num_levels = 2m+1).

    Returns int8 codes in [-m, m], the shape of `values`. Ties round half to even (torch.round).

    >>> codebook_codes(torch.tensor([-0.31, 0.04, 0.12, 0.9]), 0.2, 3).tolist()
    [-1, 0, 1, 1]
    """
    if num_levels < 1 or num_levels % 2 == 0 or num_levels > 255:
        raise ValueError(f"num_levels must be an odd integer in [1, 255], got {num_levels}")
    scale = torch.as_tensor(scale, dtype=values.dtype, device=values.device)
    if not bool((scale > 0).all()) or not bool(torch.isfinite(scale).all()):
        raise ValueError(f"codebook scale must be finite and > 0, got {scale}")
    if not bool(torch.isfinite(values).all()):
        raise ValueError("values to quantize contain NaN or infinity")
    half = (num_levels - 1) // 2
    return torch.round(values / scale).clamp(-half, half).to(torch.int8)


def snap_to_codebook(
    values: torch.Tensor,
    scale: torch.Tensor | float,
    num_levels: int,
    prune_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """values snapped to the nearest codebook value, and set to 0 where `prune_mask` is True.

    This is VNQ's post-training quantization (Achterhold et al. 2018, Sec. 3.3): weights whose
    posterior makes 0 plausible (log alpha >= 3) are pruned, the rest go to the nearest level.
    """
    codes = codebook_codes(values, scale, num_levels)
    if prune_mask is not None:
        if prune_mask.shape != values.shape:
            raise ValueError(f"prune_mask shape {tuple(prune_mask.shape)} != {tuple(values.shape)}")
        codes = codes.masked_fill(prune_mask, 0)
    return codes.to(values.dtype) * torch.as_tensor(scale, dtype=values.dtype)


def _check_step(step: torch.Tensor | float, values: torch.Tensor, name: str) -> torch.Tensor:
    """``step`` as a tensor on the device/dtype of ``values``; raises unless all finite and > 0."""
    step = torch.as_tensor(step, dtype=values.dtype, device=values.device)
    if not bool(torch.isfinite(step).all()) or not bool((step > 0).all()):
        raise ValueError(f"{name} must be finite and > 0, got {step}")
    return step


def _check_values(values: torch.Tensor) -> None:
    if not torch.is_floating_point(values):
        raise ValueError(f"values to quantize must be a floating-point tensor, got {values.dtype}")
    if not bool(torch.isfinite(values).all()):
        raise ValueError("values to quantize contain NaN or infinity")


def deterministic_round(values: torch.Tensor, delta: torch.Tensor | float) -> torch.Tensor:
    """Nearest point of the grid delta * Z, ties away from zero (Li et al. 2017, Eq. 2).

    Q_d(w) = sign(w) * delta * floor(|w| / delta + 1/2). ``delta`` is a float or a tensor that
    broadcasts against ``values`` (one step per row, say); the result has the broadcast shape.
    Not differentiable (its derivative is 0 almost everywhere): use it inside an update rule.

    >>> deterministic_round(torch.tensor([-0.75, 0.2, 0.25, 0.7]), 0.5).tolist()  # 0.25: a tie
    [-1.0, 0.0, 0.5, 0.5]
    """
    _check_values(values)
    delta = _check_step(delta, values, "delta")
    return torch.sign(values) * delta * torch.floor(values.abs() / delta + 0.5)


def stochastic_round(
    values: torch.Tensor,
    delta: torch.Tensor | float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Unbiased stochastic rounding to the grid delta * Z (Li et al. 2017, Eq. 3).

    Each entry goes up to the next grid point with probability (w - delta floor(w/delta)) / delta
    and down otherwise, independently, so E[Q_s(w)] = w and the rounding error r = Q_s(w) - w has
    E r_i^2 = delta^2 p_i (1 - p_i) <= delta^2 / 4. Grid points are returned unchanged. ``delta``
    broadcasts against ``values``; ``generator`` seeds the draws (the global one when None).

    >>> g = torch.Generator().manual_seed(0)
    >>> sorted(set(stochastic_round(torch.full((1000,), 0.3), 0.25, g).tolist()))
    [0.25, 0.5]
    """
    _check_values(values)
    delta = _check_step(delta, values, "delta")
    scaled = values / delta
    below = torch.floor(scaled)
    # torch.rand is in [0, 1): P(u < p) = p, and a point already on the grid (p = 0) never moves.
    u = torch.rand(scaled.shape, generator=generator, dtype=values.dtype, device=values.device)
    return (below + (u < scaled - below).to(values.dtype)) * delta


class BinaryConnectDeterministic(torch.autograd.Function):
    """BinaryConnect's deterministic binarization w_b = +scale if w >= 0 else -scale, with the
    straight-through gradient 1{|w| <= scale} (Courbariaux et al. 2015, Eq. 1; the clipped
    estimator of Hubara et al. 2016, as Larq's ``ste_sign``). BinaryConnect clips its float
    buffer to [-scale, scale] after each update, so inside that range the gradient passes whole.
    """

    @staticmethod
    def forward(ctx, weights: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weights, scale)
        return torch.where(weights >= 0, scale, -scale).to(weights.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        weights, scale = ctx.saved_tensors
        return grad_output * (weights.abs() <= scale).to(grad_output.dtype), None


class BinaryConnectStochastic(torch.autograd.Function):
    """BinaryConnect's stochastic binarization: +scale with probability hard_sigmoid(w / scale) =
    clip((w / scale + 1) / 2, 0, 1), else -scale (Courbariaux et al. 2015, Eq. 2-3), which is
    unbiased for |w| <= scale; straight-through gradient 1{|w| <= scale}.
    """

    @staticmethod
    def forward(
        ctx, weights: torch.Tensor, scale: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        ctx.save_for_backward(weights, scale)
        p_plus = ((weights / scale + 1.0) / 2.0).clamp(0.0, 1.0)
        u = torch.rand(
            weights.shape, generator=generator, dtype=weights.dtype, device=weights.device
        )
        return torch.where(u < p_plus, scale, -scale).to(weights.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        weights, scale = ctx.saved_tensors
        return grad_output * (weights.abs() <= scale).to(grad_output.dtype), None, None


def binary_connect(weights: torch.Tensor, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Deterministic BinaryConnect: +-scale by the sign of each weight (0 maps to +scale), with a
    straight-through gradient (see :class:`BinaryConnectDeterministic`). Same shape as weights.

    >>> w = torch.tensor([-0.3, 0.0, 2.0], requires_grad=True)
    >>> binary_connect(w).tolist()
    [-1.0, 1.0, 1.0]
    >>> binary_connect(w).sum().backward(); w.grad.tolist()
    [1.0, 1.0, 0.0]
    """
    _check_values(weights)
    scale = _check_step(scale, weights, "scale")
    return BinaryConnectDeterministic.apply(weights, scale)


def binary_connect_stochastic(
    weights: torch.Tensor,
    scale: torch.Tensor | float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Stochastic BinaryConnect: +-scale with P(+scale) = clip((w / scale + 1) / 2, 0, 1), so
    E[w_b] = w on [-scale, scale]; straight-through gradient (see :class:`BinaryConnectStochastic`).
    ``generator`` seeds the draws. Same shape as ``weights``.
    """
    _check_values(weights)
    scale = _check_step(scale, weights, "scale")
    return BinaryConnectStochastic.apply(weights, scale, generator)


# --- activation codes of the discrete nets ----------------------------------------------------------
def quantize_codes(x: torch.Tensor, scale: float, bits: int, mode: str) -> torch.Tensor:
    """The reference activation quantizer: int64 codes of float32 x (any shape).

    unsigned / signed: clamp(round(x / scale), lo, hi), round half to even; pm1: +1 where x >= 0,
    else -1. Bit-exact with the native `bayesq.bitserial.quantize_activations`.
    """
    if mode == "pm1":
        return torch.where(x >= 0, 1, -1).to(torch.int64)
    lo, hi = code_range(bits, mode)
    scale_t = torch.tensor(scale, dtype=torch.float32)
    return torch.round(x / scale_t).clamp(lo, hi).to(torch.int64)


def activation_scale(x: torch.Tensor, bits: int, mode: str) -> float:
    """The uniform quantizer scale that maps the largest |x| seen to the largest code.

    Max calibration: no activation of the calibration batch is clipped. Returns 1.0 for an
    all-zero x (any positive scale quantizes zeros to zero).
    """
    if not bool(torch.isfinite(x).all()):
        raise ValueError("calibration activations contain NaN or infinity")
    top = code_range(bits, mode)[1]
    peak = float(x.abs().max()) if mode == "signed" else float(x.clamp(min=0).max())
    return peak / top if peak > 0 else 1.0


def calibrated_activations(x: torch.Tensor, bits: int) -> dict:
    """The activation fields of a quantized layer calibrated on its inputs x: `bits` bits,
    unsigned where every input is >= 0 (after a ReLU), signed otherwise, max-calibrated scale."""
    mode = "unsigned" if bool((x >= 0).all()) else "signed"
    return {"act_bits": bits, "act_mode": mode, "act_scale": activation_scale(x, bits, mode)}
