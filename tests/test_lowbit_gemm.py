"""The ternary x 8-bit GEMM (AVX2, VNNI, AMX): exact against numpy's int64 matmul on every path this CPU
has."""

import copy
import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bayesq import _kernels, kernels, lowbit_gemm
from bayesq.lowbit_gemm import pack_ternary, ternary_isa_for, ternary_isas, ternary_matmul_int

ISAS = ternary_isas()
# K across the 64-byte vector and the 256-weight block boundaries, and one of several blocks
K_SIZES = [1, 3, 63, 64, 65, 127, 128, 129, 255, 256, 257, 4100]


def test_this_machine_tests_every_path():
    assert ISAS[0] == "portable" and set(ISAS) <= {
        "portable",
        "avx2",
        "avxvnni",
        "avx512vnni",
        "avx512vnni_gfni",
        "amx",
    }
    assert _kernels.ternary_default_isa() == ISAS[-1]


def test_isa_none_takes_the_best_path_for_the_batch():
    # AMX from 5 activation rows on (the measured crossover), the best VNNI path below
    assert ternary_isa_for(1024) == ISAS[-1]
    below = ternary_isa_for(4)
    assert ternary_isa_for(1) == below
    if "amx" in ISAS:
        assert ternary_isa_for(5) == "amx" and below == ISAS[-2]
    else:
        assert ternary_isa_for(5) == below == ISAS[-1]
    for bad in (0, -1, 1.0, True, "16"):
        with pytest.raises(ValueError, match="m must be"):
            ternary_isa_for(bad)


def ternary(rng, shape, sparsity):
    """Codes in {-1, 1} with a fraction `sparsity` of them set to 0."""
    w = (2 * rng.integers(0, 2, shape) - 1).astype(np.int8)
    w[rng.random(shape) < sparsity] = 0
    return w


def activations(rng, shape, mode):
    if mode == "unsigned":
        return rng.integers(0, 256, shape).astype(np.uint8)
    return rng.integers(-128, 128, shape).astype(np.int8)


def reference(x, w):
    return x.astype(np.int64) @ w.astype(np.int64).T


@pytest.mark.parametrize("isa", ISAS)
@given(
    m=st.integers(1, 70),
    k=st.sampled_from(K_SIZES),
    n=st.integers(1, 40),
    mode=st.sampled_from(["unsigned", "signed"]),
    sparsity=st.floats(0.0, 0.99),
    threads=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_matmul_equals_int64_matmul(isa, m, k, n, mode, sparsity, threads, seed):
    rng = np.random.default_rng(seed)
    w = ternary(rng, (n, k), sparsity)
    x = activations(rng, (m, k), mode)
    y = ternary_matmul_int(x, pack_ternary(w), mode, isa=isa, threads=threads)
    assert y.dtype == np.int32 and y.shape == (m, n)
    np.testing.assert_array_equal(y, reference(x, w))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2])
def test_shapes_that_split_across_threads(isa, threads):
    # rows enough for every thread to get weight-row tiles (batch 1) and activation rows (batch 9)
    rng = np.random.default_rng(7)
    w = ternary(rng, (75, 1000), 0.5)
    packed = pack_ternary(w)
    for m in (1, 9):
        for mode in ("unsigned", "signed"):
            x = activations(rng, (m, 1000), mode)
            y = ternary_matmul_int(x, packed, mode, isa=isa, threads=threads)
            np.testing.assert_array_equal(y, reference(x, w))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_shapes_across_tiles_panels_and_k_chunks(isa, threads):
    # M, N not multiples of 16 (AMX tile edges), N over several 256-row weight panels, K = 4100
    # over several K chunks of both AMX schemes and not a multiple of 64
    rng = np.random.default_rng(11)
    # (M >= 512 takes the AMX path's large-batch scheme, fewer rows its small-batch one)
    for m, n, k in [
        (50, 300, 4100),
        (33, 129, 65),
        (16, 17, 4100),
        (97, 20, 700),
        (530, 40, 4100),
        (520, 300, 300),
    ]:
        w = ternary(rng, (n, k), 0.3)
        packed = pack_ternary(w)
        for mode in ("unsigned", "signed"):
            x = activations(rng, (m, k), mode)
            y = ternary_matmul_int(x, packed, mode, isa=isa, threads=threads)
            np.testing.assert_array_equal(y, reference(x, w))
            if isa == ISAS[-1]:
                none = ternary_matmul_int(x, packed, mode, threads=threads)
                np.testing.assert_array_equal(none, y)


@pytest.mark.parametrize("isa", ISAS)
def test_extreme_values(isa):
    k = 20000 if isa == "portable" else 100_000
    for wv in (1, -1):
        w = np.full((3, k), wv, dtype=np.int8)
        packed = pack_ternary(w)
        x = np.full((2, k), 255, dtype=np.uint8)
        y = ternary_matmul_int(x, packed, "unsigned", isa=isa)
        np.testing.assert_array_equal(y, np.full((2, 3), 255 * k * wv))
        for xv in (-128, 127):
            x = np.full((2, k), xv, dtype=np.int8)
            y = ternary_matmul_int(x, packed, "signed", isa=isa)
            np.testing.assert_array_equal(y, np.full((2, 3), xv * k * wv))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("k", [1023, 1024, 1025, 2049, 33_000])
def test_int16_accumulation_boundary(isa, k):
    # The avx2 path adds vpmaddubsw's int16 pair sums in int16 for 32 vectors (4 blocks, 1024
    # weights) before widening: with u = 255 and code 2 (w = +1) every lane reaches exactly
    # 32 * 1020 = 32640, the most it may. K around and past one such run, not a multiple of
    # 256; M and N not multiples of any register tile; "signed" reaches u = 255 with x = 127.
    m, n = 7, 11
    for wv in (1, -1):
        w = np.full((n, k), wv, dtype=np.int8)
        w[n - 1, ::2] = -wv  # one row of mixed signs
        packed = pack_ternary(w)
        cases = [("unsigned", np.full((m, k), 255, dtype=np.uint8))]
        for xv in (127, -128):
            cases.append(("signed", np.full((m, k), xv, dtype=np.int8)))
        rng = np.random.default_rng(k)
        mixed = np.full((m, k), 255, dtype=np.uint8)
        mixed[rng.random((m, k)) < 0.01] = 0
        cases.append(("unsigned", mixed))
        for mode, x in cases:
            y = ternary_matmul_int(x, packed, mode, isa=isa, threads=2)
            np.testing.assert_array_equal(y, reference(x, w))


def test_largest_k_fits_int32():
    k = lowbit_gemm.MAX_K
    w = np.ones((1, k), dtype=np.int8)
    x = np.full((1, k), 255, dtype=np.uint8)
    y = ternary_matmul_int(x, pack_ternary(w), "unsigned")
    assert int(y[0, 0]) == 255 * k


def test_pack_round_trip_and_frozen():
    rng = np.random.default_rng(3)
    w = ternary(rng, (5, 300), 0.3)
    packed = pack_ternary(w)
    assert packed.shape == (5, 300)
    assert packed.packed.shape == (8 * 512 // 4,)  # one group of 8 rows, K padded to 512
    np.testing.assert_array_equal(packed.unpack(), w)
    np.testing.assert_array_equal(packed.row_sums, w.sum(axis=1))
    blocks = packed.packed.reshape(2, 8, 64)  # block, row, byte
    # padding codes are 0: rows 5..7, and positions 300..511 (block 1, in-block 44..255)
    np.testing.assert_array_equal(blocks[:, 5:], 0)
    np.testing.assert_array_equal(blocks[1] >> 2, 0)
    np.testing.assert_array_equal(blocks[1, :, 44:] & 3, 0)
    # block 0 of row 2 holds weights 0..255 of row 2, byte j the weights j, 64 + j, 128 + j, ...
    for q in range(4):
        np.testing.assert_array_equal((blocks[0, 2] >> 2 * q) & 3, w[2, 64 * q : 64 * q + 64] + 1)
    with pytest.raises(AttributeError):
        packed.k = 3
    with pytest.raises(ValueError):
        packed.packed[0, 0] = 1
    with pytest.raises(TypeError):
        lowbit_gemm.TernaryWeights()
    assert copy.deepcopy(packed) is packed
    again = pickle.loads(pickle.dumps(packed))
    np.testing.assert_array_equal(again.packed, packed.packed)


def test_bad_input_refused():
    w = np.zeros((4, 10), dtype=np.int8)
    packed = pack_ternary(w)
    x = np.zeros((2, 10), dtype=np.uint8)
    bad_packs = [
        (w.astype(np.int16), "int8"),
        (w.tolist(), "numpy array"),
        (np.zeros(10, dtype=np.int8), "shape"),
        (np.zeros((0, 10), dtype=np.int8), "shape"),
        (np.zeros((4, 0), dtype=np.int8), "shape"),
        (np.full((4, 10), 2, dtype=np.int8), "-1, 0, 1"),
        (np.full((4, 10), -2, dtype=np.int8), "-1, 0, 1"),
        (np.zeros((10, 4), dtype=np.int8).T, "contiguous"),
    ]
    for codes, message in bad_packs:
        with pytest.raises(ValueError, match=message):
            pack_ternary(codes)
    bad_calls = [
        (dict(x=x.astype(np.int8)), "uint8"),
        (dict(x=x, mode="signed"), "int8"),
        (dict(x=x.astype(np.int32)), "uint8"),
        (dict(x=x.tolist()), "numpy array"),
        (dict(x=np.zeros((2, 11), dtype=np.uint8)), "shape"),
        (dict(x=np.zeros((0, 10), dtype=np.uint8)), "shape"),
        (dict(x=np.zeros(10, dtype=np.uint8)), "shape"),
        (dict(x=np.zeros((10, 2), dtype=np.uint8).T), "contiguous"),
        (dict(weights=w), "TernaryWeights"),
        (dict(mode="pm1"), "mode"),
        (dict(mode=None), "mode"),
        (dict(isa="avx9"), "isa"),
        (dict(isa=3), "isa"),
        (dict(threads=0), "threads"),
        (dict(threads=kernels.MAX_THREADS + 1), "threads"),
        (dict(threads=1.0), "threads"),
    ]
    for change, message in bad_calls:
        args = dict(x=x, weights=packed, mode="unsigned", isa=None, threads=1) | change
        with pytest.raises(ValueError, match=message):
            ternary_matmul_int(**args)
    missing = [
        name
        for name in ("avx2", "avxvnni", "avx512vnni", "avx512vnni_gfni", "amx")
        if name not in ISAS
    ]
    for name in missing:
        with pytest.raises(ValueError, match="not available"):
            ternary_matmul_int(x, packed, isa=name)


def test_native_refuses_mismatched_arrays():
    packed = pack_ternary(np.zeros((4, 10), dtype=np.int8))
    x = np.zeros((2, 10), dtype=np.uint8)
    out = np.empty((2, 4), dtype=np.int32)
    cases = [
        (x, packed.packed, packed.row_sums, 300, out),  # k larger than the packed rows
        (x, packed.packed, packed.row_sums[:3], 10, out),
        (x, packed.packed, packed.row_sums, 10, np.empty((2, 3), dtype=np.int32)),
        (x, packed.packed[:-1].copy(), packed.row_sums, 10, out),
    ]
    for args in cases:
        with pytest.raises(ValueError):
            _kernels.ternary_gemm(args[0], False, *args[1:])
    with pytest.raises(ValueError):
        _kernels.ternary_gemm(x, False, packed.packed, packed.row_sums, 10, out, "sse9", 1)
