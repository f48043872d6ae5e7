"""Storing a layer's integer weight codes as "which weights are kept" + "the kept weights' codes".

A quantized layer is integer codes W (out, fan_in) with a width b_m per row (0 = pruned row, all
codes 0; 1 = a {-1, +1} row; b >= 2 = two's-complement codes in -n .. n, n = 2^(b-1) - 1), a float
step per row and a float bias per row. A pruned (zero) weight costs nothing to *multiply*, but a
sparse net must still say *where* the kept weights are. This module is the exact bit count of that
and the encoder/decoder that writes it, so that a report's "bits per weight" is what a file holds.

Layout of one encoded layer (a bit stream, most significant bit first, padded with 0 to a byte):

1. row widths: the alphabet of widths used (4 bits for its size k, 4 bits per width), then the
   row widths: nothing for k = 1; for k = 2 a position set over the rows (which rows have the
   larger width); for k > 2 with 0 among the widths, the rows of width > 0 as a position set and
   ceil(log2(k - 1)) bits for each of them; else ceil(log2 k) bits per row.
2. one bit: dense or sparse codes. Dense: every weight of a row of width b >= 1 at b bits (two's
   complement; one sign bit for a {-1, +1} row). Sparse (below): positions + kept codes.
3. sparse only: per row of width b >= 3, one bit "all its kept codes are +-c" and then c in b - 1
   bits; then the positions of the nonzero codes among the rows of width >= 1 (row-major, one
   position set, cheapest encoding below); then each kept code: one sign bit in a row of width
   1 or 2 or a +-c row, else ceil(log2(2 n)) = b bits (the 2 n nonzero values; zero needs no code).
4. the steps of the rows of width >= 1: one flag bit, then one float32 (all equal) or one each;
   the biases of all rows: two flag bits, then nothing (all 0), one float32 (all equal), one
   each, or the rows with a nonzero bias as a position set and one float32 each (the cheapest).
   (A pruned row's step multiplies only zeros and is not stored; it decodes as 0.)

Position sets (which of N weights or rows are kept) are written by `bayesq.position_sets`, the
cheapest of a bitmap, a Deep Compression relative index and Golomb-Rice coded gaps; the bits,
the Elias gamma and the Rice codes by `bayesq.bitstream`. The choices are made per layer (row
widths, dense or sparse, the position encoding); every count is exact: `layer_storage_bits`
returns the bits `encode_layer` writes, before the final byte padding.

>>> import numpy as np
>>> codes = np.zeros((4, 1000), dtype=np.int8); codes[1, ::97] = 1; codes[2, 5] = -3
>>> enc = encode_layer(codes, np.array([0, 2, 3, 0]), np.ones(4, np.float32))
>>> enc.bits == layer_storage_bits(codes, np.array([0, 2, 3, 0]), np.ones(4, np.float32))["total"]
True
>>> back = decode_layer(enc.data, 4, 1000)
>>> bool((back.codes == codes).all())
True

References: Han, Mao, Dally, Deep Compression (ICLR 2016); Golomb, Run-length encodings (IEEE
Trans. Inf. Theory 1966); Rice, Some practical universal noiseless coding techniques (JPL 1979);
Elias, Universal codeword sets (IEEE Trans. Inf. Theory 1975).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .bitstream import (
    FLOAT_BITS,
    BitReader,
    BitWriter,
)
from .position_sets import position_bits, read_positions, write_positions

__all__ = [
    "MAX_LAYER_WEIGHTS",
    "DecodedLayer",
    "EncodedLayer",
    "code_bits",
    "decode_layer",
    "encode_layer",
    "layer_storage_bits",
]

MAX_LAYER_WEIGHTS = 2**26  # out x fan_in the decoder accepts (64 MiB of dense int8 codes)
MAX_WIDTH = 8


# --- a layer --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncodedLayer:
    """A layer's encoding. data: the bytes (bits padded to a byte); bits: the exact bit count
    before padding; parts: bits of "row_widths", "magnitudes", "positions", "codes", "scales",
    "biases" (summing to `bits`); dense: whether the codes are stored densely."""

    data: bytes
    bits: int
    out_features: int
    fan_in: int
    parts: dict
    dense: bool


@dataclass(frozen=True)
class DecodedLayer:
    """codes: int8 (out, fan_in); row_bits: int64 (out,); row_scale, bias: float32 (out,)."""

    codes: np.ndarray
    row_bits: np.ndarray
    row_scale: np.ndarray
    bias: np.ndarray


def _check_layer(codes, row_bits) -> tuple[np.ndarray, np.ndarray]:
    codes = np.asarray(codes)
    row_bits = np.asarray(row_bits)
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes must be a 2-D integer array, got {codes.dtype} {codes.shape}")
    if row_bits.shape != (codes.shape[0],) or not np.issubdtype(row_bits.dtype, np.integer):
        raise ValueError(f"row_bits must be integers of shape ({codes.shape[0]},)")
    if ((row_bits < 0) | (row_bits > MAX_WIDTH)).any():
        raise ValueError(f"row_bits must lie in 0..{MAX_WIDTH}")
    codes = codes.astype(np.int64)
    row_bits = row_bits.astype(np.int64)
    top = np.where(row_bits >= 2, 2 ** np.maximum(row_bits - 1, 0) - 1, row_bits)
    if (np.abs(codes) > top[:, None]).any():
        raise ValueError("codes lie outside their row's width")
    return codes, row_bits


def _magnitudes(codes: np.ndarray, row_bits: np.ndarray) -> np.ndarray:
    """Per row: c if every kept code of a row of width >= 3 is +-c (and some are kept), else 0."""
    mags = np.abs(codes)
    top = mags.max(axis=1, initial=0)
    big = np.iinfo(np.int64).max
    low = np.where(mags > 0, mags, big).min(axis=1, initial=big)
    return np.where((row_bits >= 3) & (top > 0) & (low == top), top, 0)


def code_bits(row_bits, magnitudes=None) -> np.ndarray:
    """Bits of one kept (nonzero) code in each row: 0 for a pruned row; 1 (the sign) for a row of
    width 1 or 2 or a row whose kept codes are all +-c (magnitudes[m] = c > 0); else the width b
    (the 2^b - 2 nonzero values of -n .. n need b bits)."""
    row_bits = np.asarray(row_bits, dtype=np.int64)
    single = np.zeros_like(row_bits) if magnitudes is None else np.asarray(magnitudes) > 0
    return np.where(row_bits == 0, 0, np.where((row_bits <= 2) | single, 1, row_bits))


def _index_bits(size: int) -> int:
    """Bits of a fixed-width index into `size` >= 1 choices."""
    return math.ceil(math.log2(size))


def _plan(codes: np.ndarray, row_bits: np.ndarray) -> dict:
    """Everything but the floats: the parts' bit counts and the choices made."""
    alphabet = np.unique(row_bits)
    width_bits = 4 + 4 * alphabet.size
    if alphabet.size == 2:
        width_bits += position_bits(row_bits == alphabet[1])
    elif alphabet.size > 2 and alphabet[0] == 0:
        live = row_bits > 0
        width_bits += position_bits(live) + int(live.sum()) * _index_bits(alphabet.size - 1)
    elif alphabet.size > 2:
        width_bits += row_bits.size * _index_bits(alphabet.size)
    live = row_bits > 0
    fan_in = codes.shape[1]
    dense_ok = not (((row_bits == 1)[:, None] & (codes == 0)).any())
    dense_bits = int(row_bits.sum()) * fan_in
    mags = _magnitudes(codes, row_bits)
    wide = row_bits >= 3
    mag_bits = int(wide.sum()) + int(np.where(mags > 0, row_bits - 1, 0).sum())
    kept = codes[live] != 0
    pos_bits = position_bits(kept) if kept.size else 0
    kept_code_bits = int((kept.sum(axis=1) * code_bits(row_bits[live], mags[live])).sum())
    sparse_bits = mag_bits + pos_bits + kept_code_bits
    dense = dense_ok and dense_bits <= sparse_bits
    return {
        "alphabet": alphabet,
        "live": live,
        "dense": dense,
        "magnitudes": mags,
        "parts": {
            "row_widths": width_bits + 1,  # + the dense/sparse bit
            "magnitudes": 0 if dense else mag_bits,
            "positions": 0 if dense else pos_bits,
            "codes": dense_bits if dense else kept_code_bits,
        },
    }


def _scale_bits(row_scale, live: np.ndarray) -> int:
    count = int(live.sum())
    if count == 0:
        return 0
    if row_scale is None:  # not given: one float per live row, the most it can cost
        return 1 + FLOAT_BITS * count
    pattern = np.ascontiguousarray(row_scale, dtype=np.float32).view(np.uint32)[live]
    return 1 + FLOAT_BITS * (1 if (pattern == pattern[0]).all() else count)


def _bias_choice(bias) -> tuple[int, int]:
    """(kind, bits) of the cheapest bias encoding: 0, all +0.0 (or no bias); 1, all equal (one
    float); 2, one float per row; 3, the rows whose bias is not +0.0 as a position set, then one
    float each (pays when most rows' biases are zero, e.g. after `DiscreteNet.without_dead_units`)."""
    if bias is None:
        return 0, 2
    pattern = np.ascontiguousarray(bias, dtype=np.float32).view(np.uint32)
    nonzero = pattern != 0
    if not nonzero.any():
        return 0, 2
    if (pattern == pattern[0]).all():
        return 1, 2 + FLOAT_BITS
    sparse = 2 + position_bits(nonzero) + FLOAT_BITS * int(nonzero.sum())
    dense = 2 + FLOAT_BITS * pattern.size
    return (3, sparse) if sparse < dense else (2, dense)


def _check_floats(name: str, values, out: int) -> np.ndarray | None:
    if values is None:
        return None
    values = np.asarray(values)
    if values.shape != (out,) or not np.issubdtype(values.dtype, np.floating):
        raise ValueError(
            f"{name} must be floats of shape ({out},), got {values.dtype} {values.shape}"
        )
    return values.astype(np.float32)


def layer_storage_bits(codes, row_bits, row_scale=None, bias=None) -> dict:
    """Exact bits `encode_layer` writes for a layer, by part.

    codes: integers (out, fan_in), 0 = pruned; row_bits: (out,) widths 0..8; row_scale: float
    (out,), or None to count one float32 per row of width >= 1 (distinct steps, the most they
    cost); bias: float (out,), or None for a layer without bias. Returns a dict of ints:
    "row_widths" (widths and the dense/sparse bit), "magnitudes" (the +-c rows), "positions",
    "codes", "scales", "biases", "total" (their sum), and "weights" (out x fan_in).
    """
    codes, row_bits = _check_layer(codes, row_bits)
    out = codes.shape[0]
    row_scale = _check_floats("row_scale", row_scale, out)
    bias = _check_floats("bias", bias, out)
    plan = _plan(codes, row_bits)
    parts = dict(plan["parts"])
    parts["scales"] = _scale_bits(row_scale, plan["live"])
    parts["biases"] = _bias_choice(bias)[1]
    parts["total"] = sum(parts.values())
    parts["weights"] = codes.size
    return parts


def encode_layer(codes, row_bits, row_scale, bias=None) -> EncodedLayer:
    """Encode a layer (module docstring). codes: integers (out, fan_in) within their row's
    width (width 1: -1, 0, +1); row_bits: (out,) in 0..8; row_scale: float32 (out,); bias:
    float32 (out,) or None (no bias, stored as zeros). Raises ValueError for inconsistent input."""
    codes, row_bits = _check_layer(codes, row_bits)
    out, fan_in = codes.shape
    if codes.size > MAX_LAYER_WEIGHTS:
        raise ValueError(f"a layer of {codes.size} weights exceeds MAX_LAYER_WEIGHTS")
    row_scale = _check_floats("row_scale", row_scale, out)
    if row_scale is None:
        raise ValueError("row_scale is required")
    bias = _check_floats("bias", bias, out)
    plan = _plan(codes, row_bits)
    live, mags = plan["live"], plan["magnitudes"]
    w = BitWriter()
    alphabet = plan["alphabet"]
    w.uint(alphabet.size - 1, 4)
    w.uints(alphabet, 4)
    if alphabet.size == 2:
        write_positions(w, row_bits == alphabet[1])
    elif alphabet.size > 2 and alphabet[0] == 0:
        write_positions(w, live)
        w.uints(np.searchsorted(alphabet[1:], row_bits[live]), _index_bits(alphabet.size - 1))
    elif alphabet.size > 2:
        w.uints(np.searchsorted(alphabet, row_bits), _index_bits(alphabet.size))
    w.uint(int(plan["dense"]), 1)
    if plan["dense"]:
        widths = np.repeat(row_bits[live], fan_in)
        values = codes[live].reshape(-1)
        w.varuints(np.where(widths == 1, values < 0, values & ((1 << widths) - 1)), widths)
    else:
        wide = np.flatnonzero(row_bits >= 3)
        for m in wide:  # few rows: a loop is clear enough
            w.uint(int(mags[m] > 0), 1)
            if mags[m] > 0:
                w.uint(int(mags[m]), int(row_bits[m]) - 1)
        kept = codes[live] != 0
        if kept.size:
            write_positions(w, kept.reshape(-1))
        per_row = code_bits(row_bits[live], mags[live])
        widths = np.repeat(per_row, kept.sum(axis=1))
        values = codes[live][kept]
        half = np.repeat(2 ** np.maximum(row_bits[live] - 1, 0) - 1, kept.sum(axis=1))
        mapped = np.where(values < 0, values + half, values + half - 1)
        w.varuints(np.where(widths == 1, values < 0, mapped), widths)
    if live.any():
        pattern = row_scale.view(np.uint32)[live]
        shared = bool((pattern == pattern[0]).all())
        w.uint(int(not shared), 1)
        w.float32s(row_scale[live][:1] if shared else row_scale[live])
    kind = _bias_choice(bias)[0]
    w.uint(kind, 2)
    if kind == 3:
        nonzero = bias.view(np.uint32) != 0
        write_positions(w, nonzero)
        w.float32s(bias[nonzero])
    elif kind:
        w.float32s(bias[:1] if kind == 1 else bias)
    parts = dict(plan["parts"])
    parts["scales"] = _scale_bits(row_scale, live)
    parts["biases"] = _bias_choice(bias)[1]
    if w.bits != sum(parts.values()):  # the counts are the format: they must agree
        raise AssertionError(f"wrote {w.bits} bits, counted {sum(parts.values())}")
    return EncodedLayer(w.to_bytes(), w.bits, out, fan_in, parts, plan["dense"])


def decode_layer(data: bytes, out_features: int, fan_in: int) -> DecodedLayer:
    """Decode `encode_layer`'s bytes for a layer of the given shape. Every count and value read
    is checked against the shape and the widths; malformed or truncated data raises ValueError.
    Refuses layers of more than MAX_LAYER_WEIGHTS weights (before allocating anything)."""
    out, fan_in = int(out_features), int(fan_in)
    if out < 1 or fan_in < 1 or out * fan_in > MAX_LAYER_WEIGHTS:
        raise ValueError(
            f"a layer of {out} x {fan_in} weights is outside 1..MAX_LAYER_WEIGHTS "
            f"({MAX_LAYER_WEIGHTS})"
        )
    r = BitReader(bytes(data))
    size = r.uint(4) + 1
    alphabet = r.uints(size, 4).astype(np.int64)
    if size > MAX_WIDTH + 1 or (np.diff(alphabet) <= 0).any() or alphabet.max() > MAX_WIDTH:
        raise ValueError("the row width alphabet is malformed")
    if size == 1:
        row_bits = np.full(out, alphabet[0], dtype=np.int64)
    elif size == 2:
        row_bits = alphabet[read_positions(r, out).astype(np.int64)]
    elif alphabet.size > 2 and alphabet[0] == 0:
        live = read_positions(r, out)
        index = r.uints(int(live.sum()), _index_bits(size - 1))
        if index.size and index.max() >= size - 1:
            raise ValueError("a row width index is out of range")
        row_bits = np.zeros(out, dtype=np.int64)
        row_bits[live] = alphabet[1:][index]
    else:
        index = r.uints(out, _index_bits(size))
        if index.max() >= size:
            raise ValueError("a row width index is out of range")
        row_bits = alphabet[index]
    live = row_bits > 0
    codes = np.zeros((out, fan_in), dtype=np.int8)
    dense = bool(r.uint(1))
    if dense:
        widths = np.repeat(row_bits[live].astype(np.uint8), fan_in)
        values = r.varuints(widths).astype(np.int16)
        widths = widths.astype(np.int16)
        wide = widths >= 2
        values[wide] -= np.where(values[wide] >> (widths[wide] - 1), 1 << widths[wide], 0)
        sign = ~wide
        values[sign] = 1 - 2 * values[sign]  # a sign bit: 0 is +1, 1 is -1
        top = (1 << (widths - 1)) - 1
        if (np.abs(values[wide]) > top[wide]).any():
            raise ValueError("a dense code lies outside its row's width")
        codes[live] = values.reshape(-1, fan_in)
    else:
        mags = np.zeros(out, dtype=np.int64)
        for m in np.flatnonzero(row_bits >= 3):
            if r.uint(1):
                mags[m] = r.uint(int(row_bits[m]) - 1)
                if not 1 <= mags[m] <= 2 ** (int(row_bits[m]) - 1) - 1:
                    raise ValueError("a row's code magnitude lies outside its width")
        live_rows = int(live.sum())
        kept = np.zeros((0, fan_in), dtype=bool)
        if live_rows:
            kept = read_positions(r, live_rows * fan_in).reshape(live_rows, fan_in)
        counts = kept.sum(axis=1)
        row_code_bits = code_bits(row_bits[live], mags[live])
        widths = np.repeat(row_code_bits.astype(np.uint8), counts)
        if (row_code_bits == 1).all():  # sign bits only (ternary, +-c rows): stay in int8
            values = r.varuints(widths).view(np.int8)
            values *= -2
            values += 1
            if (mags[live] > 1).any():
                values *= np.repeat(np.maximum(mags[live], 1).astype(np.int8), counts)
        else:
            values = r.varuints(widths).astype(np.int16)
            half = np.repeat((2 ** np.maximum(row_bits[live] - 1, 0) - 1).astype(np.int16), counts)
            sign = widths == 1
            if (values[~sign] >= 2 * half[~sign]).any():
                raise ValueError("a kept code lies outside its row's width")
            # the 2n nonzero codes -n..-1, 1..n were written as 0..2n-1
            values[~sign] -= half[~sign] - (values[~sign] >= half[~sign])
            mag = np.repeat(np.where(mags[live] > 0, mags[live], 1).astype(np.int16), counts)
            values[sign] = mag[sign] * (1 - 2 * values[sign])
        if live.all():
            codes[kept] = values
        else:
            block = np.zeros((live_rows, fan_in), dtype=np.int8)
            block[kept] = values
            codes[live] = block
    scale = np.zeros(out, dtype=np.float32)
    if live.any():
        shared = not r.uint(1)
        scale[live] = r.float32s(1)[0] if shared else r.float32s(int(live.sum()))
    kind = r.uint(2)
    bias = np.zeros(out, dtype=np.float32)
    if kind == 3:
        nonzero = read_positions(r, out)
        bias[nonzero] = r.float32s(int(nonzero.sum()))
    elif kind:
        bias[:] = r.float32s(1 if kind == 1 else out)
    r.finish()
    return DecodedLayer(codes, row_bits, scale, bias)
