"""Ternary weights x 8-bit activations on 8-bit multiply instructions (AVX2, VNNI, AMX), exact in int32.

    y[m, n] = sum_{k < K} x[m, k] w[n, k],    w in {-1, 0, +1},    x uint8 or int8,

the product a discrete net's ternary layer runs (VNQ, ternary EBP) with 8-bit activation codes.
Unlike the bit-serial GEMM (`bayesq.bitserial`: 2 weight planes x 8 activation planes = 16
binary products), it does not pay per plane pair: the weights are stored at 2 bits
(`pack_ternary`), expanded to bytes in registers and multiplied with `vpdpbusd` (four u8 x s8
products into each int32 lane), as bitnet.cpp's I2_S kernels do, or without VNNI with
`vpmaddubsw` (two products into each int16 lane, summed in int16 for 32 vectors, which cannot
overflow, before widening to int32).

The arithmetic (csrc/lowbit/ternary_gemm.h): each weight is stored as c = w + 1 in {0, 1, 2};
the activations enter as u = x (mode "unsigned", codes after a ReLU) or u = x + 128 (mode
"signed"), so that

    x . w = u . c - sum_k u_k - 128 [signed] sum_k w_k,

with the row sums of the weights stored by the packer. |x . w| <= 255 K < 2^31 for K <= 2^23, so
the result is always exact. Paths: "portable" (the reference: decodes each weight and multiplies
x directly), "avx2" (ymm, vpmaddubsw with int16 accumulation: CPUs without VNNI, e.g. Zen 3,
Haswell .. Skylake), "avxvnni" (ymm), "avx512vnni" (zmm), "avx512vnni_gfni" (zmm, the codes expanded by
one GFNI instruction instead of a shift and a mask), "amx" (AMX-INT8 tiles: a panel of weights
expanded to bytes in memory, c . s with s = x or x - 128 as s8; csrc/lowbit/ternary_gemm_amx.cpp).
`ternary_isas()` lists those this CPU runs, best (for large batches) last. `isa=None` takes the
best path for the batch, `ternary_isa_for(M)`: "amx", when the CPU and the OS allow it, from
M = 5 activation rows on (the measured crossover, csrc/lowbit/ternary_gemm.h: below it the
16-row tiles are mostly empty and expanding the weights costs as much as the products), else
the best VNNI path, else "avx2". Every argument is checked first (ValueError
naming it).
"""

from __future__ import annotations

import numpy as np

from . import _kernels
from .kernels import check_threads

__all__ = [
    "MAX_K",
    "TERNARY_BLOCK",
    "TernaryWeights",
    "pack_ternary",
    "ternary_isa_for",
    "ternary_isas",
    "ternary_matmul_int",
]

TERNARY_BLOCK = 256
"""K is padded to a multiple of this many weights (a 64-byte block of 2-bit codes)."""
MAX_K = 2**23
"""The widest K: 255 * K < 2^31, so every product fits int32."""
_ISA_NAMES = ("portable", "avx2", "avxvnni", "avx512vnni", "avx512vnni_gfni", "amx")
_MODES = ("unsigned", "signed")


def ternary_isas() -> list[str]:
    """The paths of the ternary GEMM this CPU runs (the `isa=` values), best for large batches
    last."""
    return list(_kernels.ternary_isas())


def ternary_isa_for(m: int) -> str:
    """The path `ternary_matmul_int(..., isa=None)` takes for M = m activation rows (m >= 1)."""
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"ternary_isa_for: m must be an int >= 1, got {m!r}")
    return str(_kernels.ternary_isa_for(m))


class TernaryWeights:
    """An (N, K) matrix of ternary weights packed at 2 bits, made only by `pack_ternary`.

    Frozen (no attribute can be set; the arrays are read-only), so the packed bytes, the zero
    padding and the row sums always describe the codes the packer checked; TernaryWeights(...)
    raises TypeError. Layout (csrc/lowbit/ternary_gemm.h): kp = K rounded up to a multiple of
    256, a row is kp / 256 blocks of 64 bytes; in a block, byte j holds the code w + 1 of
    weight 256 b + 64 q + j in bits 2q, 2q + 1 (q = 0..3). Rows come in groups of 8 (N padded
    with zero rows), interleaved block by block: `packed`, uint8 (ceil(N / 8) * 8 * kp / 4,),
    holds block b of row n at byte (n // 8) * 2 kp + 512 b + 64 (n % 8). Padding codes are 0.
    `row_sums`: int32 (N,), sum_k w[n, k].
    """

    __slots__ = ("packed", "row_sums", "k", "__weakref__")

    packed: np.ndarray
    row_sums: np.ndarray
    k: int

    def __init__(self, *args, **kwargs):
        raise TypeError("TernaryWeights are made by pack_ternary, not by hand")

    def __setattr__(self, name, value):
        raise AttributeError(f"TernaryWeights is read-only: cannot set {name!r}")

    def __delattr__(self, name):
        raise AttributeError(f"TernaryWeights is read-only: cannot delete {name!r}")

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        return (pack_ternary, (self.unpack(),))  # packs again on load, through the checks

    def __repr__(self) -> str:
        return f"TernaryWeights(shape={self.shape})"

    @property
    def shape(self) -> tuple[int, int]:
        return (self.row_sums.shape[0], self.k)

    def unpack(self) -> np.ndarray:
        """The codes back: int8 (N, K) in {-1, 0, 1}."""
        n, k = self.shape
        kp = -(-k // TERNARY_BLOCK) * TERNARY_BLOCK
        blocks = self.packed.reshape(-1, kp // TERNARY_BLOCK, 8, 1, 64)  # group, b, row, q, j
        shifts = (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 1, 4, 1)
        codes = ((blocks >> shifts) & 3).astype(np.int8) - 1
        codes = codes.transpose(0, 2, 1, 3, 4).reshape(-1, kp)  # row, (b, q, j)
        return np.ascontiguousarray(codes[:n, :k])


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def pack_ternary(codes) -> TernaryWeights:
    """Packs ternary weight codes: int8 numpy array (N, K), C-contiguous, values in {-1, 0, 1},
    1 <= K <= 2^23, N >= 1. Returns the frozen `TernaryWeights`."""
    if not isinstance(codes, np.ndarray):
        raise ValueError(f"pack_ternary: codes must be a numpy array, got {type(codes).__name__}")
    if codes.dtype != np.int8:
        raise ValueError(f"pack_ternary: codes must be int8, got dtype {codes.dtype}")
    if codes.ndim != 2 or codes.shape[0] < 1 or not 1 <= codes.shape[1] <= MAX_K:
        raise ValueError(
            f"pack_ternary: codes must be (N, K) with N >= 1 and 1 <= K <= 2^23, got shape "
            f"{codes.shape}"
        )
    if not codes.flags.c_contiguous:
        raise ValueError("pack_ternary: codes must be C-contiguous (np.ascontiguousarray)")
    if codes.min() < -1 or codes.max() > 1:
        raise ValueError(
            f"pack_ternary: codes must lie in {{-1, 0, 1}}, found {int(codes.min())} .. "
            f"{int(codes.max())}"
        )
    n, k = codes.shape
    packed = np.empty(_kernels.ternary_packed_bytes(n, k), dtype=np.uint8)
    row_sums = np.empty(n, dtype=np.int32)
    _kernels.pack_ternary(codes, packed, row_sums)
    w = object.__new__(TernaryWeights)
    for name, value in (("packed", _frozen(packed)), ("row_sums", _frozen(row_sums)), ("k", k)):
        object.__setattr__(w, name, value)
    return w


def ternary_matmul_int(
    x, weights: TernaryWeights, mode: str = "unsigned", isa=None, threads: int = 1
) -> np.ndarray:
    """y = x w^T exactly: int32 (M, N) for x (M, K) and weights (N, K).

    x: numpy array, C-contiguous, uint8 for mode "unsigned" (codes 0..255) or int8 for mode
    "signed" (-128..127); M >= 1. weights: a `TernaryWeights` with the same K. isa: None (the
    best path for M rows, `ternary_isa_for(M)`) or one of `ternary_isas()`. threads:
    1..kernels.MAX_THREADS (weight rows are split across threads when each gets several register
    tiles of them, activation rows otherwise).
    """
    if not isinstance(mode, str) or mode not in _MODES:
        raise ValueError(f"ternary_matmul_int: mode must be 'unsigned' or 'signed', got {mode!r}")
    if not isinstance(weights, TernaryWeights):
        raise ValueError(
            "ternary_matmul_int: weights must be TernaryWeights (from pack_ternary), got "
            f"{type(weights).__name__}"
        )
    want = np.uint8 if mode == "unsigned" else np.int8
    if not isinstance(x, np.ndarray):
        raise ValueError(f"ternary_matmul_int: x must be a numpy array, got {type(x).__name__}")
    if x.dtype != want:
        raise ValueError(
            f"ternary_matmul_int: x must be {np.dtype(want)} in mode {mode!r}, got dtype {x.dtype}"
        )
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != weights.k:
        raise ValueError(
            f"ternary_matmul_int: x must be (M, K) with M >= 1 and K = {weights.k} (the "
            f"weights'), got shape {x.shape}"
        )
    if not x.flags.c_contiguous:
        raise ValueError("ternary_matmul_int: x must be C-contiguous (np.ascontiguousarray)")
    if isa is not None and (not isinstance(isa, str) or isa not in _ISA_NAMES):
        raise ValueError(
            f"ternary_matmul_int: isa must be None or one of {', '.join(_ISA_NAMES)}, got {isa!r}"
        )
    if isa is not None and isa not in ternary_isas():
        raise ValueError(
            f"ternary_matmul_int: isa {isa!r} is not available on this CPU (it runs "
            f"{', '.join(ternary_isas())})"
        )
    threads = check_threads(threads, "ternary_matmul_int")
    out = np.empty((x.shape[0], weights.shape[0]), dtype=np.int32)
    _kernels.ternary_gemm(
        x, mode == "signed", weights.packed, weights.row_sums, weights.k, out, isa, threads
    )
    return out
