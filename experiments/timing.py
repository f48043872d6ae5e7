"""Timing shared by the benchmark scripts: seconds per call from a loop long enough to time."""

from __future__ import annotations

import time


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
