"""Benchmark: one EBP epoch against one epoch of plain backprop (Adam) on the same MLP.

Both train the same layer sizes (default 784-500-10) on the same images with the same mini-batch
size (default 10, EBP's), the same thread count and the same batching (a shuffled index per epoch,
rows gathered per batch; no DataLoader on either side). EBP is ``bayesq.ebp.EBPNet`` with binary
weights: forward moments, backward pass and the update of h. Backprop is a float ReLU MLP with
cross-entropy and Adam (fused where torch has it). After a warm-up of both, epochs alternate in one
process (backprop, EBP, backprop, EBP, ...) and the ratio of the median epoch times is printed,
together with the median of the per-pair ratios (neighbours in time see the same machine load).

  python -m experiments.bench_ebp --data-dir ../shared/data/mnist --threads 1   # README figure
  python -m experiments.bench_ebp --tiny                                         # seconds

--tiny sets defaults only (1 repeat, 512 images); a flag given explicitly wins over it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from bayesq.cli import run_main
from bayesq.ebp import EBPNet
from bayesq.train import adam_options
from experiments.timing import add_epoch_flags, add_ratios, epoch_data, write_result


def float_mlp(sizes: list[int], seed: int) -> nn.Sequential:
    """Linear-ReLU-...-Linear with torch's default initialisation, seeded."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def backprop_epoch(net, optimizer, x, y, batch_size, generator) -> None:
    """One epoch of cross-entropy + Adam in shuffled mini-batches."""
    order = torch.randperm(len(x), generator=generator)
    for start in range(0, len(x), batch_size):
        idx = order[start : start + batch_size]
        loss = F.cross_entropy(net(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_epoch_flags(p, batch_size=10, out="results/ebp/bench_ebp.json")
    p.add_argument("--hidden", type=int, nargs="+", default=[500], help="hidden widths")
    args = p.parse_args(argv)
    repeats, x, y, source = epoch_data(args, flat=True, random_images=24_000)
    sizes = [x.shape[1], *args.hidden, 10]

    # Warm-up: the first GEMMs, the fused Adam kernel and autograd set themselves up once.
    warm = slice(0, 8 * args.batch_size)
    EBPNet(sizes, seed=0).fit(x[warm], y[warm], batch_size=args.batch_size)
    net = float_mlp(sizes, 0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, **adam_options())
    backprop_epoch(net, opt, x[warm], y[warm], args.batch_size, torch.Generator().manual_seed(0))

    ebp_times, bp_times = [], []
    ebp = EBPNet(sizes, seed=0)
    net = float_mlp(sizes, 0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, **adam_options())
    gen = torch.Generator().manual_seed(0)
    for _ in range(repeats):
        t0 = time.perf_counter()
        backprop_epoch(net, opt, x, y, args.batch_size, gen)
        bp_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ebp.fit(x, y, epochs=1, batch_size=args.batch_size)
        ebp_times.append(time.perf_counter() - t0)

    result = {
        "data": source,
        "train_size": len(y),
        "sizes": sizes,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "backprop_epoch_seconds": bp_times,
        "ebp_epoch_seconds": ebp_times,
    }
    add_ratios(result, "median_ratio_ebp_over_backprop", bp_times, ebp_times)
    print(
        f"MLP {'-'.join(map(str, sizes))}, {len(y)} images, batch {args.batch_size}, "
        f"{result['threads']} threads, {repeats} alternated repeats"
    )
    print(f"backprop (Adam) epoch: median {statistics.median(bp_times):.2f} s")
    print(f"EBP (binary) epoch:    median {statistics.median(ebp_times):.2f} s")
    print(
        f"ratio EBP / backprop: {result['median_ratio_ebp_over_backprop']:.2f}x "
        f"(median of per-pair ratios {result['median_pair_ratio']:.2f}x)"
    )
    return write_result(args.out, result)


if __name__ == "__main__":
    run_main(main)
