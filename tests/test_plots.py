"""bayesq.plots and bayesq.analysis.figures: figures from saved arrays, written atomically,
without choosing a matplotlib backend."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from bayesq import plots
from bayesq.analysis import figures
from bayesq.posterior import PruningRule

NAMES = ("a.png", "b.png", "c.png", "d.png", "e.png", "f.png")
ROOT = Path(__file__).resolve().parents[1]


def _drawings(out):
    """One call per figure function, each writing one of NAMES under `out`."""
    rng = np.random.default_rng(0)
    theta, log_alpha = rng.normal(size=300), rng.normal(size=300) * 3
    bits = np.where(log_alpha >= 3, 0, 4)
    layer = {"theta": theta, "log_alpha": log_alpha, "bits": bits, "codebook": np.array([0.0])}
    codebook = np.array([-1.0, 0.0, 1.0])
    return [
        lambda: plots.plot_theta_vs_log_alpha(
            theta, log_alpha, codebook, PruningRule(), out / NAMES[0]
        ),
        lambda: plots.plot_weight_spikes({"fc": layer}, PruningRule(), out / NAMES[1]),
        lambda: plots.plot_bits_histogram({"fc": bits}, out / NAMES[2]),
        lambda: plots.plot_accuracy_vs_bits({"x": [(0.1, 0.9), (2.0, 0.95)]}, 0.97, out / NAMES[3]),
        lambda: plots.plot_accuracy_curves(
            {"EBP-P binary": [[0.9, 0.95], [0.91, 0.96, 0.97]], "float": [[0.93, 0.98]]},
            out / NAMES[4],
            "digits",
            {"EBP-P binary": ("C0", "--")},
        ),  # fmt: skip
        lambda: figures.plot_markov_2d({"2d": _MARKOV_2D}, out / NAMES[5]),
    ]


_MARKOV_2D = {  # two learning rates on a 3 x 3 lattice
    "lrs": [0.1, 0.5],
    "axis": [-1.0, 0.0, 1.0],
    "sr_stationary": [np.full(9, 1 / 9).tolist(), np.eye(9)[4].tolist()],
    "float_hist": [np.eye(9)[0].tolist(), np.full(9, 1 / 9).tolist()],
    "minimizers": [[0.0, 0.0]],
    "problem": "toy",
    "delta": 1.0,
}


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


def test_accuracy_curves_refuse_an_empty_curve(tmp_path):
    with pytest.raises(ValueError, match="at least one run"):
        plots.plot_accuracy_curves({"float": []}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="one epoch or more"):
        plots.plot_accuracy_curves({"float": [[]]}, tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


_IMPORT_AND_REPORT = """
import sys
import matplotlib
matplotlib.use("svg")  # a user's (or a notebook's) own backend
import bayesq.plots, bayesq.analysis.figures
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""


_BACKEND_OR_PYPLOT = (
    "matplotlib.use(",
    "import matplotlib.pyplot",
    "from matplotlib import pyplot",
)


def test_importing_the_figure_modules_leaves_the_backend_alone():
    """Figures are Figure objects saved by their own canvas: neither module chooses a backend
    (which used to switch a notebook's inline backend to Agg) nor imports pyplot, and no module
    of the tree calls matplotlib.use."""
    run = subprocess.run(
        [sys.executable, "-c", _IMPORT_AND_REPORT], capture_output=True, text=True, check=True
    )
    assert run.stdout.split() == ["svg", "False"]
    callers = [
        str(path.relative_to(ROOT))
        for folder in ("bayesq", "experiments", "models")
        for path in (ROOT / folder).rglob("*.py")
        if any(call in path.read_text() for call in _BACKEND_OR_PYPLOT)
    ]
    assert callers == []
