"""Low-precision number formats of training, simulated on floats: fixed point, dynamic fixed point
(Courbariaux et al. 2014) and the base-2 logarithmic representation (Miyashita et al. 2016).

* Fixed point (:func:`fixed_point`): `bits`-bit two's complement integers times 2^-f, f =
  ``fraction_bits`` the bits after the radix point; round to nearest or stochastically, saturate.
* Dynamic fixed point: fixed point whose f is shared by a group of numbers (a layer's weights, its
  biases, its outputs, their gradients) and moved during training from the group's overflow rate
  (:func:`overflow_rate`, :func:`update_fraction_bits`, :class:`DynamicFixedPoint`). Courbariaux et
  al. propagate at one width and store the parameters updated at a larger one (10 and 12 bits in
  their dynamic fixed point runs): :func:`round_parameters_` rounds stored parameters in place.
* Logarithmic (:func:`log_quantize`): 0 or +-2^e with e an integer of a `bits`-wide window that
  ends at the full scale range ``fsr``.

Export: :func:`fixed_point_codes` and :func:`log_codes` give integer codes and a 0-d scale with
``codes * scale`` equal to the quantized value.

References:
    M. Courbariaux, Y. Bengio, J.-P. David. Training deep neural networks with low precision
    multiplications. ICLR 2015 workshop (arXiv:1412.7024).
    D. Miyashita, E. H. Lee, B. Murmann. Convolutional Neural Networks using Logarithmic Data
    Representation. arXiv:1603.01025 (2016).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from ..checks import integer, number, tensor

__all__ = [
    "DynamicFixedPoint",
    "FixedPointRound",
    "LogQuantize",
    "fixed_point",
    "fixed_point_codes",
    "log_codes",
    "log_quantize",
    "overflow_rate",
    "round_parameters_",
    "update_fraction_bits",
]

MAX_BITS = 32
FRACTION_BITS_RANGE = (-64, 64)  # 2^-f stays a normal float32 number and so does 2^(bits-1-f)
_SQRT_HALF = math.sqrt(0.5)  # round(log2 m) for m in [1/2, 1) is 0 iff m >= 2^(-1/2)


def _check_values(name: str, x) -> torch.Tensor:
    tensor(name, x)
    if not torch.is_floating_point(x):
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if not bool(torch.isfinite(x.detach()).all()):
        raise ValueError(f"{name} contains NaN or infinity")
    return x


def _check_format(bits, fraction_bits) -> tuple[int, int]:
    bits = integer("bits", bits, minimum=2)
    if bits > MAX_BITS:
        raise ValueError(f"bits must be in [2, {MAX_BITS}], got {bits}")
    lo, hi = FRACTION_BITS_RANGE
    fraction_bits = integer("fraction_bits", fraction_bits, minimum=lo)
    if fraction_bits > hi:
        raise ValueError(f"fraction_bits must be in [{lo}, {hi}], got {fraction_bits}")
    return bits, fraction_bits


def _check_exact(bits: int, dtype: torch.dtype) -> None:
    """Every `bits`-bit integer must be a `dtype` number, or the grid itself is not simulated."""
    digits = 2 - math.frexp(torch.finfo(dtype).eps)[1]  # significand bits: eps = 2^(1 - digits)
    if bits > digits + 1:
        raise ValueError(
            f"{dtype} holds integers exactly up to 2^{digits}: bits must be <= {digits + 1}"
        )


def _code_dtype(width: int) -> torch.dtype:
    """The smallest signed integer dtype of at least `width` bits."""
    for dtype in (torch.int8, torch.int16, torch.int32, torch.int64):
        if torch.iinfo(dtype).bits >= width:
            return dtype
    raise ValueError(f"codes of {width} bits do not fit int64")


# --- fixed point ----------------------------------------------------------------------------------
class FixedPointRound(torch.autograd.Function):
    """Fixed-point rounding with a straight-through gradient (Courbariaux et al. 2014).

    Forward: clamp(R(x 2^f), -2^(b-1), 2^(b-1) - 1) 2^-f, R round-to-nearest with ties away from
    zero (Theano's round, the paper's tool) or unbiased stochastic rounding (P(up) = the fraction
    of the way to the upper neighbour). Backward: the gradient passes where x lies in the
    representable interval [-2^(b-1), 2^(b-1) - 1] 2^-f and is 0 outside it, where saturation
    flattens the function.
    """

    @staticmethod
    def forward(ctx, x, bits: int, fraction_bits: int, stochastic: bool, generator):
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        scaled = x * math.ldexp(1.0, fraction_bits)  # exact: a power of two (or +-inf)
        ctx.save_for_backward((scaled >= lo) & (scaled <= hi))
        # one step past the range is enough to saturate; it also turns an overflow to +-inf into
        # a finite number before rounding (inf - trunc(inf) would be NaN)
        scaled = scaled.clamp(lo - 1, hi + 1)
        if stochastic:
            below = torch.floor(scaled)
            u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            rounded = below + (u < scaled - below).to(x.dtype)  # scaled - below is exact
        else:
            whole = torch.trunc(scaled)
            frac = scaled - whole  # exact, so a tie is seen as one at any magnitude
            rounded = whole + torch.sign(frac) * (frac.abs() >= 0.5).to(x.dtype)
        return rounded.clamp(lo, hi) * math.ldexp(1.0, -fraction_bits)

    @staticmethod
    def backward(ctx, grad_output):
        (inside,) = ctx.saved_tensors
        return grad_output * inside.to(grad_output.dtype), None, None, None, None


def fixed_point(
    x: torch.Tensor,
    bits: int,
    fraction_bits: int,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """x in `bits`-bit two's complement fixed point with `fraction_bits` bits after the point.

    Values are integers k in [-2^(b-1), 2^(b-1) - 1] times the step 2^-f; x outside that range
    saturates (Courbariaux et al. 2014: fixed point with saturating arithmetic). Rounding
    is to nearest, ties away from zero, or unbiased stochastic (``stochastic=True``, draws from
    `generator`). Any shape; the dtype of x. Straight-through gradient inside the range, 0 where
    saturated (:class:`FixedPointRound`). f may be negative (a step above 1) or exceed `bits`.
    `bits` is in [2, 32] and at most what x's dtype holds exactly (25 for float32, 32 for float64).

    >>> fixed_point(torch.tensor([0.1, 0.125, -0.125, 1.8, -2.1]), bits=4, fraction_bits=2).tolist()
    [0.0, 0.25, -0.25, 1.75, -2.0]
    """
    _check_values("x", x)
    bits, fraction_bits = _check_format(bits, fraction_bits)
    _check_exact(bits, x.dtype)
    return FixedPointRound.apply(x, bits, fraction_bits, bool(stochastic), generator)


def fixed_point_codes(
    x: torch.Tensor,
    bits: int,
    fraction_bits: int,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, scale): the integers k of :func:`fixed_point` (same arguments; with the same seeded
    `generator` for stochastic rounding) in the smallest signed dtype of `bits` bits or more, and
    the 0-d scale 2^-f in x's dtype, so that ``codes * scale`` equals the fixed-point value."""
    with torch.no_grad():
        q = fixed_point(x, bits, fraction_bits, stochastic, generator)
        codes = (q * math.ldexp(1.0, fraction_bits)).to(_code_dtype(bits))
    return codes, torch.tensor(math.ldexp(1.0, -fraction_bits), dtype=x.dtype)


# --- dynamic fixed point --------------------------------------------------------------------------
def overflow_rate(x: torch.Tensor, bits: int, fraction_bits: int) -> float:
    """The fraction of entries of x outside the representable interval [-2^(b-1), 2^(b-1) - 1] 2^-f:
    those that saturation changes by more than rounding (and whose gradient is cut)."""
    _check_values("x", x)
    bits, fraction_bits = _check_format(bits, fraction_bits)
    _check_exact(bits, x.dtype)
    if x.numel() == 0:
        raise ValueError("x is empty: an overflow rate needs at least one value")
    scaled = x.detach() * math.ldexp(1.0, fraction_bits)
    outside = (scaled < -(2 ** (bits - 1))) | (scaled > 2 ** (bits - 1) - 1)
    return float(outside.sum()) / x.numel()


def update_fraction_bits(
    x: torch.Tensor, bits: int, fraction_bits: int, max_overflow_rate: float = 1e-4
) -> int:
    """The group's next fraction_bits from its values x: one step of the scaling-factor update of
    dynamic fixed point (Courbariaux et al. 2014; their maximum overflow rate is 0.01%).

    * if the overflow rate at f exceeds `max_overflow_rate` (strictly), widen the range: f - 1;
    * else, if twice the values would still fit, i.e. the overflow rate at f + 1 is at most
      `max_overflow_rate`, narrow the range for one more bit of precision: f + 1;
    * else keep f.

    One step per call, as the paper moves its scaling factors during training; call it once per
    update period (a number of examples) on the values the group saw. The result stays within
    FRACTION_BITS_RANGE. Overflow is counted as in :func:`overflow_rate`: entries outside the
    representable interval (the authors' code counts |x| >= the largest value; the two differ only
    for entries exactly at the top of the range).

    >>> x = torch.tensor([3.0, 0.1])  # 3.0 > 1.75, the top of 4 bits with f = 2
    >>> update_fraction_bits(x, 4, 2), update_fraction_bits(torch.tensor([0.5, -0.25]), 4, 2)
    (1, 3)
    """
    rate = number("max_overflow_rate", max_overflow_rate)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"max_overflow_rate must be in [0, 1), got {max_overflow_rate}")
    lo, hi = FRACTION_BITS_RANGE
    if overflow_rate(x, bits, fraction_bits) > rate:
        return max(fraction_bits - 1, lo)
    if fraction_bits < hi and overflow_rate(x, bits, fraction_bits + 1) <= rate:
        return fraction_bits + 1
    return fraction_bits


class DynamicFixedPoint:
    """The state of one dynamic fixed point group: `bits` and its shared `fraction_bits`.

    ``dfp(x)`` quantizes with :func:`fixed_point` at the current f (straight-through gradient), and
    ``dfp.update(x)`` moves f one step by :func:`update_fraction_bits`. For a gradient group,
    quantize in a tensor hook: ``t.register_hook(dfp)``.

    >>> dfp = DynamicFixedPoint(bits=8, fraction_bits=7)
    >>> dfp.update(torch.tensor([3.0, -1.0])), dfp(torch.tensor([3.0])).tolist()
    (6, [1.984375])
    """

    def __init__(
        self,
        bits: int,
        fraction_bits: int,
        max_overflow_rate: float = 1e-4,
        stochastic: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        self.bits, self.fraction_bits = _check_format(bits, fraction_bits)
        rate = number("max_overflow_rate", max_overflow_rate)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"max_overflow_rate must be in [0, 1), got {max_overflow_rate}")
        self.max_overflow_rate = rate
        self.stochastic = bool(stochastic)
        self.generator = generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return fixed_point(x, self.bits, self.fraction_bits, self.stochastic, self.generator)

    def update(self, x: torch.Tensor) -> int:
        """Move fraction_bits one step from the values x; returns the new fraction_bits."""
        self.fraction_bits = update_fraction_bits(
            x, self.bits, self.fraction_bits, self.max_overflow_rate
        )
        return self.fraction_bits

    def codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`fixed_point_codes` at the current format (round to nearest)."""
        return fixed_point_codes(x, self.bits, self.fraction_bits)

    def __repr__(self) -> str:
        return f"DynamicFixedPoint(bits={self.bits}, fraction_bits={self.fraction_bits})"


@torch.no_grad()
def round_parameters_(
    params: Iterable[torch.Tensor],
    bits: int,
    fraction_bits: int | Sequence[int],
    stochastic: bool = False,
    generator: torch.Generator | None = None,
) -> None:
    """Round stored parameters in place to the update width, after an optimizer step.

    Courbariaux et al. keep two widths: the propagations use fewer bits than the stored parameters
    that the updates accumulate into (small updates would vanish at the propagation width).
    `fraction_bits` is one f for all or one per parameter (each its dynamic group's f).
    """
    params = list(params)
    for i, p in enumerate(params):
        _check_values(f"params[{i}]", p)
    # a single value (checked by fixed_point, like each entry of a sequence) or one per parameter
    is_seq = isinstance(fraction_bits, Sequence)
    fractions = list(fraction_bits) if is_seq else [fraction_bits] * len(params)
    if len(fractions) != len(params):
        raise ValueError(f"{len(fractions)} fraction_bits for {len(params)} parameters")
    for p, f in zip(params, fractions, strict=True):
        p.copy_(fixed_point(p, bits, f, stochastic, generator))


# --- logarithmic representation -------------------------------------------------------------------
def _log_window(bits, fsr, signed: bool, dtype: torch.dtype) -> tuple[int, int]:
    """(e_min, e_max) = (fsr - 2^m + 1, fsr - 1), m = bits - signed: the exponents of the levels."""
    magnitude = integer("bits", bits, minimum=2 if signed else 1) - int(signed)
    if magnitude > 8:
        raise ValueError(f"bits must be in [{1 + signed}, {8 + signed}], got {bits}")
    if isinstance(fsr, bool) or not isinstance(fsr, int):
        raise TypeError(f"fsr must be an integer (the full scale range, a power of 2), got {fsr!r}")
    e_min, e_max = fsr - 2**magnitude + 1, fsr - 1
    info = torch.finfo(dtype)
    if e_min < math.frexp(info.tiny)[1] - 1 or e_max >= math.frexp(info.max)[1]:
        raise ValueError(f"levels 2^{e_min} .. 2^{e_max} are not normal {dtype} numbers")
    return e_min, e_max


class LogQuantize(torch.autograd.Function):
    """Miyashita et al.'s LogQuant (Eq. 3-4) with a straight-through gradient.

    Forward: 0 if x = 0, else sign(x) 2^x~ with x~ = Clip(Round(log2|x|), e_min - 1, e_max + 1),
    where Clip gives 0 (the value, not the exponent: underflow to zero) at or below its minimum and
    max - 1 at or above its maximum (Eq. 4). Round is exact in the log domain: with |x| = m 2^e,
    m in [1/2, 1), Round(log2|x|) = e if m >= 2^(-1/2) else e - 1 (no float log2 whose own rounding
    could move a value near a boundary; the exact tie 2^(k+1/2) is irrational, so never a float).
    Backward: the gradient passes where |x| <= 2^e_max, the largest level, and is 0 above it.
    """

    @staticmethod
    def forward(ctx, x, e_min: int, e_max: int):
        magnitude = x.abs()
        mantissa, exponent = torch.frexp(magnitude)
        up = mantissa.double() >= _SQRT_HALF
        rounded = exponent - (~up).to(exponent.dtype)
        # 2^rounded = |x| / mantissa or |x| / (2 mantissa), exactly: a representable quotient is
        # what correctly rounded division returns, so no pow (whose accuracy or dtype could
        # differ from x's) is needed; and 2^rounded never overflows where it is kept
        level = magnitude / torch.where(up, mantissa, 2 * mantissa)
        top = math.ldexp(1.0, e_max)
        level = torch.where(rounded > e_max, torch.full_like(x, top), level)
        zero = (magnitude == 0) | (rounded < e_min)  # also hides |x| / 0 = NaN at x = 0
        ctx.save_for_backward(magnitude <= top)
        return torch.where(zero, torch.zeros_like(x), torch.sign(x) * level)

    @staticmethod
    def backward(ctx, grad_output):
        (inside,) = ctx.saved_tensors
        return grad_output * inside.to(grad_output.dtype), None, None


def log_quantize(x: torch.Tensor, bits: int, fsr: int, signed: bool = False) -> torch.Tensor:
    """Base-2 logarithmic quantization (Miyashita et al. 2016, Eq. 3), the shape and dtype of x.

    LogQuant(x, bitwidth, FSR) = 0 if x = 0, else 2^Clip(Round(log2|x|), FSR - 2^bitwidth, FSR):
    the levels are 2^e for FSR - 2^m < e < FSR (2^m - 1 of them, plus 0: 2^m codes), where m =
    `bits` for ``signed=False`` and m = bits - 1 for ``signed=True``, whose extra bit is the sign.
    Values rounding to an exponent <= FSR - 2^m underflow to 0; those rounding to >= FSR saturate
    at 2^(FSR-1). ``signed=False`` is the paper's form for activations after a ReLU and takes
    x >= 0 only: a negative value raises ValueError (not silently zeroed). ``signed=True`` is for
    weights: sign(x) times the level of |x|. Straight-through gradient (:class:`LogQuantize`).

    >>> log_quantize(torch.tensor([0.0, 0.3, 0.36, 3.0, 2.0**-8]), bits=3, fsr=0).tolist()
    [0.0, 0.25, 0.5, 0.5, 0.0]
    """
    _check_values("x", x)
    e_min, e_max = _log_window(bits, fsr, bool(signed), x.dtype)
    if not signed and bool((x.detach() < 0).any()):
        raise ValueError("log_quantize with signed=False takes x >= 0 (activations after a ReLU)")
    return LogQuantize.apply(x, e_min, e_max)


def log_codes(
    x: torch.Tensor, bits: int, fsr: int, signed: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, scale): powers-of-two integer codes sign(x) 2^(e - e_min) (0 for zero) and the 0-d
    scale 2^e_min in x's dtype, e_min = FSR - 2^m + 1, so ``codes * scale`` equals
    :func:`log_quantize`.

    The codes reach 2^(2^m - 2): they need 2^m - 1 bits unsigned (activations) or 2^m bits signed
    (m = bits - signed). The dtype is the smallest signed one that holds 2^m bits: int8 at m = 3,
    int16 at 4, int32 at 5, int64 at 6; m >= 7 raises ValueError (quantize with :func:`log_quantize`
    and export the exponents instead).

    >>> codes, scale = log_codes(torch.tensor([0.5, 0.25, 0.0]), bits=3, fsr=0)
    >>> codes.tolist(), float(scale)
    ([64, 32, 0], 0.0078125)
    """
    q = log_quantize(x, bits, fsr, signed)
    e_min, _ = _log_window(bits, fsr, bool(signed), x.dtype)
    dtype = _code_dtype(2 ** (bits - int(bool(signed))))
    with torch.no_grad():
        codes = (q.detach() * math.ldexp(1.0, -e_min)).to(dtype)  # exact: powers of two
    return codes, torch.tensor(math.ldexp(1.0, e_min), dtype=x.dtype)
