"""Bit streams: writing and reading bits, most significant bit first, and the integer codes on them.

`BitWriter` collects bits and packs them into bytes at the end (padded with 0 to a whole byte);
`BitReader` reads them back and checks, at every read, that the bits are there: reading past the
end raises ValueError, so a truncated or hostile stream cannot be read as if it were whole. The
codes (each `BitWriter` method has its `BitReader` counterpart):

* ``uints``: unsigned integers in a fixed width w (0..64 bits; w = 0 writes nothing);
* ``varuints``: unsigned integers each in its own width 0..8;
* ``gamma``: the Elias gamma code of a count x >= 1: floor(log2 x) zeros, then x in
  floor(log2 x) + 1 bits; ``gamma_bits(x) = 2 floor(log2 x) + 1`` (Elias 1975);
* ``rice``: the Golomb-Rice codes of nonnegative integers with parameter k (Golomb 1966; Rice
  1979): each value's quotient v >> k in unary (that many 1s and a 0), then its remainder in k
  bits; ``rice_bits(values, k) = sum_i (v_i >> k) + n (1 + k)``. All the unary parts are
  written first and then all the remainders, so that each half decodes with whole-array
  operations (the position of every terminating 0, then one fixed-width read);
* ``float32s``: IEEE float32 values, bit for bit (their uint32 patterns).

Values are read back in the smallest unsigned dtype of their width (`uint_dtype`), and the
reader's working arrays are int32 where they fit (`index_dtype`), so that decoding a large
stream stays a few bytes per value.

>>> w = BitWriter(); w.gamma(5); w.uints([3, 0, 7], 3); w.rice([0, 9], 2)
>>> w.bits == gamma_bits(5) + 3 * 3 + rice_bits([0, 9], 2)
True
>>> r = BitReader(w.to_bytes())
>>> r.gamma(100), r.uints(3, 3).tolist(), r.rice(2, 2, 100).tolist()
(5, [3, 0, 7], [0, 9])
>>> r.finish()

References: Elias, Universal codeword sets and representations of the integers (IEEE Trans.
Inf. Theory 1975); Golomb, Run-length encodings (IEEE Trans. Inf. Theory 1966); Rice, Some
practical universal noiseless coding techniques (JPL 1979).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "FLOAT_BITS",
    "MAX_UINT_WIDTH",
    "MAX_VARUINT_WIDTH",
    "BitReader",
    "BitWriter",
    "gamma_bits",
    "index_dtype",
    "rice_bits",
    "uint_dtype",
]

FLOAT_BITS = 32
MAX_UINT_WIDTH = 64
MAX_VARUINT_WIDTH = 8


def uint_dtype(width: int) -> type:
    """The smallest unsigned dtype of `width`-bit values (0..64)."""
    if not 0 <= width <= MAX_UINT_WIDTH:
        raise ValueError(f"a width must lie in 0..{MAX_UINT_WIDTH}, got {width}")
    for dtype in (np.uint8, np.uint16, np.uint32):
        if width <= 8 * np.dtype(dtype).itemsize:
            return dtype
    return np.uint64


def index_dtype(limit: int) -> type:
    """int32 for indices and running sums below `limit` if they fit, else int64."""
    return np.int32 if limit < 2**31 else np.int64


def gamma_bits(x: int) -> int:
    """Bits of the Elias gamma code of a count x >= 1."""
    if x < 1:
        raise ValueError(f"the Elias gamma code holds counts >= 1, got {x}")
    return 2 * (x.bit_length() - 1) + 1


def rice_bits(values, k: int) -> int:
    """Bits of the Golomb-Rice codes of nonnegative integers `values` with parameter k."""
    values = _nonnegative(values)
    return int((values >> k).sum()) + values.size * (1 + k)


def _nonnegative(values) -> np.ndarray:
    """values as a flat int64 array; they must be integers >= 0."""
    values = np.asarray(values).reshape(-1)
    if values.size and not (np.issubdtype(values.dtype, np.integer) or values.dtype == bool):
        raise TypeError(f"values must be integers, got {values.dtype}")
    values = values.astype(np.int64, copy=False)
    if values.size and int(values.min()) < 0:
        raise ValueError("values must be >= 0")
    return values


class BitWriter:
    """Bits as a list of uint8 0/1 arrays, packed MSB-first by `to_bytes`. `bits`: the number
    written so far. Every method refuses values that do not fit (ValueError), rather than
    writing their low bits."""

    def __init__(self) -> None:
        self._parts: list[np.ndarray] = []
        self.bits = 0

    def bits_array(self, bits) -> None:
        """Bits as they are: an array of 0s and 1s."""
        bits = np.asarray(bits).reshape(-1)
        if bits.size and (not np.issubdtype(bits.dtype, np.integer) and bits.dtype != bool):
            raise TypeError(f"bits must be integers 0 or 1, got {bits.dtype}")
        if bits.size and (int(bits.min()) < 0 or int(bits.max()) > 1):
            raise ValueError("bits must be 0 or 1")
        bits = bits.astype(np.uint8, copy=False)
        self._parts.append(bits)
        self.bits += bits.size

    def uints(self, values, width: int) -> None:
        """Each value in `width` bits (0..64), a column of bits at a time."""
        dtype = uint_dtype(width)
        values = np.asarray(values).reshape(-1)
        if values.size and not (np.issubdtype(values.dtype, np.integer) or values.dtype == bool):
            raise TypeError(f"values must be integers, got {values.dtype}")
        if values.size and (int(values.min()) < 0 or int(values.max()) >= 1 << width):
            raise ValueError(f"values must lie in 0 .. 2^{width} - 1")
        if width == 0:
            return
        values = values.astype(dtype)
        bits = np.empty((values.size, width), dtype=np.uint8)
        for j in range(width):
            bits[:, j] = (values >> (width - 1 - j)) & 1
        self._parts.append(bits.reshape(-1))
        self.bits += bits.size

    def uint(self, value: int, width: int) -> None:
        self.uints(np.array([value], dtype=np.uint64), width)

    def varuints(self, values, widths) -> None:
        """values[i] in widths[i] bits (values 0..255, widths 0..8)."""
        values, widths = np.asarray(values).reshape(-1), np.asarray(widths).reshape(-1)
        if values.shape != widths.shape:
            raise ValueError(f"{values.size} values but {widths.size} widths")
        if values.size:
            if int(widths.min()) < 0 or int(widths.max()) > MAX_VARUINT_WIDTH:
                raise ValueError(f"widths must lie in 0..{MAX_VARUINT_WIDTH}")
            if int(values.min()) < 0 or int(values.max()) > 255:
                raise ValueError("values must lie in 0..255")
        values, widths = values.astype(np.uint8), widths.astype(np.uint8)
        if (values >= np.left_shift(1, widths, dtype=np.uint16)).any():
            raise ValueError("a value does not fit in its width")
        top = MAX_VARUINT_WIDTH
        bits = np.empty((values.size, top), dtype=np.uint8)
        for j in range(top):
            bits[:, j] = (values >> (top - 1 - j)) & 1
        self._parts.append(bits[np.arange(top) >= top - widths[:, None]])
        self.bits += int(widths.sum(dtype=np.int64))

    def gamma(self, x: int) -> None:
        """Elias gamma code of x >= 1."""
        n = gamma_bits(x) // 2
        self.bits_array(np.zeros(n, np.uint8))
        self.uint(x, n + 1)

    def rice(self, values, k: int) -> None:
        """Golomb-Rice codes of nonnegative integers with parameter k (0..63): all the unary
        quotients, then all the k-bit remainders (module docstring)."""
        if not 0 <= k < MAX_UINT_WIDTH:
            raise ValueError(f"the Rice parameter must lie in 0..{MAX_UINT_WIDTH - 1}, got {k}")
        values = _nonnegative(values)
        quotients = values >> k
        unary = np.ones(int(quotients.sum()) + values.size, dtype=np.uint8)
        unary[np.cumsum(quotients + 1) - 1] = 0
        self.bits_array(unary)
        self.uints(values & ((1 << k) - 1), k)

    def float32s(self, values) -> None:
        self.uints(np.ascontiguousarray(values, dtype=np.float32).view(np.uint32), FLOAT_BITS)

    def to_bytes(self) -> bytes:
        if not self._parts:
            return b""
        return np.packbits(np.concatenate(self._parts)).tobytes()


class BitReader:
    """Reads what `BitWriter` wrote; every read checks that the bits are there (ValueError if
    not). Values come back in the smallest unsigned dtype of their width."""

    def __init__(self, data: bytes) -> None:
        self._bits = np.unpackbits(np.frombuffer(bytes(data), dtype=np.uint8))
        self._pos = 0

    @property
    def remaining(self) -> int:
        return self._bits.size - self._pos

    def _need(self, count: int) -> None:
        if count < 0 or count > self.remaining:
            raise ValueError(
                f"the bit stream is truncated: {count} bits asked, {self.remaining} left"
            )

    def bits_array(self, count: int) -> np.ndarray:
        self._need(count)
        out = self._bits[self._pos : self._pos + count]
        self._pos += count
        return out

    def uints(self, count: int, width: int) -> np.ndarray:
        dtype = uint_dtype(width) if width else np.uint8
        if width == 0:
            return np.zeros(count, dtype=dtype)
        bits = self.bits_array(count * width).reshape(count, width)
        values = np.zeros(count, dtype=dtype)
        for j in range(width):
            values <<= 1
            values |= bits[:, j]
        return values

    def uint(self, width: int) -> int:
        return int(self.uints(1, width)[0])

    def varuints(self, widths) -> np.ndarray:
        """Values of widths[i] (0..8) bits each, as uint8."""
        widths = np.asarray(widths).reshape(-1)
        if widths.size and (int(widths.min()) < 0 or int(widths.max()) > MAX_VARUINT_WIDTH):
            raise ValueError(f"widths must lie in 0..{MAX_VARUINT_WIDTH}")
        widths = widths.astype(np.uint8)
        if widths.size and widths.min() == widths.max():  # one width: no offsets needed
            return self.uints(widths.size, int(widths[0])).astype(np.uint8, copy=False)
        total = int(widths.sum(dtype=np.int64))
        bits = self.bits_array(total)
        starts = np.cumsum(widths, dtype=index_dtype(total + 1))
        starts -= widths
        values = np.zeros(widths.size, dtype=np.uint8)
        for j in range(MAX_VARUINT_WIDTH):
            has = widths > j  # a mask, not indices: int64 indices would be 8 bytes a code
            if not has.any():
                break
            values[has] = (values[has] << 1) | bits[starts[has] + j]
        return values

    def zeros(self, count: int) -> np.ndarray:
        """The offsets (from here) of the next `count` 0 bits, found a chunk at a time so that
        the search holds no more than `count` offsets; then moves past the last of them."""
        self._need(count)
        offsets = np.empty(count, dtype=index_dtype(self._bits.size))
        start, done, chunk = self._pos, 0, 2**20
        while done < count:
            piece = self._bits[start : start + chunk]
            if not piece.size:
                raise ValueError(f"the bit stream is truncated: fewer than {count} 0 bits left")
            hits = np.flatnonzero(piece == 0)[: count - done]
            offsets[done : done + hits.size] = hits + (start - self._pos)
            done += hits.size
            start += piece.size
        self._pos += int(offsets[-1]) + 1 if count else 0
        return offsets

    def gamma(self, limit: int) -> int:
        """An Elias gamma code; refuses values above `limit` (before reading more bits than
        such a value takes)."""
        n = 0
        while self.uint(1) == 0:
            n += 1
            if n > limit.bit_length():
                raise ValueError(f"an Elias gamma code exceeds its limit {limit}")
        x = (1 << n) | self.uint(n)
        if x > limit:
            raise ValueError(f"an Elias gamma code exceeds its limit {limit}: {x}")
        return x

    def rice(self, count: int, k: int, limit: int) -> np.ndarray:
        """`count` Golomb-Rice codes of parameter k, each value <= `limit` (ValueError if one
        is larger). Returns them in `index_dtype(2 * limit + 2)`, so that the caller's running
        sums of values + 1 stay in it once their total is checked."""
        if not 0 <= k < MAX_UINT_WIDTH:
            raise ValueError(f"the Rice parameter must lie in 0..{MAX_UINT_WIDTH - 1}, got {k}")
        dtype = index_dtype(2 * limit + 2)
        zeros = self.zeros(count).astype(dtype, copy=False)
        values = np.empty_like(zeros)  # the unary quotients first, in place to hold two arrays
        values[:1] = zeros[:1]
        np.subtract(zeros[1:], zeros[:-1], out=values[1:])
        values[1:] -= 1
        del zeros
        if values.size and int(values.max()) > (limit >> k):
            raise ValueError(f"a Rice-coded value exceeds its limit {limit}")
        values <<= k
        values |= self.uints(count, k)
        if values.size and int(values.max()) > limit:
            raise ValueError(f"a Rice-coded value exceeds its limit {limit}")
        return values

    def float32s(self, count: int) -> np.ndarray:
        return self.uints(count, FLOAT_BITS).view(np.float32)

    def finish(self) -> None:
        """Checks that only the padding of the last byte (< 8 bits, all 0) is left."""
        if self.remaining >= 8 or bool(self._bits[self._pos :].any()):
            raise ValueError("the bit stream has trailing data")
