"""Every experiment script runs end to end in its tiny configuration."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vnq_experiment_tiny(tmp_path):
    out = tmp_path / "vnq"
    summary = _script("vnq").main(["--tiny", "--no-progress", "--out", str(out)])
    report = json.loads((out / "report.json").read_text())
    assert report["data"] == "digits" and report["vnq_epochs"] == 2
    for key in ("accuracy_float", "accuracy_mean", "accuracy_quantized"):
        assert 0.0 <= report[key] <= 1.0
    assert 0.0 <= report["summary"]["pruned_share"] <= 1.0
    assert (out / "theta_log_alpha.png").stat().st_size > 10_000
    assert (out / "posterior.npz").exists() and summary["arch"] == "mlp"
    # A rerun resumes: the float net is reused and VNQ has nothing left to train.
    again = _script("vnq").main(["--tiny", "--no-progress", "--out", str(out)])
    assert again["float_train_seconds"] is None
    assert again["accuracy_quantized"] == pytest.approx(report["accuracy_quantized"])


def test_bench_vnq_tiny(tmp_path):
    result = _script("bench_vnq").main(["--tiny", "--out", str(tmp_path / "b.json")])
    assert result["median_ratio_vnq_over_deterministic"] > 0
    assert json.loads((tmp_path / "b.json").read_text())["train_size"] == 512
