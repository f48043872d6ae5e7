"""The VNQ training kernels: the fused multi-spike KL, normal noise and the local
reparameterization sample, in C++ (csrc/vnq/), behind autograd Functions.

  * `multi_spike_kl`: VNQ's KL per weight (Achterhold et al. 2018, Eq. 9, as
    `bayesq.priors.kl_multi_spike`) and its gradient in one pass;
  * `standard_normal`: N(0, 1) draws from a counter-based generator seeded from torch's;
  * `local_reparameterization_sample`: mean + sqrt(var + floor) z and its slope in one pass
    (Kingma et al. 2015, the local reparameterization trick).

Each checks its arguments first (ValueError naming the argument, `bayesq.kernels`) and takes
`isa=` to force a path ("portable", "avx2", "avx512"; tests).
"""

from __future__ import annotations

import math

import torch

from . import _kernels
from .kernels import FLOAT32_MAX, check_isa, is_int, is_real

__all__ = [
    "kernel_threads",
    "local_reparameterization_sample",
    "multi_spike_kl",
    "standard_normal",
]


def kernel_threads() -> int:
    """Threads of the VNQ training kernels (KL, LRT sample) inside a training step: 1.

    They can split their work over the kernels' pool (csrc/common/thread_pool.h), but measured
    in situ (experiments/bench_vnq.py, LeNet-5, 2 cores) a step with 2 kernel threads was no
    faster: between torch's ops its OpenMP workers keep spinning on the cores the pool would use.
    """
    return 1


def _check_tensor(t, name: str, what: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{what}: {name} must be a torch tensor, got {type(t).__name__}")
    return t


def _check_float32_pair(what: str, **tensors: torch.Tensor) -> None:
    """Raise ValueError unless the two named tensors are float32 CPU tensors of one shape."""
    for name, t in tensors.items():
        _check_tensor(t, name, what)
        if t.dtype != torch.float32 or t.device.type != "cpu":
            raise ValueError(
                f"{what}: {name} must be a float32 CPU tensor, got {t.dtype} on {t.device}"
            )
    (a, x), (b, y) = tensors.items()
    if x.shape != y.shape:
        raise ValueError(f"{what}: {a} {tuple(x.shape)} and {b} {tuple(y.shape)} differ")


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
            kernel_threads(),
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
    _check_float32_pair("multi_spike_kl", theta=theta, log_sigma2=log_sigma2)
    _check_tensor(scale, "scale", "multi_spike_kl")
    if scale.dim() != 0:
        raise ValueError(
            f"multi_spike_kl: scale must be a 0-d tensor, got shape {tuple(scale.shape)}"
        )
    r = float(scale.detach())
    if not r > 0 or not math.isfinite(r):
        raise ValueError(f"multi_spike_kl: scale must be finite and > 0, got {r}")
    if not is_int(num_levels) or num_levels < 1 or num_levels > 15 or num_levels % 2 == 0:
        raise ValueError(
            f"multi_spike_kl: num_levels must be an odd int, 1 to 15, got {num_levels!r}"
        )
    check_isa(isa, "multi_spike_kl")
    flat = _MultiSpikeKL.apply(
        theta.contiguous().view(-1), log_sigma2.contiguous().view(-1), scale, int(num_levels), isa
    )
    return flat.view(theta.shape)


# per call: the generator's pair counter is 32 bits (csrc/vnq/normal_rng.h)
_MAX_NOISE_VALUES = 2**33


def standard_normal(shape, generator: torch.Generator | None = None, isa: str | None = None):
    """A float32 CPU tensor of independent N(0, 1) draws from the C++ counter-based generator.

    The 64-bit seed is drawn from torch's generator (the default one unless `generator` is
    given), so `torch.manual_seed` makes the draws reproducible. Values are bounded by 5.77 in
    magnitude (24-bit uniforms in Box-Muller; P(|z| > 5.77) = 8e-9 under N(0, 1)).
    """
    what = "standard_normal"
    dims = (shape,) if is_int(shape) else shape
    if not isinstance(dims, tuple | list | torch.Size) or not all(
        is_int(d) and d >= 0 for d in dims
    ):
        raise ValueError(f"{what}: shape must be an int >= 0 or a sequence of them, got {shape!r}")
    if math.prod(int(d) for d in dims) > _MAX_NOISE_VALUES:
        raise ValueError(f"{what}: shape {tuple(dims)} has more than 2^33 values")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"{what}: generator must be None or a torch.Generator")
    check_isa(isa, what)
    out = torch.empty(tuple(int(d) for d in dims), dtype=torch.float32)
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    _kernels.normal_fill(out.view(-1), seed, isa, 1)
    return out


class _LocalReparameterizationSample(torch.autograd.Function):
    """out = mean + sqrt(var + floor) * z, z ~ N(0, 1) drawn in C++; the same pass writes the slope
    dout/dvar = z / (2 sqrt(var + floor)), so the backward pass is one multiply."""

    @staticmethod
    def forward(ctx, mean, var, floor, seed, isa):
        out = torch.empty_like(mean)
        dout_dvar = torch.empty_like(mean)
        invalid = _kernels.lrt_sample(
            mean.detach().view(-1), var.detach().view(-1), out.view(-1), dout_dvar.view(-1),
            seed, floor, isa, kernel_threads(),
        )  # fmt: skip
        if invalid:
            raise ValueError(_lrt_failure(mean.detach(), var.detach(), floor))
        ctx.save_for_backward(dout_dvar)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (dout_dvar,) = ctx.saved_tensors
        grad_var = grad_out * dout_dvar if ctx.needs_input_grad[1] else None
        return grad_out, grad_var, None, None, None


def _lrt_failure(mean: torch.Tensor, var: torch.Tensor, floor: float) -> str:
    """Why the kernel flagged a sample (only computed once it has): the first cause found."""
    what = "local_reparameterization_sample"
    checks = (
        ((var < 0).sum(), "var has {} negative entries (a variance must be >= 0)"),
        ((~torch.isfinite(var)).sum(), "var has {} NaN or infinite entries"),
        ((~torch.isfinite(mean)).sum(), "mean has {} NaN or infinite entries"),
        ((var + floor == 0).sum(), "var + floor is 0 at {} entries (use floor > 0)"),
    )
    for count, message in checks:
        if int(count):
            return f"{what}: " + message.format(int(count))
    return f"{what}: the sample overflows float32 (|mean| or var near 3.4e38)"


def local_reparameterization_sample(
    mean: torch.Tensor, var: torch.Tensor, floor: float = 1e-8, isa: str | None = None
) -> torch.Tensor:
    """A draw of N(mean, var + floor) per element, differentiable in mean and var (fused C++).

    mean, var: float32 CPU tensors of one shape (pre-activation means and variances of a layer);
    var >= 0 and both finite. floor: a finite number >= 0 (float32), added to var so that the
    slope z / (2 sqrt(var + floor)) stays finite where var = 0. A negative variance or floor, a
    NaN or infinite entry, or var + floor = 0 raises ValueError: the kernel finds them in the
    pass that draws the sample (integer tests on the bit patterns, in registers), so the check
    costs no extra pass over the arrays; only then is the cause looked up.
    The seed comes from torch's generator, so torch.manual_seed makes draws reproducible.
    """
    what = "local_reparameterization_sample"
    _check_float32_pair(what, mean=mean, var=var)
    if not is_real(floor) or not 0 <= floor <= FLOAT32_MAX:
        raise ValueError(f"{what}: floor must be a finite number >= 0 (float32), got {floor!r}")
    check_isa(isa, what)
    seed = int(torch.randint(0, 2**62, ()))
    return _LocalReparameterizationSample.apply(
        mean.contiguous(), var.contiguous(), float(floor), seed, isa
    )
