"""Figures from saved results (never retrains): posterior weight spikes, bit budgets, learning curves.

All functions take plain arrays or lists (as loaded from a results file) and write a PNG,
atomically (`bayesq.files.atomic_path`: an interrupted run leaves the previous figure, never half
of one). Figures are built as ``matplotlib.figure.Figure`` objects and saved by their own Agg
canvas, without pyplot: no backend is chosen (so importing this module leaves a notebook's or a
user's backend alone) and no figure is held in pyplot's global list.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np
from matplotlib.figure import Figure

from .files import atomic_path
from .posterior import PruningRule

__all__ = [
    "plot_accuracy_against",
    "plot_accuracy_curves",
    "plot_accuracy_vs_bits",
    "plot_bits_histogram",
    "plot_theta_vs_log_alpha",
    "plot_weight_spikes",
]


def plot_theta_vs_log_alpha(
    theta: np.ndarray,
    log_alpha: np.ndarray,
    codebook: np.ndarray,
    pruning: PruningRule,
    path: str | Path,
    title: str = "",
    max_points: int = 20000,
    seed: int = 0,
) -> Path:
    """Scatter of posterior mean theta against log alpha for one layer, with the codebook levels
    as vertical lines and the pruning threshold as a horizontal one; a histogram of theta above.

    Args: theta, log_alpha: flat arrays of one layer's weights (same length); codebook: levels.
    pruning: the rule whose log alpha test marks the weights drawn grey (pruned); kept ones are
    coloured by their nearest level.
    """
    theta = np.asarray(theta, dtype=np.float64).ravel()
    log_alpha = np.asarray(log_alpha, dtype=np.float64).ravel()
    codebook = np.sort(np.asarray(codebook, dtype=np.float64).ravel())
    if theta.shape != log_alpha.shape:
        raise ValueError(f"theta {theta.shape} and log_alpha {log_alpha.shape} differ in length")
    if len(theta) > max_points:  # thin for readability; the histogram keeps every weight
        keep = np.random.default_rng(seed).choice(len(theta), max_points, replace=False)
    else:
        keep = np.arange(len(theta))
    pruned = pruning.prunes_log_alpha(log_alpha)
    nearest = np.abs(theta[:, None] - codebook[None, :]).argmin(1)

    fig = Figure(figsize=(6.4, 6.0))
    ax_hist, ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 2.2]})
    ax_hist.hist(theta, bins=200, color="0.3")
    ax_hist.set_yscale("log")
    ax_hist.set_ylabel("weights")
    colours = [matplotlib.colormaps["tab10"](k % 10) for k in range(len(codebook))]
    kept = keep[~pruned[keep]]
    ax.scatter(
        theta[keep[pruned[keep]]],
        log_alpha[keep[pruned[keep]]],
        s=2,
        c="0.75",
        label=f"pruned ({pruned.mean():.1%})",
        rasterized=True,
    )
    for k, level in enumerate(codebook):
        members = kept[nearest[kept] == k]
        ax.scatter(
            theta[members],
            log_alpha[members],
            s=2,
            color=colours[k],
            rasterized=True,
            label=f"level {level:+.3g} ({(nearest[~pruned] == k).sum() / len(theta):.1%})",
        )
    for axis in (ax_hist, ax):
        for level in codebook:
            axis.axvline(level, color="tab:red", lw=0.8, ls="--")
    ax.axhline(pruning.log_alpha_threshold, color="k", lw=0.8, ls=":")
    ax.set_xlabel(r"posterior mean $\theta$")
    ax.set_ylabel(r"$\log\alpha = \log\sigma^2 - \log\theta^2$")
    ax.legend(loc="upper right", fontsize=7, markerscale=4)
    if title:
        ax_hist.set_title(title)
    return _save(fig, path)


def _save(fig: Figure, path: str | Path, tight: bool = True, dpi: int = 130) -> Path:
    """Write `fig` as a PNG to `path` through a temporary file and a rename."""
    path = Path(path)
    if tight:
        fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")  # the temporary name has no .png suffix
    return path


def plot_weight_spikes(
    layers: dict[str, dict[str, np.ndarray]],
    pruning: PruningRule,
    path: str | Path,
    max_points: int = 20000,
    seed: int = 0,
) -> Path:
    """The posterior weight-spike figure: one column per layer, the histogram of theta with the
    codebook spikes marked above, theta against log alpha coloured by the bits the rule assigns
    below (grey: pruned, 0 bits).

    layers: name -> {"theta", "log_alpha", "bits" (flat arrays of one length), "codebook"};
    pruning: the rule the bits were set under (its log alpha threshold is drawn).
    """
    names = list(layers)
    fig = Figure(figsize=(3.2 * len(names), 5.6))
    axes = fig.subplots(2, len(names), squeeze=False, gridspec_kw={"height_ratios": [1, 2]})
    rng = np.random.default_rng(seed)
    cmap = matplotlib.colormaps["viridis"].resampled(7)  # widths 2..8
    for col, name in enumerate(names):
        layer = layers[name]
        theta = np.asarray(layer["theta"], dtype=np.float64).ravel()
        log_alpha = np.asarray(layer["log_alpha"], dtype=np.float64).ravel()
        bits = np.asarray(layer["bits"]).ravel()
        if not theta.shape == log_alpha.shape == bits.shape:
            raise ValueError(f"{name}: theta, log_alpha and bits differ in length")
        keep = np.arange(len(theta))
        if len(theta) > max_points:
            keep = rng.choice(len(theta), max_points, replace=False)
        ax_hist, ax = axes[0, col], axes[1, col]
        ax_hist.hist(theta, bins=150, color="0.3")
        ax_hist.set_yscale("log")
        ax_hist.set_title(f"{name} ({len(theta):,} weights)", fontsize=9)
        pruned = keep[bits[keep] == 0]
        kept = keep[bits[keep] > 0]
        ax.scatter(theta[pruned], log_alpha[pruned], s=2, c="0.8", rasterized=True)
        points = ax.scatter(
            theta[kept], log_alpha[kept], s=2, c=bits[kept], cmap=cmap, vmin=1.5, vmax=8.5,
            rasterized=True,
        )  # fmt: skip
        for axis in (ax_hist, ax):
            for level in np.asarray(layer["codebook"]).ravel():
                axis.axvline(level, color="tab:red", lw=0.7, ls="--")
        ax.axhline(pruning.log_alpha_threshold, color="k", lw=0.7, ls=":")
        ax.set_xlabel(r"posterior mean $\theta$")
        if col == 0:
            ax_hist.set_ylabel("weights")
            ax.set_ylabel(r"$\log\alpha$")
    fig.colorbar(points, ax=axes[1, :].tolist(), label="bits (grey: pruned)", ticks=range(2, 9))
    return _save(fig, path, tight=False)  # tight_layout cannot place the shared colour bar


def plot_bits_histogram(bits: dict[str, np.ndarray], path: str | Path) -> Path:
    """Per layer, the share of weights at each number of bits (0 = pruned) given by the rule."""
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.subplots()
    names = list(bits)
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = np.asarray(bits[name]).ravel()
        shares = [(values == b).mean() for b in range(9)]
        ax.bar(np.arange(9) + (i - (len(names) - 1) / 2) * width, shares, width, label=name)
    ax.set_xticks(range(9))
    ax.set_xlabel("bits per weight (0 = pruned)")
    ax.set_ylabel("share of the layer's weights")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_accuracy_vs_bits(
    curves: dict[str, list[tuple[float, float]]],
    float_accuracy: float,
    path: str | Path,
    title: str = "",
) -> Path:
    """Test accuracy against bits per weight, one line per allocation, with the float net's
    accuracy as a horizontal line. curves: label -> [(bits, accuracy), ...], the bits counting
    everything the stored net holds (`bayesq.bits.average_bits`)."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    for (label, points), marker in zip(curves.items(), "os^vD", strict=False):
        points = sorted(points)
        ax.plot([p[0] for p in points], [100 * p[1] for p in points], marker=marker, label=label)
    ax.axhline(100 * float_accuracy, color="k", ls="--", lw=1, label="float32 net")
    xs = [p[0] for points in curves.values() for p in points if p[0] > 0]
    if xs and max(xs) > 20 * min(xs):  # a very sparse net's budgets next to whole-bit ones
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # they overlap
    ax.set_xlabel("bits per weight (everything stored: positions, codes, steps, biases)")
    ax.set_ylabel("test accuracy (%)")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_accuracy_curves(
    curves: dict[str, Sequence[Sequence[float]]],
    path: str | Path,
    title: str = "",
    styles: dict[str, tuple[str, str]] | None = None,
) -> Path:
    """Learning curves: test accuracy against epoch, one line per label, the mean over its runs
    (seeds) with the min-max band where there are several.

    curves: label -> one accuracy list (0..1, one value per epoch) per run; runs of different
    lengths are drawn up to the shortest. styles: label -> (matplotlib colour, line style), e.g.
    ``("C0", "--")``; a label without one gets matplotlib's next colour and a solid line. The
    y axis starts 1 point below the lowest accuracy drawn (at 80% or above when every value is
    above 81%) and ends at 100%.
    """
    runs = [curve for label_runs in curves.values() for curve in label_runs]
    if not runs or not all(len(curve) for curve in runs):
        raise ValueError("curves must hold at least one run per label, each of one epoch or more")
    styles = styles or {}
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    for label, label_runs in curves.items():
        length = min(len(c) for c in label_runs)
        cols = list(zip(*(c[:length] for c in label_runs), strict=True))
        epochs = range(1, length + 1)
        color, style = styles.get(label, (None, "-"))
        n = len(label_runs)
        (line,) = ax.plot(
            epochs,
            [100 * statistics.fmean(c) for c in cols],
            style,
            color=color,
            label=f"{label} ({n} seed{'s' if n > 1 else ''})",
        )
        if n > 1:
            ax.fill_between(
                epochs,
                [100 * min(c) for c in cols],
                [100 * max(c) for c in cols],
                color=line.get_color(),
                alpha=0.15,
            )
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    if title:
        ax.set_title(title)
    low = min(100 * min(curve) for curve in runs)
    ax.set_ylim(max(low - 1, 80 if low > 81 else 0), 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path, dpi=110)


def plot_accuracy_against(
    points: list[tuple[float, float, str, bool]], xlabel: str, path: str | Path, title: str = ""
) -> Path:
    """One labelled point per method: (x, accuracy 0..1, label, on the kernels), x on a log
    axis (model bytes, BOPs); filled where the point is the kernels' accuracy, hollow where the
    method's arithmetic did not fit them (its own net's accuracy)."""
    fig = Figure(figsize=(7.0, 4.6))
    ax = fig.subplots()
    for x, accuracy, label, kernels in points:
        face = "C0" if kernels else "none"
        ax.scatter([x], [100 * accuracy], s=22, facecolors=face, edgecolors="C0")
        ax.annotate(label, (x, 100 * accuracy), fontsize=6, xytext=(3, 2),
                    textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)
