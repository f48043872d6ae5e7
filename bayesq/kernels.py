"""The common face of the C++ kernels (bayesq._kernels): CPU features, ISA and thread checks.

The native functions take arrays without conversion (a wrong dtype or a strided view would be
refused with nanobind's TypeError listing every signature); the Python wrappers check every
argument first, type and range, and raise ValueError naming the argument and what was expected
(also for a wrong type: one exception class for all bad input, as the rest of the package does).
This module holds what the two kernel families share:

  * `bayesq.vnq_kernels`: the VNQ training kernels (fused multi-spike KL, normal noise, the local
    reparameterization sample; csrc/vnq/);
  * `bayesq.bitserial`: bit-plane packing and the bit-serial GEMM of discrete nets
    (csrc/bitserial/);
  * `bayesq.lowbit_gemm`: ternary weights x 8-bit activations on VNNI (csrc/lowbit/).

Threads: every `threads=` is at most `MAX_THREADS` (4 x the CPU count); the native pool never
holds more threads than that, whatever it is asked for (csrc/common/thread_pool.h).
"""

from __future__ import annotations

import numbers

import numpy as np

from . import _kernels

__all__ = [
    "FLOAT32_MAX",
    "ISAS",
    "MAX_THREADS",
    "check_isa",
    "check_threads",
    "cpu_features",
    "is_int",
    "is_real",
    "popcount",
]


MAX_THREADS: int = _kernels.max_threads()
"""The most threads a kernel call may use: 4 x the CPU count (csrc/common/thread_pool.h's bound on
its pool; `threads` beyond it is refused with ValueError)."""

ISAS = ("portable", "avx2", "avx512")
"""The `isa=` names every kernel accepts (None dispatches to the best path this CPU runs)."""

FLOAT32_MAX = float(np.finfo(np.float32).max)


def is_int(v) -> bool:
    """v is a Python or numpy integer, not a bool."""
    return isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)


def is_real(v) -> bool:
    """v is a real number (int, float, numpy scalar), not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_)


def check_threads(threads, what: str) -> int:
    """`threads` as an int in 1..MAX_THREADS; else ValueError naming `what` (the caller)."""
    if not is_int(threads) or not 1 <= threads <= MAX_THREADS:
        raise ValueError(
            f"{what}: threads must be an int in 1..{MAX_THREADS} (4 x the CPU count), "
            f"got {threads!r}"
        )
    return int(threads)


_FEATURES = _kernels.cpu_features()
# The paths this CPU runs: the training kernels (KL, noise) need AVX2 / AVX-512F; the bit-serial
# ones AVX2 / AVX-512 F, BW, VL and VPOPCNTDQ (csrc/bitserial/bitpack.h).
_TRAINING_ISAS = tuple(
    isa
    for isa, ok in (
        ("portable", True),
        ("avx2", _FEATURES["avx2"]),
        ("avx512", _FEATURES["avx512f"]),
    )
    if ok
)
_BITSERIAL_ISAS = tuple(_kernels.bitserial_isas())


def check_isa(isa, what: str, bitserial: bool = False) -> str | None:
    """`isa` as None (dispatch) or a path this CPU runs (bit-serial paths if `bitserial`)."""
    if isa is not None and (not isinstance(isa, str) or isa not in ISAS):
        raise ValueError(f"{what}: isa must be None, 'portable', 'avx2' or 'avx512', got {isa!r}")
    available = _BITSERIAL_ISAS if bitserial else _TRAINING_ISAS
    if isa is not None and isa not in available:
        raise ValueError(
            f"{what}: isa {isa!r} is not available on this CPU (it runs {', '.join(available)})"
        )
    return isa


def cpu_features() -> dict[str, bool]:
    """ISA extensions of the running CPU that the kernels can dispatch on."""
    return dict(_kernels.cpu_features())


def popcount(words) -> int:
    """Number of set bits in a 1-D array of uint64 words (the native popcount the kernels use)."""
    words = np.asarray(words)
    if words.dtype != np.uint64:
        raise ValueError(f"popcount expects uint64 words, got dtype {words.dtype}")
    if words.ndim != 1:
        raise ValueError(f"popcount expects a 1-D array, got shape {words.shape}")
    return int(_kernels.popcount_words(np.ascontiguousarray(words)))
