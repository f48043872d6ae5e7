"""Python face of the C++ kernels (bayesq._kernels): validation first, then the native call.

The native functions take arrays without conversion (a wrong dtype or a strided view would be
refused with TypeError); the wrappers here check dtype, shape and contiguity themselves and raise
ValueError naming what is wrong.

Bit-serial inference: `pack_weights` and `pack_activations` turn integer codes into bit planes
(`BitPlanes`), `bitserial_matmul` multiplies two packed matrices (see csrc/bitpack.h and
csrc/bitserial_gemm.h for the layout and the arithmetic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from . import _kernels

__all__ = [
    "BitPlanes",
    "bitserial_isas",
    "bitserial_matmul",
    "bitserial_matmul_int",
    "cpu_features",
    "local_reparameterization_sample",
    "multi_spike_kl",
    "pack_activations",
    "pack_weights",
    "popcount",
    "quantize_activations",
    "standard_normal",
]


def cpu_features() -> dict[str, bool]:
    """ISA extensions of the running CPU that the kernels can dispatch on."""
    return dict(_kernels.cpu_features())


def popcount(words) -> int:
    """Number of set bits in a 1-D array of uint64 words."""
    words = np.asarray(words)
    if words.dtype != np.uint64:
        raise ValueError(f"popcount expects uint64 words, got dtype {words.dtype}")
    if words.ndim != 1:
        raise ValueError(f"popcount expects a 1-D array, got shape {words.shape}")
    return int(_kernels.popcount_words(np.ascontiguousarray(words)))


def _check_float32_pair(what: str, **tensors: torch.Tensor) -> None:
    """Raise ValueError unless the two named tensors are float32 CPU tensors of one shape."""
    for name, t in tensors.items():
        if t.dtype != torch.float32 or t.device.type != "cpu":
            raise ValueError(
                f"{what}: {name} must be a float32 CPU tensor, got {t.dtype} on {t.device}"
            )
    (a, x), (b, y) = tensors.items()
    if x.shape != y.shape:
        raise ValueError(f"{what}: {a} {tuple(x.shape)} and {b} {tuple(y.shape)} differ")


class _MultiSpikeKL(torch.autograd.Function):
    """Elementwise VNQ KL with its gradient computed in the same fused C++ pass.

    forward(theta (n,), log_sigma2 (n,), scale (0-d), num_levels, isa) -> kl (n,); the gradients
    are stored, and backward only scales them by the incoming gradient.
    """

    @staticmethod
    def forward(ctx, theta, log_sigma2, scale, num_levels, isa):
        kl = torch.empty_like(theta)
        grad_theta = torch.empty_like(theta)
        grad_log_sigma2 = torch.empty_like(theta)
        grad_scale = torch.empty_like(theta)
        non_finite = _kernels.multi_spike_kl(
            theta.detach(),
            log_sigma2.detach(),
            float(scale.detach()),
            num_levels,
            kl,
            grad_theta,
            grad_log_sigma2,
            grad_scale,
            isa,
            kernel_threads(),
        )
        if non_finite:
            raise ValueError(
                f"multi_spike_kl: {non_finite} non-finite values in theta or log_sigma2"
            )
        ctx.save_for_backward(grad_theta, grad_log_sigma2, grad_scale)
        return kl

    @staticmethod
    def backward(ctx, grad_kl):
        grad_theta, grad_log_sigma2, grad_scale = ctx.saved_tensors
        return (
            grad_kl * grad_theta if ctx.needs_input_grad[0] else None,
            grad_kl * grad_log_sigma2 if ctx.needs_input_grad[1] else None,
            torch.dot(grad_kl, grad_scale).reshape(()) if ctx.needs_input_grad[2] else None,
            None,
            None,
        )


def multi_spike_kl(
    theta: torch.Tensor,
    log_sigma2: torch.Tensor,
    scale: torch.Tensor,
    num_levels: int = 3,
    isa: str | None = None,
) -> torch.Tensor:
    """VNQ's multi-spike KL per weight, fused in C++ (see bayesq.priors.kl_multi_spike).

    Args: theta, log_sigma2: float32 CPU tensors of one shape; scale: the codebook spacing r, a
    0-d tensor (gradients flow to it); isa: force "portable", "avx2" or "avx512" (tests).
    Returns the KL per weight, the shape of theta, differentiable in all three tensors.
    """
    _check_float32_pair("multi_spike_kl", theta=theta, log_sigma2=log_sigma2)
    if scale.dim() != 0:
        raise ValueError(
            f"multi_spike_kl: scale must be a 0-d tensor, got shape {tuple(scale.shape)}"
        )
    r = float(scale.detach())
    if not r > 0 or not math.isfinite(r):
        raise ValueError(f"multi_spike_kl: scale must be finite and > 0, got {r}")
    if num_levels < 1 or num_levels > 15 or num_levels % 2 == 0:
        raise ValueError(f"multi_spike_kl: num_levels must be odd, 1 to 15, got {num_levels}")
    flat = _MultiSpikeKL.apply(
        theta.contiguous().view(-1), log_sigma2.contiguous().view(-1), scale, num_levels, isa
    )
    return flat.view(theta.shape)


def standard_normal(shape, generator: torch.Generator | None = None, isa: str | None = None):
    """A float32 CPU tensor of independent N(0, 1) draws from the C++ counter-based generator.

    The 64-bit seed is drawn from torch's generator (the default one unless `generator` is
    given), so `torch.manual_seed` makes the draws reproducible. Values are bounded by 5.77 in
    magnitude (24-bit uniforms in Box-Muller; P(|z| > 5.77) = 8e-9 under N(0, 1)).
    """
    out = torch.empty(shape, dtype=torch.float32)
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    _kernels.normal_fill(out.view(-1), seed, isa, 1)
    return out


class _LocalReparameterizationSample(torch.autograd.Function):
    """out = mean + sqrt(var + floor) * z, z ~ N(0, 1) drawn in C++; the same pass writes the slope
    dout/dvar = z / (2 sqrt(var + floor)), so the backward pass is one multiply."""

    @staticmethod
    def forward(ctx, mean, var, floor, seed, isa):
        out = torch.empty_like(mean)
        dout_dvar = torch.empty_like(mean)
        _kernels.lrt_sample(
            mean.detach().view(-1), var.detach().view(-1), out.view(-1), dout_dvar.view(-1),
            seed, floor, isa, kernel_threads(),
        )  # fmt: skip
        ctx.save_for_backward(dout_dvar)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (dout_dvar,) = ctx.saved_tensors
        grad_var = grad_out * dout_dvar if ctx.needs_input_grad[1] else None
        return grad_out, grad_var, None, None, None


def local_reparameterization_sample(
    mean: torch.Tensor, var: torch.Tensor, floor: float = 1e-8, isa: str | None = None
) -> torch.Tensor:
    """A draw of N(mean, var + floor) per element, differentiable in mean and var (fused C++).

    mean, var: float32 CPU tensors of one shape (pre-activation means and variances of a layer).
    The seed comes from torch's generator, so torch.manual_seed makes draws reproducible.
    """
    _check_float32_pair("local_reparameterization_sample", mean=mean, var=var)
    seed = int(torch.randint(0, 2**62, ()))
    return _LocalReparameterizationSample.apply(
        mean.contiguous(), var.contiguous(), float(floor), seed, isa
    )


# ---------------------------------------------------------------------------------------------
# Bit-serial GEMM

BITSERIAL_MODES = ("unsigned", "signed", "pm1")
_MODE_CODE = {"unsigned": 0, "signed": 1, "pm1": 2}
_PLANE_WORD_ALIGN = 8  # words per plane row are a multiple of this (csrc/bitpack.h)
_PLANE_ROW_PAD = 8  # zero plane rows after the last real one (csrc/bitpack.h)


def kernel_threads() -> int:
    """Threads of the VNQ training kernels (KL, LRT sample) inside a training step: 1.

    They can split their work over the kernels' pool (csrc/thread_pool.h), but measured in situ
    (experiments/bench_vnq.py, LeNet-5, 2 cores) a step with 2 kernel threads was no faster:
    between torch's ops its OpenMP workers keep spinning on the cores the pool would use.
    """
    return 1


def bitserial_isas() -> list[str]:
    """The ISA paths of the bit-serial kernels this CPU can run (the `isa=` values), best last."""
    return list(_kernels.bitserial_isas())


@dataclass(frozen=True, eq=False)
class BitPlanes:
    """A (rows, k) matrix of integer codes packed into bit planes, row r with bits[r] planes.

    Made by `pack_weights` / `pack_activations`; the arrays follow csrc/bitpack.h: `planes` is
    uint64 (plane rows + 8 zero padding rows, words), words = k rounded up to 512 bits; row r's
    planes are plane rows plane_offsets[r] .. plane_offsets[r + 1] - 1, least significant first.
    mode: "unsigned" (0 .. 2^b - 1), "signed" (two's complement, -2^(b-1) .. 2^(b-1) - 1) or
    "pm1" ({-1, +1}, one plane, bit 1 = +1). A row of 0 planes is all zeros (pruned).
    """

    planes: np.ndarray
    plane_offsets: np.ndarray
    row_sums: np.ndarray
    k: int
    mode: str
    max_bits: int  # the widest row's number of planes

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
            self.planes, self.plane_offsets, self.row_sums, self.k, _MODE_CODE[self.mode], out
        )
        return out


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


def _is_int(v) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)


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
    bad = _kernels.pack_bit_planes(codes, offsets, _MODE_CODE[mode], planes, row_sums, isa)
    if bad:
        raise ValueError(
            f"{what}: {bad} codes lie outside the range of their row's bit width in mode {mode!r}"
        )
    return BitPlanes(planes, offsets, row_sums, int(k), mode, max_bits)


def _check_codes(codes, mode: str, what: str) -> np.ndarray:
    if mode not in BITSERIAL_MODES:
        raise ValueError(f"{what}: mode must be one of {BITSERIAL_MODES}, got {mode!r}")
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
    rows = codes.shape[0]
    if _is_int(bits_per_row):
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
    top = 1 if mode == "pm1" else 8
    if not _is_int(bits) or not 1 <= bits <= top:
        raise ValueError(
            f"pack_activations: bits must be an int in 1..{top} for mode {mode!r}, got {bits!r}"
        )
    offsets = np.arange(0, (codes.shape[0] + 1) * bits, bits, dtype=np.int64)
    return _pack(codes, offsets, int(bits), mode, "pack_activations", isa)


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
    The bit-exact torch equivalent is `bayesq.runtime.quantize_codes`.
    """
    what = "quantize_activations"
    if mode not in BITSERIAL_MODES:
        raise ValueError(f"{what}: mode must be one of {BITSERIAL_MODES}, got {mode!r}")
    x = _as_array(x, f"{what}: x")
    if x.dtype != np.float32:
        raise ValueError(f"{what}: x must be float32, got {x.dtype}")
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{what}: x must be a non-empty 2-D (n, k) array, got {x.shape}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{what}: x must be C-contiguous")
    top = 1 if mode == "pm1" else 8
    if not _is_int(bits) or not 1 <= bits <= top:
        raise ValueError(f"{what}: bits must be an int in 1..{top} for mode {mode!r}, got {bits!r}")
    if not _is_int(threads) or threads < 1:
        raise ValueError(f"{what}: threads must be an int >= 1, got {threads!r}")
    rows, k = x.shape
    if isinstance(scale, int | float | np.floating | np.integer) and not isinstance(scale, bool):
        scales = np.array([scale], dtype=np.float32)
    else:
        scales = _float_vector(scale, rows, "scale", what=what)
    if not (np.isfinite(scales).all() and (scales > 0).all()):
        raise ValueError(f"{what}: scale must be finite and > 0, got {scale!r}")
    offsets = np.arange(0, (rows + 1) * bits, bits, dtype=np.int64)
    planes, row_sums = _empty_planes(offsets, k)
    nonfinite = _kernels.quantize_pack_bit_planes(
        x, scales, bits, _MODE_CODE[mode], planes, row_sums, isa, threads
    )
    if nonfinite:
        raise ValueError(f"{what}: x has {nonfinite} NaN or infinite entries")
    return BitPlanes(planes, offsets, row_sums, int(k), mode, int(bits))


def _check_pair(act, weights, isa, threads) -> None:
    for name, p in (("act", act), ("weights", weights)):
        if not isinstance(p, BitPlanes):
            raise ValueError(f"bitserial_matmul: {name} must be a BitPlanes (pack_* output)")
    if act.k != weights.k:
        raise ValueError(f"bitserial_matmul: act has k = {act.k}, weights k = {weights.k}")
    if isa is not None and isa not in ("portable", "avx2", "avx512"):
        raise ValueError(
            f"bitserial_matmul: isa must be None, 'portable', 'avx2' or 'avx512', got {isa!r}"
        )
    if not _is_int(threads) or threads < 1:
        raise ValueError(f"bitserial_matmul: threads must be an int >= 1, got {threads!r}")
    bound = act.k * act.max_abs_code * weights.max_abs_code
    if bound > 2**31 - 1:
        raise ValueError(
            f"bitserial_matmul: k = {act.k} with these widths could exceed int32 ({bound} > 2^31 - 1)"
        )


def _gemm(act: BitPlanes, weights: BitPlanes, out, *scales, isa, threads) -> None:
    _kernels.bitserial_gemm(
        act.planes, act.plane_offsets, act.row_sums, _MODE_CODE[act.mode],
        weights.planes, weights.plane_offsets, weights.row_sums, _MODE_CODE[weights.mode],
        act.k, out, *scales, isa, threads,
    )  # fmt: skip


def bitserial_matmul_int(
    act: BitPlanes, weights: BitPlanes, isa: str | None = None, threads: int = 1
) -> np.ndarray:
    """The exact integer product act_codes @ weights_codes.T, int32 (n, m).

    Raises ValueError when k and the widths allow a result beyond int32.
    """
    _check_pair(act, weights, isa, threads)
    out = np.empty((act.shape[0], weights.shape[0]), dtype=np.int32)
    _gemm(act, weights, out, None, None, None, isa=isa, threads=threads)
    return out


def _float_vector(
    x, length: int, name: str, broadcast: bool = False, what: str = "bitserial_matmul"
) -> np.ndarray:
    """x as a C-contiguous finite float32 (length,) array; broadcast: a number is allowed too."""
    if broadcast and isinstance(x, int | float | np.floating | np.integer):
        if isinstance(x, bool) or not math.isfinite(x):
            raise ValueError(f"{what}: {name} must be a finite number, got {x!r}")
        return np.full(length, x, dtype=np.float32)
    v = _as_array(x, f"{what}: {name}")
    if v.dtype.kind not in "fiu":
        raise ValueError(f"{what}: {name} must be real numbers, got {v.dtype}")
    if broadcast and v.ndim == 0:
        v = np.full(length, v, dtype=np.float32)
    if v.shape != (length,):
        raise ValueError(f"{what}: {name} must have shape ({length},), got {v.shape}")
    if v.dtype != np.float32 or not v.flags.c_contiguous:
        v = np.ascontiguousarray(v, dtype=np.float32)
    if not np.isfinite(v).all():
        raise ValueError(f"{what}: {name} has NaN or infinite entries (as float32)")
    return v


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
    float32. row_scale: (m,); act_scale: a number or (n,); bias: None or (m,); all finite.
    isa: None for the best path, or "portable" / "avx2" / "avx512" to force one; threads: at
    most this many threads. out: None (a new numpy array) or a C-contiguous float32 (n, m)
    numpy array or CPU tensor to write into. Returns the output array.
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
    _gemm(act, weights, target, row_scale, act_scale, bias, isa=isa, threads=threads)
    return out
