"""Incremental Network Quantization (Zhou et al., ICLR 2017): weights to zero or powers of two,
one growing group at a time, the rest retrained in between.

Levels (Eq. 1): P_l = {+-2^n1, ..., +-2^n2, 0}, with n1 from the layer's largest weight (Eq. 2)
and n2 from the bit width (Eq. 3): :func:`inq_exponents`. Each weight goes to the level of its
interval (Eq. 4): :func:`inq_quantize`. Training alternates three operations (Sec. 2.2): partition
the weights that are still float into a group to quantize now and a group to retrain, the largest
magnitudes quantized first (the "pruning-inspired" partition, :func:`inq_partition`); quantize the
first group (:func:`freeze_`); retrain the second, with the update masked to 0 on the quantized
weights (:func:`mask_frozen_grad_`). The accumulated portions of quantized weights are those of the
paper's experiments, :data:`INQ_PORTIONS`; :class:`InqSchedule` holds the state of a whole net.

Export: :func:`inq_codes` gives signed integer codes sign * 2^(n - n2) and the scale 2^n2.

References:
    A. Zhou, A. Yao, Y. Guo, L. Xu, Y. Chen. Incremental Network Quantization: Towards Lossless
    CNNs with Low-Precision Weights. ICLR 2017 (arXiv:1702.03044).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from ..checks import integer, number, tensor, weight_tensor

__all__ = [
    "INQ_PORTIONS",
    "InqSchedule",
    "freeze_",
    "inq_codes",
    "inq_exponents",
    "inq_levels",
    "inq_partition",
    "inq_quantize",
    "mask_frozen_grad_",
]

INQ_PORTIONS = (0.5, 0.75, 0.875, 1.0)
"""Accumulated portions of quantized weights after each step (the paper's experiments)."""

MAX_BITS = 7  # beyond 7 bits, n1 - n2 = 2^(b-2) - 1 and the codes 2^(n1 - n2) overflow int64


def _check_frozen(frozen, w: torch.Tensor) -> torch.Tensor:
    tensor("frozen", frozen)
    if frozen.dtype != torch.bool:
        raise TypeError(f"frozen must be a bool tensor, got {frozen.dtype}")
    if frozen.shape != w.shape:
        raise ValueError(f"frozen has shape {tuple(frozen.shape)}, the weight {tuple(w.shape)}")
    return frozen


def _check_exponents(n1, n2, dtype: torch.dtype) -> tuple[int, int]:
    """n1 >= n2, integers, with every level and interval bound a normal number of `dtype`."""
    for name, n in (("n1", n1), ("n2", n2)):
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"{name} must be an integer exponent, got {type(n).__name__}")
    if n1 < n2:
        raise ValueError(f"n1 must be >= n2, got n1 = {n1}, n2 = {n2}")
    info = torch.finfo(dtype)
    smallest = math.frexp(info.tiny)[1] - 1  # tiny = 2^smallest
    largest = math.frexp(info.max)[1]  # max < 2^largest
    # the lowest bound is 2^(n2 - 1); the highest value compared is 3/2 * 2^n1 < 2^(n1 + 1)
    if n2 - 1 < smallest or n1 + 1 >= largest:
        raise ValueError(
            f"levels 2^{n2} .. 2^{n1} do not fit {dtype} (exponents {smallest + 1} .. {largest - 2})"
        )
    return n1, n2


def inq_exponents(w: torch.Tensor, bits: int) -> tuple[int, int]:
    """(n1, n2): the largest and smallest exponent of INQ's levels for weight `w` at `bits` bits.

    n1 = floor(log2(4 s / 3)), s = max|W| (Eq. 2), so that the largest weight lies in the top
    level's interval [3/4 2^n1, 3/2 2^n1) of Eq. 4; n2 = n1 + 1 - 2^(b-1) / 2 (Eq. 3): of the b
    bits one stands for zero, the other b - 1 index 2^(b-1) values +-2^n, n2 <= n <= n1. `bits`
    is in [2, 7] (2 bits: the ternary {0, +-2^n1}). Computed exactly: 4s/3 >= 2^n iff s >= 3 2^(n-2).

    >>> inq_exponents(torch.tensor([[0.75, -0.1]]), bits=5)
    (0, -7)
    """
    weight_tensor("w", w)
    bits = integer("bits", bits, minimum=2)
    if bits > MAX_BITS:
        raise ValueError(f"bits must be in [2, {MAX_BITS}], got {bits}")
    s = float(w.detach().abs().amax())
    if s == 0.0:
        raise ValueError("w is all zero: INQ's n1 (Eq. 2) needs a nonzero largest weight")
    mantissa, exponent = math.frexp(s)  # s = mantissa * 2^exponent, mantissa in [0.5, 1)
    n1 = exponent if mantissa >= 0.75 else exponent - 1
    n2 = n1 + 1 - 2 ** (bits - 1) // 2
    return n1, n2


def inq_levels(n1: int, n2: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The non-negative levels [0, 2^n2, 2^(n2+1), ..., 2^n1] of P_l (Eq. 1), ascending."""
    _check_exponents(n1, n2, dtype)
    return torch.tensor([0.0] + [math.ldexp(1.0, n) for n in range(n2, n1 + 1)], dtype=dtype)


def inq_quantize(w: torch.Tensor, n1: int, n2: int) -> torch.Tensor:
    """Each weight to its INQ level (Eq. 4), the shape and dtype of w; not differentiable.

    W_hat = beta sign(W) where (alpha + beta) / 2 <= |W| < 3 beta / 2, for alpha, beta adjacent
    levels of the sorted non-negative set {0, 2^n2, ..., 2^n1}: the nearest level by distance.
    Ties (|W| exactly halfway between two levels) go to the larger magnitude, the closed lower end
    of Eq. 4's interval; |W| < 2^(n2 - 1), halfway to the smallest level, gives 0. Eq. 4 would give 0
    above the top interval (|W| >= 3/2 2^n1); that never happens with n1 of :func:`inq_exponents`
    for the weights it was computed from, and for other inputs (a retrained weight that grew) we
    saturate at 2^n1 instead, the nearest level.

    >>> inq_quantize(torch.tensor([[0.1, 0.125, 0.3749, 0.375, -0.75, 2.0]]), 0, -2).tolist()
    [[0.0, 0.25, 0.25, 0.5, -1.0, 1.0]]
    """
    weight_tensor("w", w)
    levels = inq_levels(n1, n2, w.dtype).to(w.device)
    # interval lower bounds (alpha + beta) / 2: 2^(n2-1), then 3 2^(n-2) for n2 < n <= n1; all
    # exact in binary floating point, so comparisons against them are exact
    bounds = (levels[:-1] + levels[1:]) / 2
    with torch.no_grad():
        a = w.detach().abs()
        index = torch.bucketize(a, bounds, right=True)  # number of bounds <= |w|
        return torch.sign(w.detach()) * levels[index]


def _code_dtype(width: int) -> torch.dtype:
    """The smallest signed integer dtype of at least `width` bits."""
    for dtype in (torch.int8, torch.int16, torch.int32, torch.int64):
        if torch.iinfo(dtype).bits >= width:
            return dtype
    raise ValueError(f"codes of {width} bits do not fit int64")


def inq_codes(w: torch.Tensor, n1: int, n2: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, scale): integer codes sign(W) 2^(n - n2) (0 for the zero level) and the 0-d scale
    2^n2 in w's dtype, so that ``codes * scale`` equals :func:`inq_quantize` (w, n1, n2).

    The codes lie in [-2^(n1-n2), 2^(n1-n2)] and need n1 - n2 + 2 bits signed (2^(b-2) + 1 bits
    at b bits: 9 at the paper's 5 bits); the dtype is the smallest of int8/16/32/64 that holds them.

    >>> codes, scale = inq_codes(torch.tensor([[0.3, -1.0, 0.05]]), 0, -2)
    >>> codes.tolist(), float(scale)
    ([[1, -4, 0]], 0.25)
    """
    q = inq_quantize(w, n1, n2)
    dtype = _code_dtype(n1 - n2 + 2)
    codes = (q * math.ldexp(1.0, -n2)).to(dtype)  # exact: q is 0 or +-2^n, n >= n2
    return codes, torch.tensor(math.ldexp(1.0, n2), dtype=w.dtype)


def inq_partition(w: torch.Tensor, frozen: torch.Tensor, portion: float) -> torch.Tensor:
    """The frozen (quantized) set grown to round(portion * numel) weights: a new bool tensor.

    The weights added are the largest |w| among those not yet frozen (the paper's pruning-inspired
    partition, Sec. 2.2: large weights matter most and are quantized first); those already frozen
    stay frozen. round is half up; ties in |w| go to the lower flat index. ``portion`` is the
    accumulated portion, in (0, 1], and may not ask for fewer weights than are already frozen.

    >>> w = torch.tensor([[0.1, -0.9, 0.5, 0.3]])
    >>> inq_partition(w, torch.zeros(1, 4, dtype=torch.bool), 0.5).tolist()
    [[False, True, True, False]]
    """
    weight_tensor("w", w)
    _check_frozen(frozen, w)
    portion = number("portion", portion)
    if not 0.0 < portion <= 1.0:
        raise ValueError(f"portion must be in (0, 1], got {portion}")
    target = math.floor(portion * w.numel() + 0.5)
    current = int(frozen.sum())
    if target < current:
        raise ValueError(
            f"portion {portion} asks for {target} frozen weights, but {current} are frozen already"
        )
    flat = frozen.flatten().clone()
    # frozen weights sort last (score -1 < any |w|); the stable sort keeps index order in ties
    score = w.detach().abs().flatten().masked_fill(flat, -1.0)
    order = torch.sort(score, descending=True, stable=True).indices
    flat[order[: target - current]] = True
    return flat.view(w.shape)


@torch.no_grad()
def freeze_(weight: torch.Tensor, frozen: torch.Tensor, n1: int, n2: int) -> torch.Tensor:
    """Set the frozen entries of `weight` in place to their INQ level (Eq. 4); returns `weight`.

    Call it once, when the group is frozen. A masked gradient does not stop momentum or weight
    decay from moving a frozen weight afterwards, possibly across an interval of Eq. 4, so that
    quantizing it again could pick another level: :meth:`InqSchedule.restore_` puts back the
    values stored at freezing instead.
    """
    weight_tensor("weight", weight)
    _check_frozen(frozen, weight)
    weight.copy_(torch.where(frozen, inq_quantize(weight, n1, n2), weight))
    return weight


def mask_frozen_grad_(weight: torch.Tensor, frozen: torch.Tensor) -> None:
    """Zero ``weight.grad`` where `frozen` (in place): the update W <- W - gamma dE/dW * T with T = 0
    on the quantized group and 1 on the retrained one (Sec. 2.2). No-op when there is no grad."""
    tensor("weight", weight)
    _check_frozen(frozen, weight)
    if weight.grad is not None:
        weight.grad.masked_fill_(frozen, 0.0)


class InqSchedule:
    """INQ's state over the weights of a net: exponents, frozen sets and the step reached.

    ``weights`` are the layers' weight tensors (Parameters, updated in place), ``bits`` the bit
    width of Eq. 3, ``portions`` the accumulated portions (increasing, ending at 1.0). The exponents
    (n1, n2) are fixed at construction from the weights then (the pre-trained net: Eq. 2 reads its
    largest weight). A training loop::

        schedule = InqSchedule([layer.weight for layer in layers], bits=5)
        while not schedule.done:
            schedule.advance_()              # partition, then quantize the new group
            for x, y in batches:             # retrain the float group
                loss(net(x), y).backward()
                schedule.mask_grads_()       # before the step: frozen weights get no gradient
                optimizer.step(); optimizer.zero_grad()
                schedule.restore_()          # after it: undo momentum / weight decay on them

    After the last ``advance_()`` every weight is quantized and no retraining is needed. The
    schedule keeps one copy of each weight, the frozen levels that ``restore_`` writes back.
    """

    def __init__(
        self, weights: Iterable[torch.Tensor], bits: int, portions: Sequence[float] = INQ_PORTIONS
    ) -> None:
        self.weights = list(weights)
        if not self.weights:
            raise ValueError("weights is empty: give the weight tensors to quantize")
        for i, w in enumerate(self.weights):
            weight_tensor(f"weights[{i}]", w)
        self.portions = tuple(number("portions", p) for p in portions)
        if (
            not self.portions
            or any(not 0.0 < p <= 1.0 for p in self.portions)
            or any(b <= a for a, b in zip(self.portions, self.portions[1:], strict=False))
            or self.portions[-1] != 1.0
        ):
            raise ValueError(
                f"portions must increase strictly within (0, 1] and end at 1.0, got {portions}"
            )
        self.bits = bits
        self.exponents = [inq_exponents(w, bits) for w in self.weights]
        self.frozen = [
            torch.zeros(w.shape, dtype=torch.bool, device=w.device) for w in self.weights
        ]
        # the quantized values, read where frozen: what restore_ writes back
        self.values = [w.detach().clone() for w in self.weights]
        self.stage = 0

    @property
    def done(self) -> bool:
        """True once every portion has been quantized (the last one being all weights)."""
        return self.stage == len(self.portions)

    @property
    def portion(self) -> float:
        """The accumulated portion quantized so far (0.0 before the first step)."""
        return self.portions[self.stage - 1] if self.stage else 0.0

    def advance_(self) -> float:
        """Grow every frozen set to the next portion and quantize it; returns that portion."""
        if self.done:
            raise RuntimeError("every portion is quantized already")
        portion = self.portions[self.stage]
        self.restore_()  # the frozen group at its levels, whatever happened since the last step
        for i, w in enumerate(self.weights):
            self.frozen[i] = inq_partition(w, self.frozen[i], portion)
            freeze_(
                w, self.frozen[i], *self.exponents[i]
            )  # levels stay levels: Eq. 4 is idempotent
            self.values[i] = w.detach().clone()
        self.stage += 1
        return portion

    def mask_grads_(self) -> None:
        """:func:`mask_frozen_grad_` on every weight (call between backward and the step)."""
        for w, frozen in zip(self.weights, self.frozen, strict=True):
            mask_frozen_grad_(w, frozen)

    @torch.no_grad()
    def restore_(self) -> None:
        """Write the stored levels back into the frozen entries (call after the optimizer step)."""
        for w, frozen, values in zip(self.weights, self.frozen, self.values, strict=True):
            w.copy_(torch.where(frozen, values, w))

    def frozen_counts(self) -> list[int]:
        """The number of quantized weights of each tensor."""
        return [int(f.sum()) for f in self.frozen]
