"""Bit budgets from one fitted posterior: accuracy against bits per weight, variance-driven vs uniform.

Reads a run directory of experiments.vnq (report.json, float.safetensors and the fitted
posterior, posterior.safetensors), and for each budget (average bits per weight over all
the net's weights, counting everything a sparse file holds: which weights are kept, their codes,
the rows' steps and widths, the biases; `bayesq.bits.average_bits`):
  * variance-driven: `bayesq.bits.allocate` (the rule, then greedy steps by expected loss);
  * uniform (integer widths 2..8): every weight at the same width, no pruning;
  * uniform over kept weights: the rule's pruning, every kept row at one width (2..8), against
    the variance-driven allocation at the same average (the allocation alone, pruning aside);
  * Bayesian Compression's rule (`bayesq.CompressionRule`) on the same posterior;
then turns each allocation into a discrete net (`quantize_posterior`, 8-bit activations by
default), measures its test accuracy on the bit-serial kernels, saves it with
`bayesq.artifact.save_artifact`, checks that the file gives the same logits, and records the
file's size in bits per weight beside the counted figure. Each point also gives the codes-only
figure (a kept weight at its row's width, a pruned one at 0 bits: no positions, no steps) and
the width the dense kernels hold. Writes into <run>/bits/:
  bits.json             the curve, the rule's per-layer report, float accuracy, configuration
  discrete_<budget>bit.safetensors   the variance-driven discrete net of each budget
  artifacts/*.safetensors            the discrete nets of the other points
  weight_spikes.png, bits_histogram.png, accuracy_vs_bits.png
Figures are drawn from the saved files, bits.json and the run's posterior.safetensors
(`--plot-only` redraws them without recomputing).

  python -m experiments.bits                                             # digits (embedded) run
  python -m experiments.bits --run results/vnq_mnist_lenet5 --data-dir ../shared/data/mnist
  python -m experiments.bits --run <run> --tiny                          # a seconds-long smoke run
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bayesq import bits
from bayesq.artifact import load_artifact, save_artifact
from bayesq.bit_rules import (
    MAX_BITS,
    WIDTHS,
    BitRule,
    CompressionRule,
    compression_layer_bits,
    compression_widths,
    row_widths,
    uniform_widths,
    weight_bits,
)
from bayesq.cli import run_main
from bayesq.data import load_dataset
from bayesq.files import atomic_write_json
from bayesq.plots import plot_accuracy_vs_bits, plot_bits_histogram, plot_weight_spikes
from bayesq.posterior import Posterior, PruningRule
from bayesq.quantize import quantize_posterior
from bayesq.train import accuracy
from experiments.runs import load_run

NO_PRUNING = BitRule(pruning=PruningRule(log_alpha_threshold=1e30, zero_mass_threshold=1.0))
# Full runs and --tiny; a flag given on the command line wins over both.
DEFAULTS = dict(budgets=[0.5, 1.0, 1.5, 2.0, 3.0, 4.0], uniform=[2, 3, 4], calibration=1024)
TINY = dict(budgets=[1.5, 2.0], uniform=[2], calibration=64)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", default="results/vnq_digits_mlp", help="a run of experiments/vnq.py")
    p.add_argument("--data-dir", default=None, help="MNIST IDX directory (default: digits)")
    p.add_argument("--budgets", type=float, nargs="+", default=None, help="bits per weight")
    p.add_argument("--uniform", type=int, nargs="+", default=None, help="uniform row widths")
    p.add_argument("--act-bits", type=int, default=8)
    p.add_argument("--step-multiple", type=float, default=1.0, help="c in Delta <= c sigma")
    p.add_argument("--calibration", type=int, default=None, help="training images for scales")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tiny", action="store_true", help="few budgets and calibration images")
    p.add_argument("--plot-only", action="store_true", help="redraw the figures from saved files")
    args = p.parse_args(argv)
    for key, value in (TINY if args.tiny else DEFAULTS).items():
        if getattr(args, key) is None:  # only what was not given explicitly
            setattr(args, key, value)
    if any(not (0 <= b <= MAX_BITS) for b in args.budgets):
        raise ValueError(f"--budgets must lie in 0..{MAX_BITS}, got {args.budgets}")
    if any(w not in WIDTHS[1:] for w in args.uniform):
        raise ValueError(f"--uniform widths must be in {WIDTHS[1:]}, got {args.uniform}")
    if args.calibration < 1 or args.threads < 1:
        raise ValueError("--calibration and --threads must be >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    out = run / "bits"
    if args.plot_only:
        return plot_from_saved(out)

    float_net, posterior, pruning, report = load_run(run)
    data = load_dataset(args.data_dir or "digits")
    x_test, y_test = data.x_test.float(), data.y_test
    calibration = data.x_train[: args.calibration].float()
    acc_float = accuracy(float_net, x_test, y_test)
    rule = BitRule(step_multiple=args.step_multiple, pruning=pruning)
    rule_widths = {n: row_widths(layer, rule) for n, layer in posterior.layers.items()}
    print(f"{report['arch']}: float {acc_float:.4f}; the rule alone: "
          f"{bits.average_bits(posterior, rule_widths, rule):.3f} bits per weight "
          f"({bits.average_bits(posterior, rule_widths, rule, count='codes'):.3f} codes only, "
          f"{bits.average_bits(posterior, rule_widths, rule, stored=True):.2f} as the kernels "
          "hold it)")  # fmt: skip

    def measure(label: str, file: str, widths, point_rule, **extra) -> dict:
        """Accuracy, counted bits and the artifact's size of one allocation."""
        net = quantize_posterior(
            posterior, calibration, widths=widths, act_bits=args.act_bits, rule=point_rule
        )
        counted = bits.average_bits(posterior, widths, point_rule)
        path = save_artifact(net, out / file, data.image_shape)
        loaded, _ = load_artifact(path)
        same = bool(torch.equal(loaded(x_test[:500]), net(x_test[:500])))
        point = {
            **extra,
            "average_bits": counted,
            "codes_only_bits": bits.average_bits(posterior, widths, point_rule, count="codes"),
            "stored_bits": bits.average_bits(posterior, widths, point_rule, stored=True),
            "artifact_bytes": path.stat().st_size,
            "artifact_bits": 8 * path.stat().st_size / posterior.num_weights,
            "artifact_logits_equal": same,
            "accuracy": accuracy(lambda b: net(b, threads=args.threads), x_test, y_test),
        }
        print(f"{label}: {counted:.4f} bits per weight ({point['codes_only_bits']:.4f} codes "
              f"only; file {point['artifact_bits']:.4f}, {point['artifact_bytes']:,} bytes, "
              f"logits equal: {same}), accuracy {point['accuracy']:.4f}", flush=True)  # fmt: skip
        return point

    curve = {"variance-driven": [], "uniform": []}
    for budget in sorted(args.budgets):
        widths = bits.allocate(posterior, budget, rule)
        point = measure(
            f"variance-driven {budget:g}", f"discrete_{budget:g}bit.safetensors", widths, rule,
            budget=budget, report=bits.bit_report(posterior, widths, rule),
        )  # fmt: skip
        curve["variance-driven"].append(point)
    for width in args.uniform:
        widths = uniform_widths(posterior, width)
        file = f"artifacts/uniform_{width}.safetensors"
        curve["uniform"].append(
            measure(f"uniform {width}", file, widths, NO_PRUNING, row_width=width)
        )
    # The rule's pruning with one width for every kept row, against the variance-driven
    # allocation at the same average: the bit allocation alone, pruning set aside.
    for width in args.uniform:
        kept_widths = uniform_widths(posterior, width, rule)
        average = bits.average_bits(posterior, kept_widths, rule)
        allocated = bits.allocate(posterior, average, rule)
        for label, slug, widths in (
            ("uniform over kept weights", "kept_uniform", kept_widths),
            ("variance-driven at the same average", "kept_variance", allocated),
        ):
            file = f"artifacts/{slug}_{width}.safetensors"
            point = measure(
                f"{label}, width {width}", file, widths, rule, budget=average, row_width=width
            )
            curve.setdefault(label, []).append(point)
    compression = CompressionRule(group_log_alpha_threshold=pruning.log_alpha_threshold)
    curve["Bayesian Compression rule"] = [
        measure(
            "Bayesian Compression rule", "artifacts/bayesian_compression.safetensors",
            compression_widths(posterior, compression), compression, layers={
                name: vars(compression_layer_bits(layer, compression))
                for name, layer in posterior.layers.items()
            },
        )
    ]  # fmt: skip

    summary = {
        "run": str(run),
        "arch": report["arch"],
        "data": report["data"],
        "weights": posterior.num_weights,
        "accuracy_float": acc_float,
        "rule": {
            "step_multiple": rule.step_multiple,
            "log_alpha_threshold": pruning.log_alpha_threshold,
            "zero_mass_threshold": pruning.zero_mass_threshold,
        },
        "rule_report": bits.bit_report(posterior, rule_widths, rule),
        "act_bits": args.act_bits,
        "curve": curve,
    }
    atomic_write_json(out / "bits.json", summary)
    plot_from_saved(out)
    return summary


def _read_saved(out: Path) -> tuple[dict, dict]:
    """bits.json of a previous run and the run's posterior (out's parent); a missing or malformed
    file raises a ValueError that names it."""
    path = out / "bits.json"
    try:
        summary = json.loads(path.read_text())
        rule = BitRule(
            step_multiple=float(summary["rule"]["step_multiple"]),
            pruning=PruningRule(
                log_alpha_threshold=float(summary["rule"]["log_alpha_threshold"]),
                zero_mass_threshold=float(summary["rule"]["zero_mass_threshold"]),
            ),
        )
        curves = {
            label: [(float(p["average_bits"]), float(p["accuracy"])) for p in points]
            for label, points in summary["curve"].items()
        }
        float_accuracy, act_bits = float(summary["accuracy_float"]), int(summary["act_bits"])
        title = f"{summary['arch']} on {summary['data']}: {act_bits}-bit activations"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: not a readable bits.json of experiments.bits ({err})") from err
    posterior = Posterior.load(out.parent / "posterior.safetensors")
    layers = {
        name: {
            "theta": layer.mean.flatten().numpy(),
            "log_alpha": layer.log_alpha.flatten().numpy(),
            "bits": weight_bits(layer, rule).flatten().numpy(),
            "codebook": layer.levels.numpy(),
        }
        for name, layer in posterior.layers.items()
    }
    figure = dict(curves=curves, pruning=rule.pruning, float_accuracy=float_accuracy, title=title)
    return summary, {"layers": layers, **figure}


def plot_from_saved(out: Path) -> dict:
    """Draw the three figures from bits.json and the run's posterior.safetensors."""
    summary, saved = _read_saved(Path(out))
    layers = saved["layers"]
    plot_weight_spikes(layers, saved["pruning"], out / "weight_spikes.png")
    plot_bits_histogram(
        {n: layer["bits"] for n, layer in layers.items()}, out / "bits_histogram.png"
    )
    curves = {label: points for label, points in saved["curves"].items() if points}
    plot_accuracy_vs_bits(
        curves, saved["float_accuracy"], out / "accuracy_vs_bits.png", saved["title"]
    )
    return summary


if __name__ == "__main__":
    run_main(main)
