"""Benchmark: one SVI epoch of VNQ LeNet-5 against one epoch of the deterministic LeNet-5.

Both train on the same data with the same batch size, thread count and optimizer (Adam, fused
where torch has it), alternated in one process (deterministic, VNQ, deterministic, VNQ, ...) after
a warm-up of both, and the ratio of the median epoch times is printed.
The VNQ epoch is the real one: Pyro SVI with TraceMeanField_ELBO, the registered KL, local
reparameterization (two convolutions per layer) and Adam on theta, log sigma^2, biases and r.

  python -m experiments.bench_vnq --data-dir ../shared/data/mnist     # the README's figure
  python -m experiments.bench_vnq --tiny                              # seconds, random images

--tiny sets defaults only (1 repeat, 512 images); a flag given explicitly wins over it.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

import models
from bayesq.cli import run_main
from bayesq.train import fit_deterministic
from bayesq.vnq import VNQ, to_vnq_
from experiments.timing import add_epoch_flags, add_ratios, epoch_data, write_result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_epoch_flags(p, batch_size=128, out="results/bench_vnq.json")
    args = p.parse_args(argv)
    repeats, x, y, source = epoch_data(args, flat=False, random_images=10_000)
    loader = DataLoader(
        TensorDataset(x, y),
        batch_size=args.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )

    torch.manual_seed(0)
    deterministic = models.lenet5()
    # Warm-up on a few batches: the first use of fused Adam, Pyro's handlers and the kernels
    # imports and initializes code once per process, which is not the cost of an epoch.
    warm = DataLoader(
        TensorDataset(x[: 4 * args.batch_size], y[: 4 * args.batch_size]),
        batch_size=args.batch_size,
    )
    fit_deterministic(copy.deepcopy(deterministic), warm, epochs=1, progress=False)
    VNQ(to_vnq_(copy.deepcopy(deterministic)), num_data=len(y)).fit(warm, 1, progress=False)
    det_times, vnq_times = [], []
    for _ in range(repeats):
        net = copy.deepcopy(deterministic)
        t0 = time.perf_counter()
        fit_deterministic(net, loader, epochs=1, progress=False)
        det_times.append(time.perf_counter() - t0)

        vnq = VNQ(to_vnq_(copy.deepcopy(deterministic)), num_data=len(y))
        t0 = time.perf_counter()
        vnq.fit(loader, epochs=1, progress=False)
        vnq_times.append(time.perf_counter() - t0)

    result = {
        "data": source,
        "train_size": len(y),
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "deterministic_epoch_seconds": det_times,
        "vnq_epoch_seconds": vnq_times,
    }
    add_ratios(result, "median_ratio_vnq_over_deterministic", det_times, vnq_times)
    print(
        f"LeNet-5, {len(y)} images, batch {args.batch_size}, {result['threads']} threads, "
        f"{repeats} alternated repeats"
    )
    print(f"deterministic epoch: median {statistics.median(det_times):.2f} s")
    print(f"VNQ SVI epoch:       median {statistics.median(vnq_times):.2f} s")
    print(
        f"ratio VNQ / deterministic: {result['median_ratio_vnq_over_deterministic']:.2f}x "
        f"(median of per-pair ratios {result['median_pair_ratio']:.2f}x)"
    )
    return write_result(args.out, result)


if __name__ == "__main__":
    run_main(main)
