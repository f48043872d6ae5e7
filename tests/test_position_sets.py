"""bayesq.position_sets: every encoding of a position set round-trips and costs what is counted."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bayesq.bitstream import BitReader, BitWriter
from bayesq.position_sets import position_bits, position_options, read_positions, write_positions


def _round_trip_positions(kept: np.ndarray, method=None) -> int:
    """Write a mask with the given method (or the cheapest), read it back; returns the bits."""
    w = BitWriter()
    if method is None:
        write_positions(w, kept)
    else:  # force one method
        options = [o for o in position_options(kept) if o[0] == method[0] and o[1] == method[1]]
        write_positions(w, kept, options[0])
        assert w.bits == options[0][2]
    r = BitReader(w.to_bytes())
    back = read_positions(r, kept.size)
    r.finish()
    assert np.array_equal(back, kept)
    return w.bits


masks = st.integers(1, 3000).flatmap(
    lambda n: st.tuples(st.just(n), st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))
)


def _mask(n: int, density: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(n) < density


@given(masks)
def test_every_position_encoding_round_trips(spec):
    kept = _mask(*spec)
    for method, params, _ in position_options(kept):
        _round_trip_positions(kept, (method, params))
    assert _round_trip_positions(kept) == position_bits(kept)


def test_relative_index_counts_fillers_as_deep_compression_does():
    """Positions 1, 4 and 20 in 3-bit entries: gaps 1, 2, 15; the gap of 15 needs two fillers
    of 7 before its entry of 1, so 5 entries of 3 bits."""
    kept = np.zeros(24, dtype=bool)
    kept[[1, 4, 20]] = True
    bits = {params: b for method, params, b in position_options(kept) if method == 1}
    head = 2 + 1 + 5 + 3 + 5  # selector, inverted, gamma(4), width, gamma(6)
    assert bits[(False, 3)] == head + 5 * 3
    _round_trip_positions(kept, (1, (False, 3)))


@pytest.mark.parametrize("density", [0.001, 0.01, 0.05, 0.3])
def test_rice_codes_a_random_mask_near_its_entropy(density):
    n = 200_000
    kept = _mask(n, density, 1)
    p = kept.mean()
    entropy = n * -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    bits = position_bits(kept)
    assert bits < min(n, 1.06 * entropy + 64)
    # and the complement (a mostly kept mask) costs the same
    assert position_bits(~kept) == bits
