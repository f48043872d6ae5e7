"""Hutchinson's estimator of Hessian traces, per parameter tensor (layer) and per output row.

The trace of the Hessian H of a loss L(theta) is estimated without forming H (Hutchinson 1989;
HAWQ-V2, Dong et al. 2020, Sec. 3.2 and Alg. 1): draw a Rademacher vector z (entries +-1 with
probability 1/2 each, independent), form the Hessian-vector product Hz by double backprop
(the gradient g = dL/dtheta built with ``create_graph=True``, then Hz = d(g . z)/dtheta), and
average z^T H z over draws. Since E[z z^T] = I, E[z^T H z] = tr(H); for a symmetric H the
variance of one draw is 2 * sum_{i != j} H_ij^2 (the diagonal is estimated exactly).

Blocks. z runs over all the given tensors at once, and the estimate of a block's trace is the
part of the sum that falls in the block: for tensor t, sum_{i in t} z_i (Hz)_i, whose mean is
tr(H_tt) (the cross-block terms z_i H_ij z_j, j outside t, have mean 0 and only add variance).
A tensor's rows are its slices along the first axis (an output neuron of a linear layer, a
filter of a convolution; each entry of a 1-D tensor); a row's value is the same sum over the
row's entries (the diagonal estimate z * Hz summed over the row), an unbiased estimate of the
row's block trace. One Hessian-vector product per draw gives every block.

Stopping. PyHessian's rule (the code of HAWQ-V2's authors), here applied to every tensor: after
draw i, with m_i the running mean of a tensor's trace (m_0 = 0), stop when
|m_i - m_{i-1}| < tol * (|m_{i-1}| + 1e-6) for every tensor (HAWQ-V2 needs each block's trace,
so each block must settle), or after `max_samples` draws (PyHessian's maxIter, default 100;
tol 1e-3 is its default too); never before `min_samples` draws. The per-row estimates take the
same draws and are not part of the rule: their standard errors say how far they can be trusted.

>>> x = torch.zeros(3, requires_grad=True)
>>> loss = (torch.tensor([1.0, 2.0, 3.0]) * x.square()).sum()   # H = diag(2, 4, 6)
>>> est = hutchinson_trace(loss, [x], generator=torch.Generator().manual_seed(0))
>>> float(est.traces[0]), est.samples
(12.0, 2)

References: Hutchinson, A stochastic estimator of the trace of the influence matrix for
Laplacian smoothing splines (Commun. Stat. Simul. Comput. 1989); Dong, Yao, Arfeen, Gholami,
Mahoney, Keutzer, HAWQ-V2: Hessian Aware trace-Weighted Quantization of Neural Networks
(NeurIPS 2020); Yao, Gholami, Keutzer, Mahoney, PyHessian (IEEE BigData 2020).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .checks import integer, positive, tensor

__all__ = ["HessianTrace", "hessian_vector_product", "hutchinson_trace", "rademacher"]

_STOP_EPS = 1e-6  # PyHessian's guard in the relative change (a trace near 0 stops on |change|)


@dataclass(frozen=True)
class HessianTrace:
    """Hutchinson estimates of the Hessian's block traces, one entry per given tensor.

    traces, stderr: float64 (T,): the estimate of tr(H_tt) of each tensor and its standard error
    (sample standard deviation of the draws / sqrt(samples); NaN with one draw).
    row_traces, row_stderr: per tensor, float64 (rows,): the block trace of each row (slice
    along the first axis; one row for a 0-D tensor) and its standard error.
    sizes: the number of entries of each tensor; samples: the draws taken; converged: whether
    the stopping rule ended the estimate (False: `max_samples` did)."""

    traces: torch.Tensor
    stderr: torch.Tensor
    row_traces: tuple[torch.Tensor, ...]
    row_stderr: tuple[torch.Tensor, ...]
    sizes: tuple[int, ...]
    samples: int
    converged: bool

    @property
    def mean_traces(self) -> torch.Tensor:
        """float64 (T,): tr(H_tt) / entries, HAWQ-V2's average Hessian trace of a block."""
        return self.traces / torch.tensor(self.sizes, dtype=torch.float64)


def rademacher(
    shape: Sequence[int], *, dtype: torch.dtype = torch.float32, generator=None
) -> torch.Tensor:
    """Independent entries -1 or +1, each with probability 1/2, of `shape` and `dtype`."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator)}")
    bits = torch.randint(0, 2, tuple(shape), generator=generator)
    return (2 * bits - 1).to(dtype)


def hessian_vector_product(
    gradients: Sequence[torch.Tensor], params: Sequence[torch.Tensor], vectors
) -> tuple[torch.Tensor, ...]:
    """Hv, one tensor per parameter: d(g . v)/dtheta for g = dL/dtheta built with
    ``create_graph=True`` (Pearlmutter's double backprop), v the `vectors` (one per tensor).
    A gradient with no graph (L linear in the parameters) contributes H = 0. The graph is kept,
    so the product can be taken again with other vectors."""
    live = [i for i, g in enumerate(gradients) if g.requires_grad]
    if not live:
        return tuple(torch.zeros_like(p) for p in params)
    products = torch.autograd.grad(
        [gradients[i] for i in live],
        list(params),
        grad_outputs=[vectors[i] for i in live],
        retain_graph=True,
        allow_unused=True,
    )
    return tuple(
        torch.zeros_like(p) if h is None else h for p, h in zip(params, products, strict=True)
    )


def _checked(loss, params, max_samples, min_samples, tol, generator) -> list[torch.Tensor]:
    tensor("loss", loss)
    if loss.numel() != 1 or not loss.dtype.is_floating_point:
        raise ValueError(
            f"loss must be a floating-point scalar, got {loss.dtype} {tuple(loss.shape)}"
        )
    if not loss.requires_grad:
        raise ValueError("loss must depend on the parameters (it has no autograd graph)")
    if not bool(torch.isfinite(loss.detach()).all()):
        raise ValueError(f"loss must be finite, got {float(loss.detach())}")
    if isinstance(params, torch.Tensor) or not isinstance(params, Sequence) or not params:
        raise TypeError("params must be a non-empty list or tuple of tensors")
    for i, p in enumerate(params):
        tensor(f"params[{i}]", p)
        if not p.dtype.is_floating_point or not p.requires_grad:
            raise ValueError(f"params[{i}] must be a floating-point tensor that requires grad")
    integer("max_samples", max_samples)
    integer("min_samples", min_samples)
    if min_samples > max_samples:
        raise ValueError(f"min_samples ({min_samples}) must not exceed max_samples ({max_samples})")
    positive("tol", tol)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator)}")
    return list(params)


def hutchinson_trace(
    loss: torch.Tensor,
    params: Sequence[torch.Tensor],
    *,
    max_samples: int = 100,
    min_samples: int = 1,
    tol: float = 1e-3,
    generator: torch.Generator | None = None,
) -> HessianTrace:
    """Hutchinson's estimate of the Hessian trace of `loss` w.r.t. each of `params`, per tensor
    and per row (module docstring; HAWQ-V2 Alg. 1).

    loss: a scalar with its autograd graph (e.g. the cross-entropy of a batch); params: the
    tensors (leaves or not) it is differentiated by, requires_grad; max_samples >= 1 draws at
    most, min_samples at least; tol > 0: the relative change of every tensor's running mean
    that stops the draws (PyHessian's rule). Rademacher vectors come from `generator`.
    Returns a `HessianTrace` (float64 estimates and standard errors).
    """
    params = _checked(loss, params, max_samples, min_samples, tol, generator)
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
    rows = [p.shape[0] if p.dim() else 1 for p in params]
    # Welford running means and sums of squared deviations of each row's draws (per tensor:
    # the sum over its rows), float64 so that the variance of an exact diagonal stays 0.
    mean = [torch.zeros(r, dtype=torch.float64) for r in rows]
    m2 = [torch.zeros(r, dtype=torch.float64) for r in rows]
    total_mean = torch.zeros(len(params), dtype=torch.float64)
    total_m2 = torch.zeros(len(params), dtype=torch.float64)
    converged, n = False, 0
    while n < max_samples:
        z = [rademacher(p.shape, dtype=p.dtype, generator=generator).to(p.device) for p in params]
        hz = hessian_vector_product(grads, params, z)
        n += 1
        previous = total_mean.clone()
        totals = torch.empty(len(params), dtype=torch.float64)
        for t, (zt, ht) in enumerate(zip(z, hz, strict=True)):
            draw = (zt * ht).detach().double().reshape(rows[t], -1).sum(1)
            if not bool(torch.isfinite(draw).all()):
                raise ValueError(f"the Hessian-vector product of params[{t}] is not finite")
            delta = draw - mean[t]
            mean[t] += delta / n
            m2[t] += delta * (draw - mean[t])
            totals[t] = draw.sum()
        delta = totals - total_mean
        total_mean += delta / n
        total_m2 += delta * (totals - total_mean)
        change = (total_mean - previous).abs()
        if n >= min_samples and bool((change < tol * (previous.abs() + _STOP_EPS)).all()):
            converged = True
            break

    def stderr(m2_: torch.Tensor) -> torch.Tensor:
        if n < 2:
            return torch.full_like(m2_, math.nan)
        return (m2_.clamp(min=0) / (n - 1)).sqrt() / math.sqrt(n)

    return HessianTrace(
        traces=total_mean,
        stderr=stderr(total_m2),
        row_traces=tuple(mean),
        row_stderr=tuple(stderr(m) for m in m2),
        sizes=tuple(p.numel() for p in params),
        samples=n,
        converged=converged,
    )
