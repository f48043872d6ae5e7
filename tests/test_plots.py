"""bayesq.plots: figures from saved arrays, written atomically."""

import numpy as np
import pytest
from matplotlib.figure import Figure

from bayesq import plots

NAMES = ("a.png", "b.png", "c.png", "d.png")


def _drawings(out):
    """One call per figure function, each writing one of NAMES under `out`."""
    rng = np.random.default_rng(0)
    theta, log_alpha = rng.normal(size=300), rng.normal(size=300) * 3
    bits = np.where(log_alpha >= 3, 0, 4)
    layer = {"theta": theta, "log_alpha": log_alpha, "bits": bits, "codebook": np.array([0.0])}
    codebook = np.array([-1.0, 0.0, 1.0])
    return [
        lambda: plots.plot_theta_vs_log_alpha(theta, log_alpha, codebook, 3.0, out / NAMES[0]),
        lambda: plots.plot_weight_spikes({"fc": layer}, 3.0, out / NAMES[1]),
        lambda: plots.plot_bits_histogram({"fc": bits}, out / NAMES[2]),
        lambda: plots.plot_accuracy_vs_bits({"x": [(0.1, 0.9), (2.0, 0.95)]}, 0.97, out / NAMES[3]),
    ]


def test_every_figure_is_a_png_and_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "figures"
    for draw in _drawings(out):
        assert draw().read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == list(NAMES)


def test_an_interrupted_figure_leaves_the_previous_file(tmp_path, monkeypatch):
    """A savefig that dies half-way (a full disk, a kill) must not leave half a PNG behind."""
    for name in NAMES:
        (tmp_path / name).write_bytes(b"the previous figure")

    def dies_half_way(self, fname, *args, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError("No space left on device")

    monkeypatch.setattr(Figure, "savefig", dies_half_way)
    for draw in _drawings(tmp_path):
        with pytest.raises(OSError, match="No space"):
            draw()
    for name in NAMES:
        assert (tmp_path / name).read_bytes() == b"the previous figure"
    assert sorted(p.name for p in tmp_path.iterdir()) == list(NAMES)
