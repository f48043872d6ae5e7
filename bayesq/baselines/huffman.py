"""Huffman coding of integer symbols: Deep Compression's last stage (Han, Mao, Dally 2016, Sec. 4).

Deep Compression stores the cluster index of every kept weight and the relative position index
of every sparse entry (`bayesq.baselines.deep_compression`), and codes both streams with a
Huffman code because their distributions are far from uniform (the paper's Fig. 5): on AlexNet
that saves 20-30% of the storage. This module is that code, exact to the bit:

* :func:`huffman_lengths`: the optimal (minimum-redundancy) code lengths of symbol counts, by the
  heap-based construction of Huffman (1952). Ties are broken deterministically: a symbol (a leaf)
  comes before a merged node of the same count, leaves among themselves by increasing symbol,
  merged nodes by age (older first). Taking leaves first gives, among the optimal codes, the one
  of least length variance and least maximal length (Schwartz 1964).
* :func:`canonical_codes`: the canonical code of those lengths (codes of equal length are
  consecutive integers, in increasing symbol order, shorter codes first), so a stored table
  needs only each symbol and its length (Schwartz and Kallick 1964; DEFLATE's choice, RFC 1951).
* :func:`huffman_encode` / :func:`huffman_decode`: a 1-D array of symbols <-> a
  :class:`HuffmanStream` (the payload bytes, MSB first, padded with 0 to a byte; the payload bit
  count; the symbol count; the code lengths; the width of a symbol in the table).

Table format (:meth:`HuffmanStream.table_bits`): the number m of distinct symbols present in
``symbol_bits + 1`` bits (0..2^symbol_bits), then, for each present symbol in increasing order,
the symbol in ``symbol_bits`` bits and its code length minus 1 in 6 bits (`LENGTH_FIELD_BITS`):
``table_bits = symbol_bits + 1 + m (symbol_bits + 6)``. The symbol count (needed to stop
decoding before the padding) is the container's to store: `deep_compression.layer_storage`
counts one 32-bit entry count per layer, as Han et al.'s released AlexNet stores ``nz_num``.

A single distinct symbol gets the one-bit code "0" (a zero-length code could not say how many
symbols there are); an empty input gives an empty stream (no payload, a table of m = 0), and
decodes to an empty array.

>>> s = huffman_encode(np.array([0, 0, 0, 0, 1, 1, 2, 3]))
>>> dict(s.lengths), s.bits  # 4 * 1 + 2 * 2 + 3 + 3
({0: 1, 1: 2, 2: 3, 3: 3}, 14)
>>> huffman_decode(s).tolist()
[0, 0, 0, 0, 1, 1, 2, 3]

References: D. A. Huffman, "A Method for the Construction of Minimum-Redundancy Codes", Proc.
IRE 1952; E. S. Schwartz, "An Optimum Encoding with Minimum Longest Code and Total Number of
Digits", Inf. Control 1964; S. Han, H. Mao, W. J. Dally, "Deep Compression: Compressing Deep
Neural Networks with Pruning, Trained Quantization and Huffman Coding", ICLR 2016 (Sec. 4).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import operator
from collections.abc import Mapping

import numpy as np

__all__ = [
    "LENGTH_FIELD_BITS",
    "MAX_CODE_LENGTH",
    "MAX_SYMBOL_BITS",
    "HuffmanStream",
    "canonical_codes",
    "huffman_decode",
    "huffman_encode",
    "huffman_lengths",
]

LENGTH_FIELD_BITS = 6  # a code length - 1 in the table: lengths 1..64
# The decoder reads codes through 64-bit windows. A Huffman code length L needs at least
# Fibonacci(L + 2) symbols (Buro 1993), so 57 is reached only past ~6e11 symbols.
MAX_CODE_LENGTH = 57
MAX_SYMBOL_BITS = 32


def _count(name: str, value, minimum: int) -> int:
    """An integer (Python or numpy, not bool) >= minimum, as int; TypeError/ValueError if not."""
    if isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be an integer, got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def huffman_lengths(counts: Mapping[int, int]) -> dict[int, int]:
    """Optimal code lengths {symbol: bits} of symbols seen `counts[symbol]` times (Huffman 1952).

    Repeatedly merges the two nodes of least count (a binary heap); a symbol's length is the
    number of merges above it. Symbols of count 0 are left out; one symbol gets length 1; no
    symbol gives {}. Ties: leaves before merged nodes of equal count, leaves by increasing
    symbol, merged nodes oldest first (module docstring). The total sum(counts[s] * length[s])
    is the least over all prefix codes.

    >>> huffman_lengths({7: 45, 1: 13, 2: 12, 3: 16, 4: 9, 5: 5})
    {1: 3, 2: 3, 3: 3, 4: 4, 5: 4, 7: 1}
    """
    if not isinstance(counts, Mapping):
        raise TypeError(f"counts must be a mapping symbol -> count, got {type(counts).__name__}")
    items = sorted(
        (_count("a symbol", s, 0), _count(f"the count of symbol {s}", c, 0))
        for s, c in counts.items()
    )
    items = [(s, c) for s, c in items if c > 0]
    if not items:
        return {}
    if len(items) == 1:
        return {items[0][0]: 1}
    lengths = {s: 0 for s, _ in items}
    # (count, order, symbols below): `order` is unique, so the lists are never compared; leaves
    # take 0..n-1 in symbol order and merged nodes n, n+1, ..., hence the tie-break above.
    heap = [(c, order, [s]) for order, (s, c) in enumerate(items)]
    heapq.heapify(heap)
    order = len(heap)
    while len(heap) > 1:
        c1, _, below1 = heapq.heappop(heap)
        c2, _, below2 = heapq.heappop(heap)
        merged = below1 + below2
        for s in merged:
            lengths[s] += 1
        heapq.heappush(heap, (c1 + c2, order, merged))
        order += 1
    return lengths


def canonical_codes(lengths: Mapping[int, int]) -> dict[int, tuple[int, int]]:
    """The canonical prefix code {symbol: (code, length)} of code lengths {symbol: length}.

    Symbols sorted by (length, symbol) get consecutive codes; moving to a longer length shifts
    the next code left by the difference (code_{i+1} = (code_i + 1) << (l_{i+1} - l_i)). The
    lengths must satisfy Kraft's inequality sum 2^-l <= 1 (ValueError otherwise), and lie in
    1..MAX_CODE_LENGTH. The code of length l is the integer of its l bits, MSB first.

    >>> canonical_codes({0: 1, 1: 2, 2: 3, 3: 3})
    {0: (0, 1), 1: (2, 2), 2: (6, 3), 3: (7, 3)}
    """
    if not isinstance(lengths, Mapping):
        raise TypeError(f"lengths must be a mapping symbol -> length, got {type(lengths).__name__}")
    table = sorted(
        (_count(f"the length of symbol {s}", n, 1), _count("a symbol", s, 0))
        for s, n in lengths.items()
    )
    if table and table[-1][0] > MAX_CODE_LENGTH:
        raise ValueError(f"code lengths must be <= {MAX_CODE_LENGTH}, got {table[-1][0]}")
    if table:
        top = table[-1][0]  # Kraft in integers: sum 2^(top - l) <= 2^top
        if sum(1 << (top - n) for n, _ in table) > 1 << top:
            raise ValueError("the code lengths break Kraft's inequality: no prefix code has them")
    codes: dict[int, tuple[int, int]] = {}
    code, previous = 0, table[0][0] if table else 0
    for n, s in table:
        code <<= n - previous
        codes[s] = (code, n)
        code, previous = code + 1, n
    return dict(sorted(codes.items()))


@dataclasses.dataclass(frozen=True)
class HuffmanStream:
    """A Huffman-coded symbol array: what :func:`huffman_encode` returns.

    payload: the codes of the symbols in order, MSB first, padded with 0 bits to a whole byte.
    bits: payload bits before the padding (= sum over symbols of their code length).
    count: the number of symbols coded. lengths: ((symbol, code length), ...) in increasing
    symbol order: the canonical code's whole table. symbol_bits: the width of a symbol in the
    stored table (module docstring).
    """

    payload: bytes
    bits: int
    count: int
    lengths: tuple[tuple[int, int], ...]
    symbol_bits: int

    def table_bits(self, symbol_bits: int | None = None) -> int:
        """Bits of the stored table: symbol_bits + 1 (the number m of present symbols), then
        m * (symbol_bits + LENGTH_FIELD_BITS) (each symbol and its length - 1). `symbol_bits`
        defaults to the stream's; a width too narrow for a present symbol is a ValueError."""
        width = self.symbol_bits if symbol_bits is None else _count("symbol_bits", symbol_bits, 1)
        if width > MAX_SYMBOL_BITS:
            raise ValueError(f"symbol_bits must be <= {MAX_SYMBOL_BITS}, got {width}")
        if self.lengths and self.lengths[-1][0] >= 1 << width:
            raise ValueError(f"symbol {self.lengths[-1][0]} does not fit in {width} bits")
        return width + 1 + len(self.lengths) * (width + LENGTH_FIELD_BITS)

    @property
    def total_bits(self) -> int:
        """Table (at the stream's symbol_bits) + payload bits, before padding."""
        return self.table_bits() + self.bits

    @property
    def total_bytes(self) -> int:
        """Bytes of the table followed by the payload, as one bit stream padded to a byte."""
        return math.ceil(self.total_bits / 8)


def _symbols(symbols, symbol_bits: int | None) -> tuple[np.ndarray, int]:
    """symbols as an int64 1-D array and the table width; TypeError/ValueError naming the fault."""
    if not isinstance(symbols, np.ndarray):
        raise TypeError(f"symbols must be a numpy array, got {type(symbols).__name__}")
    if not np.issubdtype(symbols.dtype, np.integer):
        raise TypeError(f"symbols must be integers, got dtype {symbols.dtype}")
    if symbols.ndim != 1:
        raise ValueError(f"symbols must be 1-D, got shape {symbols.shape}")
    if symbols.size and int(symbols.min()) < 0:
        raise ValueError(f"symbols must be >= 0, got {int(symbols.min())}")
    if symbols.size and int(symbols.max()) >= 1 << MAX_SYMBOL_BITS:
        raise ValueError(f"symbols must be < 2^{MAX_SYMBOL_BITS}, got {int(symbols.max())}")
    symbols = symbols.astype(np.int64)
    needed = max(1, int(symbols.max()).bit_length()) if symbols.size else 1
    if symbol_bits is None:
        return symbols, needed
    symbol_bits = _count("symbol_bits", symbol_bits, 1)
    if symbol_bits > MAX_SYMBOL_BITS:
        raise ValueError(f"symbol_bits must be <= {MAX_SYMBOL_BITS}, got {symbol_bits}")
    if needed > symbol_bits:
        raise ValueError(f"symbol {int(symbols.max())} does not fit in {symbol_bits} bits")
    return symbols, symbol_bits


def huffman_encode(symbols: np.ndarray, symbol_bits: int | None = None) -> HuffmanStream:
    """Huffman code of a 1-D integer array of symbols >= 0 (Deep Compression Sec. 4).

    The code is fitted to this array's own counts (:func:`huffman_lengths`, canonical codes),
    so `bits` = sum_s count[s] * length[s]. `symbol_bits` (the width of a symbol in the table)
    defaults to the bits of the largest symbol; pass the alphabet's width (a codebook of 2^b
    entries: b) to count the table as a decoder that knows the alphabet would read it.
    """
    symbols, symbol_bits = _symbols(symbols, symbol_bits)
    values, counts = np.unique(symbols, return_counts=True)
    lengths = huffman_lengths(dict(zip(values.tolist(), counts.tolist(), strict=True)))
    table = tuple(sorted(lengths.items()))
    if not symbols.size:
        return HuffmanStream(b"", 0, 0, table, symbol_bits)
    codes = canonical_codes(lengths)
    code_of = np.array([codes[s][0] for s in values.tolist()], dtype=np.int64)
    length_of = np.array([codes[s][1] for s in values.tolist()], dtype=np.int64)
    rank = np.searchsorted(values, symbols)
    code, length = code_of[rank], length_of[rank]
    total = int(length.sum())
    # bit j of entry i is bit (length_i - 1 - j) of its code: one gather over all payload bits
    owner = np.repeat(np.arange(symbols.size), length)
    offset = np.arange(total, dtype=np.int64) - (np.cumsum(length) - length)[owner]
    bits = ((code[owner] >> (length[owner] - 1 - offset)) & 1).astype(np.uint8)
    return HuffmanStream(np.packbits(bits).tobytes(), total, int(symbols.size), table, symbol_bits)


def huffman_decode(stream: HuffmanStream) -> np.ndarray:
    """The int64 symbols a :class:`HuffmanStream` codes (exact inverse of :func:`huffman_encode`).

    Canonical decoding: at bit p, with v the next L_max bits (zero-padded), the code length is
    the least l with v < limit_l * 2^(L_max - l), limit_l = first_code_l + count_l (every code
    of length l lies below limit_l, every longer code's l-bit prefix at or above it); those
    lengths are found for all p at once and then followed from p = 0. A payload that does not
    parse into exactly `count` codes ending at bit `bits` raises ValueError.
    """
    if not isinstance(stream, HuffmanStream):
        raise TypeError(f"stream must be a HuffmanStream, got {type(stream).__name__}")
    count, total = _count("count", stream.count, 0), _count("bits", stream.bits, 0)
    if len(stream.payload) != math.ceil(total / 8):
        raise ValueError(f"payload holds {len(stream.payload)} bytes, {total} bits need more/less")
    if count == 0:
        if total:
            raise ValueError("a stream of 0 symbols must have 0 payload bits")
        return np.empty(0, dtype=np.int64)
    codes = canonical_codes(dict(stream.lengths))
    if not codes:
        raise ValueError("a non-empty stream needs a code table")
    order = sorted(codes, key=lambda s: (codes[s][1], s))  # canonical order
    top = max(n for _, n in codes.values())
    per_length = np.bincount([codes[s][1] for s in order], minlength=top + 1)
    first_code = np.zeros(top + 2, dtype=np.int64)
    first_rank = np.concatenate([[0], np.cumsum(per_length)]).astype(np.int64)
    for n in range(1, top + 1):
        first_code[n + 1] = (first_code[n] + per_length[n]) << 1
    first_code = first_code[: top + 1]
    limits = np.array(
        [(int(first_code[n]) + int(per_length[n])) << (top - n) for n in range(1, top + 1)],
        dtype=np.uint64,
    )
    bits = np.unpackbits(np.frombuffer(stream.payload, dtype=np.uint8))[:total]
    padded = np.concatenate([bits, np.zeros(top, dtype=np.uint8)]).astype(np.uint64)
    window = np.zeros(total, dtype=np.uint64)
    for j in range(top):
        window = (window << np.uint64(1)) | padded[j : j + total]
    length_at = (np.searchsorted(limits, window, side="right") + 1).tolist()
    starts = []
    p = 0
    while p < total and len(starts) < count:
        starts.append(p)
        p += length_at[p]
    if len(starts) != count or p != total or max(length_at[q] for q in starts) > top:
        raise ValueError(f"the payload does not parse into {count} codes of {total} bits")
    starts = np.asarray(starts, dtype=np.int64)
    length = np.asarray([length_at[q] for q in starts.tolist()], dtype=np.int64)
    code = (window[starts] >> (top - length).astype(np.uint64)).astype(np.int64)
    rank = first_rank[length] + code - first_code[length]
    return np.asarray(order, dtype=np.int64)[rank]
