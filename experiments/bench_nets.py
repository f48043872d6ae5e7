"""Whole discrete nets against what torch gives a user in one call, side by side in one process.

For each net, the bayesq discrete net on the kernels (`DiscreteNet(x, threads=...)`) against:
  * torch float32: the float net a user would otherwise deploy (a VNQ run's trained float net;
    for the EBP and the wide net, the float net of the same weights, `float_twin`);
  * torch int8 dynamic: `quantize_dynamic` of its Linear layers (convolutions stay float);
  * torch int8 static: FX graph mode on the x86 backend (`prepare_fx`, calibration, `convert_fx`),
    what a user would pick for convolutions; "not supported" where FX cannot trace the net (a
    sign unit, say);
  * ONNX Runtime int8, only if `onnxruntime`, `onnx` and `onnxscript` import (an optional peer,
    never a dependency: `pip install 'bayesq[bench]'`): the float net exported by `torch.onnx`
    (opset 18, batch axis dynamic), then `quantize_static` (QDQ, per-channel int8 weights, uint8
    activations calibrated on the images torch's static path sees: the x86 defaults; weights of
    7 bits, `reduce_range`, on a CPU without VNNI, as ORT's documentation asks) and
    `quantize_dynamic`, each run by an `InferenceSession` on the CPU provider.
Timings: every method at each batch size in alternated rounds (a, b, c, a, b, c, ...), the median
of seconds per call, at `--threads` threads for torch, ONNX Runtime (intra-op; inter-op 1) and the
kernels alike; `speedup_vs_best_int8_peer` is over the fastest of the torch and ORT int8 nets at
that batch (`best_int8_peer` names it). Beside each time: the method's test accuracy on the whole
test set and its model bytes (float: parameters and buffers; torch int8: its serialized state
dict; ORT: the .onnx file; bayesq: the artifact file). Writes JSON to --out.

The nets:
  * `--vnq-run DIR` (repeatable): a run directory of `experiments.vnq`, its posterior quantized at
    each `--act-bits` (the ternary LeNet-5 of `--arch lenet5`, LeNet-300-100 of `--arch lenet300`);
  * the binary EBP net: `EBPNet` trained for `--ebp-epochs` on centred inputs, its EBP-D net;
  * the wide net: `--wide` sizes (default 784-4096-4096-10), random ternary weights with
    `--wide-sparsity` of them 0 (speed only: no accuracy).

  python -m experiments.bench_nets --data-dir ../shared/data/mnist \\
      --vnq-run results/vnq_mnist_lenet5 --vnq-run results/vnq_mnist_lenet300
  python -m experiments.bench_nets --tiny --vnq-run results/vnq_digits_mlp_tiny   # seconds
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import math
import statistics
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from bayesq import lowbit_gemm
from bayesq.artifact import save_artifact
from bayesq.cli import run_main
from bayesq.data import load_dataset
from bayesq.ebp import EBPNet
from bayesq.ops import glue_module, glue_spec, is_glue
from bayesq.posterior import Posterior
from bayesq.quantize import quantize_posterior
from bayesq.runtime import DiscreteNet, QuantizedConv2d
from bayesq.train import accuracy
from experiments.runs import load_run
from experiments.timing import seconds_per_call, write_result
from experiments.torch_peers import float_bytes, int8_dynamic, int8_static, state_bytes

FULL = dict(
    batches=[1, 16, 256], rounds=5, min_seconds=0.2, ebp_epochs=5, wide=[784, 4096, 4096, 10]
)
TINY = dict(batches=[1, 16], rounds=1, min_seconds=0.01, ebp_epochs=1, wide=[64, 256, 256, 10])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", default=None, help="MNIST IDX directory (default: digits)")
    p.add_argument("--vnq-run", action="append", default=[], help="a run of experiments.vnq")
    p.add_argument("--act-bits", type=int, nargs="+", default=[4, 8])
    p.add_argument("--batches", type=int, nargs="+", default=None, help="default 1 16 256")
    p.add_argument("--rounds", type=int, default=None, help="alternated rounds (default 5)")
    p.add_argument("--min-seconds", type=float, default=None, help="per timing (default 0.2)")
    p.add_argument("--ebp-epochs", type=int, default=None, help="default 5 (0: no EBP net)")
    p.add_argument("--ebp-hidden", type=int, default=500)
    p.add_argument("--wide", type=int, nargs="*", default=None, help="sizes ('--wide': none)")
    p.add_argument("--wide-sparsity", type=float, default=0.8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="small nets, 1 round: a smoke run")
    p.add_argument("--out", default="results/bench_nets.json")
    args = p.parse_args(argv)
    for key, value in (TINY if args.tiny else FULL).items():
        if getattr(args, key) is None:  # only what was not given explicitly
            setattr(args, key, value)
    for flag in ("rounds", "threads", "ebp_hidden"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if min(args.batches) < 1 or args.ebp_epochs < 0 or not args.min_seconds > 0:
        raise ValueError("--batches must be >= 1, --ebp-epochs >= 0, --min-seconds > 0")
    if not 0 <= args.wide_sparsity < 1:
        raise ValueError(f"--wide-sparsity must lie in [0, 1), got {args.wide_sparsity}")
    return args


# --- the torch side of a discrete net ------------------------------------------------------------
def float_twin(net: DiscreteNet) -> nn.Sequential:
    """The float torch net with the discrete net's weights (codes x row scales) and glue, without
    its activation quantizers: what torch runs of the same weights."""
    modules: list[nn.Module] = []
    for op in net.ops:
        if is_glue(op):
            modules.append(glue_module(glue_spec(op)))
            continue
        linear = op.linear if isinstance(op, QuantizedConv2d) else op
        weight = linear.weight_codes.float() * linear.row_scale[:, None]
        if linear.input_index is not None:  # the skipped (all-zero) input columns
            full = torch.zeros(weight.shape[0], linear.input_features)
            full[:, linear.input_index] = weight
            weight = full
        if isinstance(op, QuantizedConv2d):
            out = weight.shape[0]
            layer = nn.Conv2d(op.in_channels, out, op.kernel_size, op.stride, op.padding)
            layer.weight.data = weight.reshape(out, op.in_channels, *op.kernel_size)
        else:
            layer = nn.Linear(weight.shape[1], weight.shape[0])
            layer.weight.data = weight
        layer.bias.data = linear.bias.clone()
        modules.append(layer)
    return nn.Sequential(*modules).eval()


# --- ONNX Runtime, an optional peer --------------------------------------------------------------
ORT_STATIC, ORT_DYNAMIC = "ORT int8 static (QDQ)", "ORT int8 dynamic"
TORCH_INT8 = ("torch int8 dynamic", "torch int8 static (FX, x86)")
INT8_PEERS = (*TORCH_INT8, ORT_STATIC, ORT_DYNAMIC)
_ORT_MODULES = ("onnxruntime", "onnx", "onnxscript")  # onnxscript: torch's ONNX exporter needs it


def onnxruntime_missing() -> str | None:
    """None when the ORT peer can run, else what the JSON says instead of its rows."""
    missing = []
    for module in _ORT_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:  # absent, or a build that does not load here: the same to the table
            missing.append(module)
    if missing:
        return f"not installed (an optional peer: pip install {' '.join(missing)})"
    return None


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's and the quantizer's notices (deprecations of their own internals,
    log lines about optional packages) for the block; the benchmark's warnings stay as set."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def ort_int8(
    net: nn.Module, input_shape: tuple[int, ...], calibration: torch.Tensor, threads: int
) -> tuple[dict, dict, dict]:
    """ONNX Runtime's int8 nets of a float net: ({label: fn}, {label: .onnx bytes}, {label: note}).

    `net` maps (B, *input_shape) to logits (B, classes); it is exported once (torch.export-based
    exporter, opset 18, batch axis dynamic), pre-processed as ORT advises (`quant_pre_process`:
    shape inference, graph optimization), then quantized statically (QDQ, per-channel int8
    weights, uint8 activations with MinMax ranges from `calibration` (N, *input_shape) in batches
    of 256, as torch's static path sees it) and dynamically (int8 weights, activations quantized
    per call). All files live in a temporary directory of this call; the sessions keep their
    graphs in memory. A method that fails is left out with a note, as for FX.
    """
    import onnxruntime as ort
    from onnxruntime import quantization as q
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = [calibration[i : i + 256].reshape(-1, *input_shape).float().numpy()
               for i in range(0, len(calibration), 256)]  # fmt: skip

    class Calibration(q.CalibrationDataReader):
        def __init__(self):
            self.batches = iter(batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"x": batch}

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's U8S8 kernels use vpmaddubsw on CPUs without VNNI, whose int16 pair sums saturate;
    # its documentation asks for reduce_range (7-bit weights) there, which a user would follow
    # (torch's x86 backend does the same by itself)
    reduce_range = not any("vnni" in isa for isa in lowbit_gemm.ternary_isas())
    quantizers = {
        ORT_STATIC: lambda src, dst: q.quantize_static(
            src, dst, Calibration(), quant_format=q.QuantFormat.QDQ, per_channel=True,
            reduce_range=reduce_range, activation_type=q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8,
        ),
        ORT_DYNAMIC: lambda src, dst: q.quantize_dynamic(
            src, dst, weight_type=q.QuantType.QInt8, reduce_range=reduce_range
        ),
    }  # fmt: skip
    methods, bytes_, notes = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        exported, prepared = Path(tmp) / "float.onnx", Path(tmp) / "prepared.onnx"
        try:
            # the torch.export-based exporter (the TorchScript one is deprecated since torch
            # 2.9); opset 18 is the oldest it writes without a version-conversion pass
            example = (torch.zeros(2, *input_shape),)  # tracing reads shapes only
            torch.onnx.export(net.eval(), example, exported, input_names=["x"],
                              output_names=["logits"], opset_version=18, dynamo=True,
                              dynamic_shapes=({0: torch.export.Dim("batch")},),
                              external_data=False, verbose=False)  # fmt: skip
            quant_pre_process(str(exported), str(prepared))
        # the exporter refuses some nets (with errors of many types); the table says so
        except Exception as err:  # noqa: BLE001
            return {}, {}, {label: _not_supported(err) for label in quantizers}
        for label, quantize in quantizers.items():
            path = Path(tmp) / f"{label.split()[2]}.onnx"
            try:
                quantize(prepared, path)
                session = ort.InferenceSession(
                    str(path), options, providers=["CPUExecutionProvider"]
                )
            except Exception as err:  # noqa: BLE001
                notes[label] = _not_supported(err)
                continue
            methods[label] = lambda x, s=session: torch.from_numpy(
                s.run(None, {"x": x.float().numpy()})[0]
            )
            bytes_[label] = path.stat().st_size
    return methods, bytes_, notes


def _not_supported(err: Exception) -> str:
    return f"not supported: {type(err).__name__}: {err}"[:200]


# --- the nets ------------------------------------------------------------------------------------
def vnq_nets(run: Path, calibration: torch.Tensor, act_bits: list[int]):
    """(name, float net, {label: DiscreteNet}, input shape) of a VNQ run directory."""
    float_net, posterior, pruning, report = load_run(run)
    discrete = {
        f"bayesq {report['arch']} ternary, {bits}-bit act": quantize_posterior(
            posterior, calibration, act_bits=bits, pruning=pruning
        )
        for bits in act_bits
    }
    return f"VNQ {report['arch']} ({run})", float_net, discrete, posterior.input_shape


def ebp_net(data, hidden: int, epochs: int, seed: int):
    """The binary EBP net, trained on centred inputs; its EBP-D net on the kernels."""
    x = data.x_train.flatten(1)
    shift = x.mean(0)
    sizes = [x.shape[1], hidden, data.num_classes]
    net = EBPNet(sizes, "binary", seed=seed).fit(x - shift, data.y_train, epochs=epochs)
    discrete = quantize_posterior(net.posterior(), x[:1024], act_bits=8, input_shift=shift)
    twin = float_twin(discrete)  # the same weights and sign units in float
    return f"EBP binary {'-'.join(map(str, sizes))}", twin, {"bayesq EBP-D": discrete}, (sizes[0],)


def wide_net(sizes: list[int], sparsity: float, seed: int, act_bits: int = 8):
    """Random ternary weights (a `sparsity` share 0), ReLU between layers: speed only."""
    g = torch.Generator().manual_seed(seed)
    layers, ops = {}, []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        sign = torch.where(torch.rand(fan_out, fan_in, generator=g) < 0.5, 0, 2)
        code = torch.where(torch.rand(fan_out, fan_in, generator=g) < sparsity, 1, sign)
        probs = torch.nn.functional.one_hot(code, 3).float()
        scale = 1.0 / math.sqrt(fan_in * (1 - sparsity))
        layers[f"fc{i}"] = {"levels": [-scale, 0.0, scale], "probs": probs, "bias": None}
        ops += [{"kind": "layer", "name": f"fc{i}"}] + (
            [{"kind": "relu"}] if i < len(sizes) - 2 else []
        )
    posterior = Posterior.from_discrete(layers, ops, (sizes[0],))
    calibration = torch.rand(64, sizes[0], generator=g)
    discrete = quantize_posterior(posterior, calibration, act_bits=act_bits)
    name = f"wide {'-'.join(map(str, sizes))}, ternary, {sparsity:.0%} zeros"
    return (
        name,
        float_twin(discrete),
        {f"bayesq ternary, {act_bits}-bit act": discrete},
        (sizes[0],),
        calibration,
    )


# --- measuring -----------------------------------------------------------------------------------
def measure(name, float_net, discrete, input_shape, calibration, test, args) -> dict:
    """Accuracy, bytes and alternated batch timings of one net's variants."""
    threads = args.threads
    methods: dict = OrderedDict({"torch float32": float_net.eval()})
    bytes_ = {"torch float32": float_bytes(float_net)}
    methods["torch int8 dynamic"] = int8_dynamic(float_net)
    bytes_["torch int8 dynamic"] = state_bytes(methods["torch int8 dynamic"])
    notes = {}
    try:
        methods["torch int8 static (FX, x86)"] = int8_static(float_net, calibration)
        bytes_["torch int8 static (FX, x86)"] = state_bytes(methods["torch int8 static (FX, x86)"])
    # FX tracing refuses some nets (with errors of many types); the table says so
    except Exception as err:  # noqa: BLE001
        notes["torch int8 static (FX, x86)"] = _not_supported(err)
    if onnxruntime_missing() is None:
        ort_methods, ort_bytes, ort_notes = ort_int8(float_net, input_shape, calibration, threads)
        methods.update(ort_methods)
        bytes_.update(ort_bytes)
        notes.update(ort_notes)
    with tempfile.TemporaryDirectory() as tmp:
        for label, net in discrete.items():
            methods[label] = lambda x, n=net: n(x, threads=threads)
            bytes_[label] = (
                save_artifact(net, Path(tmp) / "net.safetensors", input_shape).stat().st_size
            )
    # the kernels' logits must equal the integer reference's, bit for bit
    probe = (test[0] if test is not None else calibration)[:256]
    probe = probe.reshape(len(probe), *input_shape).float()
    exact = {label: bool(torch.equal(net(probe, threads=threads), net.reference(probe)))
             for label, net in discrete.items()}  # fmt: skip
    accuracies = {}
    if test is not None:
        x_test, y_test = test
        for label, fn in methods.items():
            with torch.no_grad():
                accuracies[label] = accuracy(fn, x_test.reshape(len(x_test), *input_shape), y_test)
    g = torch.Generator().manual_seed(args.seed)
    timings, best_peer = {}, {}
    for batch in args.batches:
        x = torch.rand(batch, *input_shape, generator=g)
        seconds = {label: [] for label in methods}
        with torch.no_grad():
            for _ in range(args.rounds):
                for label, fn in methods.items():
                    seconds[label].append(
                        seconds_per_call(lambda f=fn, x=x: f(x), args.min_seconds)
                    )
        median = {label: statistics.median(s) for label, s in seconds.items()}
        fastest_torch = min(median[k] for k in TORCH_INT8 if k in median)
        best_peer[batch] = min((k for k in INT8_PEERS if k in median), key=median.__getitem__)
        timings[batch] = {
            label: {
                "ms": 1e3 * median[label],
                "speedup_vs_float32": median["torch float32"] / median[label],
                "speedup_vs_fastest_torch_int8": fastest_torch / median[label],
                "speedup_vs_best_int8_peer": median[best_peer[batch]] / median[label],
            }
            for label in methods
        }
        print(f"{name}, batch {batch}: " + ", ".join(
            f"{label} {t['ms']:.3f} ms ({t['speedup_vs_float32']:.2f}x float32)"
            for label, t in timings[batch].items()
        ), flush=True)  # fmt: skip
    return {"net": name, "accuracy": accuracies, "bytes": bytes_, "notes": notes,
            "kernels_equal_reference": exact,
            "best_int8_peer": {str(b): label for b, label in best_peer.items()},
            "timings": {str(b): t for b, t in timings.items()}}  # fmt: skip


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    ort = onnxruntime_missing()
    if ort is None:
        from importlib.metadata import version

        ort = "installed: " + ", ".join(f"{m} {version(m)}" for m in _ORT_MODULES)
    print(f"onnxruntime: {ort}", flush=True)
    data = load_dataset(args.data_dir or "digits")
    if args.tiny:
        data = data.subset(train=300, test=200, seed=args.seed)
    calibration = data.x_train[:1024].float()
    rows = []
    for run in args.vnq_run:
        name, float_net, discrete, shape = vnq_nets(Path(run), calibration, args.act_bits)
        rows.append(measure(name, float_net, discrete, shape, calibration,
                            (data.x_test, data.y_test), args))  # fmt: skip
    if args.ebp_epochs:
        name, twin, discrete, shape = ebp_net(data, args.ebp_hidden, args.ebp_epochs, args.seed)
        flat_cal = calibration.flatten(1)
        rows.append(measure(name, twin, discrete, shape, flat_cal,
                            (data.x_test.flatten(1), data.y_test), args))  # fmt: skip
    if args.wide:
        name, twin, discrete, shape, cal = wide_net(args.wide, args.wide_sparsity, args.seed)
        rows.append(measure(name, twin, discrete, shape, cal, None, args))
    result = {
        "data": data.name,
        "threads": args.threads,
        "rounds": args.rounds,
        "batches": args.batches,
        "onnxruntime": ort,
        "nets": rows,
    }
    return write_result(args.out, result)


if __name__ == "__main__":
    run_main(main)
