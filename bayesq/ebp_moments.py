"""The moments of one EBP layer: its forward means and variances and the derivatives of its update.

Expectation backpropagation (Soudry, Hubara and Meir 2014) propagates, through an MLP of sign units
v_l = sign(W_l v_{l-1} + b_l) with a factorized posterior q(W) = prod_ij q(W_ij), a mean and a
variance per unit (the central limit theorem makes each pre-activation Gaussian), and updates each
weight's natural parameter by a backward pass of the same form as backpropagation. This module is
that math for one layer, batched (batch-major tensors); :class:`bayesq.ebp.EBPNet` holds the
posterior and runs it layer by layer.

Notation: a layer has fan-in K, posterior mean Wbar (out, K) and variance Var W, a real bias b
(out,), input moments vbar = E v and Var v (B, K) (the first layer's input x is deterministic:
vbar = x, Var v = 0). Forward (the paper's algorithm, with the "+1" and the K + 1 of the authors'
Matlab release, whose biases enter the pre-activation like a weight on a constant input):

    mu     = (vbar Wbar^T + b) / sqrt(K + 1)
    sigma2 = (sum_j [Var W_kj E v_j^2 + Wbar_kj^2 Var v_j] + noise_var) / (K + 1)
    hidden:  P(v = +1) = Phi(mu / sigma),  vbar' = 2 Phi - 1 = erf(mu / (sigma sqrt 2)),
             Var v' = 1 - vbar'^2          (E v^2 = 1 for sign units)

``noise_var`` (the reference code's "+1") is a Gaussian noise of that variance added to every
un-normalized pre-activation W v + b; it keeps sigma2 > 0 once all weights are certain.

Backward, with N(0; mu, s2) the Gaussian density at 0 and y in {-1, +1} (one-vs-all targets):

    output:  E_L = y * 2 N(0; mu_L, s2_L) / Phi(y mu_L / sigma_L) / sqrt(K_L + 1)
    hidden:  delta_l = E_{l+1} Wbar_{l+1}  (the mean before its update),
             E_l = delta_l * 2 N(0; mu_l, s2_l) / sqrt(K_l + 1)
    update:  h_l += 1/2 E_l^T vbar_{l-1},  b_l += 1/2 sum_batch E_l     (summed over the mini-batch)

This is h += d ln P(y | x, q) / d Wbar with sigma held fixed (the paper drops the variance path,
which is of lower order in 1/sqrt(K)). Ternary weights, q(W = s) proportional to
exp(h s + a s^2), also move a: :func:`magnitude_update` (its derivation in its docstring).

References:
    Soudry, Hubara, Meir. Expectation Backpropagation: Parameter-Free Training of Multilayer
    Neural Networks with Continuous or Discrete Weights. NeurIPS 2014 (Algorithm 1); the authors'
    Matlab release (Learning_Algorithms/Binary_EBP_minibatch.m, Real_EBP_minibatch.m).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = [
    "LayerCache",
    "Workspace",
    "hidden_signal",
    "layer_cache",
    "magnitude_update",
    "output_signal",
    "preactivation_moments",
    "ternary_moments",
]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_SQRT_2_OVER_PI, _SQRT_HALF = math.sqrt(2.0 / math.pi), math.sqrt(0.5)
# Values below this are set to 0 where they would feed a GEMM: subnormal floats (below 1.2e-38 in
# float32) make x86 arithmetic take a slow path up to 100x slower, and far-tail Gaussian densities
# and certain weights produce them. 1e-30 is negligible beside any update or variance used here.
_TINY = 1e-30


def ternary_moments(h: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of q(W = s) proportional to exp(h s + a s^2), s in {-1, 0, +1}.

    h, a: (out, in) -> (mean, variance), each (out, in). Exponents are shifted by their maximum
    max(0, a + |h|) so nothing overflows, and the variance is written as
    (p0 (p+ + p-) + 4 p+ p-) so it never cancels (E W^2 - Wbar^2 would near |Wbar| = 1).
    """
    top = (a + h.abs()).clamp_min(0.0)
    # exponents floored at -60: a level with relative probability below e^-60 ~ 1e-26 counts as
    # that, not as a subnormal (see _TINY)
    e0 = torch.exp((-top).clamp_min(-60.0))
    ep = torch.exp((a + h - top).clamp_min(-60.0))
    em = torch.exp((a - h - top).clamp_min(-60.0))
    z = e0 + ep + em
    mean = (ep - em) / z
    var = (e0 * (ep + em) + 4.0 * ep * em) / z.square()
    return mean, var.masked_fill_(var < _TINY, 0.0)


class Workspace:
    """Reusable (out, in) work tensors, one per (layer, name): the caches are rebuilt after every
    mini-batch, and fresh 1.5 MB allocations each time cost as much as the arithmetic."""

    def __init__(self) -> None:
        self._tensors: dict[tuple[int, str], torch.Tensor] = {}

    def get(
        self, layer: int, name: str, like: torch.Tensor, fill: float | None = None
    ) -> torch.Tensor:
        """A tensor of like's shape and dtype, the same one on each call while those hold.

        New tensors are uninitialized, or full of ``fill`` (a constant the caller never writes).
        """
        buf = self._tensors.get((layer, name))
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype:
            new = torch.empty_like(like) if fill is None else torch.full_like(like, fill)
            buf = self._tensors[(layer, name)] = new
        return buf


class LayerCache(NamedTuple):
    """What the forward pass reads of one layer's weight posterior (rebuilt after each update).

    The first layer needs Var W as a matrix (its input x^2 varies per weight); deeper layers see
    sign units with E v^2 = 1, so Var W enters only through its row sums, and Wbar^2 multiplies
    Var v.

    Attributes:
        mean: Wbar, (out, in).
        var: first layer: Var W (out, in), or the float variance every real weight shares;
            deeper layers: None.
        mean_sq: deeper layers: Wbar^2 (out, in); first layer: None.
        var_rows: deeper layers: sum_j Var W_kj (out,); first layer: None.
    """

    mean: torch.Tensor
    var: torch.Tensor | float | None
    mean_sq: torch.Tensor | None
    var_rows: torch.Tensor | None


def _ternary_moments_into(
    h: torch.Tensor, a: torch.Tensor, layer: int, work: Workspace
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`ternary_moments` in reusable buffers, with half the passes over the weights.

    With n = P(W != 0) = sigmoid(a + log 2 cosh h) and tanh h = 2 sigmoid(2h) - 1:
    Wbar = n tanh h and Var W = n - Wbar^2. log 2 cosh h = |h| - log max(p, 1 - p) with
    p = sigmoid(2h), which is exact in float32 (the larger of p, 1 - p is >= 1/2).
    """
    p = torch.mul(h, 2.0, out=work.get(layer, "p", h))
    torch.sigmoid(p, out=p)
    n = torch.sub(1.0, p, out=work.get(layer, "n", h))
    torch.maximum(p, n, out=n).log_()
    torch.sub(h.abs(), n, out=n).add_(a).clamp_min_(-60.0)  # e^-60: no subnormal n (_TINY)
    torch.sigmoid(n, out=n)
    mean = p.mul_(2.0).sub_(1.0).mul_(n)
    var = torch.mul(mean, mean, out=work.get(layer, "var", h))
    torch.sub(n, var, out=var)
    return mean, var


def layer_cache(
    family: str,
    layer: int,
    h: torch.Tensor,
    a: torch.Tensor | None,
    real_var: float,
    work: Workspace,
) -> LayerCache:
    """The :class:`LayerCache` of layer ``layer`` (0: the first) from its natural parameters.

    family: "binary" (Wbar = tanh h, Var W = 1 - Wbar^2), "ternary" (h and a (out, in), see
    :func:`ternary_moments`) or "real" (Wbar = h itself, read before h's update in each step;
    Var W = real_var). The tensors live in ``work``'s buffers and are overwritten by the next call.
    """
    if family == "binary":  # tanh h = 2 sigmoid(2h) - 1: sigmoid is several times faster on CPU
        mean = torch.mul(h, 2.0, out=work.get(layer, "mean", h))
        torch.sigmoid(mean, out=mean)
        mean.mul_(2.0).sub_(1.0)
        var = None
    elif family == "ternary":
        mean, var = _ternary_moments_into(h, a, layer, work)
    else:
        mean, var = h, None
    fan_in = h.shape[1]
    if layer == 0:
        if family == "binary":  # 1 - Wbar^2 in one pass, from a buffer of ones
            ones = work.get(0, "ones", h, fill=1.0)
            var = torch.addcmul(ones, mean, mean, value=-1.0, out=work.get(0, "var", h))
        elif family == "real":
            var = real_var
        return LayerCache(mean, var, None, None)
    mean_sq = torch.mul(mean, mean, out=work.get(layer, "sq", h))
    if family == "ternary":  # n t with n >= e^-60 can still square to a subnormal
        mean_sq.masked_fill_(mean_sq < _TINY, 0.0)
    if family == "binary":
        rows = fan_in - mean_sq.sum(1)
    elif family == "ternary":
        rows = var.sum(1)
    else:
        rows = torch.full_like(h[:, 0], fan_in * real_var)
    return LayerCache(mean, None, mean_sq, rows)


def preactivation_moments(
    cache: LayerCache,
    bias: torch.Tensor,
    mean_in: torch.Tensor,
    var_in: torch.Tensor | None,
    noise_var: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-activation moments (mu, sigma2), each (B, out), normalized by sqrt(K + 1).

    mean_in, var_in: the input moments vbar, Var v (B, K); var_in None: the deterministic input
    x of the first layer (only the weights vary). bias: (out,). The forward equations of the
    module docstring.
    """
    fan_in = cache.mean.shape[1]
    mu = torch.addmm(bias, mean_in, cache.mean.T) / math.sqrt(fan_in + 1)
    if var_in is None and not isinstance(cache.var, torch.Tensor):  # real: sum_j real_var x_j^2
        raw = (cache.var * mean_in.square().sum(1, keepdim=True)).expand_as(mu)
    elif var_in is None:  # sum_j Var W_kj x_j^2
        raw = mean_in.square() @ cache.var.T
    else:  # sign units, E v^2 = 1: sum_j Var W_kj + sum_j Wbar_kj^2 Var v_j
        raw = torch.addmm(cache.var_rows, var_in, cache.mean_sq.T)
    # clamp: K - sum Wbar^2 may round a hair below 0 when every weight is certain
    return mu, (raw.clamp_min(0.0) + noise_var) / (fan_in + 1)


def output_signal(
    y: torch.Tensor, z: torch.Tensor, sigma: torch.Tensor, root: float
) -> torch.Tensor:
    """E_L = y 2 N(0; mu, s2) / Phi(y mu / sigma) / sqrt(K + 1) of the output layer, (B, out).

    y: targets in {-1, +1}; z = mu / sigma and sigma, (B, out); root = sqrt(K + 1). The ratio
    phi(w) / Phi(w), w = y z, is computed as sqrt(2 / pi) / erfcx(-w / sqrt 2) (erfcx(t) =
    exp(t^2) erfc(t)), exact for every w: where the reference code needs a fallback for Phi = 0,
    and where exp(ln phi - ln Phi) loses all its digits to the cancellation of two numbers of
    size w^2 / 2 (78% off at w = -1e8 in float64).
    """
    mills = _SQRT_2_OVER_PI / torch.special.erfcx(y * z * -_SQRT_HALF)
    g = y * (2.0 / root) * mills / sigma
    return g.masked_fill_(g.abs() < _TINY, 0.0)  # far-tail densities: no subnormals (see _TINY)


def hidden_signal(
    delta: torch.Tensor, z: torch.Tensor, sigma: torch.Tensor, root: float
) -> torch.Tensor:
    """E_l = delta 2 N(0; mu, s2) / sqrt(K + 1) of a hidden layer, (B, out).

    delta = E_{l+1} Wbar_{l+1} from the layer above (its mean before its update); z = mu / sigma
    and sigma, (B, out); root = sqrt(K + 1).
    """
    log_phi = -0.5 * z.square() - _LOG_SQRT_2PI
    g = delta * ((2.0 / root) * torch.exp(log_phi) / sigma)
    return g.masked_fill_(g.abs() < _TINY, 0.0)  # far-tail densities: no subnormals (see _TINY)


def magnitude_update(
    a: torch.Tensor,
    g: torch.Tensor,
    z: torch.Tensor,
    sigma: torch.Tensor,
    root: float,
    vbar: torch.Tensor,
    first: bool,
) -> None:
    """Add the ternary magnitude update of one mini-batch to a (out, in), in place.

    g: the layer's E (B, out) (:func:`output_signal`, :func:`hidden_signal`); z = mu / sigma and
    sigma (B, out); root = sqrt(K + 1); vbar: the input means (B, K); first: the first layer
    (deterministic input). Not in the paper or its code: the first-order EBP rule written per
    level, ln q(W_ij = s) += s d ln P / d Wbar_ij, moves only h; this keeps the s^2 term of the
    same expansion (without it, a keeps its prior value and P(W = 0) only shrinks as |h| grows).

    Derivation. The online Bayes step sets ln q(W_ij = s) += L(s) = ln P(y | x, W_ij = s) (the
    other weights at their posterior); q(s) exp(L(s)) is again of the form exp(h s + a s^2), so
    the exact (ADF) update is dh = (L(1) - L(-1)) / 2 and da = (L(1) + L(-1)) / 2 - L(0). Fixing
    W_ij = s moves only unit i's pre-activation moments, by terms of order 1 / sqrt(K + 1) in the
    mean and 1 / (K + 1) in the variance:

        mu_i(s)     = mu_i + (s - Wbar_ij) vbar_j / sqrt(K + 1)
        sigma2_i(s) = sigma2_i + (s^2 Var v_j - Var W_ij E v_j^2 - Wbar_ij^2 Var v_j) / (K + 1)

    With l = ln P as a function of (mu_i, sigma2_i), the s^2 coefficient of L(s) to order
    1 / (K + 1) takes one term from the variance and one from the mean's second order:

        da = [Var v_j dl/dsigma2 + 1/2 vbar_j^2 d^2 l / dmu^2] / (K + 1)

    (to order 1 / sqrt(K + 1) the s coefficient is dh = vbar_j dl/dmu / sqrt(K + 1), the h rule.)
    P is a Gaussian average over unit i's pre-activation u ~ N(mu_i, sigma2_i) of P(y | u) (the
    output: Phi(y mu / sigma); a hidden unit: its sign is +-1 with probabilities
    Phi(+-mu / sigma)), so it solves the heat equation dP/dsigma2 = 1/2 d^2 P / dmu^2, and

        d^2 l / dmu^2 = P'' / P - (P' / P)^2 = 2 dl/dsigma2 - (dl/dmu)^2,
        da = [E v_j^2 dl/dsigma2 - 1/2 vbar_j^2 (dl/dmu)^2] / (K + 1),     E v^2 = vbar^2 + Var v.

    In the notation of the backward pass, dl/dmu = g sqrt(K + 1) / 2 (g: E_l of one example) and
    dl/dsigma2 = -(mu / 2 sigma2) dl/dmu for both the output Phi(y mu / sigma) and a sign unit's
    mean erf(mu / sqrt(2 sigma2)), so per example and summed over the mini-batch

        a_ij += E v_j^2 m_i - vbar_j^2 g_i^2 / 8,     m = -z g / (4 sigma sqrt(K + 1)), z = mu / sigma

    with E v_j^2 = x_j^2 = vbar_j^2 in the first layer and E v_j^2 = 1 for sign units. The second
    term is negative (it favours 0 where the likelihood is steep in mu); an earlier version dropped
    it and its update was uncorrelated with the exact da in the output layer (tests/test_ebp.py
    compares both updates with da enumerated over s in {-1, 0, +1}).
    """
    # m = d ln P / d sigma2 / (K + 1) = -z g / (4 sigma sqrt(K + 1))
    m = -z * g / (4.0 * sigma * root)
    vbar_sq = vbar.square()
    if first:  # deterministic x: E v^2 = vbar^2 = x^2
        a.addmm_(m.addcmul_(g, g, value=-0.125).T, vbar_sq)
    else:  # E v^2 = 1 for every sign unit
        a.add_(m.sum(0)[:, None])
        a.addmm_(g.square().T, vbar_sq, alpha=-0.125)
