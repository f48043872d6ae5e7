"""bayesq.bitstream: every code round-trips at every width and at the edges of its range, the
counted bits are the written bits, and the reader refuses what is not there."""

import math

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bayesq.bitstream import (
    BitReader,
    BitWriter,
    gamma_bits,
    index_dtype,
    rice_bits,
    uint_dtype,
)


def _reader(w: BitWriter) -> BitReader:
    data = w.to_bytes()
    assert len(data) == math.ceil(w.bits / 8)  # padded to a byte, no more
    return BitReader(data)


@st.composite
def uints_of_a_width(draw):
    width = draw(st.integers(0, 64))
    top = (1 << width) - 1
    edges = st.sampled_from([0, top, top >> 1, (top >> 1) + 1 if width else 0])
    values = draw(st.lists(st.one_of(edges, st.integers(0, top)), max_size=20))
    return width, values


@given(uints_of_a_width())
@example((64, [0, 2**64 - 1, 2**63]))
@example((1, [0, 1, 1, 0]))
def test_uints_round_trip_at_every_width(spec):
    width, values = spec
    w = BitWriter()
    w.uints(np.array(values, dtype=np.uint64), width)
    w.uint(1, 1)  # a marker after them: the values took exactly count x width bits
    assert w.bits == len(values) * width + 1
    r = _reader(w)
    back = r.uints(len(values), width)
    assert back.dtype == (uint_dtype(width) if width else np.uint8)
    assert back.tolist() == values
    assert r.uint(1) == 1
    r.finish()


@given(
    st.lists(
        st.integers(0, 8).flatmap(lambda b: st.tuples(st.just(b), st.integers(0, (1 << b) - 1)))
    )
)
def test_varuints_round_trip_each_in_its_own_width(pairs):
    widths = np.array([b for b, _ in pairs], dtype=np.int64)
    values = np.array([v for _, v in pairs], dtype=np.int64)
    w = BitWriter()
    w.varuints(values, widths)
    assert w.bits == int(widths.sum())
    r = _reader(w)
    back = r.varuints(widths)
    assert back.dtype == np.uint8 and back.tolist() == values.tolist()
    r.finish()


@pytest.mark.parametrize("width", range(9))
def test_varuints_of_one_width_take_the_fixed_width_path(width):
    values = np.array([0, (1 << width) - 1, ((1 << width) - 1) >> 1])
    w = BitWriter()
    w.varuints(values, np.full(3, width))
    r = _reader(w)
    assert r.varuints(np.full(3, width)).tolist() == values.tolist()


@given(st.lists(st.integers(1, 2**40), min_size=1, max_size=10))
@example([1, 2, 3, 2**40])
def test_gamma_codes_round_trip_in_their_counted_bits(xs):
    w = BitWriter()
    for x in xs:
        w.gamma(x)
    assert w.bits == sum(gamma_bits(x) for x in xs)
    r = _reader(w)
    assert [r.gamma(2**40) for _ in xs] == xs
    r.finish()


def test_gamma_bits_on_hand_counted_values_and_the_limit():
    assert [gamma_bits(x) for x in (1, 2, 3, 4, 7, 8)] == [1, 3, 3, 5, 5, 7]
    with pytest.raises(ValueError, match=">= 1"):
        gamma_bits(0)
    w = BitWriter()
    w.gamma(9)
    with pytest.raises(ValueError, match="limit 8"):
        _reader(w).gamma(8)
    w = BitWriter()
    w.bits_array(np.zeros(40, np.uint8))  # a run of zeros: refused before it ends
    with pytest.raises(ValueError, match="limit"):
        _reader(w).gamma(1000)


@given(st.lists(st.integers(0, 5000), max_size=30), st.integers(0, 14))
@example([0, 0, 0], 0)
@example([4095, 4096], 12)
def test_rice_codes_round_trip_in_their_counted_bits(values, k):
    w = BitWriter()
    w.rice(values, k)
    w.uint(1, 1)
    assert w.bits == rice_bits(values, k) + 1
    r = _reader(w)
    back = r.rice(len(values), k, 5000)
    assert back.dtype == index_dtype(2 * 5000 + 2) and back.tolist() == values
    assert r.uint(1) == 1
    r.finish()


def test_rice_bits_on_hand_counted_values_and_the_limit():
    # k = 2: 9 = 2 * 4 + 1 -> "110" + "01"; 0 -> "0" + "00"
    assert rice_bits([9, 0], 2) == 5 + 3
    w = BitWriter()
    w.rice([9, 0], 2)
    assert np.unpackbits(np.frombuffer(w.to_bytes(), np.uint8))[:8].tolist() == [
        1, 1, 0, 0, 0, 1, 0, 0
    ]  # fmt: skip
    with pytest.raises(ValueError, match="limit 8"):
        _reader(w).rice(2, 2, 8)  # 9 > 8, though its quotient fits
    with pytest.raises(ValueError, match="limit 7"):
        _reader(w).rice(2, 2, 7)  # the quotient 2 > 7 >> 2
    with pytest.raises(ValueError, match=">= 0"):
        rice_bits([-1], 0)


def test_float32s_keep_every_bit_pattern():
    values = np.array([0.0, -0.0, 1.5, -np.inf, np.inf, np.nan, 1e-45, 3.4e38], np.float32)
    w = BitWriter()
    w.float32s(values)
    assert w.bits == 32 * len(values)
    back = _reader(w).float32s(len(values))
    assert back.view(np.uint32).tolist() == values.view(np.uint32).tolist()


@pytest.mark.parametrize(
    "read",
    [
        lambda r: r.uints(4, 4),
        lambda r: r.uint(17),
        lambda r: r.bits_array(17),
        lambda r: r.varuints(np.array([8, 8, 1])),
        lambda r: r.varuints(np.array([3, 7, 7])),
        lambda r: r.zeros(17),
        lambda r: (r.bits_array(7), r.gamma(2**20)),  # eight 0s, then nothing
        lambda r: r.rice(9, 1, 100),  # only eight 0s end a unary quotient
        lambda r: r.float32s(1),
    ],
)
def test_reading_past_the_end_raises(read):
    """15 bits left (seven 1s, eight 0s), each read asks for more: every read checks first."""
    r = BitReader(b"\xff\x00")
    r.bits_array(1)
    with pytest.raises(ValueError, match="truncated|limit"):
        read(r)


def test_an_empty_stream_and_trailing_data():
    w = BitWriter()
    assert w.to_bytes() == b"" and w.bits == 0
    BitReader(b"").finish()
    with pytest.raises(ValueError, match="truncated"):
        BitReader(b"\x00").uint(9)
    with pytest.raises(ValueError, match="trailing"):
        BitReader(b"\x00").finish()  # a whole byte left over is data, not padding
    w = BitWriter()
    w.uint(5, 3)
    r = BitReader(w.to_bytes() + b"\x00")
    r.uint(3)
    with pytest.raises(ValueError, match="trailing"):
        r.finish()
    r = BitReader(b"\x01")  # a 1 in what should be padding
    r.uint(3)
    with pytest.raises(ValueError, match="trailing"):
        r.finish()


def test_zeros_finds_the_next_zero_bits_across_chunks():
    bits = np.ones(3 * 2**20, np.uint8)
    bits[[5, 2**20 + 7, 3 * 2**20 - 1]] = 0
    w = BitWriter()
    w.bits_array(bits)
    r = _reader(w)
    assert r.zeros(3).tolist() == [5, 2**20 + 7, 3 * 2**20 - 1]
    assert r.remaining == 0


def test_the_writer_refuses_what_does_not_fit():
    w = BitWriter()
    with pytest.raises(ValueError, match="0 .. 2\\^3 - 1"):
        w.uints([8], 3)
    with pytest.raises(ValueError, match="0 .. 2\\^0 - 1"):
        w.uints([1], 0)
    with pytest.raises(ValueError, match="2\\^8 - 1"):
        w.uints([-1], 8)
    with pytest.raises(ValueError, match="width"):
        w.uints([0], 65)
    with pytest.raises(TypeError, match="integers"):
        w.uints([0.5], 8)
    with pytest.raises(ValueError, match="fit in its width"):
        w.varuints([4], [2])
    with pytest.raises(ValueError, match="widths"):
        w.varuints([0], [9])
    with pytest.raises(ValueError, match="values but"):
        w.varuints([0, 1], [1])
    with pytest.raises(ValueError, match="0 or 1"):
        w.bits_array([0, 2])
    with pytest.raises(ValueError, match=">= 1"):
        w.gamma(0)
    with pytest.raises(ValueError, match=">= 0"):
        w.rice([3, -1], 2)
    with pytest.raises(ValueError, match="Rice parameter"):
        w.rice([3], 64)
    assert w.bits == 0 and w.to_bytes() == b""  # nothing half-written


def test_dtypes_are_the_smallest_that_hold_the_values():
    assert [uint_dtype(b) for b in (1, 8, 9, 16, 17, 32, 33, 64)] == [
        np.uint8, np.uint8, np.uint16, np.uint16, np.uint32, np.uint32, np.uint64, np.uint64
    ]  # fmt: skip
    with pytest.raises(ValueError, match="0..64"):
        uint_dtype(65)
    assert index_dtype(2**31 - 1) == np.int32 and index_dtype(2**31) == np.int64
