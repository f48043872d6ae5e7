"""The field's quantized-training methods beside VNQ and EBP, on one harness.

Every method of `bayesq.baselines.methods` and the Bayesian ones (VNQ ternary, Sparse VD with
bayesq's bit rule, EBP binary on MLPs) gets the same data, architecture, training loop, seeds and
epochs, and is measured the same way:

  * test accuracy of the trained net as it trained (its quantizers in the forward pass);
  * where its arithmetic is integer codes times scales: the discrete net built by the one builder
    (`bayesq.baselines.export` -> `bayesq.quantize.quantize_posterior`; batch norm folded, the
    method's activation grids kept), its test accuracy on the kernels and whether the kernels'
    logits equal the integer reference's (they must);
  * honest size (`bayesq.net_costs`: codes, scales, biases and the positions of the kept weights;
    Deep Compression by its own paper's accounting, Huffman included) and BOPs (b_w x b_a per
    multiply-accumulate, as Bayesian Bits counts them);
  * for the first seed, the batch-256 latency of the kernels against torch float32 and torch's
    int8 (dynamic for Linear layers, FX static on x86 for convolutions), 2 threads, alternated.

Runs are resumable: each (arch, method, seed) writes its JSON under --out and a rerun skips it.
At the end the script writes ``table_<data>.md``, ``summary_<data>.json`` and the figures
(accuracy against bytes and against BOPs).

  python -m experiments.baselines                                       # digits, every method
  python -m experiments.baselines --data-dir ../shared/data/mnist --arch lenet300 lenet5
  python -m experiments.baselines --tiny                                 # seconds, for the tests
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import models
from bayesq.artifact import load_artifact, save_artifact
from bayesq.baselines import dc_storage
from bayesq.baselines.export import export_posterior
from bayesq.baselines.methods import DEEP_COMPRESSION_INDEX_BITS, METHODS, Budget, method
from bayesq.baselines.nets import NotIntegerCodes, quantized_layers
from bayesq.cli import int_at_least, positive_float, run_main
from bayesq.data import load_dataset
from bayesq.files import atomic_write_json
from bayesq.net_costs import net_costs, reference_bops
from bayesq.quantize import quantize_posterior
from bayesq.train import accuracy
from experiments.baselines_bayes import BAYES_METHODS, run_bayes
from experiments.baselines_report import report
from experiments.runs import arch_kwargs
from experiments.timing import seconds_per_call
from experiments.torch_peers import int8_dynamic, int8_static

TINY_TRAIN, TINY_TEST = 256, 200


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", default=None, help="MNIST IDX folder (default: embedded digits)")
    p.add_argument("--arch", nargs="+", default=None, help="architectures of models/ "
                   "(default: lenet300 on digits, lenet300 and lenet5 on MNIST)")  # fmt: skip
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"default: all: {', '.join([*METHODS, *BAYES_METHODS])}")  # fmt: skip
    p.add_argument("--seeds", type=int_at_least(1), default=3)
    p.add_argument("--epochs", type=int_at_least(1), default=None,
                   help="per method (default 20 on digits, 10 on MNIST)")  # fmt: skip
    p.add_argument("--batch-size", type=int_at_least(1), default=128)
    p.add_argument(
        "--lr", type=positive_float, default=None, help="default 3e-3 digits, 1e-3 MNIST"
    )
    p.add_argument("--threads", type=int_at_least(1), default=1, help="for training")
    p.add_argument("--latency", action=argparse.BooleanOptionalAction, default=True,
                   help="time the first seed's nets at batch 256 (2 threads)")  # fmt: skip
    p.add_argument("--calibration", type=int_at_least(1), default=512)
    p.add_argument("--out", default="results/baselines")
    p.add_argument("--tiny", action="store_true", help="a few hundred images, 1 epoch, 1 seed")
    p.add_argument("--progress", action="store_true")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the tables and figures from the saved runs, train nothing",
    )
    p.add_argument("--retime", action="store_true",
                   help="time the saved discrete nets (first seeds) again, on a quiet machine, "
                        "and rewrite the tables; trains nothing")  # fmt: skip
    return p.parse_args(argv)


def _run_path(out: Path, data: str, arch: str, name: str, seed: int) -> Path:
    return out / data / arch / name / f"seed{seed}.json"


# --- one run -------------------------------------------------------------------------------------
def _zero_share(net: nn.Module) -> float:
    """Share of the weights that the trained net computes with as 0."""
    zeros, total = 0, 0
    with torch.no_grad():
        for layer in quantized_layers(net):
            w = layer.quantizer(layer.weight)
            zeros, total = zeros + int((w == 0).sum()), total + w.numel()
    return zeros / max(total, 1)


def _nominal_bytes(net: nn.Module, weight_bits: int) -> int:
    """A net the kernels do not run, stored densely: each weight its bits, each bias and each
    row's scale 32 bits (no position coding: every weight is stored)."""
    bits = 0
    for layer in quantized_layers(net):
        out = layer.weight.shape[0]
        bits += layer.weight.numel() * weight_bits + 32 * out * (1 + (layer.bias is not None))
    return math.ceil(bits / 8)


def _deep_compression_storage(net: nn.Module, masks: dict) -> dict:
    layers = []
    for name, layer in net.named_children():
        if not hasattr(layer, "quantizer"):
            continue
        shared = layer.quantizer.shared
        layers.append(dc_storage.layer_storage(shared.centroids.detach(), shared.assignment,
                                               masks[name], DEEP_COMPRESSION_INDEX_BITS, huffman=True,
                                               bias=layer.bias))  # fmt: skip
    return dc_storage.net_storage(layers)


def run_method(name: str, arch: str, data, budget: Budget, calibration) -> tuple[dict, object]:
    """Train one method once; its measurements and its discrete net (or None)."""
    m = method(name)
    torch.manual_seed(budget.seed)
    reference = models.build(arch, **arch_kwargs(arch, data.image_shape))
    net = m.build(reference)
    t0 = time.perf_counter()
    trained = m.train(net, data.x_train, data.y_train, budget)
    result = {
        "method": name, "label": m.label, "paper": m.paper, "notes": m.notes,
        "bits": list(m.bits), "staged": m.staged, "seed": budget.seed,
        "train_seconds": time.perf_counter() - t0, "losses": trained["losses"],
        "accuracy": accuracy(net, data.x_test, data.y_test), "zero_share": _zero_share(net),
    }  # fmt: skip
    macs = reference_bops(reference, data.image_shape)["macs"]
    result["bops_nominal"] = macs * m.bits[0] * m.bits[1]
    discrete = None
    try:
        posterior, grids = export_posterior(net, data.image_shape)
        discrete = quantize_posterior(posterior, calibration, activations=grids)
    except NotIntegerCodes as e:
        result["kernels"] = None
        result["kernels_why_not"] = str(e)
        if "masks" in trained:
            storage = _deep_compression_storage(net, trained["masks"])
            result["bytes"] = storage["total_bytes"]
            result["storage"] = {k: v for k, v in storage.items() if isinstance(v, int | float)}
        else:
            result["bytes"] = _nominal_bytes(net, m.bits[0])
        result["bytes_counted"] = "Deep Compression's own" if "masks" in trained else "dense"
    if discrete is not None:
        result.update(measure_discrete(discrete, data))
    return result, discrete


def measure_discrete(discrete, data) -> dict:
    """Kernel accuracy, equality with the integer reference, bytes and BOPs of a discrete net."""
    costs = net_costs(discrete, data.image_shape)
    probe = data.x_test[:256]
    layers = [getattr(op, "linear", op) for op in discrete.layers]
    return {
        "kernels": {
            "accuracy": accuracy(discrete, data.x_test, data.y_test),
            "equal_reference": bool(torch.equal(discrete(probe), discrete.reference(probe))),
            "weight_widths": sorted({int(b) for lay in layers for b in lay.row_bits.unique()}),
            "act_bits": sorted({int(lay.act_bits) for lay in layers}),
        },
        "bytes": costs["bytes"],
        "bytes_counted": "artifact (positions, codes, scales, biases)",
        "bits_per_weight": costs["bits_per_weight"],
        "bops_dense": costs["bops_dense"],
        "bops_sparse": costs["bops_sparse"],
        "kept_share": costs["kept"] / max(costs["weights"], 1),
    }


# --- latency -------------------------------------------------------------------------------------
def latency(discrete, arch: str, data, rounds: int = 3) -> dict:
    """Batch-256 ms of the kernels (2 threads) against torch float32 and int8 on the same
    architecture, in alternated rounds (median)."""
    x = data.x_test[:256].contiguous()
    reference = models.build(arch, **arch_kwargs(arch, data.image_shape)).eval()
    peers = {
        "torch float32": reference,
        "torch int8 dynamic": int8_dynamic(copy.deepcopy(reference)),
    }
    if any(isinstance(m, nn.Conv2d) for m in reference.modules()):
        peers["torch int8 static (FX, x86)"] = int8_static(copy.deepcopy(reference), x)
    calls = {name: (lambda n=net: n(x)) for name, net in peers.items()}
    calls["bayesq"] = lambda: discrete(x, threads=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    times = {name: [] for name in calls}
    try:
        with torch.no_grad():
            for _ in range(rounds):
                for name, call in calls.items():
                    times[name].append(seconds_per_call(call, 0.2) * 1e3)
    finally:
        torch.set_num_threads(threads)
    ms = {name: statistics.median(v) for name, v in times.items()}
    best_int8 = min(v for k, v in ms.items() if "int8" in k)
    return {"ms": ms, "vs_float32": ms["torch float32"] / ms["bayesq"],
            "vs_best_int8": best_int8 / ms["bayesq"]}  # fmt: skip


def retime(folder: Path, data) -> None:
    """Time every saved first-seed discrete net under `folder` again and update its run's
    latency (the timings of a run are taken right after its training, whatever else the
    machine was doing then)."""
    for artifact in sorted(folder.glob("*/*/seed0.safetensors")):
        arch = artifact.parent.parent.name
        net, _ = load_artifact(artifact)
        run = artifact.with_suffix(".json")
        result = json.loads(run.read_text())
        result["latency_b256"] = latency(net, arch, data)
        atomic_write_json(run, result)
        print(f"{arch} {artifact.parent.name}: {result['latency_b256']['ms']['bayesq']:.3f} ms "
              f"({result['latency_b256']['vs_float32']:.2f}x float32, "
              f"{result['latency_b256']['vs_best_int8']:.2f}x best int8)", flush=True)  # fmt: skip


# --- the loop ------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_dataset(args.data_dir or "digits")
    data_name = data.name
    mnist = data_name == "mnist"
    if args.tiny:
        data = data.subset(train=TINY_TRAIN, test=TINY_TEST, seed=0)
    archs = args.arch or (["lenet300", "lenet5"] if mnist else ["lenet300"])
    if "lenet5" in archs and data.image_shape[-1] < 28:
        raise ValueError(f"lenet5 needs 28 x 28 images; {data_name} has {data.image_shape}")
    names = args.methods or [*METHODS, *BAYES_METHODS]
    unknown = sorted(set(names) - set(METHODS) - set(BAYES_METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; the methods: {[*METHODS, *BAYES_METHODS]}")
    epochs = 1 if args.tiny else args.epochs or (10 if mnist else 20)
    seeds = 1 if args.tiny else args.seeds
    lr = args.lr or (1e-3 if mnist else 3e-3)
    out = Path(args.out)
    label = data_name + ("_tiny" if args.tiny else "")
    calibration = data.x_train[: args.calibration]
    if args.retime:
        retime(out / label, data)
    for arch in [] if args.report_only or args.retime else archs:
        for name in names:
            for seed in range(seeds):
                path = _run_path(out, label, arch, name, seed)
                if path.exists():
                    continue  # finished in an earlier run
                budget = Budget(epochs, args.batch_size, lr, seed, args.progress)
                if name in BAYES_METHODS:
                    result, discrete = run_bayes(name, arch, data, budget, calibration)
                    if discrete is not None:
                        result.update(measure_discrete(discrete, data))
                        result["zero_share"] = 1.0 - result["kept_share"]
                else:
                    result, discrete = run_method(name, arch, data, budget, calibration)
                result.update(arch=arch, data=label, epochs=epochs, lr=lr,
                              batch_size=args.batch_size, train_size=len(data.y_train))  # fmt: skip
                if seed == 0 and discrete is not None:  # kept to be timed again (--retime)
                    save_artifact(discrete, path.with_suffix(".safetensors"), data.image_shape)
                    if args.latency:
                        result["latency_b256"] = latency(discrete, arch, data)
                atomic_write_json(path, result)
                kernels = result.get("kernels") or {}
                own, on_kernels = result.get("accuracy"), kernels.get("accuracy")
                print(f"{arch} {name} seed {seed}: accuracy "
                      f"{'-' if own is None else format(own, '.4f')}, kernels "
                      f"{'-' if on_kernels is None else format(on_kernels, '.4f')}, "
                      f"{result.get('bytes') or 0:,} bytes, {result['train_seconds']:.0f} s",
                      flush=True)  # fmt: skip
    # the tables hold every run on disk, of this command's and earlier ones' methods and archs
    saved = (
        sorted(p.name for p in (out / label).iterdir() if p.is_dir())
        if (out / label).is_dir()
        else []
    )
    return report(out, label, saved or archs, [*METHODS, *BAYES_METHODS])


if __name__ == "__main__":
    run_main(main)
