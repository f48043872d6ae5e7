"""Python face of the C++ kernels (bayesq._kernels): validation first, then the native call.

The native functions take arrays without conversion (a wrong dtype or a strided view would be
refused with TypeError); the wrappers here check dtype, shape and contiguity themselves and raise
ValueError naming what is wrong.
"""

from __future__ import annotations

import numpy as np

from . import _kernels

__all__ = ["cpu_features", "popcount"]


def cpu_features() -> dict[str, bool]:
    """ISA extensions of the running CPU that the kernels can dispatch on."""
    return dict(_kernels.cpu_features())


def popcount(words) -> int:
    """Number of set bits in a 1-D array of uint64 words."""
    words = np.asarray(words)
    if words.dtype != np.uint64:
        raise ValueError(f"popcount expects uint64 words, got dtype {words.dtype}")
    if words.ndim != 1:
        raise ValueError(f"popcount expects a 1-D array, got shape {words.shape}")
    return int(_kernels.popcount_words(np.ascontiguousarray(words)))
