"""A fitted VNQ net as a discrete net on the bit-serial kernels: same predictions, and its speed.

Reads a run directory of experiments.vnq (report.json, float.safetensors,
posterior.safetensors) and builds the posterior's discrete net with `quantize_posterior` (each
weight at its codebook level, pruned weights at 0, the run's pruning rule), the activation
scales calibrated on the first training images. Then, for each activation width:
  * predictions on the whole test set, on the kernels and with the PyTorch integer reference
    (they must agree exactly: equal logits, hence equal predictions);
  * test accuracy of the float net and of the discrete net (beside the VNQ net's with quantized
    weights and float activations, from report.json);
  * batch-256 inference time, median of alternated rounds: the float net in torch float32, the
    float net after torch int8 dynamic quantization (Linear layers), and the discrete net.
Writes discrete_inference.json into the run directory.

  python -m experiments.vnq --data-dir ../shared/data/mnist --arch lenet300      # the fit
  python -m experiments.discrete_inference --run results/vnq_mnist_lenet300 \\
      --data-dir ../shared/data/mnist                                              # this
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from pathlib import Path

import torch

from bayesq.cli import run_main
from bayesq.data import load_dataset
from bayesq.files import atomic_write_json
from bayesq.quantize import quantize_posterior
from bayesq.train import accuracy
from experiments.runs import load_run
from experiments.timing import seconds_per_call


@torch.no_grad()
def _predict(fn, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    return torch.cat([fn(x[i : i + batch]) for i in range(0, len(x), batch)])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", required=True, help="a run directory of experiments/vnq.py")
    p.add_argument("--data-dir", default=None, help="MNIST IDX directory (default: digits)")
    p.add_argument("--act-bits", type=int, nargs="+", default=[8, 4, 2])
    p.add_argument("--calibration", type=int, default=1024, help="training images for the scales")
    p.add_argument("--batch", type=int, default=256, help="batch of the timing")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    for flag in ("calibration", "batch", "rounds", "threads"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    float_net, posterior, pruning, report = load_run(run)
    data = load_dataset(args.data_dir or "digits")
    x_test, y_test = data.x_test.float(), data.y_test
    calibration = data.x_train[: args.calibration].float()

    acc_float = accuracy(float_net, x_test, y_test)
    acc_vnq_quantized = report.get("accuracy_quantized")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantize_dynamic's deprecation notices
        int8_net = torch.ao.quantization.quantize_dynamic(
            float_net, {torch.nn.Linear}, dtype=torch.qint8
        )
    print(
        f"{report['arch']}: float {acc_float:.4f}, VNQ quantized weights with float activations "
        f"(report.json) {acc_vnq_quantized}"
    )
    x_batch = x_test[: args.batch].contiguous()
    rows = []
    for bits in args.act_bits:
        discrete = quantize_posterior(posterior, calibration, act_bits=bits, pruning=pruning)
        logits = _predict(lambda x, d=discrete: d(x, threads=args.threads), x_test)
        reference = _predict(discrete.reference, x_test)
        same_logits = bool(torch.equal(logits, reference))
        same_predictions = int((logits.argmax(1) == reference.argmax(1)).sum())
        methods = {
            "float32": lambda: float_net(x_batch),
            "int8 dynamic": lambda: int8_net(x_batch),
            "discrete": lambda d=discrete: d(x_batch, threads=args.threads),
        }
        times = {name: [] for name in methods}
        with torch.no_grad():
            for _ in range(args.rounds):
                for name, fn in methods.items():
                    times[name].append(seconds_per_call(fn, 0.2))
        median = {name: statistics.median(t) for name, t in times.items()}
        row = {
            "act_bits": bits,
            "accuracy_discrete": accuracy(lambda batch: batch, logits, y_test),
            "logits_equal_reference": same_logits,
            "predictions_equal_reference": same_predictions,
            "test_size": len(y_test),
            "batch_ms": {name: 1e3 * t for name, t in median.items()},
            "speedup_vs_float32": median["float32"] / median["discrete"],
            "speedup_vs_int8": median["int8 dynamic"] / median["discrete"],
        }
        rows.append(row)
        print(
            f"act {bits} bits: discrete {row['accuracy_discrete']:.4f}, "
            f"logits equal to the reference: {same_logits} "
            f"({same_predictions}/{len(y_test)} predictions); batch {args.batch}: "
            + ", ".join(f"{n} {v:.3f} ms" for n, v in row["batch_ms"].items())
            + f"; discrete {row['speedup_vs_float32']:.2f}x float32",
            flush=True,
        )
    summary = {
        "run": str(run),
        "arch": report["arch"],
        "data": report["data"],
        "accuracy_float": acc_float,
        "accuracy_vnq_quantized_float": acc_vnq_quantized,
        "batch": args.batch,
        "threads": args.threads,
        "rounds": args.rounds,
        "layers": [
            {
                "in": layer.in_features if hasattr(layer, "in_features") else None,
                "out": layer.out_features if hasattr(layer, "out_features") else None,
                "pruned_rows": int((layer.row_bits == 0).sum())
                if hasattr(layer, "row_bits")
                else None,
            }
            for layer in (getattr(op, "linear", op) for op in discrete.layers)
        ],
        "rows": rows,
    }
    atomic_write_json(run / "discrete_inference.json", summary)
    return summary


if __name__ == "__main__":
    run_main(main)
