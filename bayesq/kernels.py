"""Python face of the C++ kernels (bayesq._kernels): validation first, then the native call.

The native functions take arrays without conversion (a wrong dtype or a strided view would be
refused with nanobind's TypeError listing every signature); the wrappers here check every argument
first, type and range, and raise ValueError naming the argument and what was expected (also for a
wrong type: one exception class for all bad input, as the rest of the package does).

Threads: every `threads=` is at most `MAX_THREADS` (4 x the CPU count); the native pool never
holds more threads than that, whatever it is asked for (csrc/thread_pool.h).

Bit-serial inference: `pack_weights` and `pack_activations` turn integer codes into bit planes
(`BitPlanes`), `bitserial_matmul` multiplies two packed matrices (see csrc/bitpack.h and
csrc/bitserial_gemm.h for the layout and the arithmetic).
"""

from __future__ import annotations

import math
import numbers
import reprlib

import numpy as np
import torch

from . import _kernels

__all__ = [
    "MAX_THREADS",
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


MAX_THREADS: int = _kernels.max_threads()
"""The most threads a kernel call may use: 4 x the CPU count (csrc/thread_pool.h's bound on its
pool; `threads` beyond it is refused with ValueError)."""

ISAS = ("portable", "avx2", "avx512")


def _is_int(v) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_)


def check_threads(threads, what: str) -> int:
    """`threads` as an int in 1..MAX_THREADS; else ValueError naming `what` (the caller)."""
    if not _is_int(threads) or not 1 <= threads <= MAX_THREADS:
        raise ValueError(
            f"{what}: threads must be an int in 1..{MAX_THREADS} (4 x the CPU count), "
            f"got {threads!r}"
        )
    return int(threads)


_FEATURES = _kernels.cpu_features()
# The paths this CPU runs: the training kernels (KL, noise) need AVX2 / AVX-512F; the bit-serial
# ones AVX2 / AVX-512 F, BW, VL and VPOPCNTDQ (csrc/bitpack.h).
_TRAINING_ISAS = tuple(
    isa
    for isa, ok in (
        ("portable", True),
        ("avx2", _FEATURES["avx2"]),
        ("avx512", _FEATURES["avx512f"]),
    )
    if ok
)
_BITSERIAL_ISAS = tuple(_kernels.bitserial_isas())


def check_isa(isa, what: str, bitserial: bool = False) -> str | None:
    """`isa` as None (dispatch) or a path this CPU runs (bit-serial paths if `bitserial`)."""
    if isa is not None and (not isinstance(isa, str) or isa not in ISAS):
        raise ValueError(f"{what}: isa must be None, 'portable', 'avx2' or 'avx512', got {isa!r}")
    available = _BITSERIAL_ISAS if bitserial else _TRAINING_ISAS
    if isa is not None and isa not in available:
        raise ValueError(
            f"{what}: isa {isa!r} is not available on this CPU (it runs {', '.join(available)})"
        )
    return isa


def _check_tensor(t, name: str, what: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{what}: {name} must be a torch tensor, got {type(t).__name__}")
    return t


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
        _check_tensor(t, name, what)
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
    _check_tensor(scale, "scale", "multi_spike_kl")
    if scale.dim() != 0:
        raise ValueError(
            f"multi_spike_kl: scale must be a 0-d tensor, got shape {tuple(scale.shape)}"
        )
    r = float(scale.detach())
    if not r > 0 or not math.isfinite(r):
        raise ValueError(f"multi_spike_kl: scale must be finite and > 0, got {r}")
    if not _is_int(num_levels) or num_levels < 1 or num_levels > 15 or num_levels % 2 == 0:
        raise ValueError(
            f"multi_spike_kl: num_levels must be an odd int, 1 to 15, got {num_levels!r}"
        )
    check_isa(isa, "multi_spike_kl")
    flat = _MultiSpikeKL.apply(
        theta.contiguous().view(-1), log_sigma2.contiguous().view(-1), scale, int(num_levels), isa
    )
    return flat.view(theta.shape)


_FLOAT32_MAX = float(np.finfo(np.float32).max)
_MAX_NOISE_VALUES = 2**33  # per call: the generator's pair counter is 32 bits (normal_rng.h)


def standard_normal(shape, generator: torch.Generator | None = None, isa: str | None = None):
    """A float32 CPU tensor of independent N(0, 1) draws from the C++ counter-based generator.

    The 64-bit seed is drawn from torch's generator (the default one unless `generator` is
    given), so `torch.manual_seed` makes the draws reproducible. Values are bounded by 5.77 in
    magnitude (24-bit uniforms in Box-Muller; P(|z| > 5.77) = 8e-9 under N(0, 1)).
    """
    what = "standard_normal"
    dims = (shape,) if _is_int(shape) else shape
    if not isinstance(dims, tuple | list | torch.Size) or not all(
        _is_int(d) and d >= 0 for d in dims
    ):
        raise ValueError(f"{what}: shape must be an int >= 0 or a sequence of them, got {shape!r}")
    if math.prod(int(d) for d in dims) > _MAX_NOISE_VALUES:
        raise ValueError(f"{what}: shape {tuple(dims)} has more than 2^33 values")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"{what}: generator must be None or a torch.Generator")
    check_isa(isa, what)
    out = torch.empty(tuple(int(d) for d in dims), dtype=torch.float32)
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
        invalid = _kernels.lrt_sample(
            mean.detach().view(-1), var.detach().view(-1), out.view(-1), dout_dvar.view(-1),
            seed, floor, isa, kernel_threads(),
        )  # fmt: skip
        if invalid:
            raise ValueError(_lrt_failure(mean.detach(), var.detach(), floor))
        ctx.save_for_backward(dout_dvar)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (dout_dvar,) = ctx.saved_tensors
        grad_var = grad_out * dout_dvar if ctx.needs_input_grad[1] else None
        return grad_out, grad_var, None, None, None


def _lrt_failure(mean: torch.Tensor, var: torch.Tensor, floor: float) -> str:
    """Why the kernel flagged a sample (only computed once it has): the first cause found."""
    what = "local_reparameterization_sample"
    checks = (
        ((var < 0).sum(), "var has {} negative entries (a variance must be >= 0)"),
        ((~torch.isfinite(var)).sum(), "var has {} NaN or infinite entries"),
        ((~torch.isfinite(mean)).sum(), "mean has {} NaN or infinite entries"),
        ((var + floor == 0).sum(), "var + floor is 0 at {} entries (use floor > 0)"),
    )
    for count, message in checks:
        if int(count):
            return f"{what}: " + message.format(int(count))
    return f"{what}: the sample overflows float32 (|mean| or var near 3.4e38)"


def local_reparameterization_sample(
    mean: torch.Tensor, var: torch.Tensor, floor: float = 1e-8, isa: str | None = None
) -> torch.Tensor:
    """A draw of N(mean, var + floor) per element, differentiable in mean and var (fused C++).

    mean, var: float32 CPU tensors of one shape (pre-activation means and variances of a layer);
    var >= 0 and both finite. floor: a finite number >= 0 (float32), added to var so that the
    slope z / (2 sqrt(var + floor)) stays finite where var = 0. A negative variance or floor, a
    NaN or infinite entry, or var + floor = 0 raises ValueError: the kernel finds them in the
    pass that draws the sample (integer tests on the bit patterns, in registers), so the check
    costs no extra pass over the arrays; only then is the cause looked up.
    The seed comes from torch's generator, so torch.manual_seed makes draws reproducible.
    """
    what = "local_reparameterization_sample"
    _check_float32_pair(what, mean=mean, var=var)
    if not _is_real(floor) or not 0 <= floor <= _FLOAT32_MAX:
        raise ValueError(f"{what}: floor must be a finite number >= 0 (float32), got {floor!r}")
    check_isa(isa, what)
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
    return list(_BITSERIAL_ISAS)


class BitPlanes:
    """A (rows, k) matrix of integer codes packed into bit planes, row r with bits[r] planes.

    Made only by `pack_weights`, `pack_activations` and `quantize_activations`: calling
    BitPlanes(...) raises TypeError. The object is frozen (no attribute can be set) and its
    arrays are read-only, so its fields always describe the codes the packer checked: the int32
    overflow bound (from `max_bits`), the zero bits past k and the row sums that the product
    relies on cannot be set by hand. (Forcing a write with numpy's flags or object.__setattr__ is
    not guarded; the native side still checks every size it indexes with, csrc/bitpack.h.)

    The arrays follow csrc/bitpack.h: `planes` is uint64 (plane rows + 8 zero padding rows,
    words), words = k rounded up to 512 bits; row r's planes are plane rows plane_offsets[r] ..
    plane_offsets[r + 1] - 1, least significant first; row_sums: int64 (rows,), the sum of each
    row's codes. mode: "unsigned" (0 .. 2^b - 1), "signed" (two's complement, -2^(b-1) ..
    2^(b-1) - 1) or "pm1" ({-1, +1}, one plane, bit 1 = +1). A row of 0 planes is all zeros
    (pruned). max_bits: the widest row's number of planes.
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
            self.planes, self.plane_offsets, self.row_sums, self.k, _MODE_CODE[self.mode], out
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
    bad = _kernels.pack_bit_planes(codes, offsets, _MODE_CODE[mode], planes, row_sums, isa)
    if bad:
        raise ValueError(
            f"{what}: {bad} codes lie outside the range of their row's bit width in mode {mode!r}"
        )
    return _bit_planes(planes, offsets, row_sums, k, mode, max_bits)


def _check_codes(codes, mode: str, what: str) -> np.ndarray:
    """codes as a C-contiguous 2-D numpy array of the mode's byte type; read-only arrays are
    fine (nothing writes to them)."""
    if not isinstance(mode, str) or mode not in BITSERIAL_MODES:
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
    check_isa(isa, "pack_weights", bitserial=True)
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
    check_isa(isa, "pack_activations", bitserial=True)
    top = 1 if mode == "pm1" else 8
    if not _is_int(bits) or not 1 <= bits <= top:
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
    if not isinstance(mode, str) or mode not in BITSERIAL_MODES:
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
    threads = check_threads(threads, what)
    check_isa(isa, what, bitserial=True)
    rows, k = x.shape
    if _is_real(scale):  # the per-call path at batch 1: plain float checks, no array passes
        value = _real_or_inf(scale)
        scales = np.array([value if 0 < value <= _FLOAT32_MAX else 0.0], dtype=np.float32)
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
        x, scales, bits, _MODE_CODE[mode], planes, row_sums, isa, threads
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
        act.planes, act.plane_offsets, act.row_sums, _MODE_CODE[act.mode],
        weights.planes, weights.plane_offsets, weights.row_sums, _MODE_CODE[weights.mode],
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
    if broadcast and (_is_real(x) or isinstance(x, bool | np.bool_)):
        if not _is_real(x) or not abs(float(_real_or_inf(x))) <= _FLOAT32_MAX:
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
        if not (np.abs(v.astype(np.float64)) <= _FLOAT32_MAX).all():
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
