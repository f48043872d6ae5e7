"""experiments/bits.py: flags, errors, the files it reads and writes, and counted bits against
the size of the saved discrete nets."""

import importlib
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from bayesq.nn import posterior_of
from tests.common import untrained_vnq

HEADER_BYTES = 4096  # the artifact's JSON header and safetensors framing, whatever the weights


def _script():
    return importlib.import_module("experiments.bits")


def test_tiny_never_overrides_an_explicit_flag():
    script = _script()
    tiny = script.parse_args(["--tiny", "--budgets", "0.25", "--calibration", "10"])
    assert tiny.budgets == [0.25] and tiny.calibration == 10
    assert tiny.uniform == script.TINY["uniform"]
    full = script.parse_args([])
    assert (full.budgets, full.uniform) == (script.DEFAULTS["budgets"], script.DEFAULTS["uniform"])
    with pytest.raises(ValueError, match="--budgets"):
        script.parse_args(["--budgets", "9"])


def test_the_command_line_prints_the_error_not_a_traceback(tmp_path):
    missing = tmp_path / "no_run"
    result = subprocess.run(
        [sys.executable, "-m", "experiments.bits", "--run", str(missing)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("bits.py: error:") and str(missing) in result.stderr
    assert "Traceback" not in result.stderr


def test_plot_only_names_the_file_it_cannot_read(tmp_path):
    out = tmp_path / "run" / "bits"
    out.mkdir(parents=True)
    (out / "bits.json").write_text('{"rule": ')
    with pytest.raises(ValueError, match="bits.json"):
        _script().main(["--run", str(tmp_path / "run"), "--plot-only"])
    summary = {
        "rule": {"step_multiple": 1.0, "log_alpha_threshold": 3.0, "zero_mass_threshold": 0.5},
        "curve": {}, "accuracy_float": 0.9,
        "act_bits": 8, "arch": "mlp", "data": "digits",
    }  # fmt: skip
    (out / "bits.json").write_text(json.dumps(summary))
    (out.parent / "posterior.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ValueError, match="posterior.safetensors"):
        _script().main(["--run", str(tmp_path / "run"), "--plot-only"])


@pytest.fixture(scope="module")
def untrained_run(tmp_path_factory):
    """A run directory of experiments.vnq's layout with an untrained digits MLP (no fit)."""
    import models

    run = tmp_path_factory.mktemp("bits_run") / "vnq"
    run.mkdir()
    torch.manual_seed(0)
    save_file(models.build("mlp").state_dict(), str(run / "float.safetensors"))
    posterior_of(untrained_vnq("mlp"), (1, 8, 8)).save(run / "posterior.safetensors")
    report = {"arch": "mlp", "data": "digits", "log_alpha_threshold": 3.0}
    (run / "report.json").write_text(json.dumps(report))
    return run


def test_counted_bits_and_the_saved_files(untrained_run):
    summary = _script().main(["--run", str(untrained_run), "--tiny", "--budgets", "1"])
    out = untrained_run / "bits"
    points = [p for curve in summary["curve"].values() for p in curve]
    assert [p["budget"] for p in summary["curve"]["variance-driven"]] == [1.0]
    assert len(points) == 5 and all(p["artifact_logits_equal"] for p in points)
    for p in summary["curve"]["variance-driven"]:
        assert p["average_bits"] <= p["budget"]
        assert p["report"][-1]["mean_bits"] == pytest.approx(p["average_bits"])
    weights = summary["weights"]
    for p in points:  # the file holds what is counted: within 10% plus a fixed header
        counted, on_disk = p["average_bits"] * weights / 8, p["artifact_bytes"]
        assert abs(on_disk - counted) <= 0.1 * counted + HEADER_BYTES, p
    saved = json.loads((out / "bits.json").read_text())
    assert saved["curve"] == json.loads(json.dumps(summary["curve"]))
    assert not [p.name for p in out.rglob(".*tmp*")]  # no temporary file left behind
