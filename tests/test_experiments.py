"""Every experiment script runs end to end in its tiny configuration."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bayesq.posterior import Posterior

ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    """The script as the installed module ``experiments.<name>``."""
    return importlib.import_module(f"experiments.{name}")


def test_vnq_experiment_tiny(tmp_path):
    out = tmp_path / "vnq"
    summary = _script("vnq").main(["--tiny", "--no-progress", "--out", str(out)])
    report = json.loads((out / "report.json").read_text())
    assert report["data"] == "digits" and report["vnq_epochs"] == 2
    for key in ("accuracy_float", "accuracy_mean", "accuracy_quantized"):
        assert 0.0 <= report[key] <= 1.0
    assert 0.0 <= report["summary"]["pruned_share"] <= 1.0
    assert (out / "theta_log_alpha.png").stat().st_size > 10_000
    assert summary["arch"] == "mlp"
    # the run's one posterior file: the structure as well, so readers guess nothing
    posterior = Posterior.load(out / "posterior.safetensors")
    assert posterior.input_shape == (1, 8, 8) and list(posterior.layers) == ["fc1", "fc2", "fc3"]
    assert [op["kind"] for op in posterior.ops][:2] == ["flatten", "layer"]
    assert sorted(p.name for p in out.iterdir()) == [
        "float.safetensors", "posterior.safetensors", "report.json", "theta_log_alpha.png",
        "vnq.ckpt",
    ]  # fmt: skip
    # A rerun resumes: the float net is reused and VNQ has nothing left to train.
    again = _script("vnq").main(["--tiny", "--no-progress", "--out", str(out)])
    assert again["float_train_seconds"] is None
    assert again["accuracy_quantized"] == pytest.approx(report["accuracy_quantized"])


def test_bench_vnq_tiny(tmp_path):
    result = _script("bench_vnq").main(["--tiny", "--out", str(tmp_path / "b.json")])
    assert result["median_ratio_vnq_over_deterministic"] > 0
    assert json.loads((tmp_path / "b.json").read_text())["train_size"] == 512


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny VNQ run (digits, 1 float + 3 VNQ epochs: explicit flags over --tiny's 2 + 2) for
    the scripts that read a run directory."""
    out = tmp_path_factory.mktemp("run") / "vnq"
    _script("vnq").main(
        ["--tiny", "--no-progress", "--float-epochs", "1", "--vnq-epochs", "3", "--out", str(out)]
    )
    return out


def test_discrete_inference_tiny(tiny_run):
    summary = _script("discrete_inference").main(
        ["--run", str(tiny_run), "--act-bits", "4", "--rounds", "1", "--batch", "32"]
    )
    row = summary["rows"][0]
    assert row["logits_equal_reference"] and row["predictions_equal_reference"] == row["test_size"]
    assert set(row["batch_ms"]) == {"float32", "int8 dynamic", "discrete"}


def test_bench_nets_tiny(tiny_run, tmp_path):
    args = ["--tiny", "--vnq-run", str(tiny_run), "--act-bits", "4", "--ebp-hidden", "32",
            "--wide", "64", "128", "10", "--out", str(tmp_path / "nets.json")]  # fmt: skip
    bench = _script("bench_nets")
    result = bench.main(args)
    assert [row["net"].split()[0] for row in result["nets"]] == ["VNQ", "EBP", "wide"]
    for row in result["nets"]:
        assert row["kernels_equal_reference"] and all(row["kernels_equal_reference"].values())
        assert set(row["timings"]) == {"1", "16"} and all(b > 0 for b in row["bytes"].values())
        for timing in row["timings"].values():
            assert {"torch float32", "torch int8 dynamic"} <= set(timing)
            assert all(t["ms"] > 0 and t["speedup_vs_float32"] > 0 for t in timing.values())
    vnq, ebp, wide = result["nets"]
    assert all(0.0 <= a <= 1.0 for a in [*vnq["accuracy"].values(), *ebp["accuracy"].values()])
    assert wide["accuracy"] == {}  # random weights: speed only
    assert json.loads((tmp_path / "nets.json").read_text())["nets"][0]["net"] == vnq["net"]
    # the best int8 peer of each batch (torch's, and ORT's where installed) is what it says
    for row in result["nets"]:
        for batch, label in row["best_int8_peer"].items():
            timing = row["timings"][batch]
            assert timing[label]["speedup_vs_best_int8_peer"] == 1.0
            peers = [t for k, t in timing.items() if k in bench.INT8_PEERS]
            assert all(t["speedup_vs_best_int8_peer"] <= 1.0 for t in peers)
    # ONNX Runtime is an optional peer: its rows exactly when it is installed
    ort = (bench.ORT_STATIC, bench.ORT_DYNAMIC)
    if bench.onnxruntime_missing() is None:
        assert result["onnxruntime"].startswith("installed: onnxruntime")
        for row in result["nets"]:
            assert set(ort) <= set(row["bytes"]) and not set(ort) & set(row["notes"])
            assert all(set(ort) <= set(timing) for timing in row["timings"].values())
        for row in (vnq, ebp):  # int8 of the same float net: within 4 of the 200 test images
            for label in ort:
                assert abs(row["accuracy"][label] - row["accuracy"]["torch float32"]) <= 0.02
    else:
        assert result["onnxruntime"].startswith("not installed")
        assert not any(set(ort) & set(row["bytes"]) for row in result["nets"])


def test_bits_experiment_tiny_writes_the_figures(tiny_run):
    summary = _script("bits").main(
        ["--run", str(tiny_run), "--budgets", "1.5", "2", "--uniform", "2", "--calibration", "64"]
    )
    out = tiny_run / "bits"
    for name in ("weight_spikes.png", "bits_histogram.png", "accuracy_vs_bits.png"):
        assert (out / name).stat().st_size > 10_000
    points = summary["curve"]["variance-driven"]
    assert [p["average_bits"] <= p["budget"] + 1e-9 for p in points] == [True, True]
    assert (out / "discrete_2bit.safetensors").exists()
    assert all(p["stored_bits"] >= p["average_bits"] for p in points)
    again = _script("bits").main(["--run", str(tiny_run), "--plot-only"])
    assert again["curve"] == json.loads(json.dumps(summary["curve"]))


def test_mixed_precision_tiny_compares_the_methods_at_equal_bits(tiny_run):
    script = _script("mixed_precision")
    summary = script.main(["--run", str(tiny_run), "--tiny"])
    out = tiny_run / "mixed_precision"
    assert set(summary["regimes"]) == {"rule", "none"}
    assert summary["hessian"]["samples"] == [20, 20]  # --tiny's cap: 20 draws per half
    for regime, entry in summary["regimes"].items():
        assert (out / f"accuracy_vs_bits_{regime}.png").stat().st_size > 10_000
        for budget in (1.0, 2.0):
            points = {m: [p for p in pts if p["budget"] == budget]
                      for m, pts in entry["curve"].items()}  # fmt: skip
            # the greedy methods spend the budget (to within 1%), every method stays within it
            for method in ("variance-driven", "variance-driven from 8 bits", "HAWQ-V2 per row"):
                (point,) = points[method]
                assert 0.99 * budget <= point["average_bits"] <= budget
            for method, found in points.items():
                for point in found:
                    assert point["average_bits"] <= budget, (regime, method)
                    assert point["kernels_equal_reference"] and point["artifact_logits_equal"]
                    assert point["artifact_bytes"] * 8 >= point["average_bits"] * summary["weights"]
                    assert 0.0 <= point["accuracy"] <= 1.0
                    assert sum(map(sum, point["width_counts"].values())) == sum(
                        map(sum, entry["curve"]["variance-driven"][0]["width_counts"].values())
                    )
            missing = {m for m, found in points.items() if not found}
            assert all(any(note.startswith(f"{m} at {budget:g}") for note in entry["notes"])
                       for m in missing)  # fmt: skip
        ranks = entry["rank_agreement"]
        assert set(ranks["vs_true_loss"]) == {"0", "2"}
        for value in (*ranks["variance_vs_hessian"].values(),
                      *(e[k] for e in ranks["vs_true_loss"].values()
                        for k in ("variance", "hessian", "truth_split_half"))):  # fmt: skip
            assert value is None or -1.0 <= value <= 1.0
    again = script.main(["--run", str(tiny_run), "--plot-only"])
    assert again == json.loads(json.dumps(summary))


def test_bench_kernels_tiny(tmp_path):
    report = _script("bench_kernels").main(["--tiny", "--out", str(tmp_path / "k.json")])
    methods = {row["method"] for row in report["rows"]}
    assert {"float32", "int8", "int_mm", "1x1", "4x4 kernel", "tern x u8", "tern x s8"} <= methods
    assert all(row["gops"] > 0 for row in report["rows"])


def test_bench_noise_tiny(tmp_path):
    report = _script("bench_noise").main(["--tiny", "--out", str(tmp_path / "n.json")])
    assert set(report["median_ms"]) == {"torch", *report["median_ratio_torch_over_fused"]}
    assert "portable" in report["median_ratio_torch_over_fused"]
    assert all(ms > 0 for ms in report["median_ms"].values())
    assert (tmp_path / "n.json").exists()


def test_ebp_kernels_tiny(tmp_path):
    summary = _script("ebp_kernels").main(["--tiny", "--out", str(tmp_path / "ek")])
    assert summary["logits_equal_reference"]
    assert summary["predictions_equal_ebp_d"] >= 0.95 * summary["test_size"]
    assert (tmp_path / "ek" / "ebp_d.safetensors").exists()


def test_ebp_experiment_tiny(tmp_path):
    report = _script("ebp").main(["--tiny", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["runs"] and report["table"]
    for run in saved["runs"]:
        assert 0.0 <= run["final_accuracy"] <= 1.0 and len(run["curve"]) == run["epochs"]
    assert {run["method"] for run in saved["runs"]} >= {"EBP-P", "EBP-D", "BinaryConnect", "float"}
    assert any(p.suffix == ".png" for p in tmp_path.iterdir())


def test_bench_ebp_tiny(tmp_path):
    result = _script("bench_ebp").main(["--tiny", "--out", str(tmp_path / "bench.json")])
    assert result["median_ratio_ebp_over_backprop"] > 0
    assert json.loads((tmp_path / "bench.json").read_text())["train_size"] == result["train_size"]


def test_explicit_flags_win_over_tiny(tiny_run, tmp_path):
    report = json.loads((tiny_run / "report.json").read_text())
    assert report["float_epochs"] == 1 and report["vnq_epochs"] == 3
    assert [h["epoch"] for h in report["history"]] == [1, 2, 3]
    assert report["train_size"] == 256  # --tiny's data slice still applies
    noise = _script("bench_noise").main(["--tiny", "--rounds", "2", "--out", str(tmp_path / "n")])
    assert noise["shape"] == [8, 4, 6, 6] and all(len(t) == 2 for t in noise["seconds"].values())


def test_interrupted_write_leaves_no_half_file(tmp_path, monkeypatch):
    """A run killed while writing float.safetensors leaves no file there (the write goes to a
    temporary file renamed into place), so the next run trains the float net anew instead of
    dying on a half-written file."""
    script = _script("vnq")
    from experiments import runs

    def write_half_then_die(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 10)
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "save_file", write_half_then_die)
    out = tmp_path / "vnq"
    with pytest.raises(KeyboardInterrupt):
        script.main(["--tiny", "--no-progress", "--float-epochs", "1", "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == []


def _run(script: str, *args: str, cwd: Path) -> subprocess.Popen:
    """`python -m experiments.<script> args` in its own process, from `cwd`."""
    return subprocess.Popen(
        [sys.executable, "-m", f"experiments.{script}", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_scripts_report_bad_input_in_one_line(tmp_path):
    """Bad files and arguments end a script with `<script>: error: <message naming the file or
    flag>` and exit status 2, not a traceback: two real processes (run at once), then the
    messages of the other scripts' readers, which bayesq.cli.run_main prints the same way."""
    half = tmp_path / "half"
    half.mkdir()
    (half / "float.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{")  # cut short
    cases = [
        (_run("vnq", "--tiny", "--no-progress", "--out", str(half), cwd=tmp_path),
         f"vnq.py: error: {half / 'float.safetensors'}: not a readable safetensors file"),
        (_run("bench_noise", "--tiny", "--rounds", "0", "--out", str(tmp_path / "n.json"),
              cwd=tmp_path),
         "bench_noise.py: error: --shape and --rounds must be >= 1"),
    ]  # fmt: skip
    for process, message in cases:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 2, stderr
        assert "Traceback" not in stderr, stderr
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(message), stderr

    run = tmp_path / "run"
    run.mkdir()
    report = run / "report.json"
    for text, message in [
        ('{"arch": "mlp", "data": "digits", "layers": [', "not a readable JSON file"),
        ("[1, 2]", "expected a JSON object, got a list"),
        ('{"arch": "mlp", "data": "digits"}', "not a report of experiments.vnq"),
        ('{"arch": "mlp", "log_alpha_threshold": "x"}', "log_alpha_threshold 'x'"),
        ('{"arch": "vgg", "log_alpha_threshold": 3}', "unknown architecture 'vgg'"),
    ]:
        report.write_text(text)
        with pytest.raises(ValueError, match=message) as info:
            _script("discrete_inference").main(["--run", str(run)])
        assert str(report) in str(info.value)
    report.write_text('{"arch": "mlp", "log_alpha_threshold": 3}')
    with pytest.raises(ValueError, match=f"{run / 'posterior.safetensors'}: no such posterior"):
        _script("discrete_inference").main(["--run", str(run)])
    with pytest.raises(ValueError, match="no such run directory"):
        _script("discrete_inference").main(["--run", str(tmp_path / "absent")])
    li = tmp_path / "li"
    with pytest.raises(ValueError, match=f"{li / 'bounds.json'}: no such file"):
        _script("li_bounds").main(["--plot-only", "--out", str(li)])
    (li / "bounds.json").write_text("[]")
    (li / "markov.json").write_text("{")
    with pytest.raises(ValueError, match=f"{li / 'markov.json'}: not a readable JSON file"):
        _script("li_bounds").main(["--plot-only", "--out", str(li)])
    with pytest.raises(ValueError, match="--epochs, --threads and --hidden must be >= 1"):
        _script("ebp_kernels").main(["--tiny", "--epochs", "0"])


def test_scripts_are_modules_of_one_package():
    """Every script runs as ``python -m experiments.NAME``: no sys.path edits, no imports placed
    after code (noqa: E402), and no script imports another script (only the helper modules,
    which have no main)."""
    import ast

    folder = ROOT / "experiments"
    scripts = {p.stem for p in folder.glob("*.py") if "\ndef main(" in p.read_text()}
    assert {"vnq", "bits", "discrete_inference", "ebp"} <= scripts
    for path in folder.glob("*.py"):
        text = path.read_text()
        assert "sys.path" not in text and "E402" not in text, path.name
        for node in ast.walk(ast.parse(text)):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            imported = {n.split(".")[1] for n in names if n.startswith("experiments.")}
            assert not imported & scripts, f"{path.name} imports the script(s) {imported & scripts}"


def test_ggml_peer_checks_input_and_matches_the_q8_product(monkeypatch, tmp_path):
    """The ggml peer refuses bad input without a library; with one ($BAYESQ_GGML_LIB, built by
    the user: not on CI), its TQ2_0 product is X W^T up to ggml's Q8_K rounding of X."""
    ggml = _script("ggml_peer")
    lib = os.environ.get(ggml.ENV)
    monkeypatch.delenv(ggml.ENV, raising=False)
    with pytest.raises(ValueError, match="set BAYESQ_GGML_LIB"):
        ggml.load_ggml()
    with pytest.raises(ValueError, match="no such file"):
        ggml.load_ggml(tmp_path / "libggml.so")
    with pytest.raises(ValueError, match="multiple of 256"):
        ggml.TernaryMatmul(np.zeros((4, 100), dtype=np.int8), m=1)
    with pytest.raises(ValueError, match="-1, 0, \\+1"):
        ggml.TernaryMatmul(np.full((4, 256), 2), m=1)
    with pytest.raises(ValueError, match="row_scale must hold 4 positive"):
        ggml.TernaryMatmul(np.zeros((4, 256), dtype=np.int8), m=1, row_scale=[1.0, 0.0, 1.0, 1.0])
    if lib is None:
        return
    n, k, m = 48, 768, 5
    codes = ggml.random_ternary(n, k, sparsity=0.5, seed=3)
    scale = np.random.default_rng(4).integers(1, 8, n) / 4  # exact in float16, as TQ2_0 stores
    x = np.random.default_rng(5).standard_normal((m, k)).astype(np.float32)
    with ggml.TernaryMatmul(codes, m, row_scale=scale, threads=2, lib=lib) as matmul:
        y = matmul(x)
    weight = codes * scale[:, None]
    exact = x.astype(np.float64) @ weight.T
    # Q8_K: each block of 256 activations rounded to steps of its max |x| / 127, so an error of
    # at most half a step per activation, times |w|, summed over K
    half_step = np.repeat(np.abs(x).reshape(m, -1, 256).max(-1) / 254, 256, axis=1)
    bound = half_step @ np.abs(weight).T
    assert np.all(np.abs(y - exact) <= bound + 1e-5 * np.abs(exact) + 1e-6)
    assert np.abs(y - exact).max() > 0  # the activations are quantized: not a float product


def test_baselines_tiny_every_method_and_resume(tmp_path):
    script = _script("baselines")
    out = tmp_path / "bl"
    summary = script.main(["--tiny", "--no-latency", "--out", str(out)])
    names = [*script.METHODS, *script.BAYES_METHODS]
    rows = {row["method"]: row for row in summary["lenet300"]}
    assert sorted(rows) == sorted(names)  # a row for every method
    for name, row in rows.items():
        assert row["seeds"] == 1 and row["bytes"] > 0 and row["bops"] is None or row["bops"] > 0
        assert 0.0 <= row["accuracy"] <= 1.0, name
        if row["kernels_accuracy"] is None:  # the kernels cannot run it: the table says why
            assert row["kernels_why_not"], name
        else:
            assert row["kernels_equal_reference"] is True, name
    # the methods whose arithmetic is codes x scales do run on the kernels
    assert {"bnn", "binary_connect", "twn", "dorefa_2_2_32", "pact_4", "vnq", "ebp"} <= {
        n for n, r in rows.items() if r["kernels_accuracy"] is not None}  # fmt: skip
    table = (out / "table_digits_tiny.md").read_text()
    assert table.count("\n| ") == len(names) + 2  # header, rule, a line per method
    assert (out / "digits_tiny_lenet300_bytes.png").exists()
    # resumable: finished runs are read back, not retrained; a removed one is redone
    first = out / "digits_tiny" / "lenet300" / "twn" / "seed0.json"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("seed0.json")}
    first.unlink()
    again = script.main(["--tiny", "--no-latency", "--out", str(out), "--methods", "twn", "bnn"])
    assert first.exists()
    assert all(p.stat().st_mtime_ns == t for p, t in before.items() if p != first)
    assert len(again["lenet300"]) == len(names)  # the tables keep every saved run
    first.unlink()
    script.main(["--tiny", "--out", str(out), "--report-only"])
    assert not first.exists()  # --report-only trains nothing


def test_baselines_latency_and_bad_input(tmp_path):
    script = _script("baselines")
    summary = script.main(["--tiny", "--out", str(tmp_path), "--methods", "bnn"])
    latency = summary["lenet300"][0]["latency_b256"]
    assert set(latency["ms"]) == {"torch float32", "torch int8 dynamic", "bayesq"}
    assert all(v > 0 for v in latency["ms"].values()) and latency["vs_float32"] > 0
    run = tmp_path / "digits_tiny" / "lenet300" / "bnn" / "seed0.json"
    assert run.with_suffix(".safetensors").exists()  # the net, kept to be timed again
    before = json.loads(run.read_text())["latency_b256"]
    retimed = script.main(["--tiny", "--out", str(tmp_path), "--retime"])["lenet300"][0]
    assert retimed["latency_b256"] != before and retimed["latency_b256"]["ms"]["bayesq"] > 0
    with pytest.raises(ValueError, match="unknown methods"):
        script.main(["--tiny", "--out", str(tmp_path), "--methods", "magic"])
    with pytest.raises(ValueError, match="28 x 28"):
        script.main(["--tiny", "--out", str(tmp_path), "--arch", "lenet5"])


def test_baselines_report_a_method_that_does_not_apply(tmp_path):
    """EBP trains MLPs only: on a convolutional net its row says so instead of failing."""
    report = _script("baselines_report")
    run = {"method": "ebp", "label": "EBP binary", "paper": "p", "bits": [1, 1, 32],
           "accuracy": None, "kernels": None, "kernels_why_not": "EBP here trains MLPs only",
           "train_seconds": 0.0, "bops_nominal": None, "epochs": 1}  # fmt: skip
    folder = tmp_path / "mnist" / "lenet5" / "ebp"
    folder.mkdir(parents=True)
    (folder / "seed0.json").write_text(json.dumps(run))
    summary = report.report(tmp_path, "mnist", ["lenet5"], ["ebp"])
    assert summary["lenet5"][0]["accuracy"] is None
    assert "EBP here trains MLPs only" in (tmp_path / "table_mnist.md").read_text()
