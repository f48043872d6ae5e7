"""Run a discrete net on the native kernels, beside its PyTorch integer reference.

A discrete net (`DiscreteNet`) is a sequence of ops: quantized layers (`QuantizedLinear`,
`QuantizedConv2d`) and the float glue between them (the glue ops of `bayesq.ops`: ReLU, sign,
max and average pooling, flatten). Every quantized layer computes

    codes  = clamp(round(x / act_scale), lo, hi)             (act_bits; unsigned: lo = 0)
    y[n,m] = (codes[n] . W[m]) * row_scale[m] * act_scale + bias[m]

with integer weight codes W (per-row bit widths; 0 = a pruned row), exact integer products and
the scaling in float32, in that order. Two executions of the same net:

  * `DiscreteNet.forward` runs the whole net in one native call (`bayesq.net_plan`: a compiled
    plan, no Python and no torch between layers), the engine chosen per layer by its widths and
    shape (`QuantizedLinear.engine_for`): the bit-serial GEMM (`bayesq.bitserial`) for binary
    activations, the ternary 2-bit GEMM (`bayesq.lowbit_gemm`: VNNI, AMX, AVX2) for big ternary
    layers, the sparse ternary GEMM for mostly-zero ternary layers on AVX2 CPUs, the direct 8-bit
    GEMM of the runner for the rest; a layer's own `forward` is a plan of one layer;
  * `DiscreteNet.reference` runs the same arithmetic in plain PyTorch (round, clamp, int64
    matmul, the same float32 operations in the same order), slow and obvious.

The two give identical logits (the integer parts are exact; the float parts are the same IEEE
operations), which the tests assert. A glue op that the next layer's activation quantizer
already applies (`GlueOp.fuses_into`: unsigned codes clamp at 0, a ReLU; {-1, +1} codes take the
sign) is folded into that quantizer on the kernels; the reference keeps it explicit.

`DiscreteNet.without_dead_units` zeroes the rows whose outputs meet only zero weights downstream
(identical logits, less to store: `bayesq.dead_units`, `bayesq.sparse_codes`).

The one way to build a `DiscreteNet` from a posterior is `bayesq.quantize.quantize_posterior`;
`bayesq.artifact` saves and loads it. This module imports torch, the kernels and the op
vocabulary only: running a discrete net never imports Pyro or a trainer.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import _kernels, bitserial, kernels, lowbit_gemm
from .dead_units import units_read, without_rows
from .net_plan import ENGINES, NetPlan, is_ternary
from .ops import CODE_MODES, WEIGHT_MODES, code_range, glue_of, glue_spec, is_glue
from .quantizers import quantize_codes

__all__ = ["DiscreteNet", "QuantizedConv2d", "QuantizedLinear"]

# act_scale is applied in float32: it must be a positive normal float32, or the scaling would
# overflow to infinity or flush to zero (np.finfo(np.float32).tiny, .max)
MIN_ACT_SCALE, MAX_ACT_SCALE = 1.1754943508222875e-38, 3.4028234663852886e38


@dataclass(eq=False)
class QuantizedLinear:
    """y = (codes(x) @ weight_codes.T) * row_scale * act_scale + bias. Shapes as in nn.Linear.

    weight_codes: int8 (out, in), signed two's-complement codes (or -1/+1 for weight_mode
    "pm1"); row_bits: int64 (out,), the planes each row needs (0 = pruned row, all codes 0);
    row_scale, bias: float32 (out,); act_bits 1..8, act_mode "unsigned" / "signed" / "pm1",
    act_scale > 0. input_index: None, or int64 (k,) the input features the weight columns belong
    to, when columns whose weights are all zero (pruned) were dropped: the input is gathered to
    those k features first, which gives the same result with less work.
    """

    weight_codes: torch.Tensor
    row_bits: torch.Tensor
    row_scale: torch.Tensor
    bias: torch.Tensor
    act_bits: int
    act_mode: str
    act_scale: float
    weight_mode: str = "signed"
    input_index: torch.Tensor | None = None
    input_features: int | None = None  # the width of the input (default: the codes' columns)
    # native state made on first use; init=False: dataclasses.replace makes a layer without it
    _native: object = field(default=None, init=False, repr=False)
    _plan: object = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        codes = self.weight_codes
        if codes.dtype != torch.int8 or codes.dim() != 2:
            raise ValueError(
                f"weight_codes must be 2-D int8, got {codes.dtype} {tuple(codes.shape)}"
            )
        out_features = codes.shape[0]
        for name in ("row_scale", "bias"):
            v = getattr(self, name)
            if v.dtype != torch.float32 or v.shape != (out_features,):
                raise ValueError(
                    f"{name} must be float32 ({out_features},), got {v.dtype} {tuple(v.shape)}"
                )
            if not bool(torch.isfinite(v).all()):
                raise ValueError(f"{name} has NaN or infinite entries")
        bits = self.row_bits
        if (
            not isinstance(bits, torch.Tensor)
            or bits.dtype not in (torch.int8, torch.int16, torch.int32, torch.int64)
            or bits.shape != (out_features,)
        ):
            raise ValueError(f"row_bits must be an integer tensor of shape ({out_features},)")
        if not isinstance(self.weight_mode, str) or self.weight_mode not in WEIGHT_MODES:
            raise ValueError(f"weight_mode must be one of {WEIGHT_MODES}, got {self.weight_mode!r}")
        _check_codes_fit(codes, bits, self.weight_mode)
        if self.act_mode not in CODE_MODES:
            raise ValueError(f"act_mode must be one of {tuple(CODE_MODES)}, got {self.act_mode!r}")
        top = 1 if self.act_mode == "pm1" else 8
        if not isinstance(self.act_bits, int) or not 1 <= self.act_bits <= top:
            raise ValueError(f"act_bits must be an int in 1..{top}, got {self.act_bits!r}")
        scale = self.act_scale
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise ValueError(f"act_scale must be a float, got {type(scale).__name__}")
        self.act_scale = scale = float(scale)
        if not (math.isfinite(scale) and MIN_ACT_SCALE <= scale <= MAX_ACT_SCALE):
            raise ValueError(
                f"act_scale must be a positive normal float32 ({MIN_ACT_SCALE:.3g} .. "
                f"{MAX_ACT_SCALE:.3g}), got {scale}"
            )
        if self.input_index is None:
            if self.input_features not in (None, codes.shape[1]):
                raise ValueError(
                    "input_features differs from the weight's columns, with no input_index"
                )
            self.input_features = codes.shape[1]
        else:
            index = self.input_index
            if index.dtype != torch.int64 or index.shape != (codes.shape[1],):
                raise ValueError(f"input_index must be int64 ({codes.shape[1]},)")
            if self.input_features is None or not bool(
                ((index >= 0) & (index < self.input_features)).all()
            ):
                raise ValueError(
                    "input_index needs input_features and entries in 0..input_features-1"
                )
        bound = codes.shape[1] * max(map(abs, code_range(self.act_bits, self.act_mode)))
        bound *= int(codes.abs().max()) if codes.numel() else 0
        if bound > 2**31 - 1:
            raise ValueError(f"in_features {codes.shape[1]} with these widths could overflow int32")

    @property
    def in_features(self) -> int:
        return self.input_features

    def _gathered(self, x: torch.Tensor) -> torch.Tensor:
        x = _check_input(x, self.in_features, "QuantizedLinear")
        return x if self.input_index is None else torch.index_select(x, 1, self.input_index)

    @property
    def out_features(self) -> int:
        return self.weight_codes.shape[0]

    @property
    def packed_weights(self) -> bitserial.BitPlanes:
        """The weight codes as bit planes (packed on first use, then kept)."""
        self.native()
        return self._packed

    def native(self):
        """The native layer on the kernels (the weights packed on first use, then kept)."""
        if self._native is None:
            w = bitserial.pack_weights(
                self.weight_codes.contiguous(), self.row_bits.to(torch.int64), self.weight_mode
            )
            self._row_scale_np = self.row_scale.contiguous().numpy()
            self._bias_np = self.bias.contiguous().numpy()
            self._packed = w  # keeps the arrays the native layer borrows
            self._native = _kernels.BitserialLinear(
                w.planes, w.plane_offsets, w.row_sums, CODE_MODES[self.weight_mode], w.k,
                self._row_scale_np, self._bias_np, self.act_bits, CODE_MODES[self.act_mode],
                float(self.act_scale),
            )  # fmt: skip
        return self._native

    def _ternary_rows(self) -> bool:
        """Signed rows of width <= 2: codes in {-1, 0, +1} (`_check_codes_fit`)."""
        return is_ternary(self.weight_codes, self.row_bits, self.weight_mode)

    def engine_for(self, batch: int) -> str:
        """The engine `forward` picks for `batch` rows (`bayesq.net_plan.NetPlan.engine_of`):
        bit-serial for binary activations, the sparse GEMM for mostly-zero ternary rows on an AVX2
        CPU from 16 rows on, the ternary 2-bit GEMM for big ternary layers at small batches, the
        direct 8-bit GEMM otherwise (where it has a fast path: VNNI, or AVX2 for exact widths)."""
        return self.plan().engine_of(0, batch)

    def plan(self, conv: tuple | None = None) -> NetPlan:
        """The layer alone as a compiled plan (`bayesq.net_plan`), made on first use and kept;
        conv: a convolution's geometry (QuantizedConv2d asks for its own plan with it)."""
        if conv is not None:
            return self._new_plan(conv)
        if self._plan is None:
            self._plan = self._new_plan(None)
        return self._plan

    def _new_plan(self, conv: tuple | None) -> NetPlan:
        plan = NetPlan()
        plan.add_layer(
            self.weight_codes, self.row_bits, self.weight_mode, self.row_scale, self.bias,
            self.act_bits, self.act_mode, self.act_scale, self.input_index, self.in_features,
            conv,
        )  # fmt: skip
        return plan

    def forward(
        self,
        x: torch.Tensor,
        threads: int = 1,
        isa: str | None = None,
        engine: str | None = None,
    ) -> torch.Tensor:
        """x: float32 (N, in_features) -> float32 (N, out_features), on the kernels.

        engine: None (`engine_for(N)`; a forced isa alone means "bitserial"), or one of
        `bayesq.net_plan.ENGINES`. isa: a path of that engine (`bitserial.bitserial_isas()`,
        `lowbit_gemm.ternary_isas()`, `net_plan.DIRECT_ISAS`,
        `sparse_ternary_gemm.sparse_ternary_isas()`), None for the best."""
        x = _check_input(x, self.in_features, "QuantizedLinear.forward")
        return _run_plan(self.plan(), x, threads, isa, engine, "QuantizedLinear.forward")

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The same layer in plain PyTorch integer arithmetic."""
        x = self._gathered(x)
        codes = quantize_codes(x, self.act_scale, self.act_bits, self.act_mode)
        acc = codes @ self.weight_codes.to(torch.int64).T  # exact
        scale = torch.tensor(self.act_scale, dtype=torch.float32)
        return acc.to(torch.float32) * self.row_scale * scale + self.bias


def _check_codes_fit(codes: torch.Tensor, row_bits: torch.Tensor, weight_mode: str) -> None:
    """Every code within its row's width: signed, |code| <= 2^(b-1) - 1 (0 for b <= 1) with b in
    0..8; pm1, b in 0..1 and every code of a 1-plane row -1 or +1, of a 0-plane row 0."""
    bits = row_bits.to(torch.int64)
    magnitude = codes.abs().to(torch.int64)
    if weight_mode == "pm1":
        if bool(((bits < 0) | (bits > 1)).any()):
            raise ValueError("row_bits of a pm1 layer must lie in 0..1")
        bad = torch.where(bits[:, None] > 0, magnitude != 1, magnitude != 0).any()
    else:
        if bool(((bits < 0) | (bits > 8)).any()):
            raise ValueError("row_bits must lie in 0..8")
        top = torch.where(bits > 0, 2 ** (bits - 1).clamp(min=0) - 1, 0)
        bad = (magnitude > top[:, None]).any()
    if bool(bad):
        raise ValueError("weight codes lie outside their row's width")


@dataclass(eq=False)
class QuantizedConv2d:
    """A quantized 2-D convolution (groups = 1) as im2col + QuantizedLinear.

    The linear part's weight codes are the kernel flattened to (out, in * kh * kw), the order of
    torch's F.unfold. Zero padding pads the float input with 0, which quantizes to code 0.
    """

    linear: QuantizedLinear
    in_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    _plan: object = field(default=None, init=False, repr=False)  # made on first use

    def __post_init__(self) -> None:
        if not isinstance(self.linear, QuantizedLinear):
            raise TypeError(f"linear must be a QuantizedLinear, got {type(self.linear).__name__}")
        if not _is_int(self.in_channels) or self.in_channels < 1:
            raise ValueError(f"in_channels must be an int >= 1, got {self.in_channels!r}")
        for name, low in (("kernel_size", 1), ("stride", 1), ("padding", 0)):
            pair = getattr(self, name)
            if not (
                isinstance(pair, tuple | list)
                and len(pair) == 2
                and all(_is_int(v) and v >= low for v in pair)
            ):
                raise ValueError(f"{name} must be two ints >= {low}, got {pair!r}")
            setattr(self, name, tuple(int(v) for v in pair))
        kh, kw = self.kernel_size
        if self.linear.in_features != self.in_channels * kh * kw:
            raise ValueError(
                f"weight has {self.linear.in_features} columns, in_channels * kh * kw = "
                f"{self.in_channels * kh * kw}"
            )

    def _columns(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"QuantizedConv2d: input must be (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        n, _, h, w = x.shape
        oh = (h + 2 * self.padding[0] - self.kernel_size[0]) // self.stride[0] + 1
        ow = (w + 2 * self.padding[1] - self.kernel_size[1]) // self.stride[1] + 1
        if oh < 1 or ow < 1:
            raise ValueError(f"QuantizedConv2d: input {h}x{w} is smaller than the kernel")
        cols = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)
        return cols.transpose(1, 2).reshape(n * oh * ow, -1).contiguous(), (n, oh, ow)

    @staticmethod
    def _image(y: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
        n, oh, ow = shape
        return y.view(n, oh * ow, -1).transpose(1, 2).reshape(n, -1, oh, ow)

    def forward(
        self, x: torch.Tensor, threads: int = 1, isa: str | None = None, engine: str | None = None
    ) -> torch.Tensor:
        """x: float32 (N, in_channels, H, W) -> float32 (N, out, oh, ow), on the kernels
        (engine and isa as `QuantizedLinear.forward`)."""
        self._columns(x[:1])  # the shape checks
        if self._plan is None:
            self._plan = self.linear.plan(
                (self.in_channels, *self.kernel_size, *self.stride, *self.padding)
            )
        return _run_plan(
            self._plan, x.contiguous(), threads, isa, engine, "QuantizedConv2d.forward"
        )

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        cols, shape = self._columns(x)
        return self._image(self.linear.reference(cols), shape)


def _run_plan(plan: NetPlan, x: torch.Tensor, threads, isa, engine, what: str) -> torch.Tensor:
    """`plan` on x with threads, isa and engine checked first (ValueError naming `what`)."""
    threads = kernels.check_threads(threads, what)
    if engine is None and isa is not None:
        engine = "bitserial"  # a forced bit-serial isa
    if engine is not None and engine not in ENGINES:
        raise ValueError(f"{what}: engine must be one of {ENGINES}, got {engine!r}")
    if engine == "bitserial":
        kernels.check_isa(isa, what, bitserial=True)
    elif engine == "ternary" and isa is not None and isa not in lowbit_gemm.ternary_isas():
        raise ValueError(
            f"{what}: isa {isa!r} is not a path of the ternary GEMM on this CPU "
            f"({', '.join(lowbit_gemm.ternary_isas())})"
        )
    try:
        return plan.run(x, engine, isa, threads)
    except ValueError as e:  # the plan's own checks (NaN, a layer refusing a forced engine)
        raise ValueError(f"{what}: {e}") from None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_input(x: torch.Tensor, features: int, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.device.type != "cpu":
        raise ValueError(f"{what}: input must be a float32 CPU tensor")
    if x.dim() != 2 or x.shape[1] != features or x.shape[0] < 1:
        raise ValueError(f"{what}: input must be (N, {features}), got {tuple(x.shape)}")
    return x.contiguous()


def _net_input(x, what: str, check_nan: bool = True) -> torch.Tensor:
    """A batch for a net: a real floating CPU tensor (N, ...) with N >= 1 and no NaN, as float32."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{what}: x must be a torch.Tensor (N, ...) of floats, got {type(x).__module__}."
            f"{type(x).__name__} (convert with torch.as_tensor)"
        )
    if not x.dtype.is_floating_point or x.device.type != "cpu":
        raise TypeError(
            f"{what}: x must be a floating-point CPU tensor, got {x.dtype} on {x.device}"
        )
    if x.dim() < 2 or x.shape[0] < 1:
        raise ValueError(f"{what}: x must be a batch (N, ...) with N >= 1, got {tuple(x.shape)}")
    if x.dtype is not torch.float32:
        x = x.to(torch.float32)
    if check_nan and bool(torch.isnan(x).any()):
        raise ValueError(f"{what}: x contains NaN")
    return x


class DiscreteNet:
    """A sequence of quantized layers and the glue ops of `bayesq.ops` between them."""

    def __init__(self, ops: list):
        for op in ops:
            if not (isinstance(op, QuantizedLinear | QuantizedConv2d) or is_glue(op)):
                raise ValueError(f"DiscreteNet cannot run a {type(op).__name__}")
        self.ops = list(ops)
        self._plan = None

    @property
    def layers(self) -> list:
        return [op for op in self.ops if isinstance(op, QuantizedLinear | QuantizedConv2d)]

    def without_dead_units(self) -> DiscreteNet:
        """The same net without the units that nothing reads: a row (a feature, or a channel of
        a convolution) of a layer whose every weight in the next quantized layer is 0 is set to
        0 (codes, width and bias), as is then anything only it read, from the last layer back.

        Its output only ever meets zero weights, so every integer product downstream is
        unchanged: the logits are identical, bit for bit, on both executions. What it saves is
        storage: the dead rows' codes, positions and biases (`bayesq.sparse_codes`). A layer
        that gathers its inputs (`input_index`) then gathers the columns still read. The glue
        between two layers is traced by its `units` (`bayesq.ops`); where a layer's features
        cannot be traced to the next layer's columns, that layer comes back unchanged.
        """
        ops = list(self.ops)
        at = [i for i, op in enumerate(ops) if isinstance(op, QuantizedLinear | QuantizedConv2d)]
        for a, b in reversed(list(zip(at[:-1], at[1:], strict=True))):
            read = units_read(ops[a], ops[a + 1 : b], ops[b])
            if read is not None and not bool(read.all()):
                ops[a] = without_rows(ops[a], ~read)
        return DiscreteNet(ops)

    @staticmethod
    def _act_mode(op) -> str | None:
        layer = op.linear if isinstance(op, QuantizedConv2d) else op
        return layer.act_mode if isinstance(layer, QuantizedLinear) else None

    @torch.no_grad()
    def forward(
        self,
        x: torch.Tensor,
        threads: int | None = None,
        isa: str | None = None,
        engine: str | None = None,
    ):
        """Logits on the kernels, the whole net in one native call (`bayesq.net_plan`).

        threads: 1..kernels.MAX_THREADS, default torch.get_num_threads() (capped at
        MAX_THREADS). engine / isa: None for each layer's own choice (`QuantizedLinear.engine_for`),
        or forced for every layer (tests and benchmarks; a forced isa alone means the bit-serial
        engine)."""
        if threads is None:
            threads = min(torch.get_num_threads(), kernels.MAX_THREADS)
        # no torch operation on the way: its OpenMP threads would spin on the cores the kernels'
        # threads need (the plan refuses NaN itself)
        x = _net_input(x, "DiscreteNet.forward", check_nan=False)
        return _run_plan(self.plan(), x, threads, isa, engine, "DiscreteNet.forward")

    def plan(self) -> NetPlan:
        """The compiled plan of the net (made on first use, then kept: a DiscreteNet's ops are
        not changed after it is made)."""
        if self._plan is None:
            plan = NetPlan()
            for i, op in enumerate(self.ops):
                if isinstance(op, QuantizedLinear | QuantizedConv2d):
                    layer = op.linear if isinstance(op, QuantizedConv2d) else op
                    conv = None
                    if isinstance(op, QuantizedConv2d):
                        conv = (op.in_channels, *op.kernel_size, *op.stride, *op.padding)
                    plan.add_layer(
                        layer.weight_codes, layer.row_bits, layer.weight_mode, layer.row_scale,
                        layer.bias, layer.act_bits, layer.act_mode, layer.act_scale,
                        layer.input_index, layer.in_features, conv,
                    )  # fmt: skip
                elif glue_of(op).fuses_into is None or glue_of(op).fuses_into != self._act_mode(
                    self._next(i)
                ):
                    spec = glue_spec(op)
                    plan.add_glue(spec["kind"], spec.get("kernel_size", 1))
                # else: the next layer's activation quantizer applies this op (fused)
            self._plan = plan
        return self._plan

    __call__ = forward

    def _next(self, i: int):
        return self.ops[i + 1] if i + 1 < len(self.ops) else None

    @torch.no_grad()
    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the plain PyTorch integer reference of every layer."""
        x = _net_input(x, "DiscreteNet.reference")
        for op in self.ops:
            x = op.reference(x) if isinstance(op, QuantizedLinear | QuantizedConv2d) else op(x)
        return x
