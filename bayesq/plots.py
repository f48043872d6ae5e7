"""Figures from saved results (never retrains): posterior weight spikes of a VNQ layer.

All functions take plain arrays (as loaded from a results ``.npz``) and write a PNG.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; no display is assumed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_theta_vs_log_alpha"]


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
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
