"""Stochastic-rounding SGD as a Markov chain on a Delta lattice (Li et al. 2017, Sec. 4).

With a fixed learning rate a, fully quantized training w' = Q_s(P(w - a (grad f(w) + sigma xi)))
(xi standard normal, P the projection onto a box whose faces are lattice points, Q_s unbiased
stochastic rounding) is a Markov chain on the lattice points of the box. This module builds its
exact transition matrix for a 1-D or 2-D problem, its stationary distribution (a linear solve)
and its total-variation mixing time (from matrix powers), and simulates the chain and its two
float-buffer counterparts (float SGD, BinaryConnect) for comparison.

Why SR does not concentrate (the paper's argument, in our notation): once a |grad f + noise| <
Delta, a step moves to a neighbouring lattice point with probability a E|(g + sigma xi)_+-| / Delta
and stays otherwise, so P = I + (a / Delta) M + (Gaussian tails) with M independent of a. The
stationary distribution of P is then (nearly) that of M, the same for every small a, while the
mixing time grows like 1 / a. For a 1-D birth-death chain it is close to a Gibbs density
exp(-sqrt(2 pi) f / (sigma Delta)): a temperature sigma Delta / sqrt(2 pi) set by the grid and the
gradient noise, not by the learning rate. Float SGD's stationary spread scales like a sigma^2 / 2
and BinaryConnect's like a (sigma^2 + Var grad f(Q_s w)) / 2: both concentrate as a -> 0.

Gradients are callables on (n, k) arrays written with arithmetic operators and indexing only, so
the same function serves numpy (transition matrices) and torch (simulation); see
:func:`tilted_double_well`.

References:
    Li, De, Xu, Studer, Samet, Goldstein. Training Quantized Nets: A Deeper Understanding.
    NeurIPS 2017, Sec. 4 (the Markov chain view and its learning-rate histograms).
    Levin, Peres, Wilmer. Markov Chains and Mixing Times, Ch. 4 (d(t), t_mix(1/4)).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bayesq.quantizers import stochastic_round

__all__ = [
    "LatticeProblem",
    "empirical_distribution",
    "histogram_on_lattice",
    "lattice",
    "mixing_time",
    "simulate",
    "sr_expected_distance",
    "sr_sgd_transition",
    "stationary_distribution",
    "stationary_summary",
    "state_index",
    "tilted_double_well",
    "tilted_double_well_2d",
    "tv_distance",
    "worst_case_tv",
]

_MAX_STATES = 4096  # a dense (n, n) float64 matrix of 128 MiB; beyond that, use a sparse method


@dataclass(frozen=True)
class LatticeProblem:
    """A k-dimensional objective on the box [lo, hi]^k with its lattice of step ``delta``.

    ``f`` and ``grad`` map (n, k) arrays (numpy or torch) to (n,) and (n, k). ``minimizers``:
    (m, k) local minimizers of f in the box (for concentration statistics).
    """

    name: str
    f: Callable
    grad: Callable
    lo: float
    hi: float
    delta: float
    dim: int
    minimizers: np.ndarray

    def axes(self) -> tuple[np.ndarray, ...]:
        return (lattice(self.lo, self.hi, self.delta),) * self.dim

    def states(self) -> np.ndarray:
        """(n, k) lattice points in row-major order (the last coordinate fastest)."""
        grids = np.meshgrid(*self.axes(), indexing="ij")
        return np.stack([g.ravel() for g in grids], axis=1)

    def distance_to_minimizers(self, w) -> np.ndarray:
        """(n,) Euclidean distance from each row of the (n, k) array w to the nearest minimizer."""
        w = np.asarray(w, dtype=np.float64).reshape(-1, self.dim)
        return np.linalg.norm(w[:, None, :] - self.minimizers[None], axis=2).min(axis=1)


def tilted_double_well(tilt: float = 0.2, lo: float = -2.0, hi: float = 2.0, delta: float = 0.1):
    """f(w) = (w^2 - 1)^2 / 4 + tilt * w on [lo, hi]: two wells near -1 and +1, the left one the
    global minimum for tilt > 0; f'' = 3 w^2 - 1 is about 2 in the wells.
    """
    minimizers = np.array(
        sorted(r.real for r in np.roots([1.0, 0.0, -1.0, tilt]) if abs(r.imag) < 1e-12)
    )
    minimizers = minimizers[(3 * minimizers**2 - 1) > 0][:, None]  # drop the local maximum
    return LatticeProblem(
        "tilted double well",
        f=lambda w: (w[:, 0] ** 2 - 1) ** 2 / 4 + tilt * w[:, 0],
        grad=lambda w: w**3 - w + tilt,
        lo=lo,
        hi=hi,
        delta=delta,
        dim=1,
        minimizers=minimizers,
    )


def tilted_double_well_2d(
    tilt: float = 0.2, coupling: float = 0.5, lo: float = -2.0, hi: float = 2.0, delta: float = 0.2
):
    """f(x, y) = (x^2 - 1)^2 / 4 + tilt x + (y - coupling x)^2 / 2: the 1-D double well in x, a
    quadratic valley in y whose floor follows y = coupling * x. Minimizers (x_m, coupling x_m).
    """
    x_m = tilted_double_well(tilt).minimizers[:, 0]
    return LatticeProblem(
        "tilted double well 2-D",
        f=lambda w: (
            (w[:, 0] ** 2 - 1) ** 2 / 4 + tilt * w[:, 0] + (w[:, 1] - coupling * w[:, 0]) ** 2 / 2
        ),
        grad=lambda w: _stack2(
            w[:, 0] ** 3 - w[:, 0] + tilt - coupling * (w[:, 1] - coupling * w[:, 0]),
            w[:, 1] - coupling * w[:, 0],
        ),
        lo=lo,
        hi=hi,
        delta=delta,
        dim=2,
        minimizers=np.stack([x_m, coupling * x_m], axis=1),
    )


def _stack2(a, b):
    return torch.stack([a, b], dim=1) if isinstance(a, torch.Tensor) else np.stack([a, b], axis=1)


def lattice(lo: float, hi: float, delta: float) -> np.ndarray:
    """The lattice points lo, lo + delta, ..., hi; (hi - lo) / delta must be an integer >= 1."""
    if not (np.isfinite(delta) and delta > 0):
        raise ValueError(f"delta must be finite and > 0, got {delta}")
    steps = (hi - lo) / delta
    if not np.isfinite(steps) or steps < 1 or abs(steps - round(steps)) > 1e-9:
        raise ValueError(f"box [{lo}, {hi}] is not a whole number of steps delta = {delta}")
    return lo + delta * np.arange(round(steps) + 1)


def _normal_cdf_pdf(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    zt = torch.from_numpy(z)
    return torch.special.ndtr(zt).numpy(), np.exp(-0.5 * z**2) / np.sqrt(2 * np.pi)


def _landing_probabilities(mean: np.ndarray, scale: float, axis: np.ndarray) -> np.ndarray:
    """P(Q_s(clip(Y)) = axis[j]) for Y ~ N(mean_i, scale^2): an (n, len(axis)) row-stochastic array.

    SR lands on x_j with probability hat_j(y) = max(0, 1 - |y - x_j| / delta), so the answer is
    E hat_j(Y) = (psi(x_{j-1}) - 2 psi(x_j) + psi(x_{j+1})) / delta with psi(a) = E (Y - a)_+
    = (m - a) Phi((m - a)/s) + s phi((m - a)/s). Clipping sends all mass beyond an end to it, so
    the end points keep only the inner half of their hat: (psi(x_{n-2}) - psi(x_{n-1})) / delta
    at the top and 1 - (psi(x_0) - psi(x_1)) / delta at the bottom. scale = 0 gives psi(a) = (m - a)_+.
    """
    delta = axis[1] - axis[0]
    diff = mean[:, None] - axis[None, :]  # (n, J): m - x_j
    if scale > 0:
        cdf, pdf = _normal_cdf_pdf(diff / scale)
        psi = diff * cdf + scale * pdf
    else:
        psi = np.maximum(diff, 0.0)
    probs = np.empty_like(psi)
    probs[:, 1:-1] = (psi[:, :-2] - 2 * psi[:, 1:-1] + psi[:, 2:]) / delta
    probs[:, -1] = (psi[:, -2] - psi[:, -1]) / delta
    probs[:, 0] = 1.0 - (psi[:, 0] - psi[:, 1]) / delta
    # Second differences of psi far from the mean cancel to round-off (~1e-16 * |m - a| / delta);
    # clipping those to 0 and renormalizing changes no probability by more than that.
    probs = np.clip(probs, 0.0, 1.0)
    return probs / probs.sum(axis=1, keepdims=True)


def sr_sgd_transition(problem: LatticeProblem, lr: float, noise_std: float) -> np.ndarray:
    """Exact transition matrix of stochastic-rounding SGD with a fixed learning rate.

    w' = Q_s(clip(w - lr (grad f(w) + noise_std xi), lo, hi)), xi ~ N(0, I_k). Given w the
    coordinates are rounded independently, so each row is the outer product of k per-coordinate
    landing distributions (:func:`_landing_probabilities`). Returns an (n, n) float64 row-
    stochastic matrix, n = (number of lattice points per axis)^k, states as in
    :meth:`LatticeProblem.states`.
    """
    if not (np.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be finite and > 0, got {lr}")
    if not (np.isfinite(noise_std) and noise_std >= 0):
        raise ValueError(f"noise_std must be finite and >= 0, got {noise_std}")
    states = problem.states()
    if len(states) > _MAX_STATES:
        raise ValueError(f"{len(states)} states: a dense transition matrix needs <= {_MAX_STATES}")
    grads = np.asarray(problem.grad(states), dtype=np.float64)
    mean = states - lr * grads
    rows = np.ones((len(states), 1))
    for c, axis in enumerate(problem.axes()):
        per_axis = _landing_probabilities(mean[:, c], lr * noise_std, axis)
        rows = (rows[:, :, None] * per_axis[:, None, :]).reshape(len(states), -1)
    return rows


def stationary_distribution(P: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """The stationary distribution pi (pi P = pi, sum pi = 1) of an irreducible chain.

    Solves the linear system (P^T - I) pi = 0 with one equation replaced by sum(pi) = 1 (the
    system has rank n - 1 for an irreducible chain), rather than iterating P, whose convergence
    is as slow as the chain mixes. Raises ValueError if the system is singular or the solution is
    not a distribution with ||pi P - pi||_1 <= tol (a reducible or periodic-defective input).
    """
    P = np.asarray(P, dtype=np.float64)
    n = P.shape[0]
    if P.shape != (n, n) or not np.allclose(P.sum(axis=1), 1.0, atol=1e-12) or (P < 0).any():
        raise ValueError("P must be a square row-stochastic matrix")
    A = P.T - np.eye(n)
    A[-1] = 1.0
    b = np.zeros(n)
    b[-1] = 1.0
    try:
        pi = np.linalg.solve(A, b)
    except np.linalg.LinAlgError as err:
        raise ValueError("no unique stationary distribution (is the chain reducible?)") from err
    if pi.min() < -tol or np.abs(pi @ P - pi).sum() > tol:
        raise ValueError("no unique stationary distribution (is the chain reducible?)")
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()


def tv_distance(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Total variation distance (1/2) sum |p - q| along the last axis."""
    return 0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum(axis=-1)


def worst_case_tv(Pt: np.ndarray, pi: np.ndarray) -> float:
    """d(t) = max_x TV(P^t(x, .), pi) for the t-step matrix Pt."""
    return float(tv_distance(Pt, pi[None, :]).max())


def mixing_time(
    P: np.ndarray, eps: float = 0.25, pi: np.ndarray | None = None, t_max: int = 2**40
) -> int:
    """t_mix(eps) = min{t >= 1 : d(t) <= eps}, d(t) the worst-start TV distance to pi.

    d(t) is non-increasing (Levin-Peres-Wilmer, Ex. 4.2), so the first t is found by squaring
    (P, P^2, P^4, ... until d <= eps) and then a binary search over the stored powers:
    about 2 log2(t_mix) matrix products. Raises ValueError if d(t_max) > eps.
    """
    P = np.asarray(P, dtype=np.float64)
    pi = stationary_distribution(P) if pi is None else np.asarray(pi, dtype=np.float64)
    if worst_case_tv(P, pi) <= eps:
        return 1
    powers = [P]  # powers[j] = P^(2^j)
    while worst_case_tv(powers[-1], pi) > eps:
        if 2 ** len(powers) > t_max:
            raise ValueError(f"not mixed to {eps} within t_max = {t_max} steps")
        powers.append(powers[-1] @ powers[-1])
    # d(2^(k-1)) > eps >= d(2^k): the largest t with d(t) > eps lies in [2^(k-1), 2^k).
    t, M = 2 ** (len(powers) - 2), powers[-2]
    for j in range(len(powers) - 3, -1, -1):
        candidate = M @ powers[j]
        if worst_case_tv(candidate, pi) > eps:
            t, M = t + 2**j, candidate
    return t + 1


def simulate(
    method: str,
    problem: LatticeProblem,
    lr: float,
    noise_std: float,
    start: torch.Tensor,
    steps: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Run `start.shape[0]` independent chains for `steps` steps and return their final states.

    method: ``"sr"`` (w' = Q_s(clip(w - lr g(w)))), ``"float"`` (w' = clip(w - lr g(w))) or
    ``"bc"`` (BinaryConnect: w' = clip(w - lr g(Q_s(w))), the float buffer returned), with
    g = grad f + noise_std * N(0, I). start: (C, k) float64 (lattice points for "sr").
    Uses :func:`bayesq.quantizers.stochastic_round`, not the transition matrix, so that the two
    can be checked against each other.
    """
    if method not in ("sr", "float", "bc"):
        raise ValueError(f"method must be 'sr', 'float' or 'bc', got {method!r}")
    w = start.to(torch.float64).clone()
    if w.ndim != 2 or w.shape[1] != problem.dim:
        raise ValueError(f"start must be (C, {problem.dim}), got {tuple(w.shape)}")
    for _ in range(steps):
        at = w
        if method == "bc":  # the lattice is lo + delta Z: round relative to lo
            at = stochastic_round(w - problem.lo, problem.delta, generator) + problem.lo
        noise = torch.randn(w.shape, generator=generator, dtype=w.dtype)
        w = (w - lr * (problem.grad(at) + noise_std * noise)).clamp(problem.lo, problem.hi)
        if method == "sr":
            w = stochastic_round(w - problem.lo, problem.delta, generator) + problem.lo
    return w


def state_index(problem: LatticeProblem, w: np.ndarray) -> np.ndarray:
    """Row-major state index of each (n, k) point, each coordinate taken to its nearest lattice
    point (so float chains are binned into lattice cells)."""
    w = np.asarray(w, dtype=np.float64).reshape(-1, problem.dim)
    n_axis = len(problem.axes()[0])
    cell = np.clip(np.rint((w - problem.lo) / problem.delta), 0, n_axis - 1).astype(np.int64)
    return np.ravel_multi_index(tuple(cell.T), (n_axis,) * problem.dim)


def empirical_distribution(
    method: str,
    problem: LatticeProblem,
    lr: float,
    noise_std: float,
    chains: int,
    burn_in: int,
    snapshots: int,
    spacing: int,
    seed: int = 0,
) -> np.ndarray:
    """Share of time spent in each lattice cell by simulated chains (:func:`simulate`).

    ``chains`` chains start on lattice points drawn uniformly, run ``burn_in`` steps, then are
    recorded ``snapshots`` times every ``spacing`` steps (take spacing >= the mixing time for
    nearly independent snapshots). Returns an (n_states,) distribution.
    """
    gen = torch.Generator().manual_seed(seed)
    states = torch.from_numpy(problem.states())
    w = states[torch.randint(len(states), (chains,), generator=gen)]
    w = simulate(method, problem, lr, noise_std, w, burn_in, gen)
    counts = np.zeros(len(states))
    for _ in range(snapshots):
        w = simulate(method, problem, lr, noise_std, w, spacing, gen)
        counts += np.bincount(state_index(problem, w.numpy()), minlength=len(states))
    return counts / counts.sum()


def histogram_on_lattice(samples: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Share of 1-D samples in each lattice cell (cells centred on the points of ``axis``)."""
    delta = axis[1] - axis[0]
    edges = np.concatenate([axis - delta / 2, [axis[-1] + delta / 2]])
    counts, _ = np.histogram(np.asarray(samples).ravel(), bins=edges)
    return counts / max(counts.sum(), 1)


def sr_expected_distance(problem: LatticeProblem, pi: np.ndarray) -> float:
    """E_pi distance to the nearest local minimizer, for a distribution on the lattice states."""
    return float(pi @ problem.distance_to_minimizers(problem.states()))


def stationary_summary(
    problem: LatticeProblem, lrs: Sequence[float], noise_std: float, eps: float = 0.25
) -> list[dict]:
    """Per learning rate: the exact SR stationary distribution, its mixing time t_mix(eps) and
    its mean distance to the nearest minimizer (JSON-ready lists)."""
    out = []
    for lr in lrs:
        P = sr_sgd_transition(problem, lr, noise_std)
        pi = stationary_distribution(P)
        out.append(
            {
                "lr": float(lr),
                "stationary": pi.tolist(),
                "mixing_time": mixing_time(P, eps, pi),
                "mean_distance_to_minimizer": sr_expected_distance(problem, pi),
            }
        )
    return out
