"""Measured suboptimality of quantized SGD against the bounds of :mod:`bayesq.analysis.bounds`,
and the learning-rate study of the SR Markov chain (:mod:`bayesq.analysis.markov`).

:func:`run` trains many independent chains at once (every Delta x every replicate) on a problem
of :mod:`bayesq.analysis.problems` (a box [-B, B]^d whose faces lie on every grid, with the
constants mu, G, D = 2 B sqrt(d), L2 the bounds need) with one of four methods and returns
F(wbar_T) - F* at checkpoints T, wbar_T = mean(w_0 .. w_{T-1}) (for BinaryConnect, of the float
buffer):

    "float"  w <- P(w - a_t g(w))
    "det"    w <- Q_d(P(w - a_t g(w)))       deterministic rounding (no bound: it can freeze)
    "sr"     w <- Q_s(P(w - a_t g(w)))       stochastic rounding
    "bc"     w <- P(w - a_t g(Q_s(w)))       BinaryConnect with unbiased rounding

with a_t = 1 / (mu (t + 1)) ("strongly_convex") or c / sqrt(t + 1) ("convex"), t = 0 .. T-1.
:func:`sweep` adds means, standard errors and the bounds; :func:`markov_study` the histograms.

References:
    Li, De, Xu, Studer, Samet, Goldstein. Training Quantized Nets: A Deeper Understanding.
    NeurIPS 2017, Sec. 3-5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from bayesq.analysis import bounds, markov
from bayesq.analysis.problems import LogisticProblem, QuadraticProblem
from bayesq.quantizers import deterministic_round, stochastic_round

__all__ = [
    "LogisticProblem",
    "QuadraticProblem",
    "METHODS",
    "bound_for",
    "floor_slope",
    "markov_study",
    "run",
    "sweep",
]

METHODS = ("float", "det", "sr", "bc")


def _project(w: torch.Tensor, box: float) -> torch.Tensor:
    return w.clamp(-box, box)


def run(
    problem,
    method: str,
    deltas: Sequence[float],
    checkpoints: Sequence[int],
    replicates: int,
    schedule: str = "strongly_convex",
    c: float | None = None,
    seed: int = 0,
) -> dict:
    """Train len(deltas) * replicates independent chains and measure F(wbar_T) - F*.

    Returns a dict of numpy arrays: ``subopt`` (K, R, len(checkpoints)) for K deltas and R
    replicates; ``subopt_last`` the same for the last iterate w_T (not covered by the bounds,
    shown for contrast); ``wbar`` (K, R, d) the average iterate at the last checkpoint; ``last_move``
    (K, R) the last step at which the iterate changed; and
    ``mean_sq_rounding`` (K,) the measured mean over steps and chains of ||Q_s(w_t) - w_t||^2
    (BinaryConnect only, else NaN). For "float" the deltas only replicate the run.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if schedule not in ("strongly_convex", "convex"):
        raise ValueError(f"schedule must be 'strongly_convex' or 'convex', got {schedule!r}")
    if schedule == "convex" and not (c and c > 0):
        raise ValueError("the convex schedule c / sqrt(t + 1) needs c > 0")
    checkpoints = sorted(int(t) for t in checkpoints)
    for delta in deltas:
        k = problem.box / delta
        if abs(k - round(k)) > 1e-9:  # SR/BC iterates must stay in the box, and on its grid
            raise ValueError(f"box {problem.box} is not a multiple of delta {delta}")
    K, R = len(deltas), replicates
    gen = torch.Generator().manual_seed(seed)
    step = torch.tensor(np.repeat(np.asarray(deltas, dtype=np.float64), R))[:, None]  # (K R, 1)
    w = torch.zeros(K * R, problem.d, dtype=torch.float64)  # 0 lies on every grid
    total = torch.zeros_like(w)
    last_move = torch.zeros(K * R, dtype=torch.int64)
    sq_round, subopt, last = torch.zeros(K * R, dtype=torch.float64), [], []
    for t in range(checkpoints[-1]):
        total += w
        lr = 1.0 / (problem.mu * (t + 1)) if schedule == "strongly_convex" else c / math.sqrt(t + 1)
        if method == "bc":
            at = stochastic_round(w, step, gen)
            sq_round += ((at - w) ** 2).sum(dim=1)
            new = _project(w - lr * problem.grad(at, gen), problem.box)
        else:
            new = _project(w - lr * problem.grad(w, gen), problem.box)
            if method == "det":
                new = deterministic_round(new, step)
            elif method == "sr":
                new = stochastic_round(new, step, gen)
        last_move[(new != w).any(dim=1)] = t + 1
        w = new
        if t + 1 in checkpoints:
            subopt.append((problem.loss(total / (t + 1)) - problem.f_star).numpy())
            last.append((problem.loss(w) - problem.f_star).numpy())
    ms = (sq_round / checkpoints[-1]).reshape(K, R).mean(dim=1).numpy()
    return {
        "subopt": np.stack(subopt, axis=1).reshape(K, R, len(checkpoints)),
        "subopt_last": np.stack(last, axis=1).reshape(K, R, len(checkpoints)),
        "wbar": (total / checkpoints[-1]).reshape(K, R, problem.d).numpy(),
        "last_move": last_move.reshape(K, R).numpy(),
        "mean_sq_rounding": ms if method == "bc" else np.full(K, np.nan),
    }


def bound_for(problem, method: str, delta, T, schedule="strongly_convex", c=None, floor=None):
    """The bound of :mod:`bayesq.analysis.bounds` that covers ``method`` (None for "det").

    float: the SR bound with Delta = 0; bc: ``floor`` "corrected" (default) or "published".
    """
    if method == "det":
        return None
    delta = 0.0 if method == "float" else delta
    p = problem
    if schedule == "strongly_convex":
        if method == "bc":
            return bounds.bc_strongly_convex_bound(
                p.mu, p.G, delta, p.d, T, 2 * p.box * math.sqrt(p.d), p.L2, floor or "corrected"
            )
        return bounds.sr_strongly_convex_bound(p.mu, p.G, delta, p.d, T)
    D = 2 * p.box * math.sqrt(p.d)
    if method == "bc":
        return bounds.bc_convex_bound(c, p.G, delta, p.d, T, D, p.L2, floor or "corrected")
    return bounds.sr_convex_bound(c, p.G, delta, p.d, T, D)


def sweep(
    problem,
    deltas: Sequence[float],
    checkpoints: Sequence[int],
    replicates: int,
    methods: Sequence[str] = METHODS,
    schedule: str = "strongly_convex",
    c: float | None = None,
    seed: int = 0,
) -> dict:
    """Every method over deltas x checkpoints: mean and standard error (over replicates) of
    F(wbar_T) - F*, the bounds, and whether mean + 2 SE lies below the bound at every point.

    Returns a JSON-ready dict (lists of floats): per method ``mean``/``se``/``bound`` (K, T)
    arrays (``bound_published`` too for "bc"; ``mean_last_iterate`` for F(w_T) - F*), ``below``
    (bool) and ``freeze_step`` (median last move, per delta). The error bar is 2 SE, about a 95% interval for the mean.
    """
    out = {
        "problem": problem.name,
        "schedule": schedule,
        "c": c,
        "deltas": [float(x) for x in deltas],
        "checkpoints": [int(t) for t in checkpoints],
        "replicates": replicates,
        "constants": {
            "d": problem.d,
            "mu": problem.mu,
            "G": problem.G,
            "D": 2 * problem.box * math.sqrt(problem.d),
            "L2": problem.L2,
            "box": problem.box,
            "f_star": problem.f_star,
        },
        "methods": {},
    }
    T = np.asarray(checkpoints, dtype=np.float64)[None, :]
    dl = np.asarray(deltas, dtype=np.float64)[:, None]
    for i, method in enumerate(methods):
        res = run(problem, method, deltas, checkpoints, replicates, schedule, c, seed + 1000 * i)
        mean = res["subopt"].mean(axis=1)
        se = res["subopt"].std(axis=1, ddof=1) / math.sqrt(replicates)
        entry = {
            "mean": mean.tolist(),
            "se": se.tolist(),
            "mean_last_iterate": res["subopt_last"].mean(axis=1).tolist(),
            "freeze_step": np.median(res["last_move"], axis=1).tolist(),
        }
        bound = bound_for(problem, method, dl, T, schedule, c)
        if bound is not None:
            bound = np.broadcast_to(bound, mean.shape)
            entry["bound"] = bound.tolist()
            entry["below"] = bool(np.all(mean + 2 * se < bound))
        if method == "bc":
            pub = bound_for(problem, "bc", dl, T, schedule, c, "published")
            pub = np.broadcast_to(pub, mean.shape)
            entry["bound_published"] = pub.tolist()
            entry["below_published"] = bool(np.all(mean + 2 * se < pub))
            entry["mean_sq_rounding"] = res["mean_sq_rounding"].tolist()
        out["methods"][method] = entry
    return out


def floor_slope(deltas: Sequence[float], floors: Sequence[float]) -> float:
    """Least-squares slope of log(floor) against log(Delta): 1 for a floor linear in Delta."""
    return float(np.polyfit(np.log(deltas), np.log(floors), 1)[0])


def _float_steps(lr: float, per_lr: float, max_steps: int) -> int:
    """Steps for a float chain to forget its start: per_lr / lr is per_lr * lambda relaxation
    times 1 / (lr lambda) in a well of curvature lambda (about 0.7 to 2.5 here); crossing the
    barrier between the wells takes far longer, which is the point of the figure."""
    return int(min(max(200, math.ceil(per_lr / lr)), max_steps))


def markov_study(
    lrs: Sequence[float] = (1.0, 0.1, 0.01, 0.001, 0.0001),
    noise_std: float = 2.0,
    tilt: float = 0.2,
    hist_chains: int = 2000,
    steps_per_lr: float = 20.0,
    max_steps: int = 200_000,
    tv_lrs: Sequence[float] = (1.0, 0.1, 0.01),
    tv_chains: int = 4000,
    tv_chains_2d: int = 16000,
    tv_snapshots: int = 20,
    seed: int = 0,
) -> dict:
    """The learning-rate study of Li et al. 2017, Sec. 4, on the tilted double well (1-D, Delta
    0.1) and its 2-D valley version (Delta 0.2), both on [-2, 2]^k, gradient noise sd noise_std.

    SR (exact): stationary distribution, t_mix(1/4) and mean distance to the nearest minimizer
    per learning rate; and the TV distance between the exact stationary distribution and
    simulated chains (10 t_mix burn-in, ``tv_snapshots`` snapshots t_mix apart) for ``tv_lrs``
    (1-D, ``tv_chains`` chains) and the first of them (2-D: 441 states need ``tv_chains_2d``).
    Float SGD and BinaryConnect (simulated; BC in 1-D only): ``hist_chains`` chains from uniform
    lattice starts run min(max(200, steps_per_lr / lr), max_steps) steps, binned on the lattice.
    Returns a JSON-ready dict with keys "1d" and "2d".
    """
    out = {}
    for key, problem in (
        ("1d", markov.tilted_double_well(tilt)),
        ("2d", markov.tilted_double_well_2d(tilt)),
    ):
        gen = torch.Generator().manual_seed(seed)
        states = torch.from_numpy(problem.states())
        mins = problem.minimizers if key == "2d" else problem.minimizers[:, 0]
        entry = {
            "problem": problem.name,
            "tilt": tilt,
            "noise_std": noise_std,
            "delta": problem.delta,
            "axis": problem.axes()[0].tolist(),
            "minimizers": mins.tolist(),
            "lrs": [float(lr) for lr in lrs],
            "float_steps": [_float_steps(lr, steps_per_lr, max_steps) for lr in lrs],
        }
        summary = markov.stationary_summary(problem, lrs, noise_std)
        entry["sr_stationary"] = [s["stationary"] for s in summary]
        entry["mixing_time"] = [s["mixing_time"] for s in summary]
        entry["sr_distance"] = [s["mean_distance_to_minimizer"] for s in summary]
        for method in ("float", "bc") if key == "1d" else ("float",):
            hists, dists = [], []
            for lr, steps in zip(lrs, entry["float_steps"], strict=True):
                start = states[torch.randint(len(states), (hist_chains,), generator=gen)]
                w = markov.simulate(method, problem, lr, noise_std, start, steps, gen).numpy()
                cells = markov.state_index(problem, w)
                hists.append((np.bincount(cells, minlength=len(states)) / hist_chains).tolist())
                dists.append(float(problem.distance_to_minimizers(w).mean()))
            entry[f"{method}_hist"], entry[f"{method}_distance"] = hists, dists
        entry["sr_simulated_tv"] = {}
        chains = tv_chains if key == "1d" else tv_chains_2d
        for lr in tv_lrs if key == "1d" else tv_lrs[:1]:
            i = list(lrs).index(lr)
            t_mix = entry["mixing_time"][i]
            emp = markov.empirical_distribution(
                "sr", problem, lr, noise_std, chains, 10 * t_mix, tv_snapshots, t_mix, seed + i
            )
            tv = markov.tv_distance(emp, np.asarray(entry["sr_stationary"][i]))
            entry["sr_simulated_tv"][str(lr)] = float(tv)
        out[key] = entry
    return out
