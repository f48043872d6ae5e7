"""Benchmark: bit-serial GEMM against torch float32 and torch int8 dynamic-quantized Linear.

For each size N = K (square weight, N outputs x K inputs) and batch B, one process times, in
alternating rounds on the same shapes and thread count:
  * float32:  torch.nn.Linear(K, N) on a float32 (B, K) input;
  * int8:     the same Linear after torch.ao.quantization.quantize_dynamic (int8 weights, the
              activations quantized on the fly inside the call);
  * w x a bits: bayesq.runtime.QuantizedLinear on the same float32 input, on the engine the
              runner picks for the batch (`NetPlan.engine_of`: the bit-serial GEMM for binary
              activations and for big weights at small batches, the direct 8-bit GEMM on AMX
              from 32 rows on): quantize, product, per-row scale and bias in float, one call;
              weights packed once beforehand.
              1-bit weights are {-1, +1}; wider weights signed two's complement; 1-bit
              activations with 1-bit weights are {-1, +1} (the XNOR form), otherwise unsigned.
              `kernel` is the product alone (activations already packed, through the checked
              Python wrapper bitserial.bitserial_matmul).
  * int_mm:   torch._int_mm on int8 (B, K) codes x int8 weights (N, K) passed transposed, int32
              out: the bare int8 GEMM of oneDNN (VNNI or AMX), no quantizing; a second int8
              baseline (on CPU it takes any B, K, N here; on CUDA it would need B > 16 and
              K, N multiples of 8).
  * tern x u8 / tern x s8: bayesq.lowbit_gemm.ternary_matmul_int, dense ternary weights (2 bits
              each) x uint8 / int8 activation codes, int32 out, on the best path of the CPU
              for the batch (amx from 5 rows on, else avx512vnni_gfni, avx512vnni, avxvnni,
              avx2 or portable: `lowbit_gemm.ternary_isa_for`; --ternary-isa forces one): the kernel
              alone, as `kernel` above.
  * sparse tern x u8: bayesq.sparse_ternary_gemm.sparse_ternary_matmul_int, the same product
              with a fraction --sparsity (0.8: as VNQ leaves a layer) of the weights zero and
              only the kept ones stored and visited (additions only), uint8 codes, on the best
              path (--sparse-isa forces one); the kernel alone.
GOP/s counts 2 operations per multiply-accumulate (2 B N K per call; for the sparse rows too,
dense-equivalent: the zeros count as work done). Ratios are float32 (or
int8, int_mm) time over the method's time; the layer rows include quantizing and packing the input.

  python -m experiments.bench_kernels                  # the README's table (a few minutes)
  python -m experiments.bench_kernels --tiny           # seconds: N = K = 256, batch 1 and 8
"""

from __future__ import annotations

import argparse
import platform
import statistics
import warnings

import numpy as np
import torch

from bayesq import bitserial, kernels, lowbit_gemm, sparse_ternary_gemm
from bayesq.cli import run_main
from bayesq.runtime import QuantizedLinear
from experiments.timing import seconds_per_call, write_result

BIT_PAIRS = [(1, 1), (1, 2), (2, 2), (2, 4), (4, 4)]  # (weight bits, activation bits)
# The defaults of a full run and of --tiny; a flag given explicitly wins over either.
FULL = dict(sizes=[1024, 4096], batches=[1, 64, 1024], rounds=5, min_seconds=0.2)
TINY = dict(sizes=[256], batches=[1, 8], rounds=2, min_seconds=0.01)


def _codes(rng, shape, bits, mode):
    if mode == "pm1":
        return (2 * rng.integers(0, 2, shape) - 1).astype(np.int8)
    if mode == "signed":  # symmetric, as quantized nets store them: |code| <= 2^(b-1) - 1
        top = 2 ** (bits - 1) - 1
        return rng.integers(-top, top + 1, shape).astype(np.int8)
    return rng.integers(0, 2**bits, shape).astype(np.uint8)


def _sparse_ternary(rng, shape, sparsity):
    """Codes in {-1, 1}, a fraction `sparsity` of them set to 0."""
    w = (2 * rng.integers(0, 2, shape) - 1).astype(np.int8)
    w[rng.random(shape) < sparsity] = 0
    return w


def _methods(
    n: int, batch: int, threads: int, isa, ternary_isa, rng, sparsity=0.8, sparse_isa=None
):
    """name -> zero-argument callable, all computing a (batch, n) product of one size."""
    x = torch.randn(batch, n)
    warnings.filterwarnings("ignore", module="torch.ao")  # quantize_dynamic's deprecation notices
    warnings.filterwarnings("ignore", message=".*deprecated.*")
    linear = torch.nn.Linear(n, n)
    qlinear = torch.ao.quantization.quantize_dynamic(
        torch.nn.Sequential(torch.nn.Linear(n, n)), {torch.nn.Linear}, dtype=torch.qint8
    )
    methods = {}
    with torch.no_grad():
        methods["float32"] = lambda: linear(x)
        methods["int8"] = lambda: qlinear(x)
        x_i8 = torch.from_numpy(_codes(rng, (batch, n), 8, "signed"))
        w_i8 = torch.from_numpy(_codes(rng, (n, n), 8, "signed"))
        methods["int_mm"] = lambda: torch._int_mm(x_i8, w_i8.t())
    ternary = lowbit_gemm.pack_ternary(_codes(rng, (n, n), 2, "signed"))  # codes -1, 0, 1
    for mode, name in (("unsigned", "tern x u8"), ("signed", "tern x s8")):
        codes = _codes(rng, (batch, n), 8, mode)
        if mode == "signed":  # the full int8 range, -128 included
            codes = rng.integers(-128, 128, (batch, n)).astype(np.int8)
        methods[name] = lambda c=codes, m=mode: lowbit_gemm.ternary_matmul_int(
            c, ternary, m, isa=ternary_isa, threads=threads
        )
    sparse = sparse_ternary_gemm.pack_sparse_ternary(_sparse_ternary(rng, (n, n), sparsity))
    codes_u8 = _codes(rng, (batch, n), 8, "unsigned")
    methods["sparse tern x u8"] = lambda: sparse_ternary_gemm.sparse_ternary_matmul_int(
        codes_u8, sparse, "unsigned", isa=sparse_isa, threads=threads
    )
    for w_bits, a_bits in BIT_PAIRS:
        w_mode = "pm1" if w_bits == 1 else "signed"
        a_mode = "pm1" if (a_bits == 1 and w_bits == 1) else "unsigned"
        layer = QuantizedLinear(
            weight_codes=torch.from_numpy(_codes(rng, (n, n), w_bits, w_mode)),
            row_bits=torch.full((n,), w_bits),
            row_scale=torch.full((n,), 0.01),
            bias=torch.zeros(n),
            act_bits=a_bits,
            act_mode=a_mode,
            act_scale=0.05,
            weight_mode=w_mode,
        )
        packed_w = layer.packed_weights
        packed_a = bitserial.pack_activations(
            _codes(rng, (batch, n), a_bits, a_mode), a_bits, a_mode
        )
        row_scale = layer.row_scale.numpy()
        out = np.empty((batch, n), dtype=np.float32)

        def full(layer=layer):
            layer.forward(x, threads=threads, isa=isa)

        def kernel(w=packed_w, a=packed_a, s=row_scale, out=out):
            bitserial.bitserial_matmul(a, w, s, 0.05, isa=isa, threads=threads, out=out)

        methods[f"{w_bits}x{a_bits}"] = full
        methods[f"{w_bits}x{a_bits} kernel"] = kernel
    return methods


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="N = K (1024 4096)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="default 1 64 1024")
    p.add_argument("--threads", type=int, default=2, help="torch and bitserial threads")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (5); the median")
    p.add_argument("--min-seconds", type=float, default=None, help="timed loop per round (0.2)")
    p.add_argument("--isa", default=None, help="force a bitserial path: portable, avx2, avx512")
    p.add_argument(
        "--ternary-isa",
        default=None,
        help="force a ternary path: portable, avx2, avxvnni, avx512vnni(_gfni), amx",
    )
    p.add_argument(
        "--sparse-isa", default=None, help="force a sparse ternary path: portable, avx2, avx512"
    )
    p.add_argument(
        "--sparsity",
        type=float,
        default=0.8,
        help="fraction of zero weights of the sparse ternary rows (0.8)",
    )
    p.add_argument("--tiny", action="store_true", help="N = K = 256, batch 1 and 8, 2 short rounds")
    p.add_argument("--out", default="results/bench_kernels.json")
    args = p.parse_args(argv)
    for key, value in (TINY if args.tiny else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if min(args.sizes) < 1 or min(args.batches) < 1 or args.rounds < 1 or args.threads < 1:
        raise ValueError("--sizes, --batches, --rounds and --threads must be >= 1")
    if not 0.0 <= args.sparsity <= 1.0:
        raise ValueError(f"--sparsity must lie in [0, 1], got {args.sparsity}")
    if not args.min_seconds > 0:
        raise ValueError(f"--min-seconds must be > 0, got {args.min_seconds}")
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    rows = []
    header = (
        f"{'N=K':>5} {'batch':>5} {'method':>16} {'GOP/s':>9} {'x float32':>9} {'x int8':>7} "
        f"{'x int_mm':>8}"
    )
    print(header)
    for n in args.sizes:
        for batch in args.batches:
            methods = _methods(
                n,
                batch,
                args.threads,
                args.isa,
                args.ternary_isa,
                rng,
                sparsity=args.sparsity,
                sparse_isa=args.sparse_isa,
            )
            times = {name: [] for name in methods}
            for _ in range(args.rounds):  # alternate, so that drifts hit every method alike
                for name, fn in methods.items():
                    times[name].append(seconds_per_call(fn, args.min_seconds))
            median = {name: statistics.median(ts) for name, ts in times.items()}
            ops = 2.0 * batch * n * n
            for name, t in median.items():
                row = {
                    "n": n,
                    "k": n,
                    "batch": batch,
                    "method": name,
                    "seconds": t,
                    "gops": ops / t / 1e9,
                    "speedup_vs_float32": median["float32"] / t,
                    "speedup_vs_int8": median["int8"] / t,
                    "speedup_vs_int_mm": median["int_mm"] / t,
                }
                rows.append(row)
                print(
                    f"{n:5d} {batch:5d} {name:>16} {row['gops']:9.1f} "
                    f"{row['speedup_vs_float32']:9.2f} {row['speedup_vs_int8']:7.2f} "
                    f"{row['speedup_vs_int_mm']:8.2f}",
                    flush=True,
                )
    report = {
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_features": kernels.cpu_features(),
        "bitserial_isa": args.isa or bitserial.bitserial_isas()[-1],
        "ternary_isa": args.ternary_isa
        or {str(b): lowbit_gemm.ternary_isa_for(b) for b in args.batches},
        "sparse_ternary_isa": args.sparse_isa or sparse_ternary_gemm.sparse_ternary_isas()[-1],
        "sparsity": args.sparsity,
        "rounds": args.rounds,
        "rows": rows,
    }
    return write_result(args.out, report)


if __name__ == "__main__":
    run_main(main)
