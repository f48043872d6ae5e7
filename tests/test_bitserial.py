"""Bit-plane packing and the bit-serial GEMM: exact against numpy's integer matmul on every path."""

import copy
import dataclasses
import pickle

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bayesq import _kernels, bitserial, kernels

ISAS = bitserial.bitserial_isas()
WORD_SIZES = [1, 3, 31, 32, 33, 63, 64, 65, 128]


def test_this_machine_tests_every_path():
    assert "portable" in ISAS
    features = kernels.cpu_features()
    assert ("avx2" in ISAS) == features["avx2"]
    if features["avx512vpopcntdq"]:
        assert "avx512" in ISAS


def random_codes(rng, rows, k, bits, mode):
    """Codes (rows, k) with row r drawn uniformly from the range of bits[r] planes in `mode`."""
    bits = np.broadcast_to(np.asarray(bits), (rows,))
    codes = np.zeros((rows, k), dtype=np.int64)
    for r, b in enumerate(bits):
        if b == 0:
            continue
        if mode == "unsigned":
            codes[r] = rng.integers(0, 2**b, k)
        elif mode == "signed":
            codes[r] = rng.integers(-(2 ** (b - 1)), 2 ** (b - 1), k)
        elif mode == "ternary":
            codes[r] = rng.integers(-1, 2, k)
        else:
            codes[r] = 2 * rng.integers(0, 2, k) - 1
    return codes.astype(np.uint8 if mode == "unsigned" else np.int8)


def pack_mode(mode):
    return "signed" if mode == "ternary" else mode


def check_product(a, a_bits, a_mode, w, w_bits, w_mode, isa, threads=1):
    pa = bitserial.pack_activations(a, a_bits, a_mode, isa=isa)
    pw = bitserial.pack_weights(w, w_bits, pack_mode(w_mode), isa=isa)
    expected = a.astype(np.int64) @ w.astype(np.int64).T
    got = bitserial.bitserial_matmul_int(pa, pw, isa=isa, threads=threads)
    assert got.dtype == np.int32 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    return pa, pw, expected


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("a_mode", ["unsigned", "signed"])
def test_every_pair_of_widths_is_exact(isa, a_mode):
    rng = np.random.default_rng(1)
    for a_bits in range(1, 9):
        for w_bits in range(1, 9):
            a = random_codes(rng, 5, 97, a_bits, a_mode)
            w = random_codes(rng, 6, 97, w_bits, "signed")
            check_product(a, a_bits, a_mode, w, w_bits, "signed", isa)
            w = random_codes(rng, 6, 97, w_bits, "unsigned")
            check_product(a, a_bits, a_mode, w, w_bits, "unsigned", isa)


@pytest.mark.parametrize("isa", ISAS)
def test_plus_minus_one_and_ternary_forms_are_exact(isa):
    rng = np.random.default_rng(2)
    for k in WORD_SIZES:
        pm1 = random_codes(rng, 4, k, 1, "pm1")
        w_pm1 = random_codes(rng, 7, k, 1, "pm1")
        check_product(pm1, 1, "pm1", w_pm1, 1, "pm1", isa)  # XOR form: k - 2 popcount(a ^ w)
        for a_bits in (1, 2, 8):  # {-1,+1} weights, multi-bit activations: 2 a.b - sum(a)
            a = random_codes(rng, 4, k, a_bits, "unsigned")
            check_product(a, a_bits, "unsigned", w_pm1, 1, "pm1", isa)
        for w_bits in (1, 3, 8):  # {-1,+1} activations, multi-bit weights
            w = random_codes(rng, 7, k, w_bits, "signed")
            check_product(pm1, 1, "pm1", w, w_bits, "signed", isa)
        ternary = random_codes(rng, 7, k, 2, "ternary")
        for a_bits, a_mode in ((1, "pm1"), (4, "unsigned"), (3, "signed")):
            a = random_codes(rng, 4, k, a_bits, a_mode)
            check_product(a, a_bits, a_mode, ternary, 2, "ternary", isa)


@pytest.mark.parametrize("isa", ISAS)
def test_sizes_straddling_word_boundaries(isa):
    rng = np.random.default_rng(3)
    for k in WORD_SIZES:
        for n, m in zip(WORD_SIZES, WORD_SIZES[::-1], strict=True):
            bits = rng.integers(0, 9, m)
            a = random_codes(rng, n, k, 3, "unsigned")
            check_product(
                a, 3, "unsigned", random_codes(rng, m, k, bits, "signed"), bits, "signed", isa
            )


@pytest.mark.parametrize("isa", ISAS)
def test_mixed_widths_with_pruned_rows_and_every_thread_split(isa):
    rng = np.random.default_rng(4)
    # enough weight planes to split the weight rows across threads, and few enough to split the
    # activation rows; all-pruned weights; one activation row
    for n, m, k in ((7, 300, 200), (40, 5, 130), (1, 257, 64), (2, 9, 1)):
        bits = rng.integers(0, 9, m)
        bits[rng.random(m) < 0.3] = 0
        a = random_codes(rng, n, k, 5, "signed")
        w = random_codes(rng, m, k, bits, "signed")
        for threads in (1, 2, 3, kernels.MAX_THREADS):  # MAX_THREADS >= 4 on any machine
            check_product(a, 5, "signed", w, bits, "signed", isa, threads)
        w_pm1 = random_codes(rng, m, k, bits > 0, "pm1")
        check_product(a, 5, "signed", w_pm1, (bits > 0).astype(np.int64), "pm1", isa, 2)
    a = random_codes(rng, 3, 70, 2, "unsigned")
    check_product(a, 2, "unsigned", np.zeros((4, 70), np.int8), 0, "signed", isa, 2)


@pytest.mark.parametrize("isa", ISAS)
def test_blocked_shapes(isa):
    """Shapes that cross the kernels' cache blocks: several weight row blocks, activation row
    blocks and (k > 32768) several k blocks."""
    rng = np.random.default_rng(5)
    bits = rng.integers(1, 4, 300)
    a = random_codes(rng, 200, 1000, 2, "unsigned")
    check_product(
        a, 2, "unsigned", random_codes(rng, 300, 1000, bits, "signed"), bits, "signed", isa, 2
    )
    if isa != "portable":  # the reference loops are slow at this size
        a = random_codes(rng, 9, 40_000, 1, "unsigned")
        w = random_codes(rng, 200, 40_000, 1, "pm1")
        check_product(a, 1, "unsigned", w, 1, "pm1", isa)


@st.composite
def products(draw):
    n = draw(st.sampled_from([1, 2, 3, 5, 9, 17]))
    m = draw(st.sampled_from([1, 3, 8, 33, 65]))
    k = draw(st.sampled_from(WORD_SIZES + [200, 511, 512, 513, 1000]))
    a_mode = draw(st.sampled_from(["unsigned", "signed", "pm1"]))
    a_bits = 1 if a_mode == "pm1" else draw(st.integers(1, 8))
    w_mode = draw(st.sampled_from(["signed", "unsigned", "pm1", "ternary"]))
    if w_mode == "pm1":
        bits = draw(st.lists(st.integers(0, 1), min_size=m, max_size=m))
    elif w_mode == "ternary":
        bits = [draw(st.sampled_from([0, 2]))] * m
    else:
        lo = draw(st.integers(0, 8))
        hi = draw(st.integers(lo, 8))
        bits = draw(st.lists(st.integers(lo, hi), min_size=m, max_size=m))
    threads = draw(st.sampled_from([1, 2, 3]))
    seed = draw(st.integers(0, 2**32 - 1))
    return n, m, k, a_mode, a_bits, w_mode, np.array(bits, dtype=np.int64), threads, seed


@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=60)
@given(case=products())
def test_random_products_are_exact_and_scaled(isa, case):
    n, m, k, a_mode, a_bits, w_mode, bits, threads, seed = case
    rng = np.random.default_rng(seed)
    a = random_codes(rng, n, k, a_bits, a_mode)
    w = random_codes(rng, m, k, bits, w_mode)
    pa, pw, expected = check_product(a, a_bits, a_mode, w, bits, w_mode, isa, threads)
    np.testing.assert_array_equal(pa.unpack(), a)
    np.testing.assert_array_equal(pw.unpack(), w)
    row_scale = rng.uniform(0.01, 2.0, m).astype(np.float32)
    act_scale = rng.uniform(0.01, 2.0, n).astype(np.float32)
    bias = rng.normal(size=m).astype(np.float32)
    y = bitserial.bitserial_matmul(pa, pw, row_scale, act_scale, bias, isa=isa, threads=threads)
    ref = expected * row_scale.astype(np.float64) * act_scale[:, None].astype(np.float64) + bias
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * (1 + np.abs(ref).max()))


def test_pack_unpack_round_trip_and_layout():
    rng = np.random.default_rng(6)
    for k in WORD_SIZES + [1000]:
        bits = rng.integers(0, 9, 11)
        w = random_codes(rng, 11, k, bits, "signed")
        per_isa = [bitserial.pack_weights(w, bits, "signed", isa=isa) for isa in ISAS]
        p = per_isa[0]
        np.testing.assert_array_equal(p.unpack(), w)
        for other in per_isa[1:]:  # every ISA packs the same bits
            np.testing.assert_array_equal(other.planes, p.planes)
            np.testing.assert_array_equal(other.row_sums, p.row_sums)
        words = -(-k // 512) * 8
        assert p.planes.shape == (bits.sum() + 8, words) and p.planes.ctypes.data % 64 == 0
        np.testing.assert_array_equal(p.bits, bits)
        np.testing.assert_array_equal(p.row_sums, w.astype(np.int64).sum(1))
        assert not p.planes[bits.sum() :].any()  # padding plane rows are zero
        if k % 64:  # positions >= k are zero in every plane
            assert not (p.planes[:, k // 64] >> np.uint64(k % 64)).any()
        assert not p.planes[:, -(-k // 64) :].any()
        # least significant plane first: plane j of row r holds bit j of its codes
        r = int(np.argmax(bits))
        plane0 = np.unpackbits(p.planes[p.plane_offsets[r]].view(np.uint8), bitorder="little")
        np.testing.assert_array_equal(plane0[:k], w[r].view(np.uint8) & 1)
    a = torch.randint(0, 16, (3, 70), dtype=torch.uint8)  # torch tensors in, no copy needed
    np.testing.assert_array_equal(bitserial.pack_activations(a, 4).unpack(), a.numpy())
    pm1 = random_codes(rng, 2, 100, 1, "pm1")
    np.testing.assert_array_equal(bitserial.pack_activations(pm1, 1, "pm1").unpack(), pm1)


def test_float_output_scalars_tensors_and_out():
    rng = np.random.default_rng(7)
    a = random_codes(rng, 4, 50, 2, "unsigned")
    w = random_codes(rng, 6, 50, 2, "ternary")
    pa, pw = bitserial.pack_activations(a, 2), bitserial.pack_weights(w, 2)
    exact = (a.astype(np.int64) @ w.astype(np.int64).T).astype(np.float64)
    y = bitserial.bitserial_matmul(pa, pw, np.full(6, 0.5), act_scale=0.25)
    np.testing.assert_allclose(y, exact * 0.125, rtol=1e-6)
    out = torch.empty(4, 6)
    got = bitserial.bitserial_matmul(
        pa, pw, torch.full((6,), 2.0), torch.arange(1.0, 5.0), bias=torch.ones(6), out=out
    )
    assert got is out
    torch.testing.assert_close(
        out.double(), torch.from_numpy(exact * 2 * np.arange(1.0, 5.0)[:, None] + 1)
    )


def bad_call(fn, *args, match, **kwargs):
    with pytest.raises(ValueError, match=match):
        fn(*args, **kwargs)


def test_packing_rejects_bad_input():
    u8 = np.zeros((3, 10), np.uint8)
    i8 = np.zeros((3, 10), np.int8)
    pack_a, pack_w = bitserial.pack_activations, bitserial.pack_weights
    bad_call(pack_a, i8, 2, "unsigned", match="uint8")
    bad_call(pack_w, u8, 2, "signed", match="int8")
    bad_call(pack_w, i8.astype(np.int16), 2, match="int8")
    bad_call(pack_a, np.zeros(10, np.uint8), 2, match="2-D")
    bad_call(pack_a, np.zeros((0, 10), np.uint8), 2, match="2-D")
    bad_call(pack_a, np.zeros((3, 20), np.uint8)[:, ::2], 2, match="contiguous")
    bad_call(pack_a, np.asfortranarray(np.zeros((3, 4), np.uint8)), 2, match="contiguous")
    bad_call(pack_a, [[1, 2]], 2, match="numpy array")
    for bits in (0, 9, -1, 2.0, True, None):
        bad_call(pack_a, u8, bits, match="bits")
    bad_call(pack_a, i8, 2, "pm1", match="bits")
    bad_call(pack_a, u8, 2, "binary", match="mode")
    for bits in (9, -1, [1, 2], np.array([1, 9, 2]), np.array([1.0, 2.0, 3.0])):
        bad_call(pack_w, i8, bits, match="bits")
    bad_call(pack_w, i8, 2, "pm1", match="bits")
    # codes outside the range of their width
    bad_call(pack_a, np.full((2, 5), 4, np.uint8), 2, match="outside")
    bad_call(pack_w, np.full((2, 5), -3, np.int8), 2, match="outside")
    bad_call(pack_w, np.full((2, 5), 2, np.int8), 2, match="outside")
    bad_call(pack_w, np.full((2, 5), 1, np.int8), [2, 0], match="outside")  # pruned row not 0
    bad_call(pack_a, np.zeros((2, 5), np.int8), 1, "pm1", match="outside")  # 0 is not +-1
    bad_call(pack_w, i8, 2, isa="avx9", match="isa")


def test_matmul_rejects_bad_input():
    pa = bitserial.pack_activations(np.ones((2, 10), np.uint8), 2)
    pw = bitserial.pack_weights(np.ones((3, 10), np.int8), 2)
    ones = np.ones(3, np.float32)
    mm = bitserial.bitserial_matmul
    bad_call(mm, pa, bitserial.pack_weights(np.ones((3, 11), np.int8), 2), ones, match="k")
    bad_call(mm, pa, "weights", ones, match="BitPlanes")
    for scale in (np.array([1.0, np.nan, 1.0]), np.array([1.0, np.inf, 1.0]), np.ones(4)):
        bad_call(mm, pa, pw, scale, match="row_scale")
    bad_call(mm, pa, pw, ones, float("nan"), match="act_scale")
    bad_call(mm, pa, pw, ones, np.ones(3), match="act_scale")
    bad_call(mm, pa, pw, ones, 1.0, np.array([0, np.inf, 0]), match="bias")
    bad_call(mm, pa, pw, np.array(["a", "b", "c"]), match="row_scale")
    bad_call(mm, pa, pw, ones, isa="avx9", match="isa")
    bad_call(mm, pa, pw, ones, threads=0, match="threads")
    bad_call(mm, pa, pw, ones, out=np.empty((3, 2), np.float32), match="out")
    bad_call(mm, pa, pw, ones, out=np.empty((2, 3), np.float64), match="out")
    bad_call(bitserial.bitserial_matmul_int, pa, pw, threads=1.5, match="threads")
    # k and the widths could overflow int32: 8-bit unsigned x 8-bit signed needs k <= 65793
    big = 65_800
    pa8 = bitserial.pack_activations(np.zeros((1, big), np.uint8), 8)
    pw8 = bitserial.pack_weights(np.zeros((1, big), np.int8), 8)
    bad_call(bitserial.bitserial_matmul_int, pa8, pw8, match="int32")


def test_native_entry_points_check_hand_made_layouts():
    """The C++ side checks every size it relies on: inconsistent arrays raise ValueError."""
    pa = bitserial.pack_activations(np.ones((2, 10), np.uint8), 2)
    pw = bitserial.pack_weights(np.ones((3, 10), np.int8), 2)
    out = np.empty((2, 3), np.int32)

    def gemm(
        a_planes=pa.planes, a_offsets=pa.plane_offsets, a_sums=pa.row_sums, a_mode=0, k=10, o=out
    ):
        _kernels.bitserial_gemm(
            a_planes, a_offsets, a_sums, a_mode, pw.planes, pw.plane_offsets, pw.row_sums, 1, k, o
        )

    gemm()
    np.testing.assert_array_equal(out, np.full((2, 3), 10))
    bad_call(gemm, a_planes=pa.planes[:-1], match="planes")  # padding rows missing
    bad_call(gemm, a_offsets=np.array([0, 2, 13], np.int64), match="planes")  # 11 planes in a row
    bad_call(gemm, a_offsets=np.array([0, 4, 2], np.int64), match="planes")  # falling offsets
    bad_call(gemm, a_offsets=np.array([1, 2, 4], np.int64), match="start at 0")
    bad_call(gemm, a_sums=np.zeros(3, np.int64), match="row_sums")
    bad_call(gemm, a_mode=7, match="mode")
    bad_call(gemm, k=10_000, match="words")
    bad_call(gemm, o=np.empty((3, 2), np.int32), match="out")
    bad_call(gemm, o=np.empty((2, 3), np.float64), match="out")
    with pytest.raises(ValueError, match="row_scale"):  # float output without scales
        gemm(o=np.empty((2, 3), np.float32))
    with pytest.raises(TypeError):  # noconvert: a strided view is refused, not copied
        gemm(a_planes=np.zeros((20, 16), np.uint64)[:, ::2])


@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=40)
@given(
    n=st.sampled_from([1, 2, 7, 65]),
    k=st.sampled_from([1, 63, 64, 65, 300, 513]),
    mode=st.sampled_from(["unsigned", "signed", "pm1"]),
    bits=st.integers(1, 8),
    per_row=st.booleans(),
    threads=st.sampled_from([1, 2, kernels.MAX_THREADS]),
    seed=st.integers(0, 2**32 - 1),
)
def test_quantize_activations_matches_torch_rounding(isa, n, k, mode, bits, per_row, threads, seed):
    """The fused native quantizer equals round-half-even + clamp in torch, ties and clips included."""
    from bayesq.quantizers import quantize_codes

    bits = 1 if mode == "pm1" else bits
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.05, 2.0, n).astype(np.float32) if per_row else np.float32(0.37)
    # multiples of half the scale hit the round-half-even ties; the spread clips at both ends
    x = (rng.integers(-600, 600, (n, k)) * 0.5 * np.atleast_1d(scale)[:, None]).astype(np.float32)
    x[:, ::3] = rng.normal(scale=50, size=x[:, ::3].shape)
    planes = bitserial.quantize_activations(x, scale, bits, mode, isa=isa, threads=threads)
    xt = torch.from_numpy(x)
    if per_row:
        expected = torch.stack(
            [quantize_codes(xt[i], float(scale[i]), bits, mode) for i in range(n)]
        )
    else:
        expected = quantize_codes(xt, float(scale), bits, mode)
    np.testing.assert_array_equal(planes.unpack().astype(np.int64), expected.numpy())
    np.testing.assert_array_equal(planes.row_sums, expected.sum(1).numpy())
    w = random_codes(rng, 3, k, 2, "signed")
    check_product(planes.unpack(), bits, mode, w, 2, "signed", isa)


def test_quantize_activations_rejects_bad_input():
    x = np.zeros((2, 5), np.float32)
    q = bitserial.quantize_activations
    bad_call(q, x.astype(np.float64), 1.0, match="float32")
    bad_call(q, x[:, ::2], 1.0, match="contiguous")
    bad_call(q, np.zeros(5, np.float32), 1.0, match="2-D")
    for scale in (0.0, -1.0, float("nan"), float("inf"), np.ones(3)):
        bad_call(q, x, scale, match="scale")
    bad_call(q, x, 1.0, 9, match="bits")
    bad_call(q, x, 1.0, 0, match="bits")
    bad_call(q, x, 1.0, 2, "pm1", match="bits")
    bad_call(q, x, 1.0, 2, "ternary", match="mode")
    bad_call(q, x, 1.0, threads=0, match="threads")
    for value in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[1, 3] = value
        bad_call(q, y, 1.0, match="NaN")


# --- BitPlanes can only describe the codes their packer checked --------------------------------


def _packed_pair(k=10):
    return bitserial.pack_activations(np.ones((2, k), np.uint8), 2), bitserial.pack_weights(
        np.ones((3, k), np.int8), 2
    )


def test_bit_planes_cannot_be_made_by_hand():
    pa, _ = _packed_pair()
    with pytest.raises(TypeError, match="pack_weights"):
        bitserial.BitPlanes(pa.planes, pa.plane_offsets, pa.row_sums, pa.k, pa.mode, pa.max_bits)
    with pytest.raises(TypeError):
        dataclasses.replace(pa, max_bits=1)


def test_bit_planes_are_frozen():
    pa, _ = _packed_pair()
    for name, value in [("max_bits", 1), ("k", 5), ("mode", "pm1"), ("row_sums", None)]:
        with pytest.raises(AttributeError, match="read-only"):
            setattr(pa, name, value)
    with pytest.raises(AttributeError):
        pa.extra = 1  # no __dict__ to hide a field in
    with pytest.raises(AttributeError):
        del pa.max_bits
    for array in (pa.planes, pa.plane_offsets, pa.row_sums):
        assert not array.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            array.flat[0] = 1


def test_a_wrong_max_bits_cannot_skip_the_int32_check():
    """Attack 1: max_bits said 1 for 8-bit rows, so the Python bound passed and the int32 product
    wrapped (255 * 127 * 70000 = 2266950000 came back as -2028017296). Now the field cannot be
    set, and even when forced past Python the native side bounds k |a| |w| from the offsets."""
    k = 70_000
    pa = bitserial.pack_activations(np.full((1, k), 255, np.uint8), 8)
    pw = bitserial.pack_weights(np.full((1, k), 127, np.int8), 8)
    with pytest.raises(ValueError, match="int32"):
        bitserial.bitserial_matmul_int(pa, pw)
    with pytest.raises(AttributeError):
        pa.max_bits = 1
    for p in (pa, pw):
        object.__setattr__(p, "max_bits", 1)  # forced: past the Python check ...
    with pytest.raises(ValueError, match="int32"):  # ... the native check still refuses
        bitserial.bitserial_matmul_int(pa, pw)
    with pytest.raises(ValueError, match="int32"):
        bitserial.bitserial_matmul(pa, pw, np.ones(1, np.float32))


def test_bits_past_k_and_row_sums_cannot_be_changed():
    """Attacks 2 and 3: a bit set past k (in the padding of a plane row) corrupted the {-1, +1}
    product; a changed row sum shifted every output of its row. Both arrays are read-only."""
    rng = np.random.default_rng(3)
    a = random_codes(rng, 2, 33, 1, "pm1")
    w = random_codes(rng, 3, 33, 1, "pm1")
    pa, pw = bitserial.pack_activations(a, 1, "pm1"), bitserial.pack_weights(w, 1, "pm1")
    expected = a.astype(np.int64) @ w.astype(np.int64).T
    with pytest.raises(ValueError, match="read-only"):
        pw.planes[0, 0] |= np.uint64(1) << np.uint64(40)  # position 40 >= k = 33
    with pytest.raises(ValueError, match="read-only"):
        pa.row_sums[0] += 5
    np.testing.assert_array_equal(bitserial.bitserial_matmul_int(pa, pw), expected)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 5),
    k=st.sampled_from(WORD_SIZES),
    mode=st.sampled_from(["unsigned", "signed", "ternary", "pm1"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_copies_and_pickles_of_bit_planes_are_packed_again(rows, k, mode, seed):
    """copy returns the (immutable) object itself; a pickle stores the codes and widths and
    unpickling packs them again through the packer's checks: the same planes and sums."""
    rng = np.random.default_rng(seed)
    top = 1 if mode == "pm1" else 8
    bits = rng.integers(0 if mode != "pm1" else 1, top + 1, rows)
    if mode == "ternary":
        bits = np.full(rows, 2)
    codes = random_codes(rng, rows, k, bits, mode)
    p = bitserial.pack_weights(codes, bits, pack_mode(mode))
    assert copy.copy(p) is p and copy.deepcopy(p) is p
    q = pickle.loads(pickle.dumps(p))
    assert q is not p and (q.k, q.mode, q.max_bits) == (p.k, p.mode, p.max_bits)
    for name in ("planes", "plane_offsets", "row_sums"):
        np.testing.assert_array_equal(getattr(q, name), getattr(p, name))
        assert not getattr(q, name).flags.writeable


@settings(max_examples=12, deadline=None)
@given(
    a_mode=st.sampled_from(["unsigned", "signed", "pm1"]),
    w_mode=st.sampled_from(["unsigned", "signed"]),
    a_bits=st.integers(4, 8),
    w_bits=st.integers(4, 8),
)
@example(a_mode="unsigned", w_mode="signed", a_bits=8, w_bits=8)
@example(a_mode="pm1", w_mode="unsigned", a_bits=1, w_bits=8)
def test_native_int32_bound_agrees_with_the_python_bound(a_mode, w_mode, a_bits, w_bits):
    """The native bound (from the offsets) and the Python one (from max_bits) refuse exactly the
    same products: those whose k |a|max |w|max exceeds 2^31 - 1 (k at the limit and one past)."""
    a_bits = 1 if a_mode == "pm1" else a_bits
    dtype = {"unsigned": np.uint8, "signed": np.int8, "pm1": np.int8}
    fill = {"unsigned": 0, "signed": 0, "pm1": 1}
    top = {"unsigned": 2**a_bits - 1, "signed": 2 ** (a_bits - 1), "pm1": 1}[a_mode]
    top *= {"unsigned": 2**w_bits - 1, "signed": 2 ** (w_bits - 1)}[w_mode]
    limit = (2**31 - 1) // top
    for k in (limit, limit + 1):
        pa = bitserial.pack_activations(
            np.full((1, k), fill[a_mode], dtype[a_mode]), a_bits, a_mode
        )
        pw = bitserial.pack_weights(np.zeros((1, k), dtype[w_mode]), w_bits, w_mode)
        for product in (bitserial.bitserial_matmul_int, _native_int_product):
            if k * top > 2**31 - 1:
                with pytest.raises(ValueError, match="int32"):
                    product(pa, pw)
            else:
                np.testing.assert_array_equal(product(pa, pw), [[0]])


def _native_int_product(pa, pw):
    """bitserial_gemm called straight through the bindings (no Python-side checks)."""
    out = np.empty((pa.shape[0], pw.shape[0]), np.int32)
    _kernels.bitserial_gemm(
        pa.planes, pa.plane_offsets, pa.row_sums, _MODE[pa.mode],
        pw.planes, pw.plane_offsets, pw.row_sums, _MODE[pw.mode], pa.k, out,
    )  # fmt: skip
    return out


_MODE = {"unsigned": 0, "signed": 1, "pm1": 2}


# --- threads are bounded, and so is the native pool --------------------------------------------


def test_threads_beyond_the_maximum_are_refused():
    pa, pw = _packed_pair()
    x = np.ones((2, 10), np.float32)
    assert kernels.MAX_THREADS >= 4
    for threads in (kernels.MAX_THREADS + 1, 10_000, 2**40, 0, -1, 2.0, True, None, "2"):
        bad_call(bitserial.bitserial_matmul, pa, pw, np.ones(3), threads=threads, match="threads")
        bad_call(bitserial.bitserial_matmul_int, pa, pw, threads=threads, match="threads")
        bad_call(bitserial.quantize_activations, x, 1.0, threads=threads, match="threads")
    bitserial.bitserial_matmul_int(pa, pw, threads=kernels.MAX_THREADS)
    bitserial.bitserial_matmul_int(pa, pw, threads=np.int64(kernels.MAX_THREADS))


# --- bad input: every argument checked first; read-only input accepted -------------------------


@pytest.mark.parametrize("k", WORD_SIZES)
def test_read_only_codes_and_inputs_are_packed(k):
    """np.frombuffer gives read-only arrays; nothing writes to codes, so they are accepted and
    packed exactly as a writable copy."""
    rng = np.random.default_rng(k)
    codes = random_codes(rng, 3, k, 4, "signed")
    frozen = np.frombuffer(codes.tobytes(), np.int8).reshape(codes.shape)
    assert not frozen.flags.writeable
    for isa in ISAS:
        got, want = bitserial.pack_weights(frozen, 4, isa=isa), bitserial.pack_weights(codes, 4)
        np.testing.assert_array_equal(got.planes, want.planes)
        np.testing.assert_array_equal(got.unpack(), codes)
    u = random_codes(rng, 2, k, 3, "unsigned")
    frozen_u = np.frombuffer(u.tobytes(), np.uint8).reshape(u.shape)
    np.testing.assert_array_equal(bitserial.pack_activations(frozen_u, 3).unpack(), u)
    x = rng.normal(size=(2, k)).astype(np.float32)
    frozen_x = np.frombuffer(x.tobytes(), np.float32).reshape(x.shape)
    np.testing.assert_array_equal(
        bitserial.quantize_activations(frozen_x, 0.1, 4, "signed").unpack(),
        bitserial.quantize_activations(x, 0.1, 4, "signed").unpack(),
    )


def test_bitserial_arguments_are_named_not_dumped():
    """threads=2**40 and isa=5 gave nanobind's "incompatible function arguments" listing; scales
    beyond float32 (1e39) were rounded to infinity silently or warned. Each is a ValueError
    naming the argument."""
    pa, pw = _packed_pair()
    x = np.ones((2, 10), np.float32)
    ones = np.ones(3, np.float32)
    for isa in (5, b"avx2", "AVX2", ""):
        bad_call(bitserial.bitserial_matmul, pa, pw, ones, isa=isa, match="isa")
        bad_call(bitserial.bitserial_matmul_int, pa, pw, isa=isa, match="isa")
        bad_call(bitserial.pack_weights, np.ones((3, 10), np.int8), 2, isa=isa, match="isa")
        bad_call(bitserial.pack_activations, np.ones((3, 10), np.uint8), 2, isa=isa, match="isa")
        bad_call(bitserial.quantize_activations, x, 1.0, isa=isa, match="isa")
    for isa in sorted({"portable", "avx2", "avx512"} - set(ISAS)):  # forced, but not on this CPU
        bad_call(bitserial.bitserial_matmul, pa, pw, ones, isa=isa, match="isa .* not available")
        bad_call(bitserial.quantize_activations, x, 1.0, isa=isa, match="isa .* not available")
    bad_call(bitserial.bitserial_matmul, pa, pw, ones, threads=2**40, match="threads")
    for mode in (0, None, ["signed"]):
        bad_call(bitserial.pack_weights, np.ones((3, 10), np.int8), 2, mode, match="mode")
        bad_call(bitserial.quantize_activations, x, 1.0, 2, mode, match="mode")
    for act_scale in (1e39, -1e39, np.float64(1e39), 10**400, np.array(1e39), True):
        bad_call(bitserial.bitserial_matmul, pa, pw, ones, act_scale, match="act_scale")
    bad_call(bitserial.bitserial_matmul, pa, pw, np.full(3, 1e39), match="row_scale")
    bad_call(bitserial.bitserial_matmul, pa, pw, ones, 1.0, np.full(3, -1e39), match="bias")
    for scale in (1e39, 10**400, np.full(2, 1e39), 1e-300):
        bad_call(bitserial.quantize_activations, x, scale, match="scale")
    # numbers within float32's range but given as float64 or ints are fine
    y = bitserial.bitserial_matmul(pa, pw, np.full(3, 2, np.int64), np.float64(0.5))
    np.testing.assert_array_equal(y, np.full((2, 3), 10.0))


def test_native_entry_points_refuse_huge_sizes_without_crashing():
    """Raw calls to the bindings with sizes no wrapper would pass: a ValueError, never a crash."""
    pa, pw = _packed_pair()
    out = np.empty((2, 3), np.int32)
    for k in (2**62, 2**63 - 1, -(2**63)):
        with pytest.raises(ValueError, match="k"):
            _kernels.bitserial_gemm(
                pa.planes, pa.plane_offsets, pa.row_sums, 0,
                pw.planes, pw.plane_offsets, pw.row_sums, 1, k, out,
            )  # fmt: skip
    with pytest.raises(ValueError, match="floor"):
        z = np.zeros(4, np.float32)
        _kernels.lrt_sample(z, z, z.copy(), z.copy(), 1, -1.0, None, 1)
