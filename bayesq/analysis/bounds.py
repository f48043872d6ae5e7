"""Accuracy bounds for quantized training on convex problems (Li et al., NeurIPS 2017, Sec. 3).

Setting (all bounds): minimize F over a convex domain W of diameter D with projected SGD; the
stochastic gradient g is unbiased with E||g||^2 <= G^2 at every point where it is evaluated; d is
the number of weights, Delta the grid step, T the number of iterations. The bounds hold for the
average iterate wbar_T = (1/T) sum_{t=0}^{T-1} w_t (for BinaryConnect: of the float buffer).

    float SGD   w_{t+1} = P(w_t - a_t g(w_t))
    SR          w_{t+1} = Q_s(P(w_t - a_t g(w_t)))          (W a box whose faces lie on the grid)
    BC          w_{t+1} = P(w_t - a_t g(Q_s(w_t)))           (float buffer, gradient at a grid point)

P is the Euclidean projection onto W, Q_s unbiased stochastic rounding to the Delta grid
(:func:`bayesq.quantizers.stochastic_round`).

The common argument (our derivation, following the paper's proof): with e_t the error added by a
step after the projection, E||w_{t+1} - w*||^2 <= E||w_t - w*||^2 - 2 a_t E<g_t, w_t - w*>
+ a_t^2 G^2 + E||e_t||^2, and the floors come from the two quantization terms:

* SR: w_t is a grid point, so each coordinate of the rounding error has variance at most
  Delta |a_t g_i| and E||e_t||^2 <= a_t Delta E||g||_1 <= a_t Delta sqrt(d) G: the floor
  sqrt(d) Delta G / 2 after dividing by 2 a_t. It does not shrink with a_t or T.
* BC: E g_t = E grad F(w_t + r_t) with r_t the rounding error of the buffer (E r_t = 0), so the
  bias is |E grad F(w + r) - grad F(w)| <= (L2 / 2) E||r_t||^2 for a Hessian that is L2-Lipschitz,
  and its inner product with w_t - w* is at most D (L2 / 2) E||r_t||^2: the floor
  (D L2 / 2) E||r||^2 <= D L2 d Delta^2 / 8. This is the *corrected* BC floor. The *published*
  one, D L2 sqrt(d) Delta / 2, is linear in Delta: it is not even dimensionally consistent (F has
  units of L2 * w^3, the published floor of L2 * w^2), so it cannot follow from the Taylor step;
  it is larger than the corrected floor only while sqrt(d) Delta < 4. Both are provided; only the
  corrected one is a theorem. On a quadratic L2 = 0 and both floors vanish.

Indexing: the schedules are a_t = 1 / (mu (t + 1)) and a_t = c / sqrt(t + 1) for t = 0 .. T-1,
i.e. the first step is 1/mu (or c), and wbar_T averages w_0 .. w_{T-1}. With this indexing the
strongly convex sum telescopes exactly and the SGD term is H_T G^2 / (2 mu T) <= (1 + log T) G^2 /
(2 mu T), below the published (1 + log(T + 1)) G^2 / (2 mu T). (Starting the same formula at
t = 1 would leave an extra mu ||w_1 - w*||^2 / (2T) in the derivation.)

Every function takes floats or numpy arrays (broadcast together) and returns a float or an array.

References:
    Li, De, Xu, Studer, Samet, Goldstein. Training Quantized Nets: A Deeper Understanding.
    NeurIPS 2017 (arXiv:1706.02379), Sec. 3.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "bc_convex_bound",
    "bc_floor_corrected",
    "bc_floor_published",
    "bc_strongly_convex_bound",
    "sgd_convex_term",
    "sgd_strongly_convex_term",
    "sr_convex_bound",
    "sr_floor",
    "sr_mean_sq_rounding_error_bound",
    "sr_strongly_convex_bound",
]

_FLOORS = ("corrected", "published")


def _nonneg(name: str, value, positive: bool = False):
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if np.any(arr <= 0) if positive else np.any(arr < 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value!r}")
    return arr


def _out(x):
    return float(x) if np.ndim(x) == 0 else x


def sr_floor(G, delta, d):
    """Accuracy floor of stochastic rounding, sqrt(d) Delta G / 2 (Li et al. 2017, Thm. 1).

    G bounds the root mean square stochastic gradient norm on the domain; Delta the grid step;
    d the dimension. Independent of T and of the learning rate.

    >>> sr_floor(G=2.0, delta=0.1, d=4)
    0.2
    """
    G, delta, d = _nonneg("G", G), _nonneg("delta", delta), _nonneg("d", d, positive=True)
    return _out(np.sqrt(d) * delta * G / 2.0)


def sr_mean_sq_rounding_error_bound(delta, d):
    """Upper bound d Delta^2 / 4 on E||Q_s(w) - w||^2 for unbiased stochastic rounding.

    Each coordinate lands on one of its two neighbours: variance Delta^2 p (1 - p) <= Delta^2 / 4.
    """
    delta, d = _nonneg("delta", delta), _nonneg("d", d, positive=True)
    return _out(d * delta**2 / 4.0)


def bc_floor_published(D, L2, delta, d):
    """BinaryConnect's floor as published: D L2 sqrt(d) Delta / 2 (Li et al. 2017, Sec. 3, the
    BC theorem for a Hessian that is L2-Lipschitz). Zero on quadratics (L2 = 0).

    Not a theorem as it stands (see the module docstring): kept to compare with the paper;
    :func:`bc_floor_corrected` is the floor the proof supports.
    """
    D, L2 = _nonneg("D", D), _nonneg("L2", L2)
    delta, d = _nonneg("delta", delta), _nonneg("d", d, positive=True)
    return _out(D * L2 * np.sqrt(d) * delta / 2.0)


def bc_floor_corrected(D, L2, mean_sq_rounding_error):
    """BinaryConnect's floor from the proof's Taylor step: (D L2 / 2) * mean_t E||r_t||^2.

    ``mean_sq_rounding_error`` is the average over iterations of E||Q_s(w_t) - w_t||^2 (units of
    w^2), at most :func:`sr_mean_sq_rounding_error_bound` = d Delta^2 / 4 under unbiased
    rounding, giving D L2 d Delta^2 / 8. Zero on quadratics (L2 = 0).

    >>> ms = sr_mean_sq_rounding_error_bound(delta=0.1, d=4)  # 0.01
    >>> round(bc_floor_corrected(D=2.0, L2=0.5, mean_sq_rounding_error=ms), 12)
    0.005
    """
    D, L2 = _nonneg("D", D), _nonneg("L2", L2)
    ms = _nonneg("mean_sq_rounding_error", mean_sq_rounding_error)
    return _out(D * L2 * ms / 2.0)


def _bc_floor(floor: str, D, L2, delta, d):
    if floor == "corrected":
        return bc_floor_corrected(D, L2, sr_mean_sq_rounding_error_bound(delta, d))
    if floor == "published":
        return bc_floor_published(D, L2, delta, d)
    raise ValueError(f"floor must be one of {_FLOORS}, got {floor!r}")


def sgd_strongly_convex_term(mu, G, T):
    """(1 + log(T + 1)) G^2 / (2 mu T): the SGD part of every strongly convex bound below.

    With a_t = 1 / (mu (t + 1)) this alone bounds float SGD (Delta = 0). mu > 0 is a strong
    convexity modulus of F on the domain (any valid lower bound; the same mu sets the schedule).
    """
    mu = _nonneg("mu", mu, positive=True)
    G, T = _nonneg("G", G), _nonneg("T", T, positive=True)
    return _out((1.0 + np.log(T + 1.0)) * G**2 / (2.0 * mu * T))


def sr_strongly_convex_bound(mu, G, delta, d, T):
    """E[F(wbar_T) - F*] for stochastic rounding, a_t = 1/(mu (t+1)) (Li et al. 2017, Thm. 1):

        (1 + log(T + 1)) G^2 / (2 mu T) + sqrt(d) Delta G / 2.

    >>> round(sr_strongly_convex_bound(mu=1.0, G=1.0, delta=0.0, d=1, T=1), 6)  # 1 + log 2, / 2
    0.846574
    """
    return _out(np.asarray(sgd_strongly_convex_term(mu, G, T)) + sr_floor(G, delta, d))


def bc_strongly_convex_bound(mu, G, delta, d, T, D, L2, floor: str = "corrected"):
    """E[F(wbar_T) - F*] for BinaryConnect, a_t = 1/(mu (t+1)) (Li et al. 2017, Sec. 3, the BC
    theorem), wbar_T the average float buffer:

        (1 + log(T + 1)) G^2 / (2 mu T) + floor,

    floor = D L2 d Delta^2 / 8 (``"corrected"``, the default: what the proof supports, see the
    module docstring) or D L2 sqrt(d) Delta / 2 (``"published"``). G bounds the gradient at the
    rounded points.
    """
    return _out(np.asarray(sgd_strongly_convex_term(mu, G, T)) + _bc_floor(floor, D, L2, delta, d))


def sgd_convex_term(c, G, D, T):
    """D^2 / (2 c sqrt(T)) + c G^2 / sqrt(T): the SGD part of the convex (not strongly convex)
    bounds, with a_t = c / sqrt(t + 1) for t = 0 .. T-1.

    Derivation (the argument of Li et al. 2017, Sec. 3, with this schedule): the telescoping sum
    of (||w_t - w*||^2 - ||w_{t+1} - w*||^2) / (2 a_t) is at most D^2 / (2 a_{T-1}) and
    sum_t a_t <= 2 c sqrt(T); divide by T. Holds for every convex F.
    """
    c = _nonneg("c", c, positive=True)
    G, D, T = _nonneg("G", G), _nonneg("D", D), _nonneg("T", T, positive=True)
    return _out(D**2 / (2.0 * c * np.sqrt(T)) + c * G**2 / np.sqrt(T))


def sr_convex_bound(c, G, delta, d, T, D):
    """E[F(wbar_T) - F*] for stochastic rounding on a convex F, a_t = c / sqrt(t + 1):

        D^2 / (2 c sqrt(T)) + c G^2 / sqrt(T) + sqrt(d) Delta G / 2

    (the non-strongly-convex form of Li et al. 2017, Thm. 1: same floor, as E||e_t||^2 / (2 a_t)
    does not depend on the schedule).
    """
    return _out(np.asarray(sgd_convex_term(c, G, D, T)) + sr_floor(G, delta, d))


def bc_convex_bound(c, G, delta, d, T, D, L2, floor: str = "corrected"):
    """E[F(wbar_T) - F*] for BinaryConnect on a convex F, a_t = c / sqrt(t + 1):

        D^2 / (2 c sqrt(T)) + c G^2 / sqrt(T) + floor

    (the non-strongly-convex form of the BC theorem of Li et al. 2017, Sec. 3), floor as in
    :func:`bc_strongly_convex_bound` (``"corrected"`` or ``"published"``).
    """
    return _out(np.asarray(sgd_convex_term(c, G, D, T)) + _bc_floor(floor, D, L2, delta, d))
