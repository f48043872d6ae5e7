"""Figures from saved results (never retrains): posterior weight spikes of a VNQ layer.

All functions take plain arrays (as loaded from a results ``.npz``) and write a PNG, atomically
(`bayesq.files.atomic_path`: an interrupted run leaves the previous figure, never half of one).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # figures are files; no display is assumed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .files import atomic_path  # noqa: E402

__all__ = [
    "plot_accuracy_vs_bits",
    "plot_bits_histogram",
    "plot_theta_vs_log_alpha",
    "plot_weight_spikes",
]


def plot_theta_vs_log_alpha(
    theta: np.ndarray,
    log_alpha: np.ndarray,
    codebook: np.ndarray,
    log_alpha_threshold: float,
    path: str | Path,
    title: str = "",
    max_points: int = 20000,
    seed: int = 0,
) -> Path:
    """Scatter of posterior mean theta against log alpha for one layer, with the codebook levels
    as vertical lines and the pruning threshold as a horizontal one; a histogram of theta above.

    Args: theta, log_alpha: flat arrays of one layer's weights (same length); codebook: levels.
    Pruned weights (log alpha >= threshold) are drawn grey, kept ones coloured by nearest level.
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
    pruned = log_alpha >= log_alpha_threshold
    nearest = np.abs(theta[:, None] - codebook[None, :]).argmin(1)

    fig, (ax_hist, ax) = plt.subplots(
        2, 1, figsize=(6.4, 6.0), sharex=True, gridspec_kw={"height_ratios": [1, 2.2]}
    )
    ax_hist.hist(theta, bins=200, color="0.3")
    ax_hist.set_yscale("log")
    ax_hist.set_ylabel("weights")
    colours = [plt.cm.tab10(k % 10) for k in range(len(codebook))]
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
    ax.axhline(log_alpha_threshold, color="k", lw=0.8, ls=":")
    ax.set_xlabel(r"posterior mean $\theta$")
    ax.set_ylabel(r"$\log\alpha = \log\sigma^2 - \log\theta^2$")
    ax.legend(loc="upper right", fontsize=7, markerscale=4)
    if title:
        ax_hist.set_title(title)
    return _save(fig, path)


def _save(fig, path: str | Path, tight: bool = True) -> Path:
    """Write `fig` as a PNG to `path` through a temporary file and a rename; close it."""
    path = Path(path)
    try:
        if tight:
            fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=130, format="png")  # the temporary name has no .png suffix
    finally:
        plt.close(fig)
    return path


def plot_weight_spikes(
    layers: dict[str, dict[str, np.ndarray]],
    log_alpha_threshold: float,
    path: str | Path,
    max_points: int = 20000,
    seed: int = 0,
) -> Path:
    """The posterior weight-spike figure: one column per layer, the histogram of theta with the
    codebook spikes marked above, theta against log alpha coloured by the bits the rule assigns
    below (grey: pruned, 0 bits).

    layers: name -> {"theta", "log_alpha", "bits" (flat arrays of one length), "codebook"}.
    """
    names = list(layers)
    fig, axes = plt.subplots(
        2, len(names), figsize=(3.2 * len(names), 5.6), squeeze=False,
        gridspec_kw={"height_ratios": [1, 2]},
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    cmap = plt.get_cmap("viridis", 7)  # widths 2..8
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
        ax.axhline(log_alpha_threshold, color="k", lw=0.7, ls=":")
        ax.set_xlabel(r"posterior mean $\theta$")
        if col == 0:
            ax_hist.set_ylabel("weights")
            ax.set_ylabel(r"$\log\alpha$")
    fig.colorbar(points, ax=axes[1, :].tolist(), label="bits (grey: pruned)", ticks=range(2, 9))
    return _save(fig, path, tight=False)  # tight_layout cannot place the shared colour bar


def plot_bits_histogram(bits: dict[str, np.ndarray], path: str | Path) -> Path:
    """Per layer, the share of weights at each number of bits (0 = pruned) given by the rule."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
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
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
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
