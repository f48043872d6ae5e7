"""Python face of the C++ kernels (bayesq._kernels): validation first, then the native call.

The native functions take arrays without conversion (a wrong dtype or a strided view would be
refused with TypeError); the wrappers here check dtype, shape and contiguity themselves and raise
ValueError naming what is wrong.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import _kernels

__all__ = [
    "cpu_features",
    "local_reparameterization_sample",
    "multi_spike_kl",
    "popcount",
    "standard_normal",
]


def cpu_features() -> dict[str, bool]:
    """ISA extensions of the running CPU that the kernels can dispatch on."""
    return dict(_kernels.cpu_features())


def popcount(words) -> int:
    """Number of set bits in a 1-D array of uint64 words."""
    words = np.asarray(words)
    if words.dtype != np.uint64:
        raise ValueError(f"popcount expects uint64 words, got dtype {words.dtype}")
    if words.ndim != 1:
        raise ValueError(f"popcount expects a 1-D array, got shape {words.shape}")
    return int(_kernels.popcount_words(np.ascontiguousarray(words)))


class _MultiSpikeKL(torch.autograd.Function):
    """Elementwise VNQ KL with its gradient computed in the same fused C++ pass.

    forward(theta (n,), log_sigma2 (n,), scale (0-d), num_levels, isa) -> kl (n,); the gradients
    are stored, and backward only scales them by the incoming gradient.
    """

    @staticmethod
    def forward(ctx, theta, log_sigma2, scale, num_levels, isa):
        kl = torch.empty_like(theta)
        grad_theta = torch.empty_like(theta)
        grad_log_sigma2 = torch.empty_like(theta)
        grad_scale = torch.empty_like(theta)
        non_finite = _kernels.multi_spike_kl(
            theta.detach(),
            log_sigma2.detach(),
            float(scale.detach()),
            num_levels,
            kl,
            grad_theta,
            grad_log_sigma2,
            grad_scale,
            isa,
            1,
        )
        if non_finite:
            raise ValueError(
                f"multi_spike_kl: {non_finite} non-finite values in theta or log_sigma2"
            )
        ctx.save_for_backward(grad_theta, grad_log_sigma2, grad_scale)
        return kl

    @staticmethod
    def backward(ctx, grad_kl):
        grad_theta, grad_log_sigma2, grad_scale = ctx.saved_tensors
        return (
            grad_kl * grad_theta if ctx.needs_input_grad[0] else None,
            grad_kl * grad_log_sigma2 if ctx.needs_input_grad[1] else None,
            torch.dot(grad_kl, grad_scale).reshape(()) if ctx.needs_input_grad[2] else None,
            None,
            None,
        )


def multi_spike_kl(
    theta: torch.Tensor,
    log_sigma2: torch.Tensor,
    scale: torch.Tensor,
    num_levels: int = 3,
    isa: str | None = None,
) -> torch.Tensor:
    """VNQ's multi-spike KL per weight, fused in C++ (see bayesq.priors.kl_multi_spike).

    Args: theta, log_sigma2: float32 CPU tensors of one shape; scale: the codebook spacing r, a
    0-d tensor (gradients flow to it); isa: force "portable", "avx2" or "avx512" (tests).
    Returns the KL per weight, the shape of theta, differentiable in all three tensors.
    """
    for name, t in (("theta", theta), ("log_sigma2", log_sigma2)):
        if t.dtype != torch.float32 or t.device.type != "cpu":
            raise ValueError(
                f"multi_spike_kl: {name} must be a float32 CPU tensor, got {t.dtype} on {t.device}"
            )
    if theta.shape != log_sigma2.shape:
        raise ValueError(
            f"multi_spike_kl: theta {tuple(theta.shape)} and log_sigma2 {tuple(log_sigma2.shape)} differ"
        )
    if scale.dim() != 0:
        raise ValueError(
            f"multi_spike_kl: scale must be a 0-d tensor, got shape {tuple(scale.shape)}"
        )
    r = float(scale.detach())
    if not r > 0 or not math.isfinite(r):
        raise ValueError(f"multi_spike_kl: scale must be finite and > 0, got {r}")
    if num_levels < 1 or num_levels > 15 or num_levels % 2 == 0:
        raise ValueError(f"multi_spike_kl: num_levels must be odd, 1 to 15, got {num_levels}")
    flat = _MultiSpikeKL.apply(
        theta.contiguous().view(-1), log_sigma2.contiguous().view(-1), scale, num_levels, isa
    )
    return flat.view(theta.shape)


def standard_normal(shape, generator: torch.Generator | None = None, isa: str | None = None):
    """A float32 CPU tensor of independent N(0, 1) draws from the C++ counter-based generator.

    The 64-bit seed is drawn from torch's generator (the default one unless `generator` is
    given), so `torch.manual_seed` makes the draws reproducible. Values are bounded by 5.77 in
    magnitude (24-bit uniforms in Box-Muller; P(|z| > 5.77) = 8e-9 under N(0, 1)).
    """
    out = torch.empty(shape, dtype=torch.float32)
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    _kernels.normal_fill(out.view(-1), seed, isa, 1)
    return out


class _LocalReparameterizationSample(torch.autograd.Function):
    """out = mean + sqrt(var + floor) * z, z ~ N(0, 1) drawn in C++ and regenerated in backward
    from its seed (counter-based), so neither z nor sqrt(var) is stored."""

    @staticmethod
    def forward(ctx, mean, var, floor, seed, isa):
        out = torch.empty_like(mean)
        _kernels.lrt_sample(
            mean.detach().view(-1), var.detach().view(-1), out.view(-1), seed, floor, isa
        )
        ctx.save_for_backward(var)
        ctx.floor, ctx.seed, ctx.isa = floor, seed, isa
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (var,) = ctx.saved_tensors
        grad_var = None
        if ctx.needs_input_grad[1]:
            grad_var = torch.empty_like(var)
            _kernels.lrt_sample_backward(
                grad_out.contiguous().view(-1),
                var.view(-1),
                grad_var.view(-1),
                ctx.seed,
                ctx.floor,
                ctx.isa,
            )
        return grad_out, grad_var, None, None, None


def local_reparameterization_sample(
    mean: torch.Tensor, var: torch.Tensor, floor: float = 1e-8, isa: str | None = None
) -> torch.Tensor:
    """A draw of N(mean, var + floor) per element, differentiable in mean and var (fused C++).

    mean, var: float32 CPU tensors of one shape (pre-activation means and variances of a layer).
    The seed comes from torch's generator, so torch.manual_seed makes draws reproducible.
    """
    for name, t in (("mean", mean), ("var", var)):
        if t.dtype != torch.float32 or t.device.type != "cpu":
            raise ValueError(
                f"local_reparameterization_sample: {name} must be float32 on CPU, got {t.dtype} on {t.device}"
            )
    if mean.shape != var.shape:
        raise ValueError(
            f"local_reparameterization_sample: mean {tuple(mean.shape)} and var {tuple(var.shape)} differ"
        )
    seed = int(torch.randint(0, 2**62, ()))
    return _LocalReparameterizationSample.apply(
        mean.contiguous(), var.contiguous(), float(floor), seed, isa
    )
