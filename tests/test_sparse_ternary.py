"""The sparse ternary x 8-bit GEMM: exact against numpy's int64 matmul on every path this CPU has."""

import copy
import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bayesq import _kernels, kernels, sparse_ternary_gemm
from bayesq.sparse_ternary_gemm import (
    SparseTernaryWeights,
    pack_sparse_ternary,
    prefer_sparse,
    sparse_ternary_isas,
    sparse_ternary_matmul_int,
)

ISAS = sparse_ternary_isas()
# K across the 64-byte vectors, the 255-position blocks and the 256-row panel blocks
K_SIZES = [1, 3, 63, 64, 65, 127, 128, 129, 254, 255, 256, 257, 510, 511, 4100]


def test_this_machine_tests_every_path():
    assert ISAS[0] == "portable" and set(ISAS) <= {"portable", "avx2", "avx512"}
    assert _kernels.sparse_ternary_default_isa() == ISAS[-1]


def ternary(rng, shape, sparsity, zero_rows=0.0):
    """Codes in {-1, 1} with a fraction `sparsity` of them set to 0, and a fraction `zero_rows`
    of the rows all zero."""
    w = (2 * rng.integers(0, 2, shape) - 1).astype(np.int8)
    w[rng.random(shape) < sparsity] = 0
    w[rng.random(shape[0]) < zero_rows] = 0
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
    n=st.integers(1, 140),
    mode=st.sampled_from(["unsigned", "signed"]),
    sparsity=st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0),
    zero_rows=st.sampled_from([0.0, 0.3]),
    threads=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_matmul_equals_int64_matmul(isa, m, k, n, mode, sparsity, zero_rows, threads, seed):
    rng = np.random.default_rng(seed)
    w = ternary(rng, (n, k), sparsity, zero_rows)
    x = activations(rng, (m, k), mode)
    y = sparse_ternary_matmul_int(x, pack_sparse_ternary(w), mode, isa=isa, threads=threads)
    assert y.dtype == np.int32 and y.shape == (m, n)
    np.testing.assert_array_equal(y, reference(x, w))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2])
def test_shapes_that_split_across_threads(isa, threads):
    # groups enough for every thread (n = 200: 4 groups of 64 rows) and too few (n = 40), at
    # batches of the gather form (1, 3, 6: four rows at a time and the rest) and of the panel
    # form (12: one 32-row tile on AVX-512; 100: two 64-row tiles and a part)
    rng = np.random.default_rng(7)
    for n in (200, 40):
        w = ternary(rng, (n, 1000), 0.8)
        packed = pack_sparse_ternary(w)
        for m in (1, 3, 6, 12, 100):
            for mode in ("unsigned", "signed"):
                x = activations(rng, (m, 1000), mode)
                y = sparse_ternary_matmul_int(x, packed, mode, isa=isa, threads=threads)
                np.testing.assert_array_equal(y, reference(x, w))


@pytest.mark.parametrize("isa", ISAS)
def test_very_sparse_gather_forms(isa):
    # 97 % and 99.5 % zeros: the AVX-512 gather form by running sums over each block's stream;
    # with one full row among empty ones a block's stream spans many 32-pair chunks
    rng = np.random.default_rng(9)
    for sparsity in (0.97, 0.995):
        w = ternary(rng, (130, 4100), sparsity)
        w[5] = (2 * rng.integers(0, 2, 4100) - 1).astype(np.int8)
        w[70, :1000] = 1
        packed = pack_sparse_ternary(w)
        for m in (1, 2, 3, 4, 5):
            for mode in ("unsigned", "signed"):
                x = activations(rng, (m, 4100), mode)
                y = sparse_ternary_matmul_int(x, packed, mode, isa=isa, threads=2)
                np.testing.assert_array_equal(y, reference(x, w))


@pytest.mark.parametrize("isa", ISAS)
def test_panel_slabs(isa):
    # at K = 100000 a panel slab is one tile: a batch of 130 runs in three slabs (a buffer
    # freed after the call); at K = 300000 a tile passes 64 MB and the gather form runs
    rng = np.random.default_rng(8)
    for k, m in ((100_000, 130), (300_000, 12)):
        w = ternary(rng, (3, k), 0.9)
        x = activations(rng, (m, k), "signed")
        y = sparse_ternary_matmul_int(x, pack_sparse_ternary(w), "signed", isa=isa, threads=2)
        np.testing.assert_array_equal(y, reference(x, w))


@pytest.mark.parametrize("isa", ISAS)
def test_extreme_values(isa):
    # every weight kept and of one sign: 255 pairs per (row, block), all of one list (the
    # other padded with sentinels), flushed in runs of 128
    k = 20000 if isa == "portable" else 100_000
    for wv in (1, -1):
        w = np.full((3, k), wv, dtype=np.int8)
        packed = pack_sparse_ternary(w)
        for m in (1, 70):
            x = np.full((m, k), 255, dtype=np.uint8)
            y = sparse_ternary_matmul_int(x, packed, "unsigned", isa=isa)
            np.testing.assert_array_equal(y, np.full((m, 3), 255 * k * wv))
            for xv in (-128, 127):
                x = np.full((m, k), xv, dtype=np.int8)
                y = sparse_ternary_matmul_int(x, packed, "signed", isa=isa)
                np.testing.assert_array_equal(y, np.full((m, 3), xv * k * wv))
    # alternating signs: 127 or 128 pairs per (row, block), both lists full
    w = np.tile(np.array([1, -1], dtype=np.int8), (2, k // 2))
    x = np.tile(np.array([255, 0], dtype=np.uint8), (70, k // 2))
    y = sparse_ternary_matmul_int(x, pack_sparse_ternary(w), "unsigned", isa=isa)
    np.testing.assert_array_equal(y, np.full((70, 2), 255 * (k // 2)))


def test_largest_k_fits_int32():
    k = sparse_ternary_gemm.MAX_K
    w = np.ones((1, k), dtype=np.int8)
    x = np.full((1, k), 255, dtype=np.uint8)
    y = sparse_ternary_matmul_int(x, pack_sparse_ternary(w), "unsigned")
    assert int(y[0, 0]) == 255 * k


def test_pack_layout_round_trip_and_frozen():
    rng = np.random.default_rng(3)
    w = ternary(rng, (70, 300), 0.7)
    packed = pack_sparse_ternary(w)
    assert packed.shape == (70, 300)
    assert packed.kept == np.count_nonzero(w)
    np.testing.assert_array_equal(packed.unpack(), w)
    np.testing.assert_array_equal(packed.row_sums, w.sum(axis=1))
    # 2 groups x 2 blocks x 64 rows; L = max(#+1s, #-1s) per (row, block); rows 70.. empty
    counts = packed.counts.reshape(2, 2, 64)
    for n in (0, 69):
        for b, (k0, k1) in enumerate([(0, 255), (255, 300)]):
            part = w[n, k0:k1]
            pairs = max(np.sum(part == 1), np.sum(part == -1))
            assert counts[n // 64, b, n % 64] == pairs
    np.testing.assert_array_equal(counts[1, :, 6:], 0)
    # the stream of row 0, block 0 comes first: its pairs (+1 offset, -1 offset), 255-padded
    pairs = counts[0, 0, 0]
    stream = packed.offsets[: 2 * pairs].reshape(pairs, 2)
    plus, minus = np.flatnonzero(w[0, :255] == 1), np.flatnonzero(w[0, :255] == -1)
    np.testing.assert_array_equal(stream[: plus.size, 0], plus)
    np.testing.assert_array_equal(stream[: minus.size, 1], minus)
    assert (stream[plus.size :, 0] == 255).all() and (stream[minus.size :, 1] == 255).all()
    assert packed.starts[0] == 0 and packed.starts[-1] + 64 == packed.offsets.size
    assert (packed.offsets[packed.starts[-1] :] == 0).all()
    # nbytes counts every array
    assert packed.nbytes == (
        packed.offsets.size + packed.counts.size + 8 * packed.starts.size + 4 * 70
    )
    with pytest.raises(AttributeError):
        packed.k = 3
    with pytest.raises(AttributeError):
        del packed.counts
    for array in (packed.offsets, packed.counts, packed.starts, packed.row_sums):
        with pytest.raises(ValueError):
            array[0] = 1
    with pytest.raises(TypeError):
        SparseTernaryWeights()
    assert copy.copy(packed) is packed and copy.deepcopy(packed) is packed
    again = pickle.loads(pickle.dumps(packed))
    np.testing.assert_array_equal(again.offsets, packed.offsets)
    np.testing.assert_array_equal(again.unpack(), w)


def test_storage_shrinks_with_sparsity():
    rng = np.random.default_rng(4)
    sizes = [pack_sparse_ternary(ternary(rng, (256, 2048), s)).nbytes for s in (0.5, 0.8, 0.95)]
    assert sizes[0] > sizes[1] > sizes[2]
    # at 80 % zeros: about 1.1 bytes per kept weight (pairs padded to the longer list)
    kept = 0.2 * 256 * 2048
    assert kept < sizes[1] < 1.3 * kept
    empty = pack_sparse_ternary(np.zeros((256, 2048), dtype=np.int8))
    assert empty.kept == 0 and empty.offsets.size == 64


def test_bad_input_refused():
    w = np.zeros((4, 10), dtype=np.int8)
    packed = pack_sparse_ternary(w)
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
            pack_sparse_ternary(codes)
    bad_calls = [
        (dict(x=x.astype(np.int8)), "uint8"),
        (dict(x=x, mode="signed"), "int8"),
        (dict(x=x.astype(np.int32)), "uint8"),
        (dict(x=x.tolist()), "numpy array"),
        (dict(x=np.zeros((2, 11), dtype=np.uint8)), "K = 10"),
        (dict(x=np.zeros((0, 10), dtype=np.uint8)), "shape"),
        (dict(x=np.zeros(10, dtype=np.uint8)), "shape"),
        (dict(x=np.zeros((10, 2), dtype=np.uint8).T), "contiguous"),
        (dict(weights=w), "SparseTernaryWeights"),
        (dict(weights=kernels), "SparseTernaryWeights"),
        (dict(mode="pm1"), "mode"),
        (dict(mode=None), "mode"),
        (dict(isa="avx512vnni"), "isa"),
        (dict(isa=3), "isa"),
        (dict(threads=0), "threads"),
        (dict(threads=kernels.MAX_THREADS + 1), "threads"),
        (dict(threads=1.0), "threads"),
    ]
    for change, message in bad_calls:
        args = dict(x=x, weights=packed, mode="unsigned", isa=None, threads=1) | change
        with pytest.raises(ValueError, match=message):
            sparse_ternary_matmul_int(**args)
    for name in (name for name in ("avx2", "avx512") if name not in ISAS):
        with pytest.raises(ValueError, match="not available"):
            sparse_ternary_matmul_int(x, packed, isa=name)


def _native(x, packed, offsets=None, counts=None, starts=None, row_sums=None, k=None, out=None):
    m = x.shape[0]
    _kernels.sparse_ternary_gemm(
        x,
        False,
        packed.offsets if offsets is None else offsets,
        packed.counts if counts is None else counts,
        packed.starts if starts is None else starts,
        packed.row_sums if row_sums is None else row_sums,
        packed.k if k is None else k,
        np.empty((m, packed.rows), dtype=np.int32) if out is None else out,
        None,
        1,
    )


@pytest.mark.parametrize("m", [1, 8])
def test_native_refuses_mismatched_arrays(m):
    rng = np.random.default_rng(5)
    packed = pack_sparse_ternary(ternary(rng, (4, 300), 0.5))
    x = np.zeros((m, 300), dtype=np.uint8)
    _native(x, packed)  # the arrays as packed pass
    too_many = packed.counts.copy()
    too_many[0] = 255  # more pairs than the group's stream holds
    descending = packed.starts.copy()
    descending[0] = 1
    cases = [
        dict(k=600),  # k larger than the counts' blocks
        dict(counts=packed.counts[:-1].copy()),
        dict(counts=too_many),
        dict(starts=descending),
        dict(starts=packed.starts[:1].copy()),
        dict(offsets=packed.offsets[:-1].copy()),  # the pad cut short
        dict(row_sums=packed.row_sums[:3].copy()),
        dict(out=np.empty((m, 3), dtype=np.int32)),
    ]
    for change in cases:
        with pytest.raises(ValueError):
            _native(x, packed, **change)
    with pytest.raises(ValueError):
        _kernels.sparse_ternary_gemm(
            x, False, packed.offsets, packed.counts, packed.starts, packed.row_sums, 300,
            np.empty((m, 4), dtype=np.int32), "sse9", 1,
        )  # fmt: skip


def test_prefer_sparse():
    # as measured (see its docstring): at small batches sparse only when nearly all weights are
    # zero; from 32 on, at the sparsities VNQ leaves
    assert prefer_sparse(0.01, 1) and prefer_sparse(0.02, 4) and prefer_sparse(0.0, 8)
    assert not any(prefer_sparse(f, m) for f in (0.1, 0.2) for m in (1, 2, 4, 8))
    assert prefer_sparse(0.05, 16) and not prefer_sparse(0.2, 16)
    assert prefer_sparse(0.2, 64) and prefer_sparse(0.2, 1024) and prefer_sparse(0.2, 10**6)
    assert not prefer_sparse(0.5, 64) and not prefer_sparse(0.9, 1024)
    # monotone: a sparser layer is never worse off on the sparse kernel
    for m in (1, 2, 4, 16, 64, 1024):
        answers = [prefer_sparse(f, m) for f in np.linspace(0.0, 1.0, 41)]
        assert answers == sorted(answers, reverse=True)
    for bad in (-0.1, 1.5, float("nan"), "0.2"):
        with pytest.raises(ValueError, match="kept_fraction"):
            prefer_sparse(bad, 64)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="m"):
            prefer_sparse(0.2, bad)
