"""Bit budgets from one fitted posterior: accuracy against average bits, variance-driven vs uniform.

Reads a run directory of experiments/vnq.py (report.json, float.safetensors, vnq.safetensors),
builds its `bayesq.posterior.Posterior`, and for each budget (average bits per weight, a pruned
weight counting 0 bits; the bits as the kernels store whole rows are reported beside):
  * variance-driven: `bayesq.bits.allocate` (the rule, then greedy steps by expected loss);
  * uniform (integer budgets 2..8): every weight at the same width, no pruning;
  * uniform over kept weights: the rule's pruning, every kept row at one width (2..8), against
    the variance-driven allocation at the same average (the allocation alone, pruning aside);
then turns each allocation into a discrete net (`quantize_posterior`, 8-bit activations by
default) and measures its test accuracy on the bit-serial kernels. Writes into <run>/bits/:
  bits.json             the curve, the rule's per-layer report, float accuracy, configuration
  posterior.npz         per layer theta, log alpha, rule bits, codebook (the figures read this)
  discrete_<b>bit.safetensors   the variance-driven artifact at the largest budget <= 2 bits,
                        reloaded and checked to give the same logits
  weight_spikes.png, bits_histogram.png, accuracy_vs_bits.png
Figures are drawn from the saved files (`--plot-only` redraws them without recomputing).

  python experiments/bits.py                                             # digits (embedded) run
  python experiments/bits.py --run results/vnq_mnist_lenet5 --data-dir ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from discrete_inference import load_run  # noqa: E402

from bayesq import bits  # noqa: E402
from bayesq.artifact import load_artifact, save_artifact  # noqa: E402
from bayesq.data import load_dataset  # noqa: E402
from bayesq.plots import plot_accuracy_vs_bits, plot_bits_histogram, plot_weight_spikes  # noqa: E402
from bayesq.posterior import Posterior  # noqa: E402
from bayesq.quantize import quantize_posterior  # noqa: E402

NO_PRUNING = bits.BitRule(log_alpha_threshold=1e30, zero_mass_threshold=1.0)


def _accuracy(net, x, y, threads: int) -> float:
    correct = 0
    for i in range(0, len(x), 1000):
        correct += int((net(x[i : i + 1000], threads=threads).argmax(1) == y[i : i + 1000]).sum())
    return correct / len(x)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", default="results/vnq_digits_mlp", help="a run of experiments/vnq.py")
    p.add_argument("--data-dir", default=None, help="MNIST IDX directory (default: digits)")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0, 3.0, 4.0])
    p.add_argument("--uniform", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--act-bits", type=int, default=8)
    p.add_argument("--step-multiple", type=float, default=1.0, help="c in Delta <= c sigma")
    p.add_argument("--calibration", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--plot-only", action="store_true", help="redraw the figures from saved files")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    out = run / "bits"
    if args.plot_only:
        return plot_from_saved(out)
    out.mkdir(parents=True, exist_ok=True)

    float_net, vnq_net, report = load_run(run)
    data = load_dataset(args.data_dir or "digits")
    x_test, y_test = data.x_test.float(), data.y_test
    calibration = data.x_train[: args.calibration].float()
    with torch.no_grad():
        acc_float = float((float_net(x_test).argmax(1) == y_test).float().mean())
    posterior = Posterior.from_vnq(vnq_net, tuple(x_test.shape[1:]))
    rule = bits.BitRule(
        step_multiple=args.step_multiple, log_alpha_threshold=report["log_alpha_threshold"]
    )
    rule_widths = {n: bits.row_widths(layer, rule) for n, layer in posterior.layers.items()}
    print(f"{report['arch']}: float {acc_float:.4f}; the rule alone: "
          f"{bits.average_bits(posterior, rule_widths, rule):.2f} bits per weight "
          f"({bits.average_bits(posterior, rule_widths, rule, stored=True):.2f} as stored)")  # fmt: skip

    curve = {"variance-driven": [], "uniform": []}
    artifact_budget = max((b for b in args.budgets if b <= 2.0), default=min(args.budgets))
    for budget in sorted(args.budgets):
        widths = bits.allocate(posterior, budget, rule)
        net = quantize_posterior(posterior, widths, calibration, args.act_bits, rule)
        point = {
            "budget": budget,
            "average_bits": bits.average_bits(posterior, widths, rule),
            "stored_bits": bits.average_bits(posterior, widths, rule, stored=True),
            "accuracy": _accuracy(net, x_test, y_test, args.threads),
            "report": bits.bit_report(posterior, widths, rule),
        }
        curve["variance-driven"].append(point)
        print(f"variance-driven {budget:g}: {point['average_bits']:.3f} bits per weight "
              f"({point['stored_bits']:.2f} stored), accuracy {point['accuracy']:.4f}",
              flush=True)  # fmt: skip
        if budget == artifact_budget:
            path = save_artifact(net, out / f"discrete_{budget:g}bit.safetensors", data.image_shape)
            loaded, _ = load_artifact(path)
            same = bool(torch.equal(loaded(x_test[:500]), net(x_test[:500])))
            print(
                f"artifact {path.name}: {path.stat().st_size:,} bytes, reloaded logits equal: {same}"
            )
    for width in args.uniform:
        widths = bits.uniform_widths(posterior, width)
        net = quantize_posterior(posterior, widths, calibration, args.act_bits, NO_PRUNING)
        point = {
            "budget": float(width),
            "average_bits": bits.average_bits(posterior, widths, NO_PRUNING),
            "stored_bits": bits.average_bits(posterior, widths, NO_PRUNING, stored=True),
            "accuracy": _accuracy(net, x_test, y_test, args.threads),
        }
        curve["uniform"].append(point)
        print(f"uniform {width}: accuracy {point['accuracy']:.4f}", flush=True)
    # The rule's pruning with one width for every kept row, against the variance-driven
    # allocation at the same average: the bit allocation alone, pruning set aside.
    for width in args.uniform:
        kept_widths = bits.uniform_widths(posterior, width, rule)
        average = bits.average_bits(posterior, kept_widths, rule)
        for label, widths in (
            ("uniform over kept weights", kept_widths),
            ("variance-driven at the same average", bits.allocate(posterior, average, rule)),
        ):
            net = quantize_posterior(posterior, widths, calibration, args.act_bits, rule)
            point = {
                "budget": average,
                "row_width": width,
                "average_bits": bits.average_bits(posterior, widths, rule),
                "accuracy": _accuracy(net, x_test, y_test, args.threads),
            }
            curve.setdefault(label, []).append(point)
            print(f"{label}, {average:.3f} bits per weight (width {width} per kept row): "
                  f"accuracy {point['accuracy']:.4f}", flush=True)  # fmt: skip

    np.savez(
        out / "posterior.npz",
        **{
            f"{name}/{key}": value
            for name, layer in posterior.layers.items()
            for key, value in {
                "theta": layer.mean.flatten().numpy(),
                "log_alpha": layer.log_alpha.flatten().numpy(),
                "bits": bits.weight_bits(layer, rule).flatten().numpy(),
                "codebook": layer.levels.numpy(),
            }.items()
        },
    )
    summary = {
        "run": str(run),
        "arch": report["arch"],
        "data": report["data"],
        "accuracy_float": acc_float,
        "rule": {
            "step_multiple": rule.step_multiple,
            "log_alpha_threshold": rule.log_alpha_threshold,
        },
        "rule_report": bits.bit_report(posterior, rule_widths, rule),
        "act_bits": args.act_bits,
        "curve": curve,
    }
    (out / "bits.json").write_text(json.dumps(summary, indent=2))
    plot_from_saved(out)
    return summary


def plot_from_saved(out: Path) -> dict:
    """Draw the three figures from bits.json and posterior.npz."""
    summary = json.loads((out / "bits.json").read_text())
    with np.load(out / "posterior.npz", allow_pickle=False) as saved:
        names = list(dict.fromkeys(key.split("/")[0] for key in saved.files))
        layers = {
            name: {k: saved[f"{name}/{k}"] for k in ("theta", "log_alpha", "bits", "codebook")}
            for name in names
        }
    threshold = summary["rule"]["log_alpha_threshold"]
    plot_weight_spikes(layers, threshold, out / "weight_spikes.png")
    plot_bits_histogram(
        {n: layer["bits"] for n, layer in layers.items()}, out / "bits_histogram.png"
    )
    curves = {
        label: [(p["average_bits"], p["accuracy"]) for p in points]
        for label, points in summary["curve"].items()
        if points
    }
    title = f"{summary['arch']} on {summary['data']}: {summary['act_bits']}-bit activations"
    plot_accuracy_vs_bits(curves, summary["accuracy_float"], out / "accuracy_vs_bits.png", title)
    return summary


if __name__ == "__main__":
    main()
