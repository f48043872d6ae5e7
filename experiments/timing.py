"""Timing shared by the benchmark scripts: seconds per call from a loop long enough to time."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

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
