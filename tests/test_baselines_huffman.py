"""Huffman coding (Huffman 1952; Deep Compression Sec. 4): optimal lengths, canonical codes, the
exact payload and table bit counts, and the round trip."""

import doctest
import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bayesq.baselines import huffman
from bayesq.baselines.huffman import (
    LENGTH_FIELD_BITS,
    HuffmanStream,
    canonical_codes,
    huffman_decode,
    huffman_encode,
    huffman_lengths,
)


def test_docstring_examples_run():
    assert doctest.testmod(huffman, raise_on_error=True).attempted >= 4


def test_lengths_of_the_textbook_example():
    # Cormen et al.'s example (a:45 b:13 c:12 d:16 e:9 f:5): merges f+e=14, c+b=25, 14+d=30,
    # 25+30=55, a+55=100, so a has 1 bit, b c d 3 bits, e f 4 bits: 224 bits in all.
    counts = {0: 45, 1: 13, 2: 12, 3: 16, 4: 9, 5: 5}
    lengths = huffman_lengths(counts)
    assert lengths == {0: 1, 1: 3, 2: 3, 3: 3, 4: 4, 5: 4}
    assert sum(counts[s] * lengths[s] for s in counts) == 224


def test_ties_put_leaves_before_merged_nodes():
    # counts 1,1,1,1,2: 0+1 -> node A (2), 2+3 -> node B (2); then leaf 4 (2) ties with A and B
    # and, a leaf, goes first: 4+A, then B+(4+A). Merged-first would give 4 one bit, 0-3 three.
    assert huffman_lengths({0: 1, 1: 1, 2: 1, 3: 1, 4: 2}) == {0: 3, 1: 3, 2: 2, 3: 2, 4: 2}
    # equal leaves merge in increasing symbol order: 7 and 8 first, then 9 with their node
    assert huffman_lengths({9: 1, 8: 1, 7: 1}) == {7: 2, 8: 2, 9: 1}


def test_edge_cases_of_the_lengths():
    assert huffman_lengths({}) == {}
    assert huffman_lengths({5: 0}) == {}
    assert huffman_lengths({5: 3}) == {5: 1}  # one symbol: one bit, never zero
    assert huffman_lengths({5: 3, 6: 0}) == {5: 1}
    assert huffman_lengths({np.int64(2): np.int64(4), 3: 1}) == {2: 1, 3: 1}


@given(st.lists(st.integers(1, 50), min_size=2, max_size=5))
def test_lengths_are_optimal_against_every_prefix_code(counts):
    # a prefix code with these lengths exists iff Kraft's sum 2^-l <= 1; search them all
    lengths = huffman_lengths(dict(enumerate(counts)))
    best = min(
        sum(c * n for c, n in zip(counts, choice, strict=True))
        for choice in itertools.product(range(1, len(counts)), repeat=len(counts))
        if sum(Fraction(1, 2**n) for n in choice) <= 1
    )
    assert sum(c * lengths[i] for i, c in enumerate(counts)) == best


@given(st.lists(st.integers(0, 40), min_size=2, max_size=60))
def test_kraft_equality_with_two_or_more_symbols(values):
    present = set(values)
    lengths = huffman_lengths({s: values.count(s) for s in present})
    if len(present) >= 2:  # a full binary tree: sum 2^-l = 1 exactly
        assert sum(Fraction(1, 2**n) for n in lengths.values()) == 1
    else:
        assert list(lengths.values()) == [1]


def test_canonical_codes_of_a_hand_example():
    # by (length, symbol): 3 -> 0, then 1 -> (0+1)<<1 = 10, 0 -> 110, 2 -> 111
    codes = canonical_codes({0: 3, 1: 2, 2: 3, 3: 1})
    assert codes == {0: (0b110, 3), 1: (0b10, 2), 2: (0b111, 3), 3: (0b0, 1)}
    assert canonical_codes({}) == {}
    assert canonical_codes({4: 1}) == {4: (0, 1)}


@given(st.lists(st.integers(1, 30), min_size=2, max_size=12))
def test_canonical_codes_are_prefix_free_and_keep_the_lengths(counts):
    lengths = huffman_lengths(dict(enumerate(counts)))
    codes = canonical_codes(lengths)
    words = {s: format(c, f"0{n}b") for s, (c, n) in codes.items()}
    assert {s: len(w) for s, w in words.items()} == lengths
    for a, b in itertools.permutations(words.values(), 2):
        assert not b.startswith(a)


def test_canonical_codes_refuse_lengths_beyond_kraft():
    with pytest.raises(ValueError, match="Kraft"):
        canonical_codes({0: 1, 1: 1, 2: 2})
    with pytest.raises(ValueError, match="lengths must be <="):
        canonical_codes({0: 58, 1: 1})
    with pytest.raises(ValueError, match=">= 1"):
        canonical_codes({0: 0})


@given(st.lists(st.integers(0, 300), max_size=200), st.booleans())
def test_round_trip(values, wide):
    symbols = np.array(values, dtype=np.int64 if wide else np.int32)
    stream = huffman_encode(symbols)
    out = huffman_decode(stream)
    assert out.dtype == np.int64 and out.tolist() == values
    assert stream.count == len(values)


@given(st.integers(0, 1000), st.integers(1, 70))
def test_one_distinct_symbol_takes_one_bit_each(symbol, n):
    stream = huffman_encode(np.full(n, symbol))
    assert stream.lengths == ((symbol, 1),) and stream.bits == n
    assert huffman_decode(stream).tolist() == [symbol] * n


def test_empty_input_is_an_empty_stream():
    stream = huffman_encode(np.array([], dtype=np.int64), symbol_bits=4)
    assert (stream.payload, stream.bits, stream.count, stream.lengths) == (b"", 0, 0, ())
    assert stream.table_bits() == 4 + 1  # m = 0 present symbols in 5 bits, nothing else
    out = huffman_decode(stream)
    assert out.dtype == np.int64 and out.shape == (0,)


@given(st.lists(st.integers(0, 15), min_size=1, max_size=200))
def test_payload_bits_are_the_sum_of_count_times_length(values):
    stream = huffman_encode(np.array(values))
    lengths = dict(stream.lengths)
    assert stream.bits == sum(lengths[s] * values.count(s) for s in set(values))
    assert len(stream.payload) == math.ceil(stream.bits / 8)


def test_payload_bits_and_table_of_a_hand_example():
    # counts 0:4 1:2 2:1 3:1 -> lengths 1,2,3,3 -> canonical 0, 10, 110, 111
    stream = huffman_encode(np.array([3, 0, 1, 0, 2, 0, 1, 0]), symbol_bits=2)
    assert dict(stream.lengths) == {0: 1, 1: 2, 2: 3, 3: 3}
    assert stream.bits == 14
    # 111 0 10 0 110 0 10 0, padded with two 0 bits: 11101001 10010000
    assert stream.payload == bytes([0b11101001, 0b10010000])
    # table: m = 4 in 2 + 1 bits, then 4 x (2-bit symbol + 6-bit length field)
    assert stream.table_bits() == 3 + 4 * (2 + LENGTH_FIELD_BITS) == 35
    assert stream.table_bits(8) == 9 + 4 * 14
    assert stream.total_bits == 49 and stream.total_bytes == 7


def test_a_skewed_distribution_takes_fewer_bits_than_a_fixed_width():
    # 8 symbols: a fixed-width code needs log2 8 = 3 bits each. 90% zeros: 0 gets 1 bit, the 7
    # others about 4 (lengths 3,4,4,4,4,4,4), the table 4 + 8 * 9 bits: about 0.9 + 0.39 + 0.04
    # = 1.33 bits each; the zero share's sampling sd (0.007) moves that by ~0.02.
    rng = np.random.default_rng(0)
    symbols = np.where(rng.random(2000) < 0.9, 0, rng.integers(1, 8, 2000))
    stream = huffman_encode(symbols, symbol_bits=3)
    assert len(set(symbols.tolist())) == 8
    assert stream.total_bits / symbols.size < 1.45 < math.log2(8)
    assert huffman_decode(stream).tolist() == symbols.tolist()


def test_long_codes_decode():
    # Fibonacci counts make the deepest tree: 22 symbols, lengths up to 21 bits
    fib = [1, 1]
    while len(fib) < 22:
        fib.append(fib[-1] + fib[-2])
    symbols = np.repeat(np.arange(22), fib)
    np.random.default_rng(1).shuffle(symbols)
    stream = huffman_encode(symbols)
    assert max(n for _, n in stream.lengths) == 21
    assert huffman_decode(stream).tolist() == symbols.tolist()


@pytest.mark.parametrize(
    "bad, error, match",
    [
        ([1, 2], TypeError, "numpy array"),
        (np.array([0.5, 1.0]), TypeError, "integers"),
        (np.array([True, False]), TypeError, "integers"),
        (np.zeros((2, 2), dtype=np.int64), ValueError, "1-D"),
        (np.array([0, -1]), ValueError, ">= 0"),
        (np.array([2**32]), ValueError, "< 2"),
    ],
)
def test_encode_refuses_bad_symbols(bad, error, match):
    with pytest.raises(error, match=match):
        huffman_encode(bad)


def test_bad_widths_and_counts():
    with pytest.raises(ValueError, match="does not fit in 2 bits"):
        huffman_encode(np.array([4]), symbol_bits=2)
    with pytest.raises(ValueError, match="symbol_bits"):
        huffman_encode(np.array([1]), symbol_bits=0)
    with pytest.raises(ValueError, match="does not fit"):
        huffman_encode(np.array([9, 1])).table_bits(3)
    with pytest.raises(TypeError, match="mapping"):
        huffman_lengths([3, 4])
    with pytest.raises(ValueError, match="count of symbol 1"):
        huffman_lengths({1: -2})
    with pytest.raises(TypeError, match="bool"):
        huffman_lengths({1: True})
    with pytest.raises(TypeError, match="integer"):
        huffman_lengths({1: 2.0})


def test_decode_refuses_a_stream_that_does_not_parse():
    good = huffman_encode(np.array([0, 0, 1, 2]))  # codes 0, 10, 11: bits 0 0 10 11
    with pytest.raises(ValueError, match="does not parse"):
        huffman_decode(HuffmanStream(good.payload, good.bits, 5, good.lengths, 2))
    with pytest.raises(ValueError, match="does not parse"):
        huffman_decode(HuffmanStream(good.payload, good.bits, 3, good.lengths, 2))
    with pytest.raises(ValueError, match="payload"):
        huffman_decode(HuffmanStream(good.payload + b"\0", good.bits, 4, good.lengths, 2))
    # one symbol, code "0": a 1 bit is no code
    with pytest.raises(ValueError, match="does not parse"):
        huffman_decode(HuffmanStream(bytes([0b01000000]), 2, 2, ((7, 1),), 3))
    with pytest.raises(ValueError, match="code table"):
        huffman_decode(HuffmanStream(b"\0", 1, 1, (), 1))
    with pytest.raises(TypeError, match="HuffmanStream"):
        huffman_decode(b"\0")
