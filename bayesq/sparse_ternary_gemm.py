"""Sparse ternary weights x 8-bit activations by additions only, exact in int32.

    y[m, n] = sum_{k in P(n)} x[m, k] - sum_{k in Q(n)} x[m, k],    x uint8 or int8,

P(n) / Q(n) the positions of the +1s / -1s of weight row n: the product of a ternary layer as
VNQ leaves it (70-99 % of the weights zero). The sibling of `bayesq.lowbit_gemm` (dense, 2 bits
a weight, `vpdpbusd`): only the kept weights are stored (`pack_sparse_ternary`: one byte each,
the offset within its block of 255 positions) and only they are visited.

Storage (csrc/lowbit/sparse_ternary.h): per (row, block) L = max(#+1s, #-1s) pairs (+1 offset,
-1 offset), the shorter list padded with the sentinel 255 (which adds nothing), so that one
loop does a (row, block) and the plus and minus terms need no branch; one count byte per
(row, block), and the row sums. About 1.1 bytes per kept weight at 80 % zeros (the 2-bit dense
form: 0.25 bytes per weight, kept or not; `SparseTernaryWeights.nbytes` counts every byte).

Kernels. From batch 11 on (6 at 95 % zeros), the panel form: the activations are transposed and widened to an
int16 panel (K x 64 on AVX-512, K x 32 on AVX2), so each offset adds one contiguous vector of
activations into int16 accumulators held in registers (the plus ones into one pair of
registers, the minus ones into another); their difference is flushed into int32 after each
(row, block), at most 128 pairs (|plus - minus| <= 128 * 255 < 2^15). Below it, the gather form:
the pairs' activations looked up by `vpermi2b` (AVX-512 VBMI; four activation rows per pass
over the weights) and subtracted by `vpmaddubsw`, or gathered by `vpgatherdd` (AVX2). |y| <= 255 K < 2^31 for
K <= 2^23, so the result is always exact. Paths: "portable" (the reference: walks the stream
and adds x directly), "avx2", "avx512" (AVX-512 F/BW/VL + VBMI); `sparse_ternary_isas()` lists
those this CPU runs, `isa=None` takes the best. `prefer_sparse(kept_fraction, m)` says when
this beats the dense 2-bit kernel.
"""

from __future__ import annotations

import numpy as np

from . import _kernels
from .kernels import check_threads

__all__ = [
    "MAX_K",
    "SPARSE_BLOCK",
    "SPARSE_ROW_GROUP",
    "SparseTernaryWeights",
    "pack_sparse_ternary",
    "prefer_sparse",
    "sparse_ternary_isas",
    "sparse_ternary_matmul_int",
]

SPARSE_BLOCK = 255
"""Positions per block of K: a kept weight is stored as its offset within its block, one byte
(the byte 255 is the sentinel: no weight)."""
SPARSE_ROW_GROUP = 64
"""Weight rows per group: each group is one byte stream, block by block (N padded with empty
rows)."""
MAX_K = 2**23
"""The widest K: 255 * K < 2^31, so every product fits int32."""
_ISA_NAMES = ("portable", "avx2", "avx512")
_MODES = ("unsigned", "signed")


def sparse_ternary_isas() -> list[str]:
    """The paths of the sparse ternary GEMM this CPU runs (the `isa=` values), best last."""
    return list(_kernels.sparse_ternary_isas())


class SparseTernaryWeights:
    """An (N, K) matrix of ternary weights, only its non-zeros stored; made by
    `pack_sparse_ternary`.

    Frozen (no attribute can be set; the arrays are read-only), so the stream always describes
    the codes the packer checked; SparseTernaryWeights(...) raises TypeError. Layout
    (csrc/lowbit/sparse_ternary.h): with B = ceil(K / 255) blocks and G = ceil(N / 64) groups,
    `counts` (uint8, (G * B * 64,)) holds L = max(#+1s, #-1s) of each (group, block, row);
    `offsets` (uint8) holds group after group; in group g, block after block, row after row of
    the group: L pairs (offset of a +1, offset of a -1) within the block, each list ascending
    and the shorter one padded with 255; then 64 zero bytes (so that a kernel may load a vector
    from any stream position). `starts` (int64, (G + 1,)) where each group's stream begins;
    `row_sums` (int32, (N,)) sum_k w[n, k]; `kept` the number of non-zero weights.
    """

    __slots__ = ("offsets", "counts", "starts", "row_sums", "rows", "k", "kept", "__weakref__")

    offsets: np.ndarray
    counts: np.ndarray
    starts: np.ndarray
    row_sums: np.ndarray
    rows: int
    k: int
    kept: int

    def __init__(self, *args, **kwargs):
        raise TypeError("SparseTernaryWeights are made by pack_sparse_ternary, not by hand")

    def __setattr__(self, name, value):
        raise AttributeError(f"SparseTernaryWeights is read-only: cannot set {name!r}")

    def __delattr__(self, name):
        raise AttributeError(f"SparseTernaryWeights is read-only: cannot delete {name!r}")

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        return (pack_sparse_ternary, (self.unpack(),))  # packs again on load, through the checks

    def __repr__(self) -> str:
        return f"SparseTernaryWeights(shape={self.shape}, kept={self.kept})"

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.k)

    @property
    def nbytes(self) -> int:
        """Every byte stored: the stream with its pad, the counts, the starts and the row sums."""
        return sum(a.nbytes for a in (self.offsets, self.counts, self.starts, self.row_sums))

    def unpack(self) -> np.ndarray:
        """The codes back: int8 (N, K) in {-1, 0, 1}."""
        n, k = self.shape
        blocks = -(-k // SPARSE_BLOCK)
        groups = -(-n // SPARSE_ROW_GROUP)
        pairs = self.counts.astype(np.int64)  # (g, b, r) in stream order
        g, b, r = np.unravel_index(np.arange(pairs.size), (groups, blocks, SPARSE_ROW_GROUP))
        rows = np.repeat(g * SPARSE_ROW_GROUP + r, 2 * pairs)
        positions = np.repeat(b * SPARSE_BLOCK, 2 * pairs)
        offsets = self.offsets[: self.starts[-1]].astype(np.int64)
        sign = np.where(np.arange(offsets.size) % 2 == 0, 1, -1).astype(np.int8)
        real = offsets != 255
        codes = np.zeros((groups * SPARSE_ROW_GROUP, blocks * SPARSE_BLOCK), dtype=np.int8)
        codes[rows[real], positions[real] + offsets[real]] = sign[real]
        return np.ascontiguousarray(codes[:n, :k])


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def pack_sparse_ternary(codes) -> SparseTernaryWeights:
    """Packs ternary weight codes: int8 numpy array (N, K), C-contiguous, values in {-1, 0, 1},
    1 <= K <= 2^23, N >= 1. Returns the frozen `SparseTernaryWeights`."""
    what = "pack_sparse_ternary"
    if not isinstance(codes, np.ndarray):
        raise ValueError(f"{what}: codes must be a numpy array, got {type(codes).__name__}")
    if codes.dtype != np.int8:
        raise ValueError(f"{what}: codes must be int8, got dtype {codes.dtype}")
    if codes.ndim != 2 or codes.shape[0] < 1 or not 1 <= codes.shape[1] <= MAX_K:
        raise ValueError(
            f"{what}: codes must be (N, K) with N >= 1 and 1 <= K <= 2^23, got shape {codes.shape}"
        )
    if not codes.flags.c_contiguous:
        raise ValueError(f"{what}: codes must be C-contiguous (np.ascontiguousarray)")
    if codes.min() < -1 or codes.max() > 1:
        raise ValueError(
            f"{what}: codes must lie in {{-1, 0, 1}}, found {int(codes.min())} .. "
            f"{int(codes.max())}"
        )
    n, k = codes.shape
    n_counts, n_starts, pad = _kernels.sparse_ternary_sizes(n, k)
    offsets = np.empty(_kernels.sparse_ternary_stream_bytes(codes) + pad, dtype=np.uint8)
    counts = np.empty(n_counts, dtype=np.uint8)
    starts = np.empty(n_starts, dtype=np.int64)
    row_sums = np.empty(n, dtype=np.int32)
    _kernels.pack_sparse_ternary(codes, offsets, counts, starts, row_sums)
    w = object.__new__(SparseTernaryWeights)
    for name, value in (
        ("offsets", _frozen(offsets)),
        ("counts", _frozen(counts)),
        ("starts", _frozen(starts)),
        ("row_sums", _frozen(row_sums)),
        ("rows", n),
        ("k", k),
        ("kept", int(np.count_nonzero(codes))),
    ):
        object.__setattr__(w, name, value)
    return w


def sparse_ternary_matmul_int(
    x, weights: SparseTernaryWeights, mode: str = "unsigned", isa=None, threads: int = 1
) -> np.ndarray:
    """y = x w^T exactly: int32 (M, N) for x (M, K) and weights (N, K).

    x: numpy array, C-contiguous, uint8 for mode "unsigned" (codes 0..255) or int8 for mode
    "signed" (-128..127); M >= 1. weights: a `SparseTernaryWeights` with the same K. isa: None
    (the best path) or one of `sparse_ternary_isas()`. threads: 1..kernels.MAX_THREADS (row
    groups are split across threads when each gets one, activation rows otherwise).
    """
    what = "sparse_ternary_matmul_int"
    if not isinstance(mode, str) or mode not in _MODES:
        raise ValueError(f"{what}: mode must be 'unsigned' or 'signed', got {mode!r}")
    if not isinstance(weights, SparseTernaryWeights):
        raise ValueError(
            f"{what}: weights must be SparseTernaryWeights (from pack_sparse_ternary), got "
            f"{type(weights).__name__}"
        )
    want = np.uint8 if mode == "unsigned" else np.int8
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{what}: x must be a numpy array, got {type(x).__name__}")
    if x.dtype != want:
        raise ValueError(
            f"{what}: x must be {np.dtype(want)} in mode {mode!r}, got dtype {x.dtype}"
        )
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != weights.k:
        raise ValueError(
            f"{what}: x must be (M, K) with M >= 1 and K = {weights.k} (the weights'), got shape "
            f"{x.shape}"
        )
    if not x.flags.c_contiguous:
        raise ValueError(f"{what}: x must be C-contiguous (np.ascontiguousarray)")
    if isa is not None and (not isinstance(isa, str) or isa not in _ISA_NAMES):
        raise ValueError(f"{what}: isa must be None or one of {', '.join(_ISA_NAMES)}, got {isa!r}")
    if isa is not None and isa not in sparse_ternary_isas():
        raise ValueError(
            f"{what}: isa {isa!r} is not available on this CPU (it runs "
            f"{', '.join(sparse_ternary_isas())})"
        )
    threads = check_threads(threads, what)
    out = np.empty((x.shape[0], weights.rows), dtype=np.int32)
    _kernels.sparse_ternary_gemm(
        x,
        mode == "signed",
        weights.offsets,
        weights.counts,
        weights.starts,
        weights.row_sums,
        weights.k,
        out,
        isa,
        threads,
    )
    return out


# (batch m, kept fraction below which the sparse kernel is faster), measured (prefer_sparse).
_CROSSOVER = (
    (1, 0.065),
    (2, 0.05),
    (4, 0.03),
    (8, 0.0175),
    (16, 0.098),
    (32, 0.29),
    (64, 0.43),
    (128, 0.44),
    (1024, 0.35),
)


def prefer_sparse(kept_fraction: float, m: int) -> bool:
    """Whether the sparse kernel beats the dense 2-bit one (`bayesq.lowbit_gemm`) for a layer
    with this fraction of non-zero weights, at batch m (both on their best path).

    True when kept_fraction is below a threshold of m, interpolated in log2(m) between the
    measured crossovers (and held beyond 1024): 0.065 at batch 1, 0.05 at 2, 0.03 at 4, 0.0175
    at 8, 0.098 at 16, 0.29 at 32, 0.43 at 64, 0.44 at 128, 0.35 at 1024. Measured on the
    2-core Xeon (AVX-512 VBMI/VNNI) this was written on, N = K = 4096, uint8 activations, one
    thread, CPU time per call (best of 7; the machine was shared, so wall times were not
    steady): dense time over sparse time (> 1: sparse faster); the dense times 0.154 / 0.241 /
    0.325 / 0.592 / 1.08 / 2.36 / 4.65 / 9.48 / 67.4 ms at batch 1 / 2 / 4 / 8 / 16 / 32 / 64 /
    128 / 1024:

        zeros    1     2     4     8    16    32    64   128  1024
        0.50   0.27  0.31  0.25  0.22  0.32  0.69  0.85  0.90  0.75
        0.60   0.38  0.40  0.31  0.29  0.37  0.81  1.07  1.06  0.90
        0.70   0.42  0.42  0.33  0.31  0.46  0.99  1.35  1.35  1.11
        0.80   0.56  0.64  0.53  0.48  0.62  1.31  1.74  1.78  1.43
        0.85   0.81  0.75  0.63  0.57  0.75  1.65  2.10  2.06  1.65
        0.90   0.90  0.79  0.65  0.55  0.99  2.11  2.73  2.67  2.04
        0.95   1.05  1.00  0.76  0.74  1.32  2.74  3.89  3.90  2.74
        0.98   1.47  1.53  1.12  0.94  1.68  3.52  5.36  5.36  3.62
        0.99   1.71  1.87  1.40  1.18  2.10  4.26  6.53  6.34  4.46

    Why the shape. Below batch 11 (6 when few weights are kept) the sparse kernel runs its
    gather form, four activation rows per pass over the weights, whose cost is set as much by
    the number of (row, block)s (N K / 255) as by the kept weights, while the dense kernel at
    small batches is bound by reading 2 bits a weight: it wins there unless nearly every weight
    is zero. From there on the panel form's cost follows the kept weights (a vector addition of
    32 or 64 activations per kept weight, bound by the loads), flat from 1 to 32 rows (one tile),
    hence the dip at batch 8 and the climb to 64. At batch 1024 the dense kernel gains more from
    its larger register tiles than the sparse one, hence the lower threshold.
    """
    if (
        not isinstance(kept_fraction, (int, float, np.integer, np.floating))
        or isinstance(kept_fraction, bool)
        or not 0.0 <= kept_fraction <= 1.0
    ):
        raise ValueError(f"prefer_sparse: kept_fraction must lie in [0, 1], got {kept_fraction!r}")
    if not isinstance(m, (int, np.integer)) or isinstance(m, bool) or m < 1:
        raise ValueError(f"prefer_sparse: m must be an int >= 1, got {m!r}")
    batches, thresholds = zip(*_CROSSOVER, strict=True)
    threshold = np.interp(np.log2(m), np.log2(batches), thresholds)
    return bool(kept_fraction < threshold)
