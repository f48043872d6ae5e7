"""A whole discrete net compiled into one native call (csrc/runner/net_plan.h).

`bayesq.runtime.DiscreteNet.forward` runs its net through a `NetPlan`: the quantized layers and
the glue ops between them, in order, run by C++ over the batch with every intermediate in a
scratch arena the plan keeps between calls. Per layer the plan picks the engine by its widths,
its shape (`NetPlan.engine_of`): the bit-serial kernels
(`bayesq.bitserial`) for binary activations, the ternary 2-bit GEMM (VNNI, AMX, AVX2)
(`bayesq.lowbit_gemm`) for big ternary layers, the sparse ternary GEMM
(`bayesq.sparse_ternary_gemm`) for mostly-zero ternary layers on AVX2 CPUs, and the direct 8-bit
GEMM of the runner for small K, few outputs or wider weights. Nothing crosses back into Python between layers.

The arithmetic is the reference's (`bayesq.runtime`): per layer

    codes  = clamp(round(x / act_scale), lo, hi)
    y[r,n] = (codes[r] . W[n]) * row_scale[n] * act_scale + bias[n]

with exact integer products and float32 scaling in that order, so the plan's logits equal the
reference's bit for bit (tests/test_net_plan.py). Inside the plan images are channels-last, so a
convolution's weights are handed over with their columns in (kh, kw, in_channels) order
(`add_layer` permutes them, and an input_index with them): a dot product does not depend on the
order of its terms.

This module knows arrays and settings, not the layer classes: `bayesq.runtime` hands each layer's
fields to `add_layer`.
"""

from __future__ import annotations

import numpy as np
import torch

from . import _kernels, bitserial, lowbit_gemm
from .ops import CODE_MODES

__all__ = [
    "DIRECT_ISAS",
    "ENGINES",
    "HAS_DIRECT",
    "HAS_DIRECT_AMX",
    "HAS_DIRECT_AVX2",
    "HAS_TERNARY",
    "NetPlan",
    "is_ternary",
]

ENGINES = ("bitserial", "ternary", "direct", "sparse")
_ENGINE_CODES = {None: -1, "bitserial": 0, "ternary": 1, "direct": 2, "sparse": 3}
_GLUE_CODES = {"relu": 1, "sign": 2, "maxpool2d": 3, "avgpool2d": 4, "flatten": 5}
# The ternary engine only where the CPU runs a fast path of it: its portable path is a reference.
HAS_TERNARY = any(isa != "portable" for isa in lowbit_gemm.ternary_isas())
# The direct engine's fast paths: AVX-512 VNNI, or AVX2 (vpmaddubsw with int16 sums, for the
# layers whose widths keep those exact); its "portable" path runs anywhere.
HAS_DIRECT = bool(_kernels.direct_gemm_available())
HAS_DIRECT_AVX2 = bool(_kernels.direct_avx2_available())
# ... and its AMX path (from 128 rows and K >= 128 on), AMX-INT8 tiles with the OS's permission
HAS_DIRECT_AMX = bool(_kernels.direct_amx_available())
# The direct engine's paths this CPU runs (the `isa=` values of a forced "direct" engine).
DIRECT_ISAS = tuple(
    name
    for name, runs in (
        ("portable", True),
        ("avx2", HAS_DIRECT_AVX2),
        ("avx512vnni", HAS_DIRECT),
        ("amx", HAS_DIRECT_AMX),
    )
    if runs
)


def is_ternary(weight_codes: torch.Tensor, row_bits: torch.Tensor, weight_mode: str) -> bool:
    """Signed rows of width <= 2: codes in {-1, 0, +1}."""
    widest = int(row_bits.max()) if row_bits.numel() else 0
    return weight_mode == "signed" and widest <= 2


def _channels_last_columns(in_channels: int, kh: int, kw: int) -> np.ndarray:
    """int64 (in_channels * kh * kw,): where unfold's column c * kh * kw + i * kw + j sits in
    the plan's channels-last im2col, (i * kw + j) * in_channels + c."""
    c, i, j = np.meshgrid(np.arange(in_channels), np.arange(kh), np.arange(kw), indexing="ij")
    return ((i * kw + j) * in_channels + c).reshape(-1).astype(np.int64)


class NetPlan:
    """The compiled plan of a discrete net: `add_layer` / `add_glue` in the net's order, then
    `run` as often as wanted. Holds its own copies of every array it runs on."""

    def __init__(self):
        self._plan = _kernels.NetPlan()
        self._keep = []  # the Python objects whose arrays the plan borrows
        self._shapes = {}  # sample shape -> output shape, for the plan as it is now

    def add_layer(
        self,
        weight_codes: torch.Tensor,
        row_bits: torch.Tensor,
        weight_mode: str,
        row_scale: torch.Tensor,
        bias: torch.Tensor,
        act_bits: int,
        act_mode: str,
        act_scale: float,
        input_index: torch.Tensor | None,
        in_features: int,
        conv: tuple[int, int, int, int, int, int, int] | None = None,
    ) -> None:
        """A quantized layer with the fields of `bayesq.runtime.QuantizedLinear` (already
        checked there); conv: None for a linear layer, else (in_channels, kh, kw, stride_h,
        stride_w, pad_h, pad_w), the weight's columns in torch's unfold order."""
        codes = weight_codes.contiguous()
        index = None if input_index is None else input_index.numpy().astype(np.int64)
        if conv is not None:
            where = _channels_last_columns(*conv[:3])
            if index is None:
                reordered = torch.empty_like(codes)
                reordered[:, torch.from_numpy(where)] = codes
                codes = reordered
            else:
                index = where[index]
        ternary = is_ternary(codes, row_bits, weight_mode)
        packed = bitserial.pack_weights(codes, row_bits.to(torch.int64), weight_mode)
        tern = lowbit_gemm.pack_ternary(codes.numpy()) if ternary else None
        scale = row_scale.contiguous().numpy().copy()
        shift = bias.contiguous().numpy().copy()
        self._plan.add_layer(
            packed.planes, packed.plane_offsets, packed.row_sums, CODE_MODES[weight_mode],
            packed.k, None if tern is None else tern.packed,
            None if tern is None else tern.row_sums,
            HAS_TERNARY and ternary and act_mode != "pm1" and act_bits >= 2,
            scale, shift, act_bits, CODE_MODES[act_mode], float(act_scale),
            None if index is None else np.ascontiguousarray(index), int(in_features),
            [] if conv is None else [int(v) for v in conv], codes.numpy(),
        )  # fmt: skip
        self._keep.append((packed, tern, scale, shift, index, codes))
        self._shapes.clear()

    def engine_of(self, layer: int, rows: int) -> str:
        """The engine a run picks for the `layer`-th layer (0-based) when its product has `rows`
        rows (a linear layer's batch; a convolution's batch * oh * ow):

        * "bitserial" for +-1 or 1-bit activation codes (popcounts);
        * for weights with K * N >= 2^21 (as bytes they would not stay in L2) below the 128 rows
          from which the direct GEMM takes AMX tiles, where reading the weights bounds the
          product: "ternary" (the 2-bit GEMM, `bayesq.lowbit_gemm`) for ternary rows (0.69
          against 0.89 ms for 4096 x 4096 at batch 8, one thread; on a CPU with VNNI but no
          AMX only below 16 rows, above which the direct GEMM wins: 4096 x 4096 at 64 rows on
          Zen 4, 5.2 against 6.9 ms), "bitserial" for wider ones below 16 rows or with at most
          4 weight x activation plane pairs (their planes, not a byte per weight), else "direct";
        * "direct" (8-bit activation codes x the weight codes as bytes, csrc/runner/
          direct_gemm.h: VNNI, AMX from 128 rows on; on a CPU without VNNI, AVX2 where its int16
          sums are exact for the layer, 2 * act_max * max|w| <= 32767) for the rest;
        * else "ternary" for ternary rows, "bitserial" otherwise;
        * before all these, "sparse" (the kept weights only, `bayesq.sparse_ternary_gemm`) for
          ternary rows with few non-zero weights where the dense products have no AMX: on AVX2
          (no VNNI) at most 30% non-zero from 16 rows on (1.7-1.9x the dense kernel at 80%
          zeros, N = K = 4096, batch 64 and 1024, Zen 3); with VNNI, in large layers only, at
          most 25% from 64 rows or 12% from 16 rows (4096 x 4096 at 80% zeros, 256 rows, Zen 4:
          13.9 against the direct GEMM's 20.0 ms). The measurements: csrc/runner/net_plan.h."""
        return ENGINES[self._plan.engine_of(int(layer), int(rows))]

    def add_glue(self, kind: str, kernel_size: int = 1) -> None:
        """A glue op of `bayesq.ops` by its kind ("relu", "sign", "maxpool2d", "avgpool2d",
        "flatten"); kernel_size for the pools."""
        if kind not in _GLUE_CODES:
            raise ValueError(f"NetPlan: no glue op {kind!r} (it runs {', '.join(_GLUE_CODES)})")
        self._plan.add_glue(_GLUE_CODES[kind], int(kernel_size))
        self._shapes.clear()

    def output_shape(self, sample_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of one sample's output for a sample of `sample_shape` (ValueError naming
        the step it does not fit)."""
        return tuple(self._plan.output_shape(list(sample_shape)))

    def run(
        self,
        x: torch.Tensor,
        engine: str | None = None,
        isa: str | None = None,
        threads: int = 1,
    ) -> torch.Tensor:
        """float32 (N, ...) -> float32 (N, *output_shape): the whole net in one call.

        engine: None (each layer's `engine_of`), or one of ENGINES for every layer (a
        layer without ternary rows refuses "ternary", one with +-1 codes "ternary" and "direct"); isa:
        a path of the forced engine (one of DIRECT_ISAS for "direct",
        `sparse_ternary_gemm.sparse_ternary_isas()` for "sparse"), None for
        the best."""
        if engine not in _ENGINE_CODES:
            raise ValueError(
                f"NetPlan.run: engine must be one of {ENGINES} or None, got {engine!r}"
            )
        if isa is not None and engine is None:
            raise ValueError("NetPlan.run: an isa needs a forced engine")
        x = x.contiguous()
        sample = tuple(x.shape[1:])
        shape = self._shapes.get(sample)  # (a batch-1 forward is microseconds: no call to spare)
        if shape is None:
            shape = self._shapes[sample] = self.output_shape(sample)
        out = np.empty((x.shape[0], *shape), dtype=np.float32)
        self._plan.run(x.numpy(), out, _ENGINE_CODES[engine], isa, threads)
        return torch.from_numpy(out)
