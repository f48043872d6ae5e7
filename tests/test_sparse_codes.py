"""bayesq.sparse_codes: every encoding round-trips, and the counted bits are the written bits."""

import math
import textwrap

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bayesq.position_sets import position_bits
from bayesq.sparse_codes import decode_layer, encode_layer, layer_storage_bits
from tests.common import run_limited


def _layer(seed: int, out: int, fan_in: int, density: float, widths=(0, 2, 3, 5, 8)):
    rng = np.random.default_rng(seed)
    row_bits = rng.choice(widths, size=out)
    top = np.where(row_bits >= 2, 2 ** np.maximum(row_bits - 1, 0) - 1, row_bits)
    codes = rng.integers(-top[:, None], top[:, None] + 1, size=(out, fan_in))
    codes *= rng.random((out, fan_in)) < density
    return codes.astype(np.int8), row_bits.astype(np.int64)


layers = st.tuples(
    st.integers(0, 2**32 - 1),
    st.integers(1, 40),
    st.integers(1, 300),
    st.floats(0.0, 1.0),
    st.sampled_from([(0, 2), (2,), (0, 1), (1,), (0, 2, 3, 5, 8), (4, 6), (0, 3), (3, 4, 6)]),
    st.sampled_from(["shared", "distinct"]),
    st.sampled_from(["none", "zero", "shared", "distinct", "sparse"]),
)


@given(layers)
def test_layers_round_trip_and_cost_what_is_counted(spec):
    seed, out, fan_in, density, widths, scale_kind, bias_kind = spec
    codes, row_bits = _layer(seed, out, fan_in, density, widths)
    if 1 in widths:  # a {-1, +1} row: every weight kept
        ones = row_bits == 1
        codes[ones] = np.where(
            np.random.default_rng(seed).random((int(ones.sum()), fan_in)) < 0.5, -1, 1
        )
    rng = np.random.default_rng(seed + 1)
    scale = (
        np.full(out, 0.25, np.float32)
        if scale_kind == "shared"
        else rng.random(out).astype(np.float32)
    )
    bias = {
        "none": None,
        "zero": np.zeros(out, np.float32),
        "shared": np.full(out, -1.5, np.float32),
        "distinct": rng.standard_normal(out).astype(np.float32),
        "sparse": (rng.standard_normal(out) * (rng.random(out) < 0.1)).astype(np.float32),
    }[bias_kind]
    encoded = encode_layer(codes, row_bits, scale, bias)
    counted = layer_storage_bits(codes, row_bits, scale, bias)
    assert encoded.bits == counted["total"]
    assert len(encoded.data) == -(-counted["total"] // 8)
    back = decode_layer(encoded.data, out, fan_in)
    assert np.array_equal(back.codes, codes)
    assert np.array_equal(back.row_bits, row_bits)
    live = row_bits > 0
    assert np.array_equal(back.row_scale[live], scale[live])
    assert np.array_equal(back.bias, np.zeros(out, np.float32) if bias is None else bias)


def test_single_magnitude_rows_cost_one_sign_bit_per_kept_weight():
    codes = np.zeros((2, 1000), dtype=np.int8)
    codes[0, ::10] = 3  # a 3-bit row whose kept codes are all +-3
    codes[0, 5::20] = -3
    codes[1, ::10] = np.tile([1, -2, 3, -1, 2], 20)  # a 3-bit row with several magnitudes
    parts = layer_storage_bits(codes, np.array([3, 3]), np.ones(2, np.float32))
    assert parts["codes"] == 150 * 1 + 100 * 3
    assert parts["magnitudes"] == 2 + 2  # one flag per row, c = 3 in 2 bits
    back = decode_layer(encode_layer(codes, np.array([3, 3]), np.ones(2, np.float32)).data, 2, 1000)
    assert np.array_equal(back.codes, codes)


def test_a_very_sparse_layer_costs_little_more_than_its_kept_codes():
    """99.5 % pruned ternary: positions near the mask entropy, one sign bit per kept weight."""
    codes, row_bits = _layer(3, 300, 784, 0.005, widths=(2,))
    parts = layer_storage_bits(codes, row_bits, np.full(300, 0.1, np.float32))
    kept = int((codes != 0).sum())
    p = kept / codes.size
    entropy = codes.size * -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    assert parts["codes"] == kept
    assert parts["positions"] < 1.06 * entropy + 64
    assert parts["total"] < parts["positions"] + kept + 200


def test_a_dense_wide_layer_is_stored_densely():
    codes, row_bits = _layer(4, 20, 100, 1.0, widths=(8,))
    encoded = encode_layer(codes, row_bits, np.ones(20, np.float32))
    assert encoded.dense
    assert encoded.parts["codes"] == 20 * 100 * 8


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="outside their row's width"):
        layer_storage_bits(np.array([[2, 0]]), np.array([2]))
    with pytest.raises(ValueError, match="row_bits"):
        layer_storage_bits(np.zeros((2, 3), int), np.array([9, 0]))
    with pytest.raises(TypeError, match="bool"):
        position_bits(np.array([1, 0]))
    with pytest.raises(ValueError, match="MAX_LAYER_WEIGHTS"):
        decode_layer(b"", 2**20, 2**20)


@given(st.binary(max_size=64), st.integers(1, 20), st.integers(1, 50))
def test_garbage_bytes_give_value_errors_or_a_valid_layer(data, out, fan_in):
    try:
        back = decode_layer(data, out, fan_in)
    except ValueError:
        return
    again = encode_layer(back.codes, back.row_bits, back.row_scale, back.bias)
    assert np.array_equal(decode_layer(again.data, out, fan_in).codes, back.codes)


def test_truncated_layers_are_refused():
    codes, row_bits = _layer(5, 30, 200, 0.1)
    data = encode_layer(codes, row_bits, np.ones(30, np.float32)).data
    for cut in (1, len(data) // 2, len(data) - 1):
        with pytest.raises(ValueError):
            decode_layer(data[:cut], 30, 200)
    with pytest.raises(ValueError, match="trailing"):
        decode_layer(data + b"\x00", 30, 200)


def test_mostly_zero_biases_cost_their_positions_and_the_nonzero_ones():
    codes = np.zeros((500, 10), dtype=np.int8)
    bias = np.zeros(500, np.float32)
    bias[[3, 250, 499]] = [0.5, -1.0, 2.0]
    parts = layer_storage_bits(codes, np.zeros(500, np.int64), None, bias)
    assert parts["biases"] == 2 + position_bits(bias != 0) + 3 * 32 < 500 * 32
    back = decode_layer(
        encode_layer(codes, np.zeros(500, np.int64), np.ones(500, np.float32), bias).data, 500, 10
    )
    assert np.array_equal(back.bias, bias)


def test_row_widths_of_a_sparse_layer_cost_its_live_rows():
    """512 rows, 31 of them kept at widths 2, 3 or 5: the live rows as a position set, then
    2 bits (an index into 3 widths) per live row, not 2 bits for each of the 512 rows."""
    row_bits = np.zeros(512, np.int64)
    row_bits[::17] = np.tile([2, 3, 5], 11)[:31]
    codes = np.zeros((512, 8), np.int8)
    live = row_bits > 0
    parts = layer_storage_bits(codes, row_bits)
    assert parts["row_widths"] == 4 + 4 * 4 + position_bits(live) + 2 * int(live.sum()) + 1
    back = decode_layer(encode_layer(codes, row_bits, np.ones(512, np.float32)).data, 512, 8)
    assert np.array_equal(back.row_bits, row_bits)


@pytest.mark.parametrize("width", [1, 2, 3, 7, 8])
def test_dense_layers_of_every_width_round_trip(width):
    codes, row_bits = _layer(7, 12, 64, 1.0, widths=(width,))
    if width == 1:
        codes = np.where(np.random.default_rng(7).random((12, 64)) < 0.5, -1, 1).astype(np.int8)
    top = 2 ** max(width - 1, 0) - 1 if width > 1 else 1
    codes[0, :2] = [-top, top]  # the extremes of the range
    encoded = encode_layer(codes, row_bits, np.ones(12, np.float32))
    assert encoded.dense == (width != 2)  # ternary: a mask and a sign bit beat 2 bits
    assert np.array_equal(decode_layer(encoded.data, 12, 64).codes, codes)


def test_a_small_hostile_layer_decodes_in_little_memory():
    """8 MB of relative-index fillers claiming a 2^26-weight layer: decoded within a 1 GiB
    address space (int64 working arrays would need about 2 GB), and a 2^26-weight layer that
    keeps every weight (Rice-coded, 16 MB) as well."""
    code = textwrap.dedent(
        """
        import numpy as np
        from bayesq.bitstream import BitWriter
        from bayesq.sparse_codes import decode_layer
        n = 2**26
        for method in ("relative", "rice"):
            w = BitWriter()
            w.uint(0, 4); w.uint(2, 4); w.uint(0, 1)  # every row 2 bits wide, sparse codes
            if method == "relative":  # n - 1 one-bit fillers, then one kept weight
                w.uint(1, 2); w.uint(0, 1); w.gamma(2); w.uint(0, 3); w.gamma(n + 1)
                w.bits_array(np.ones(n - 1, np.uint8)); w.uint(0, 1); w.uint(0, 1)
            else:  # every weight kept: n gaps of 0, then n sign bits
                w.uint(2, 2); w.uint(0, 1); w.gamma(n + 1); w.uint(0, 5)
                w.bits_array(np.zeros(2 * n, np.uint8))
            w.uint(0, 1); w.float32s(np.ones(1)); w.uint(0, 2)
            data = w.to_bytes()
            del w
            layer = decode_layer(data, 8192, 8192)
            print(method, int((layer.codes != 0).sum()))
        """
    )
    result = run_limited("import sys; sys.modules['torch'] = None\n" + code, limit_gib=1)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["relative", "1", "rice", str(2**26)]
