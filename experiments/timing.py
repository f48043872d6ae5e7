"""Timing shared by the benchmark scripts: seconds per call from a loop long enough to time, the
ratios of alternated runs, and the flags and data of the epoch benchmarks (bench_vnq, bench_ebp)."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from bayesq.data import load_dataset
from bayesq.files import atomic_write_json


def seconds_per_call(fn, min_seconds: float) -> float:
    """Calls fn once (warm-up), then repeatedly for at least min_seconds; seconds per call."""
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls


def paired_ratios(baseline: list[float], method: list[float]) -> dict:
    """Ratios of alternated timings: of the medians, and the median of per-pair ratios (each
    method run against the baseline run just before it; on a shared machine neighbours in time
    see the same load, so this is the steadier figure)."""
    pairs = [m / b for b, m in zip(baseline, method, strict=True)]
    return {
        "median_ratio": statistics.median(method) / statistics.median(baseline),
        "pair_ratios": pairs,
        "median_pair_ratio": statistics.median(pairs),
    }


def require_positive(**flags: int | None) -> None:
    """Raise ValueError naming the first flag (``train_size`` -> ``--train-size``) below 1;
    None means "not given" and passes."""
    for name, value in flags.items():
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def write_result(path: str | Path, result: dict) -> dict:
    """Write a benchmark's result as indented JSON, atomically (creating its folder); returns
    the result."""
    atomic_write_json(path, result)
    return result


# --- the epoch benchmarks -------------------------------------------------------------------------
TINY_IMAGES = 512


def add_epoch_flags(p: argparse.ArgumentParser, batch_size: int, out: str) -> None:
    """The flags every epoch benchmark takes; --tiny sets defaults only (1 repeat, 512 images),
    a flag given explicitly wins over it."""
    p.add_argument("--data-dir", default=None, help="MNIST IDX directory (default: random 28x28)")
    p.add_argument("--train-size", type=int, default=None, help="use the first N training images")
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--repeats", type=int, default=None, help="default 5 (tiny: 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--tiny", action="store_true", help="512 images (random ones by default), 1 repeat"
    )
    p.add_argument("--out", default=out)


def epoch_data(args: argparse.Namespace, flat: bool, random_images: int):
    """The repeats and the training data of an epoch benchmark: (repeats, x, y, source).

    Checks the counts, sets torch's threads, and reads MNIST (--data-dir; `flat`: (N, 784)) or
    draws `random_images` random 28x28 images and labels (seed 0)."""
    repeats = args.repeats if args.repeats is not None else (1 if args.tiny else 5)
    train_size = args.train_size
    if train_size is None and args.tiny:
        train_size = TINY_IMAGES
    require_positive(
        repeats=repeats, batch_size=args.batch_size, threads=args.threads, train_size=train_size
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data_dir:
        data = load_dataset(args.data_dir)
        data = data.flat() if flat else data
        return repeats, data.x_train[:train_size], data.y_train[:train_size], str(args.data_dir)
    n = train_size or random_images
    shape = (n, 784) if flat else (n, 1, 28, 28)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(*shape, generator=g), torch.randint(0, 10, (n,), generator=g)
    return repeats, x, y, f"random {' x '.join(map(str, shape))}"


def add_ratios(result: dict, key: str, baseline: list[float], method: list[float]) -> dict:
    """Put `paired_ratios` of the two timing lists into `result` (the ratio of the medians under
    `key`); returns result."""
    ratios = paired_ratios(baseline, method)
    result[key] = ratios["median_ratio"]
    result["pair_ratios"] = ratios["pair_ratios"]
    result["median_pair_ratio"] = ratios["median_pair_ratio"]
    return result
