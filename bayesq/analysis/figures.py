"""Figures of the quantized-training analysis, drawn from saved results (never retrains).

Every function takes the JSON-ready dicts written by ``experiments.li_bounds`` (the output of
:func:`bayesq.analysis.experiments.sweep` and the Markov summaries) and writes one PNG, atomically
(`bayesq.files.atomic_path`). As in `bayesq.plots`, figures are ``matplotlib.figure.Figure``
objects saved by their own Agg canvas: no pyplot, no backend chosen on import.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..files import atomic_path

__all__ = ["plot_bound_check", "plot_bounds", "plot_markov", "plot_markov_2d"]

COLORS = {"float": "#444444", "det": "#d62728", "sr": "#1f77b4", "bc": "#2ca02c"}
LABELS = {
    "float": "float SGD",
    "det": "deterministic rounding",
    "sr": "stochastic rounding",
    "bc": "BinaryConnect",
}


def _title(sweep: dict) -> str:
    k = sweep["constants"]
    sched = "a_t = 1/(mu (t+1))" if sweep["schedule"] == "strongly_convex" else "a_t = c/sqrt(t+1)"
    return (
        f"{sweep['problem']}, {sched}: d={k['d']}, mu={k['mu']:.3g}, G={k['G']:.3g}, "
        f"D={k['D']:.3g}, L2={k['L2']:.3g}"
    )


def _errorbar(ax, x, entry, idx, method, **kw):
    mean = np.asarray(entry["mean"])[idx]
    se = np.asarray(entry["se"])[idx]
    lower = np.minimum(2 * se, mean * 0.999)  # keep the bar inside a log axis
    ax.errorbar(x, mean, yerr=[lower, 2 * se], color=COLORS[method], marker="o", ms=3.5,
                capsize=2, lw=1.3, label=f"{LABELS[method]} (mean +- 2 SE)", **kw)  # fmt: skip


def _delta_ticks(ax, deltas):
    ax.set_xticks(deltas, [f"1/{round(1 / d)}" if d < 1 else f"{d:g}" for d in deltas])
    ax.minorticks_off()


def plot_bounds(sweeps: list[dict], path: str | Path, delta_index: int | None = None) -> Path:
    """One row per sweep: suboptimality against T at one Delta (left) and against Delta at the
    largest T (right), measured (markers, 2 SE bars) and bounds (dashed; BC's published floor
    dotted), log-log. SR's last iterate F(w_T) - F* (not covered by the bounds) is drawn thin.
    """
    fig = Figure(figsize=(13, 3.9 * len(sweeps) + 0.6))
    subfigs = fig.subfigures(len(sweeps) + 1, 1, height_ratios=[3.9] * len(sweeps) + [0.6])
    for sub, sweep in zip(subfigs, sweeps, strict=False):
        row = sub.subplots(1, 2)
        deltas, T = np.asarray(sweep["deltas"]), np.asarray(sweep["checkpoints"])
        k = len(deltas) // 2 if delta_index is None else delta_index
        for ax, idx, x in ((row[0], (k, slice(None)), T), (row[1], (slice(None), -1), deltas)):
            for method, entry in sweep["methods"].items():
                _errorbar(ax, x, entry, idx, method)
                if "bound" in entry:
                    ax.plot(x, np.asarray(entry["bound"])[idx], "--", color=COLORS[method], lw=1)
                if "bound_published" in entry:
                    pub = np.asarray(entry["bound_published"])[idx]
                    ax.plot(x, pub, ":", color=COLORS[method], lw=1.3)
            last = np.asarray(sweep["methods"]["sr"]["mean_last_iterate"])[idx]
            ax.plot(x, last, "x-", color=COLORS["sr"], lw=0.6, ms=4, alpha=0.6)
            ax.set(xscale="log", yscale="log")
        row[0].set(xlabel="iterations T", ylabel="F(w_bar_T) - F*",
                   title=f"against T, Delta = 1/{round(1 / deltas[k])}")  # fmt: skip
        row[1].set(xlabel="grid step Delta", title=f"against Delta, T = {T[-1]}")
        _delta_ticks(row[1], deltas)
        sub.suptitle(_title(sweep), fontsize=10.5, fontweight="bold")
    handles, labels = fig.axes[0].get_legend_handles_labels()
    handles += [
        Line2D([], [], ls="--", color="k"),
        Line2D([], [], ls=":", color="k"),
        Line2D([], [], ls="-", marker="x", lw=0.6, color=COLORS["sr"]),
    ]
    labels += [
        "bound (same colour; BC: corrected floor)",
        "BC bound with the published floor",
        "SR last iterate F(w_T) - F* (no bound)",
    ]
    subfigs[-1].legend(handles, labels, loc="center", ncol=4, fontsize=9, frameon=False)
    return _save(fig, path)


def plot_bound_check(sweeps: list[dict], path: str | Path) -> Path:
    """Every sweep point (problem x method x Delta x T): measured mean + 2 SE against its bound;
    all points must lie below the diagonal."""
    fig = Figure(figsize=(6.5, 6))
    ax = fig.subplots()
    markers = ["o", "s", "^", "D", "v", "P"]
    lo, hi = np.inf, 0.0
    for i, sweep in enumerate(sweeps):
        for method, entry in sweep["methods"].items():
            if "bound" not in entry:
                continue
            upper = (np.asarray(entry["mean"]) + 2 * np.asarray(entry["se"])).ravel()
            bound = np.asarray(entry["bound"]).ravel()
            ax.scatter(bound, upper, s=12, color=COLORS[method], marker=markers[i % 6], alpha=0.7)
            lo, hi = min(lo, upper.min(), bound.min()), max(hi, upper.max(), bound.max())
    ax.plot([lo, hi], [lo, hi], "k-", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="bound", ylabel="measured mean + 2 SE",
           title="every sweep point lies below its bound")  # fmt: skip
    h = [Line2D([], [], ls="", marker="o", color=COLORS[m]) for m in ("float", "sr", "bc")]
    h += [Line2D([], [], ls="", marker=markers[i % 6], color="k") for i in range(len(sweeps))]
    names = [LABELS[m] for m in ("float", "sr", "bc")]
    names += [f"{s['problem']} ({s['schedule'].replace('_', ' ')})" for s in sweeps]
    ax.legend(h, names, fontsize=8, loc="upper left")
    fig.tight_layout()
    return _save(fig, path)


def plot_markov(markov: dict, path: str | Path) -> Path:
    """The learning-rate histograms: float SGD and BinaryConnect (simulated) against the exact
    stationary distribution of SR, one column per learning rate; below, the SR mixing time and
    each method's mean distance to the nearest minimizer against the learning rate."""
    one = markov["1d"]
    lrs, axis = one["lrs"], np.asarray(one["axis"])
    rows = [("float", one["float_hist"]), ("bc", one["bc_hist"]), ("sr", one["sr_stationary"])]
    fig = Figure(figsize=(16, 12))
    grid = fig.add_gridspec(
        4, len(lrs), height_ratios=[1, 1, 1, 1.3], hspace=0.45, top=0.93, bottom=0.06
    )
    for r, (method, hists) in enumerate(rows):
        top = max(max(h) for h in hists) * 1.05
        for c, (lr, hist) in enumerate(zip(lrs, hists, strict=True)):
            ax = fig.add_subplot(grid[r, c])
            ax.bar(axis, hist, width=one["delta"] * 0.9, color=COLORS[method])
            for m in one["minimizers"]:
                ax.axvline(m, color="k", lw=0.8, ls=":")
            ax.set_ylim(0, top)
            ax.set_title(f"{LABELS[method]}, lr = {lr:g}", fontsize=9)
            if c == 0:
                ax.set_ylabel("probability per cell")
            if r == 2:
                ax.set_xlabel("w")
    ax = fig.add_subplot(grid[3, : len(lrs) // 2])
    for key, label, style in (("1d", "1-D", "o-"), ("2d", "2-D", "s-")):
        ax.plot(lrs, markov[key]["mixing_time"], style, color=COLORS["sr"], label=f"SR, {label}")
    ref = np.asarray(markov["1d"]["mixing_time"])[-1] * lrs[-1] / np.asarray(lrs)
    ax.plot(lrs, ref, "k:", lw=1, label="~ 1 / lr")
    ax.set(xscale="log", yscale="log", xlabel="learning rate",
           ylabel="t_mix(1/4) [steps]", title="SR mixing time (exact, worst start)")  # fmt: skip
    ax.legend(fontsize=9)
    ax = fig.add_subplot(grid[3, len(lrs) // 2 + 1 :])
    for method, key in (("float", "float_distance"), ("bc", "bc_distance"), ("sr", "sr_distance")):
        ax.plot(lrs, one[key], "o-", color=COLORS[method], label=LABELS[method])
    ax.set(xscale="log", yscale="log", xlabel="learning rate",
           ylabel="E distance to nearest minimizer",
           title="concentration as the learning rate shrinks (1-D)")  # fmt: skip
    ax.legend(fontsize=9)
    fig.suptitle(
        f"{one['problem']}: f(w) = (w^2-1)^2/4 + {one['tilt']:g} w, gradient noise "
        f"sd {one['noise_std']:g}, grid Delta = {one['delta']:g} on [{axis[0]:g}, {axis[-1]:g}]",
        fontsize=12,
        y=0.98,
    )
    return _save(fig, path)


def plot_markov_2d(markov: dict, path: str | Path) -> Path:
    """2-D problem: the exact SR stationary distribution (top) and float SGD's simulated
    distribution (bottom) on the lattice cells, one column per learning rate."""
    two = markov["2d"]
    lrs, axis = two["lrs"], np.asarray(two["axis"])
    n = len(axis)
    fig = Figure(figsize=(16, 6.8))
    axes = fig.subplots(2, len(lrs), squeeze=False)
    extent = (axis[0], axis[-1], axis[0], axis[-1])
    for r, (method, dists) in enumerate(
        (("sr", two["sr_stationary"]), ("float", two["float_hist"]))
    ):
        for c, (lr, dist) in enumerate(zip(lrs, dists, strict=True)):
            ax = axes[r, c]
            img = np.asarray(dist).reshape(n, n).T  # rows of the image: the second coordinate
            ax.imshow(img, origin="lower", extent=extent, cmap="viridis", aspect="equal")
            mins = np.asarray(two["minimizers"])
            ax.plot(mins[:, 0], mins[:, 1], "r+", ms=9)
            ax.set_title(f"{LABELS[method]}, lr = {lr:g}", fontsize=9)
            if r == 1:
                ax.set_xlabel("x")
            if c == 0:
                ax.set_ylabel("y")
    fig.suptitle(f"{two['problem']} (minimizers +), grid Delta = {two['delta']:g}", fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Figure, path: str | Path) -> Path:
    """Write `fig` as a PNG to `path` through a temporary file and a rename (creating folders)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")  # the temporary name has no .png suffix
    return path
