"""Benchmark: the local reparameterization sample of VNQ's training step, fused C++ against torch.

One sample of the pre-activations of LeNet-5's first layer (batch 128: 128 x 20 x 24 x 24 =
1.47M values), out = mean + sqrt(var + floor) * z with z ~ N(0, 1), forward and backward, as
`bayesq.vnq_kernels.local_reparameterization_sample` does it (one pass that draws the noise and writes
the sample and d out / d var; the backward pass is one multiply) and as a user would write it in
torch (`randn_like`, `sqrt`, `addcmul`, autograd). Every ISA path of the kernel (forced), 1 kernel
thread, alternated with the torch version in rounds; the median of the rounds' ratios is printed.

  python -m experiments.bench_noise            # the README's figures
  python -m experiments.bench_noise --tiny     # seconds
"""

from __future__ import annotations

import argparse
import statistics

import torch

from bayesq.bitserial import bitserial_isas
from bayesq.cli import run_main
from bayesq.vnq_kernels import local_reparameterization_sample
from experiments.timing import seconds_per_call, write_result

FLOOR = 1e-8
# The defaults of a full run and of --tiny; a flag given explicitly wins over either.
FULL = dict(shape=[128, 20, 24, 24], rounds=5, seconds=0.3)
TINY = dict(shape=[8, 4, 6, 6], rounds=1, seconds=0.02)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", type=int, nargs="+", default=None, help="default 128 20 24 24")
    p.add_argument("--rounds", type=int, default=None, help="default 5")
    p.add_argument("--seconds", type=float, default=None, help="timing per measurement (0.3)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--tiny", action="store_true", help="a small shape, 1 round")
    p.add_argument("--out", default="results/bench_noise.json")
    args = p.parse_args(argv)
    for key, value in (TINY if args.tiny else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    shape, rounds, seconds = args.shape, args.rounds, args.seconds
    if min(shape) < 1 or rounds < 1 or not seconds > 0:
        raise ValueError(f"--shape and --rounds must be >= 1 and --seconds > 0, got {shape}, "
                         f"{rounds}, {seconds}")  # fmt: skip
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    mean = torch.randn(shape, requires_grad=True)
    var = torch.rand(shape).requires_grad_()
    grad = torch.randn(shape)

    def torch_sample():
        out = torch.addcmul(mean, (var + FLOOR).sqrt(), torch.randn_like(mean))
        torch.autograd.grad(out, (mean, var), grad)

    def fused(isa):
        def sample():
            out = local_reparameterization_sample(mean, var, FLOOR, isa=isa)
            torch.autograd.grad(out, (mean, var), grad)

        return sample

    isas = bitserial_isas()
    times = {"torch": [], **{isa: [] for isa in isas}}
    for _ in range(rounds):
        times["torch"].append(seconds_per_call(torch_sample, seconds))
        for isa in isas:
            times[isa].append(seconds_per_call(fused(isa), seconds))
    result = {
        "shape": shape,
        "values": mean.numel(),
        "torch_threads": torch.get_num_threads(),
        "seconds": times,
        "median_ms": {k: 1e3 * statistics.median(v) for k, v in times.items()},
        "median_ratio_torch_over_fused": {
            isa: statistics.median(t / f for t, f in zip(times["torch"], times[isa], strict=True))
            for isa in isas
        },
    }
    print(f"LRT sample forward + backward, {mean.numel():,} values, {result['torch_threads']} "
          f"torch threads, 1 kernel thread, {rounds} rounds")  # fmt: skip
    print(f"  torch randn + addcmul: {result['median_ms']['torch']:.2f} ms")
    for isa in isas:
        print(f"  fused, {isa:8s}:        {result['median_ms'][isa]:.2f} ms  "
              f"({result['median_ratio_torch_over_fused'][isa]:.2f}x faster than torch)")  # fmt: skip
    return write_result(args.out, result)


if __name__ == "__main__":
    run_main(main)
