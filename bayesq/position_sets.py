"""Position sets: which of N places (weights, rows) are kept, in the fewest bits.

Position sets (a boolean mask of length N with K ones), the cheapest of (2 selector bits first):

* bitmap: N bits.
* relative index, as Deep Compression stores a sparse matrix (Han, Mao, Dally, ICLR 2016,
  Sec. 3 / Fig. 2): each kept position as its distance from the previous one in a fixed width w
  (1..8 bits, chosen to minimize the total); a gap g (zeros skipped) of at least E = 2^w - 1 is
  bridged by filler entries. Here the largest value E *is* the filler ("skip E positions, no
  weight"), so a filler costs w bits and no code slot (Deep Compression's filler is a zero weight
  with a code). Cost: 1 + gamma(K + 1) + 3 + gamma(M + 1) + w M bits, M = K + sum_i floor(g_i / E).
* Golomb-Rice coded run lengths (Golomb 1966; Rice 1979): each gap g as floor(g / 2^k) in unary
  (that many 1s and a 0) and g mod 2^k in k bits, with k (0..31) fitted to the gaps by trying
  them all. For a random mask of density p the gaps are geometric and the best Rice code is
  within a few percent of the mask entropy N H(p) (Gallager and van Voorhis 1975).
  Cost: 1 + gamma(K + 1) + 5 + sum_i (floor(g_i / 2^k) + 1 + k) bits.

Relative index and Rice code the kept set or, when fewer, the pruned set (the 1 bit above says
which), so a mostly kept mask is as cheap as a mostly pruned one. gamma(x) = 2 floor(log2 x) + 1
is the Elias gamma code of a count x >= 1. The bits, the Elias gamma and the Rice codes are
written and read by `bayesq.bitstream`. Every count above is exact: `position_bits` is what
`write_positions` writes. `bayesq.sparse_codes` stores a layer's kept weights (and its kept
rows) this way.


References: Han, Mao, Dally, Deep Compression (ICLR 2016); Golomb, Run-length encodings (IEEE
Trans. Inf. Theory 1966); Rice, Some practical universal noiseless coding techniques (JPL 1979);
Elias, Universal codeword sets (IEEE Trans. Inf. Theory 1975).
"""

from __future__ import annotations

import numpy as np

from .bitstream import BitReader, BitWriter, gamma_bits, index_dtype, rice_bits

__all__ = ["position_bits", "position_options", "read_positions", "write_positions"]

_BITMAP, _RELATIVE, _RICE = 0, 1, 2
MAX_INDEX_WIDTH = 8  # the widths a relative index tries: 1..8 bits
_MAX_RICE_K = 31


def _gaps(positions: np.ndarray) -> np.ndarray:
    """Zeros skipped before each position (positions sorted, int64)."""
    return np.diff(positions, prepend=-1) - 1


def position_options(kept: np.ndarray) -> list[tuple[int, tuple, int]]:
    """(method, parameters, exact bits) of every encoding of a flat bool mask: the bitmap, the
    relative index of the kept or the pruned set at each width, their Rice codes at each k."""
    n = kept.size
    options = [(_BITMAP, (), 2 + n)]
    for inverted in (False, True):
        chosen = ~kept if inverted else kept
        positions = np.flatnonzero(chosen).astype(np.int64)
        count = positions.size
        gaps = _gaps(positions)
        head = 2 + 1 + gamma_bits(count + 1)
        for w in range(1, MAX_INDEX_WIDTH + 1):
            entries = count + int((gaps // (2**w - 1)).sum())
            options.append(
                (_RELATIVE, (inverted, w), head + 3 + gamma_bits(entries + 1) + w * entries)
            )
        for k in range(_MAX_RICE_K + 1):
            options.append((_RICE, (inverted, k), head + 5 + rice_bits(gaps, k)))
            if count == 0 or int(gaps.max()) >> k == 0:
                break  # a larger k only adds remainder bits
    return options


def _cheapest(kept: np.ndarray) -> tuple[int, tuple, int]:
    return min(position_options(kept), key=lambda option: option[2])


def position_bits(kept: np.ndarray) -> int:
    """Exact bits of the cheapest encoding of a position set (a bool mask of any shape, read
    row-major): the smallest of the bitmap, the relative index and the Rice-coded gaps (module
    docstring), including the selector and parameter bits. Equal to what `encode_layer` writes
    for the same mask."""
    kept = np.asarray(kept)
    if kept.dtype != np.bool_:
        raise TypeError(f"kept must be a bool array, got {kept.dtype}")
    return _cheapest(kept.reshape(-1))[2]


def write_positions(w: BitWriter, kept: np.ndarray, option: tuple | None = None) -> None:
    """Write a flat bool mask to `w` in its cheapest encoding, or in `option` (one of
    `position_options(kept)`: how the tests hold every encoding to its count)."""
    method, params, _ = _cheapest(kept) if option is None else option
    w.uint(method, 2)
    if method == _BITMAP:
        w.bits_array(kept.astype(np.uint8))
        return
    inverted = params[0]
    positions = np.flatnonzero(~kept if inverted else kept).astype(np.int64)
    gaps = _gaps(positions)
    w.uint(int(inverted), 1)
    w.gamma(positions.size + 1)
    if method == _RELATIVE:
        width = params[1]
        filler = 2**width - 1
        fillers = gaps // filler
        entries = np.full(positions.size + int(fillers.sum()), filler, dtype=np.int64)
        entries[np.cumsum(fillers + 1) - 1] = gaps % filler
        w.uint(width - 1, 3)
        w.gamma(entries.size + 1)
        w.uints(entries, width)
    else:
        w.uint(params[1], 5)
        w.rice(gaps, params[1])


def read_positions(r: BitReader, n: int) -> np.ndarray:
    """The flat bool mask of length n that `write_positions` wrote (ValueError for a stream
    that is not one: an unknown method, counts or positions past the end)."""
    method = r.uint(2)
    if method == _BITMAP:
        return r.bits_array(n).astype(bool)
    if method not in (_RELATIVE, _RICE):
        raise ValueError(f"unknown position encoding {method}")
    inverted = bool(r.uint(1))
    count = r.gamma(n + 1) - 1
    if method == _RELATIVE:
        width = r.uint(3) + 1
        filler = 2**width - 1
        entries = r.uints(r.gamma(n + 1) - 1, width)
        real = entries != filler
        if int(real.sum()) != count or (entries.size and not real[-1]):
            raise ValueError("the relative index does not match its count")
        # an entry advances by its value + 1, a filler by its value: the sum must stay in the layer
        if int(entries.sum(dtype=np.int64)) + count > n:
            raise ValueError("a position lies past the end of the layer")
        advance = entries.astype(index_dtype(n + 1))
        advance += real
        np.cumsum(advance, out=advance)
        positions = advance[real] - 1
    else:
        k = r.uint(5)
        if k > n.bit_length():  # the encoder never uses a k beyond the longest gap's bits
            raise ValueError("the Rice parameter is out of range")
        gaps = r.rice(count, k, n)  # a gap longer than the layer is refused
        if int(gaps.sum(dtype=np.int64)) + count > n:
            raise ValueError("a position lies past the end of the layer")
        gaps += 1
        np.cumsum(gaps, out=gaps)
        gaps -= 1
        positions = gaps
    if positions.size and int(positions[-1]) >= n:
        raise ValueError("a position lies past the end of the layer")
    chosen = np.zeros(n, dtype=bool)
    chosen[positions] = True
    return ~chosen if inverted else chosen
