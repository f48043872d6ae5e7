"""Bit-serial inference: integer codes packed into bit planes and multiplied on the C++ kernels.

`pack_weights` and `pack_activations` turn integer codes into bit planes (`BitPlanes`),
`quantize_activations` rounds float activations to codes and packs them in one pass, and
`bitserial_matmul` / `bitserial_matmul_int` multiply two packed matrices: the sum over plane
pairs of sign * 2^(i + j) * popcount(a_i AND w_j) (the XOR form for {-1, +1} x {-1, +1}), exact
in int32 (see csrc/bitserial/bitpack.h and csrc/bitserial/bitserial_gemm.h for the layout and
the arithmetic). Every argument is checked
first (ValueError naming it; the shared checks of `bayesq.kernels`); `isa=` forces a path
(`bitserial_isas()`), `threads=` is 1..`kernels.MAX_THREADS`.
"""

from __future__ import annotations

import math
import reprlib

import numpy as np
import torch

from . import _kernels
from .kernels import FLOAT32_MAX, check_isa, check_threads, is_int, is_real
from .ops import CODE_MODES

__all__ = [
    "BitPlanes",
    "bitserial_isas",
    "bitserial_matmul",
    "bitserial_matmul_int",
    "pack_activations",
    "pack_weights",
    "quantize_activations",
]

_PLANE_WORD_ALIGN = 8  # words per plane row are a multiple of this (csrc/bitserial/bitpack.h)
_PLANE_ROW_PAD = 8  # zero plane rows after the last real one (csrc/bitserial/bitpack.h)


def bitserial_isas() -> list[str]:
    """The ISA paths of the bit-serial kernels this CPU can run (the `isa=` values), best last."""
    return list(_kernels.bitserial_isas())


class BitPlanes:
    """A (rows, k) matrix of integer codes packed into bit planes, row r with bits[r] planes.

    Made only by `pack_weights`, `pack_activations` and `quantize_activations`: calling
    BitPlanes(...) raises TypeError. The object is frozen (no attribute can be set) and its
    arrays are read-only, so its fields always describe the codes the packer checked: the int32
    overflow bound (from `max_bits`), the zero bits past k and the row sums that the product
    relies on cannot be set by hand. (Forcing a write with numpy's flags or object.__setattr__ is
    not guarded; the native side still checks every size it indexes with,
    csrc/bitserial/bitpack.h.)

    The arrays follow csrc/bitserial/bitpack.h: `planes` is uint64 (plane rows + 8 zero padding
    rows, words), words = k rounded up to 512 bits; row r's planes are plane rows
    plane_offsets[r] .. plane_offsets[r + 1] - 1, least significant first; row_sums: int64
    (rows,), the sum of each row's codes. mode: "unsigned" (0 .. 2^b - 1), "signed" (two's
    complement, -2^(b-1) .. 2^(b-1) - 1) or "pm1" ({-1, +1}, one plane, bit 1 = +1). A row of 0
    planes is all zeros (pruned). max_bits: the widest row's number of planes.
    """

    __slots__ = ("planes", "plane_offsets", "row_sums", "k", "mode", "max_bits", "__weakref__")

    planes: np.ndarray
    plane_offsets: np.ndarray
    row_sums: np.ndarray
    k: int
    mode: str
    max_bits: int

    def __init__(self, *args, **kwargs):
        raise TypeError(
            "BitPlanes are made by pack_weights, pack_activations or quantize_activations, "
            "not by hand (their fields must match the codes)"
        )

    def __setattr__(self, name, value):
        raise AttributeError(f"BitPlanes is read-only: cannot set {name!r} (pack the codes again)")

    def __delattr__(self, name):
        raise AttributeError(f"BitPlanes is read-only: cannot delete {name!r}")

    def __copy__(self):
        return self  # immutable: a copy is the same object

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        # pickling stores the codes and widths and packs again on load, through the checks
        return (_repack, (self.unpack(), self.bits, self.mode))

    def __repr__(self) -> str:
        return f"BitPlanes(shape={self.shape}, mode={self.mode!r}, max_bits={self.max_bits})"

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.plane_offsets) - 1, self.k)

    @property
    def bits(self) -> np.ndarray:
        """Planes per row, int64 (rows,)."""
        return np.diff(self.plane_offsets)

    @property
    def max_abs_code(self) -> int:
        """The largest |code| the rows' widths and mode allow (0 for an all-pruned matrix)."""
        b = self.max_bits
        if b == 0:
            return 0
        return {"unsigned": 2**b - 1, "signed": 2 ** (b - 1), "pm1": 1}[self.mode]

    def unpack(self) -> np.ndarray:
        """The codes back, (rows, k): uint8 for "unsigned", int8 otherwise."""
        out = np.empty(self.shape, dtype=np.uint8 if self.mode == "unsigned" else np.int8)
        _kernels.unpack_bit_planes(
            self.planes, self.plane_offsets, self.row_sums, self.k, CODE_MODES[self.mode], out
        )
        return out


def _frozen(a: np.ndarray) -> np.ndarray:
    """a, made read-only, and the buffer it views (so that the view alone cannot be made
    writable again)."""
    if isinstance(a.base, np.ndarray):
        a.base.flags.writeable = False
    a.flags.writeable = False
    return a


def _bit_planes(planes, offsets, row_sums, k: int, mode: str, max_bits: int) -> BitPlanes:
    """The packers' constructor: arrays they just filled (and checked), frozen; max_bits is the
    largest width the packer put into `offsets`."""
    p = object.__new__(BitPlanes)
    fields = {
        "planes": _frozen(planes),
        "plane_offsets": _frozen(offsets),
        "row_sums": _frozen(row_sums),
        "k": int(k),
        "mode": mode,
        "max_bits": int(max_bits),
    }
    for name, value in fields.items():
        object.__setattr__(p, name, value)
    return p


def _repack(codes: np.ndarray, bits: np.ndarray, mode: str) -> BitPlanes:
    """Unpickling: pack the stored codes again (pack_weights takes any per-row widths)."""
    return pack_weights(codes, bits, mode)


def _as_array(x, name: str) -> np.ndarray:
    """A numpy view of a numpy array or CPU tensor (no copy)."""
    if isinstance(x, torch.Tensor):
        if x.device.type != "cpu":
            raise ValueError(f"{name} must be on the CPU, got a tensor on {x.device}")
        return x.detach().numpy()
    if not isinstance(x, np.ndarray):
        raise ValueError(
            f"{name} must be a numpy array or a torch CPU tensor, got {type(x).__name__}"
        )
    return x


def _empty_planes(offsets: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Uninitialized planes (plane rows + padding rows, words) and row sums for a layout."""
    words = -(-k // (64 * _PLANE_WORD_ALIGN)) * _PLANE_WORD_ALIGN
    count = (int(offsets[-1]) + _PLANE_ROW_PAD) * words
    # 64-byte aligned, so that every plane row starts a cache line (rows are 64-byte multiples)
    raw = np.empty(count + 8, dtype=np.uint64)
    start = (-raw.ctypes.data % 64) // 8
    return raw[start : start + count].reshape(-1, words), np.empty(len(offsets) - 1, np.int64)


def _pack(codes, offsets: np.ndarray, max_bits: int, mode: str, what: str, isa) -> BitPlanes:
    rows, k = codes.shape
    planes, row_sums = _empty_planes(offsets, k)
    bad = _kernels.pack_bit_planes(codes, offsets, CODE_MODES[mode], planes, row_sums, isa)
    if bad:
        raise ValueError(
            f"{what}: {bad} codes lie outside the range of their row's bit width in mode {mode!r}"
        )
    return _bit_planes(planes, offsets, row_sums, k, mode, max_bits)


def _check_codes(codes, mode: str, what: str) -> np.ndarray:
    """codes as a C-contiguous 2-D numpy array of the mode's byte type; read-only arrays are
    fine (nothing writes to them)."""
    if not isinstance(mode, str) or mode not in CODE_MODES:
        raise ValueError(f"{what}: mode must be one of {tuple(CODE_MODES)}, got {mode!r}")
    codes = _as_array(codes, f"{what}: codes")
    want = np.uint8 if mode == "unsigned" else np.int8
    if codes.dtype != want:
        raise ValueError(f"{what}: {mode} codes must be {np.dtype(want)}, got {codes.dtype}")
    if codes.ndim != 2 or codes.shape[0] < 1 or codes.shape[1] < 1:
        raise ValueError(
            f"{what}: codes must be a non-empty 2-D (rows, k) array, got {codes.shape}"
        )
    if not codes.flags.c_contiguous:
        raise ValueError(f"{what}: codes must be C-contiguous")
    return codes


def pack_weights(codes, bits_per_row=8, mode: str = "signed", isa: str | None = None) -> BitPlanes:
    """Pack a weight matrix of integer codes (m, k) into bit planes, each row with its own width.

    codes: int8 for mode "signed" (two's complement; ternary weights are 2-bit signed codes in
    {-1, 0, 1}) and "pm1" (codes -1 / +1), uint8 for "unsigned"; numpy or a CPU tensor,
    C-contiguous. bits_per_row: an int for all rows or one int per row, 0..8 (0 = a pruned row,
    whose codes must be 0; "pm1" rows have 1 plane or 0). Every code must fit its row's width.
    """
    codes = _check_codes(codes, mode, "pack_weights")
    check_isa(isa, "pack_weights", bitserial=True)
    rows = codes.shape[0]
    if is_int(bits_per_row):
        bits = np.full(rows, int(bits_per_row), dtype=np.int64)
    else:
        bits = (
            bits_per_row.detach().numpy()
            if isinstance(bits_per_row, torch.Tensor)
            else np.asarray(bits_per_row)
        )
        if bits.dtype.kind not in "iu" or bits.shape != (rows,):
            raise ValueError(
                f"pack_weights: bits_per_row must be an int or {rows} ints, got {bits.dtype} {bits.shape}"
            )
        bits = bits.astype(np.int64)
    top = 1 if mode == "pm1" else 8
    if bits.min() < 0 or bits.max() > top:
        raise ValueError(f"pack_weights: bits per row must lie in 0..{top} for mode {mode!r}")
    offsets = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(bits, out=offsets[1:])
    return _pack(codes, offsets, int(bits.max()), mode, "pack_weights", isa)


def pack_activations(codes, bits: int = 8, mode: str = "unsigned", isa: str | None = None):
    """Pack activation codes (n, k) into bit planes, `bits` planes (1..8) per row.

    codes: uint8 for mode "unsigned" (0 .. 2^bits - 1), int8 for "signed" (two's complement)
    and "pm1" (-1 / +1, bits = 1); numpy or a CPU tensor, C-contiguous. Returns a BitPlanes.
    """
    codes = _check_codes(codes, mode, "pack_activations")
    check_isa(isa, "pack_activations", bitserial=True)
    top = 1 if mode == "pm1" else 8
    if not is_int(bits) or not 1 <= bits <= top:
        raise ValueError(
            f"pack_activations: bits must be an int in 1..{top} for mode {mode!r}, got {bits!r}"
        )
    offsets = np.arange(0, (codes.shape[0] + 1) * bits, bits, dtype=np.int64)
    return _pack(codes, offsets, bits, mode, "pack_activations", isa)


def quantize_activations(
    x,
    scale,
    bits: int = 8,
    mode: str = "unsigned",
    isa: str | None = None,
    threads: int = 1,
) -> BitPlanes:
    """Quantize float activations (n, k) to `bits`-bit codes and pack them, in one native pass.

    codes = clamp(round(x / scale), 0, 2^bits - 1) for "unsigned" (the clamp at 0 is a ReLU),
    clamp(round(x / scale), -2^(bits-1), 2^(bits-1) - 1) for "signed", sign(x) (0 -> +1) for
    "pm1"; round is half to even, as torch.round. scale: a positive number or (n,) per row.
    x: float32, C-contiguous, numpy or CPU tensor; NaN or infinite entries raise ValueError.
    threads: 1..MAX_THREADS threads share the rows.
    The bit-exact torch equivalent is `bayesq.runtime.quantize_codes`.
    """
    what = "quantize_activations"
    if not isinstance(mode, str) or mode not in CODE_MODES:
        raise ValueError(f"{what}: mode must be one of {tuple(CODE_MODES)}, got {mode!r}")
    x = _as_array(x, f"{what}: x")
    if x.dtype != np.float32:
        raise ValueError(f"{what}: x must be float32, got {x.dtype}")
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{what}: x must be a non-empty 2-D (n, k) array, got {x.shape}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{what}: x must be C-contiguous")
    top = 1 if mode == "pm1" else 8
    if not is_int(bits) or not 1 <= bits <= top:
        raise ValueError(f"{what}: bits must be an int in 1..{top} for mode {mode!r}, got {bits!r}")
    threads = check_threads(threads, what)
    check_isa(isa, what, bitserial=True)
    rows, k = x.shape
    if is_real(scale):  # the per-call path at batch 1: plain float checks, no array passes
        value = _real_or_inf(scale)
        scales = np.array([value if 0 < value <= FLOAT32_MAX else 0.0], dtype=np.float32)
        positive = scales[0] > 0  # also refuses a value that rounds to 0 in float32
    else:
        scales = _float_vector(scale, rows, "scale", what=what)
        positive = (scales > 0).all()
    if not positive:
        raise ValueError(
            f"{what}: scale must be finite and > 0 in float32, got {reprlib.repr(scale)}"
        )
    offsets = np.arange(0, (rows + 1) * bits, bits, dtype=np.int64)
    planes, row_sums = _empty_planes(offsets, k)
    nonfinite = _kernels.quantize_pack_bit_planes(
        x, scales, bits, CODE_MODES[mode], planes, row_sums, isa, threads
    )
    if nonfinite:
        raise ValueError(f"{what}: x has {nonfinite} NaN or infinite entries")
    return _bit_planes(planes, offsets, row_sums, k, mode, bits)


def _check_pair(act, weights, isa, threads) -> None:
    for name, p in (("act", act), ("weights", weights)):
        if not isinstance(p, BitPlanes):
            raise ValueError(f"bitserial_matmul: {name} must be a BitPlanes (pack_* output)")
    if act.k != weights.k:
        raise ValueError(f"bitserial_matmul: act has k = {act.k}, weights k = {weights.k}")
    check_isa(isa, "bitserial_matmul", bitserial=True)
    check_threads(threads, "bitserial_matmul")
    # checked again natively from the plane offsets (csrc/bindings.cpp), whatever the fields say
    bound = act.k * act.max_abs_code * weights.max_abs_code
    if bound > 2**31 - 1:
        raise ValueError(
            f"bitserial_matmul: k = {act.k} with these widths could exceed int32 ({bound} > 2^31 - 1)"
        )


def _gemm(act: BitPlanes, weights: BitPlanes, out, *scales, isa, threads) -> None:
    _kernels.bitserial_gemm(
        act.planes, act.plane_offsets, act.row_sums, CODE_MODES[act.mode],
        weights.planes, weights.plane_offsets, weights.row_sums, CODE_MODES[weights.mode],
        act.k, out, *scales, isa, threads,
    )  # fmt: skip


def bitserial_matmul_int(
    act: BitPlanes, weights: BitPlanes, isa: str | None = None, threads: int = 1
) -> np.ndarray:
    """The exact integer product act_codes @ weights_codes.T, int32 (n, m).

    Raises ValueError when k and the widths allow a result beyond int32. isa and threads
    (1..MAX_THREADS) as in `bitserial_matmul`.
    """
    _check_pair(act, weights, isa, threads)
    out = np.empty((act.shape[0], weights.shape[0]), dtype=np.int32)
    _gemm(act, weights, out, None, None, None, isa=isa, threads=int(threads))
    return out


def _float_vector(
    x, length: int, name: str, broadcast: bool = False, what: str = "bitserial_matmul"
) -> np.ndarray:
    """x as a C-contiguous float32 (length,) array whose entries are finite as float32 (a value
    beyond 3.4e38 is refused, not rounded to infinity); broadcast: a number is allowed too."""
    if broadcast and (is_real(x) or isinstance(x, bool | np.bool_)):
        if not is_real(x) or not abs(float(_real_or_inf(x))) <= FLOAT32_MAX:
            raise ValueError(
                f"{what}: {name} must be a finite float32 number, got {reprlib.repr(x)}"
            )
        return np.full(length, x, dtype=np.float32)
    v = _as_array(x, f"{what}: {name}")
    if v.dtype.kind not in "fiu":
        raise ValueError(f"{what}: {name} must be real numbers, got {v.dtype}")
    if broadcast and v.ndim == 0:
        v = v.reshape(1).repeat(length)
    if v.shape != (length,):
        raise ValueError(f"{what}: {name} must have shape ({length},), got {v.shape}")
    if v.dtype != np.float32:
        # checked before the cast: float64 values past float32's range would become infinity
        if not (np.abs(v.astype(np.float64)) <= FLOAT32_MAX).all():
            raise ValueError(f"{what}: {name} has NaN entries or entries beyond float32's range")
        v = v.astype(np.float32)
    elif not np.isfinite(v).all():
        raise ValueError(f"{what}: {name} has NaN or infinite entries")
    return np.ascontiguousarray(v)


def _real_or_inf(x) -> float:
    """float(x), or infinity for an int too large for a float."""
    try:
        return float(x)
    except OverflowError:
        return math.inf


def bitserial_matmul(
    act: BitPlanes,
    weights: BitPlanes,
    row_scale,
    act_scale=1.0,
    bias=None,
    isa: str | None = None,
    threads: int = 1,
    out=None,
):
    """y[n, m] = (act_codes @ weights_codes.T)[n, m] * row_scale[m] * act_scale[n] + bias[m].

    The integer product is exact (int32, bit-serial: popcounts of plane pairs); the scaling is
    float32. row_scale: (m,); act_scale: a number or (n,); bias: None or (m,); all finite as
    float32. isa: None for the best path, or "portable" / "avx2" / "avx512" to force one;
    threads: at most this many threads, 1..MAX_THREADS. out: None (a new numpy array) or a
    C-contiguous float32 (n, m) numpy array or CPU tensor to write into. Returns the output.
    """
    _check_pair(act, weights, isa, threads)
    n, m = act.shape[0], weights.shape[0]
    row_scale = _float_vector(row_scale, m, "row_scale")
    act_scale = _float_vector(act_scale, n, "act_scale", broadcast=True)
    bias = None if bias is None else _float_vector(bias, m, "bias")
    if out is None:
        out = np.empty((n, m), dtype=np.float32)
    target = _as_array(out, "bitserial_matmul: out")
    if target.dtype != np.float32 or target.shape != (n, m) or not target.flags.c_contiguous:
        raise ValueError(f"bitserial_matmul: out must be C-contiguous float32 of shape {(n, m)}")
    if not target.flags.writeable:
        raise ValueError("bitserial_matmul: out is read-only")
    _gemm(act, weights, target, row_scale, act_scale, bias, isa=isa, threads=int(threads))
    return out
