"""The multi-spike log-uniform prior of Variational Network Quantization and its approximate KL.

The prior puts a log-uniform spike, p(w) proportional to 1 / |w - c|, at every value c of a symmetric
codebook {-m r, ..., -r, 0, r, ..., m r} (ternary {-r, 0, r} by default). A Gaussian posterior
N(theta, sigma^2) then pays little KL when its mean sits on a codebook value or when it is so wide
that the weight can be pruned, which is what makes the posterior mass settle on quantization levels.

References:
    Achterhold, Koehler, Schmeink, Genewein. Variational Network Quantization. ICLR 2018 (Sec. 3,
    Eq. 7-9: the prior and the spike-weighted KL approximation).
    Molchanov, Ashukha, Vetrov. Variational Dropout Sparsifies Deep Neural Networks. ICML 2017
    (Eq. 14: the k1, k2, k3 approximation of the KL to a single log-uniform spike).
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution
from torch.distributions import Normal, constraints
from torch.distributions.kl import register_kl
from torch.distributions.utils import broadcast_all

from .vnq_kernels import multi_spike_kl

__all__ = [
    "MultiSpikeLogUniform",
    "NormalLogVariance",
    "codebook_offsets",
    "kl_log_uniform",
    "kl_multi_spike",
    "kl_normal_multi_spike",
]

# Molchanov et al. (2017), Eq. 14: -KL ~= k1 sigmoid(k2 + k3 log alpha) - 0.5 log(1 + 1/alpha) - k1.
K1, K2, K3 = 0.63576, 1.87320, 1.48695

# VNQ builds its spike weighting for a codebook scale r = 0.2 with tau = 0.075 (Sec. 3.2). The KL is
# invariant to rescaling theta, sigma and the codebook together, so for any scale the width of the
# spike windows is this fixed fraction of the level spacing.
TAU_PER_LEVEL_SPACING = 0.075 / 0.2

# Guards log((theta - c)^2) where a mean sits exactly on a codebook value (alpha = inf, KL = 0).
_MIN_SQUARED_DISTANCE = 1e-16


def codebook_offsets(num_levels: int, dtype=None, device=None) -> torch.Tensor:
    """Codebook values in units of the level spacing r: shape (num_levels,).

    >>> codebook_offsets(3).tolist()
    [-1.0, 0.0, 1.0]
    """
    if not isinstance(num_levels, int) or num_levels < 1 or num_levels % 2 == 0:
        raise ValueError(
            f"num_levels must be a positive odd integer (symmetric codebook with 0), got {num_levels!r}"
        )
    half = (num_levels - 1) // 2
    return torch.arange(-half, half + 1, dtype=dtype, device=device)


def kl_log_uniform(log_alpha: torch.Tensor) -> torch.Tensor:
    """Approximate KL(N(theta, alpha theta^2) || log-uniform spike at 0), elementwise, in nats.

    KL ~= k1 - k1 sigmoid(k2 + k3 log alpha) + 0.5 log(1 + 1/alpha); tends to 0 as alpha -> inf
    (the constant of the improper prior is chosen that way).

    References: Molchanov et al. (2017), Eq. 14.
    """
    return K1 - K1 * torch.sigmoid(K2 + K3 * log_alpha) + 0.5 * F.softplus(-log_alpha)


def kl_normal_multi_spike(
    loc: torch.Tensor, scale: torch.Tensor, codebook_scale: torch.Tensor, num_levels: int = 3
) -> torch.Tensor:
    """Approximate KL(N(loc, scale^2) || multi-spike log-uniform prior), elementwise, in nats.

    The same as :func:`kl_multi_spike` with log sigma^2 = 2 log scale (the form torch's
    ``kl_divergence`` hands over).
    """
    codebook_scale = torch.as_tensor(codebook_scale, dtype=loc.dtype)
    if codebook_scale.dim() == 0:  # keep r a scalar: the native kernel takes one spacing
        loc, scale = broadcast_all(loc, scale)
    else:
        loc, scale, codebook_scale = broadcast_all(loc, scale, codebook_scale)
    return kl_multi_spike(loc, 2.0 * torch.log(scale), codebook_scale, num_levels)


def kl_multi_spike(
    loc: torch.Tensor,
    log_sigma2: torch.Tensor,
    codebook_scale: torch.Tensor,
    num_levels: int = 3,
    backend: str = "auto",
) -> torch.Tensor:
    """Approximate KL(N(loc, exp(log_sigma2)) || multi-spike log-uniform prior), elementwise, nats.

    F_KL(theta, sigma) = sum_{k: c_k != 0} Omega(theta - c_k) F_LU(theta - c_k, sigma)
                         + Omega_0(theta) F_LU(theta, sigma),
    Omega(x) = exp(-x^2 / (2 tau^2)), Omega_0 = max(0, 1 - sum_{k: c_k != 0} Omega(theta - c_k)),
    where F_LU(x, sigma) is the single-spike KL at log alpha = log sigma^2 - log x^2 and
    tau = 0.375 r. (The clamp of Omega_0 at 0 only acts for codebooks of 5 or more levels, where the
    windows of the outer spikes overlap; VNQ defines the ternary case, where Omega_0 > 0.9 at 0.)

    F_LU is evaluated as k1 sigmoid(k3 log u - k2) + 0.5 softplus(log u) with u = x^2 / sigma^2 =
    1 / alpha, algebraically equal to Eq. 14 of Molchanov et al. and fewer passes over the weights
    (this runs on every weight at every training step).

    Args:
        loc: posterior mean theta. log_sigma2: log posterior variance, broadcastable to loc.
        codebook_scale: the level spacing r > 0, broadcastable to loc.
        num_levels: odd number of codebook values.

    Returns: the KL per weight, the broadcast shape of the inputs.

    The approximation is good near the spikes (where the posterior is narrow compared with the
    spacing) and off by up to about 1 nat between them and for posteriors as wide as the spacing;
    VNQ reports 1.07 nats as its largest deviation from a Monte-Carlo KL.

    backend: "reference" (this function in torch ops, autograd), "native" (the fused C++ kernel
        of bayesq.vnq_kernels, which computes the KL and its gradient in one pass; float32 CPU
        tensors of one shape and a 0-d r) or "auto" (native where it applies, else reference).

    References: Achterhold et al. (2018), Eq. 9 and Sec. 3.2; Molchanov et al. (2017), Eq. 14.
    """
    if backend not in ("auto", "native", "reference"):
        raise ValueError(f"backend must be 'auto', 'native' or 'reference', got {backend!r}")
    codebook_scale = torch.as_tensor(codebook_scale, dtype=loc.dtype, device=loc.device)
    native_applies = (
        loc.dtype == torch.float32
        and loc.device.type == "cpu"
        and log_sigma2.shape == loc.shape
        and log_sigma2.dtype == torch.float32
        and codebook_scale.dim() == 0
        and num_levels <= 15
    )
    if backend == "native" or (backend == "auto" and native_applies):
        return multi_spike_kl(loc, log_sigma2, codebook_scale, num_levels)
    return _kl_multi_spike_reference(loc, log_sigma2, codebook_scale, num_levels)


def _kl_multi_spike_reference(loc, log_sigma2, codebook_scale, num_levels):
    """kl_multi_spike in plain torch ops: the slow, obvious version the native kernel must match."""
    two_tau2 = 2.0 * (TAU_PER_LEVEL_SPACING * codebook_scale) ** 2

    def spike_kl(squared_distance: torch.Tensor) -> torch.Tensor:
        log_u = torch.log(squared_distance.clamp_min(_MIN_SQUARED_DISTANCE)) - log_sigma2
        return K1 * torch.sigmoid(K3 * log_u - K2) + 0.5 * F.softplus(log_u)

    kl = 0.0
    weight_of_nonzero_spikes = 0.0
    for offset in codebook_offsets(num_levels).tolist():
        if offset == 0:
            continue
        squared_distance = (loc - offset * codebook_scale).square()
        window = torch.exp(-squared_distance / two_tau2)
        kl = kl + window * spike_kl(squared_distance)
        weight_of_nonzero_spikes = weight_of_nonzero_spikes + window
    zero_window = 1.0 - weight_of_nonzero_spikes
    if num_levels > 3:
        zero_window = zero_window.clamp_min(0.0)
    return kl + zero_window * spike_kl(loc.square())


class MultiSpikeLogUniform(TorchDistribution):
    """Improper multi-spike log-uniform prior over a symmetric codebook (VNQ's weight prior).

    p(w) proportional to sum_k p_k / |w - c_k|, c_k = k r for k = -m..m (num_levels = 2m + 1),
    p_k = 1 / num_levels. The density cannot be normalized, so ``log_prob`` returns
    log sum_k p_k / |w - c_k|, i.e. the log density **up to an additive constant**, and the
    distribution cannot be sampled. It is meant as a Pyro prior whose KL from a Gaussian posterior
    is taken analytically (see :func:`kl_normal_multi_spike`, registered with ``register_kl``).

    Args:
        scale: codebook level spacing r > 0 (tensor; may require grad: VNQ learns it).
        num_levels: odd number of codebook values (1 gives sparse variational dropout's prior).

    References: Achterhold et al. (2018), Eq. 7.

    >>> prior = MultiSpikeLogUniform(torch.tensor(0.2)).expand((2, 3))
    >>> prior.batch_shape, prior.codebook().tolist()
    (torch.Size([2, 3]), [-0.2, 0.0, 0.2])
    """

    arg_constraints = {"scale": constraints.positive}
    support = constraints.real
    has_rsample = False

    def __init__(self, scale, num_levels: int = 3, validate_args=None):
        codebook_offsets(num_levels)  # validates num_levels
        (self.scale,) = broadcast_all(scale)
        self.num_levels = num_levels
        # One spacing shared by all weights (VNQ learns one r per layer): kept unexpanded so that
        # the KL can use the fused kernel, which takes r as a scalar.
        self.shared_scale = self.scale if self.scale.dim() == 0 else None
        super().__init__(self.scale.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(MultiSpikeLogUniform, _instance)
        batch_shape = torch.Size(batch_shape)
        new.scale = self.scale.expand(batch_shape)
        new.num_levels = self.num_levels
        new.shared_scale = self.shared_scale
        super(MultiSpikeLogUniform, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def codebook(self) -> torch.Tensor:
        """Codebook values, shape batch_shape + (num_levels,)."""
        offsets = codebook_offsets(
            self.num_levels, dtype=self.scale.dtype, device=self.scale.device
        )
        return self.scale.unsqueeze(-1) * offsets

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log sum_k p_k / |value - c_k| (improper: up to an additive constant)."""
        if self._validate_args:
            self._validate_sample(value)
        # The density is infinite on a spike; a draw that lands exactly there (it happens in float32)
        # gets the value at the smallest normal distance instead, so sums over weights stay finite.
        tiny = torch.finfo(value.dtype).tiny
        distances = (value.unsqueeze(-1) - self.codebook()).abs().clamp_min(tiny)
        return torch.logsumexp(-torch.log(distances), dim=-1) - math.log(self.num_levels)

    def sample(self, sample_shape=torch.Size()):
        raise NotImplementedError(
            "MultiSpikeLogUniform is improper and cannot be sampled; use it as a prior whose KL "
            "from a Gaussian guide is computed analytically (e.g. with TraceMeanField_ELBO)"
        )


@register_kl(Normal, MultiSpikeLogUniform)
def _kl_normal_multi_spike(q: Normal, p: MultiSpikeLogUniform) -> torch.Tensor:
    """KL(q || p) by VNQ's spike-weighted approximation (Achterhold et al. 2018, Eq. 9)."""
    scale = p.shared_scale if p.shared_scale is not None else p.scale
    return kl_normal_multi_spike(q.loc, q.scale, scale, p.num_levels)


class NormalLogVariance(dist.Normal):
    """N(loc, exp(log_variance)) that keeps its log variance: VNQ's posterior q(w).

    The KL to the multi-spike prior is a function of log sigma^2; from a plain Normal it has to be
    recovered as 2 log(scale) with scale = sqrt(exp(log sigma^2)), four elementwise passes forward
    and four backward over every weight in every SVI step (about 2 ms of a LeNet-5 step). The KL
    registered for this class reads ``log_variance`` directly; everything else is a Normal.
    """

    def __init__(self, loc, log_variance, validate_args=None):
        loc, log_variance = broadcast_all(loc, log_variance)
        self.log_variance = log_variance
        super().__init__(loc, (0.5 * log_variance).exp(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(NormalLogVariance, _instance)
        new.log_variance = self.log_variance.expand(torch.Size(batch_shape))
        return super().expand(batch_shape, _instance=new)


@register_kl(NormalLogVariance, MultiSpikeLogUniform)
def _kl_normal_log_variance_multi_spike(
    q: NormalLogVariance, p: MultiSpikeLogUniform
) -> torch.Tensor:
    """KL(q || p) as for a Normal (Achterhold et al. 2018, Eq. 9), from q's log variance."""
    scale = p.shared_scale if p.shared_scale is not None else p.scale
    return kl_multi_spike(q.loc, q.log_variance, scale, p.num_levels)
