"""The one builder of discrete nets: a `Posterior` (and row widths) -> a `DiscreteNet`.

`quantize_posterior` turns the posterior of any trainer (VNQ's Gaussian one, EBP's discrete
one, a deterministic net's) into integer weight codes, row widths and scales, with activation
quantizers calibrated on a batch of inputs; `bayesq.artifact` saves the result and
`bayesq.runtime` runs it on the kernels beside its integer reference.

References: Achterhold et al. Variational Network Quantization. ICLR 2018 (Sec. 3.3);
Soudry, Hubara, Meir. Expectation Backpropagation. NIPS 2014 (EBP-D).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from .bit_rules import PM1_WIDTH, BitRule
from .ops import glue_module
from .posterior import LayerPosterior, Posterior, PruningRule
from .quantizers import calibrated_activations
from .row_grids import RowGrid, own_level_grid, quantize_rows
from .runtime import DiscreteNet, QuantizedConv2d, QuantizedLinear

__all__ = ["quantize_posterior"]


# --- the builder: posterior -> discrete net ----------------------------------------------------------
@torch.no_grad()
def quantize_posterior(
    posterior: Posterior,
    calibration: torch.Tensor,
    *,
    widths: dict[str, torch.Tensor] | None = None,
    act_bits: int = 8,
    pruning: PruningRule | None = None,
    rule=None,
    input_shift: torch.Tensor | None = None,
    activations: dict[str, dict] | None = None,
) -> DiscreteNet:
    """The discrete net of a posterior: the one way from a `Posterior` to a `DiscreteNet`.

    Two grid choices for the weights:

      * ``widths=None``: every weight snaps to the posterior's own levels, which is what the
        trainers' discrete nets are: a VNQ posterior's nearest codebook level (codes -m..m
        for 2m+1 levels, the codebook scale r as the row scale; Achterhold et al. 2018,
        Sec. 3.3), a discrete posterior's most probable level (EBP-D; {-c, +c} as a {-1, +1}
        plane). Weights `pruning` prunes (default `PruningRule()`) are 0
        (`bayesq.row_grids.own_level_grid`);
      * ``widths``: layer name -> int64 (out,) row widths (from `bayesq.bits`): each row on its
        best grid of its width (`bayesq.row_grids.quantize_rows` under `rule`, default
        bayesq's `BitRule` with `pruning`).

    Activations get `act_bits` bits, unsigned where the calibration inputs of a layer are all
    >= 0 (after a ReLU), signed otherwise, with max-calibrated scales measured on the float net
    with the quantized weights; after a sign op they are its {-1, +1} codes (1 bit).
    activations: layer name -> {"bits", "mode" ("unsigned" or "signed"), "scale"}, the input
    quantizer a method trained that layer with (DoReFa's k-bit grid on [0, 1]: scale
    1 / (2^k - 1); PACT's alpha / (2^k - 1)), taken instead of the calibrated one, so that the
    discrete net quantizes its activations as the trained net did.
    input_shift: the net was trained on x - shift (EBP's centred inputs): (fan_in,) or the
    input shape; folded into the first layer's bias, b - W shift (W the quantized weights, in
    float64), so the discrete net reads raw x (the first layer must be linear).
    A linear layer whose inputs meet only pruned weights skips them (`input_index`) where that
    shortens its packed rows.

    calibration: (N, *posterior.input_shape) float inputs. Returns a `bayesq.runtime.DiscreteNet`
    (save it with `bayesq.artifact.save_artifact`).
    """
    explicit_pruning = pruning is not None
    pruning = PruningRule() if pruning is None else pruning
    if not isinstance(pruning, PruningRule):
        raise TypeError(f"pruning must be a PruningRule, got {type(pruning).__name__}")
    if widths is not None:
        missing = set(posterior.layers) - set(widths)
        if missing:
            raise ValueError(f"no row widths for layers {sorted(missing)}")
        if rule is None:
            rule = BitRule(pruning=pruning)
        elif getattr(rule, "pruning", pruning) != pruning and explicit_pruning:
            raise ValueError("give the pruning rule once: as `pruning` or inside `rule`, not both")
    if not isinstance(calibration, torch.Tensor) or not calibration.dtype.is_floating_point:
        raise TypeError("calibration must be a floating-point torch.Tensor (N, *input_shape)")
    x = calibration.to(torch.float32)
    if tuple(x.shape[1:]) != tuple(posterior.input_shape) or len(x) < 1:
        raise ValueError(
            f"calibration inputs {tuple(x.shape)} must be (N >= 1, *{posterior.input_shape})"
        )
    given = _checked_activations(activations, posterior)
    ops, first, after_sign = [], True, False
    for op in posterior.ops:
        if op["kind"] != "layer":
            glue = glue_module(op)
            ops.append(glue)
            x = glue(x)
            after_sign = op["kind"] == "sign"
            continue
        layer = posterior.layers[op["name"]]
        if widths is None:
            _check_own_levels(layer)
            grid = own_level_grid(layer, pruning)
        else:
            grid = quantize_rows(layer, widths[op["name"]], rule)
        weight = (grid.codes.float() * grid.scale[:, None]).reshape(layer.mean.shape)
        out = grid.codes.shape[0]
        bias = (layer.bias if layer.bias is not None else torch.zeros(out)).to(torch.float32)
        if first and input_shift is not None:
            bias = _folded_bias(layer, weight, bias, input_shift)
        # sign units give exactly -1 / +1: one pm1 plane holds them (the sign op folds into it)
        if after_sign and op["name"] in given:
            raise ValueError(
                f"activations[{op['name']!r}]: its inputs follow a sign op (+-1 codes)"
            )
        act = (
            dict(act_bits=1, act_mode="pm1", act_scale=1.0)
            if after_sign
            else given.get(op["name"]) or calibrated_activations(x, act_bits)
        )
        ops.append(_quantized_layer(layer, grid, bias.contiguous(), act))
        if layer.kind == "linear":
            x = F.linear(x, weight, bias)
        else:
            stride, padding = tuple(layer.conv["stride"]), tuple(layer.conv["padding"])
            x = F.conv2d(x, weight, bias, stride=stride, padding=padding)
        first = False
    return DiscreteNet(ops)


def _checked_activations(activations: dict | None, posterior: Posterior) -> dict[str, dict]:
    """Layer name -> the act_* fields of `QuantizedLinear`, from {"bits", "mode", "scale"}."""
    if activations is None:
        return {}
    if not isinstance(activations, dict):
        raise TypeError(f"activations must be a dict, got {type(activations).__name__}")
    fields = {}
    for name, spec in activations.items():
        where = f"activations[{name!r}]"
        if name not in posterior.layers:
            raise ValueError(f"{where}: no such layer; layers: {list(posterior.layers)}")
        if not isinstance(spec, dict) or set(spec) != {"bits", "mode", "scale"}:
            raise ValueError(f"{where} must hold bits, mode and scale, got {spec!r}")
        bits, mode, scale = spec["bits"], spec["mode"], spec["scale"]
        if mode not in ("unsigned", "signed"):
            raise ValueError(f"{where}: mode must be 'unsigned' or 'signed', got {mode!r}")
        low = 1 if mode == "unsigned" else 2
        if isinstance(bits, bool) or not isinstance(bits, int) or not low <= bits <= 8:
            raise ValueError(f"{where}: {mode} bits must be in {low}..8, got {bits!r}")
        if isinstance(scale, bool) or not isinstance(scale, int | float):
            raise ValueError(f"{where}: scale must be a number, got {scale!r}")
        if not 0 < scale < math.inf:
            raise ValueError(f"{where}: scale must be finite and > 0, got {scale!r}")
        fields[name] = {"act_bits": bits, "act_mode": mode, "act_scale": float(scale)}
    return fields


def _check_own_levels(layer: LayerPosterior) -> None:
    """A Gaussian posterior snaps to its own levels only with a codebook of >= 3 levels: with
    one (Sparse VD's level 0) every weight would be 0, which is no net to build."""
    if not layer.discrete and (layer.codebook_scale is None or len(layer.levels) < 3):
        raise ValueError(
            f"{layer.name}: a Gaussian posterior with {len(layer.levels)} level(s) and no "
            "codebook has no grid of its own; give row widths (bayesq.bits)"
        )


def _folded_bias(layer: LayerPosterior, weight, bias, shift) -> torch.Tensor:
    """b - W shift, in float64 (no rounding of its own beyond the final float32 bias)."""
    if layer.kind != "linear":
        raise ValueError("input_shift folds into a linear first layer only")
    shift = torch.as_tensor(shift)
    if shift.numel() != layer.mean.shape[1] or not bool(torch.isfinite(shift).all()):
        raise ValueError(f"input_shift must hold {layer.mean.shape[1]} finite values")
    return (bias.double() - weight.double() @ shift.reshape(-1).double()).float()


def _quantized_layer(layer: LayerPosterior, grid: RowGrid, bias, act: dict):
    pm1 = bool((grid.widths == PM1_WIDTH).any())
    if pm1 and not bool((grid.widths <= PM1_WIDTH).all()):
        raise ValueError(
            f"{layer.name}: 1-bit ({{-1, +1}}) rows and wider rows cannot share a layer"
        )
    linear = QuantizedLinear(
        weight_codes=grid.codes,
        row_bits=grid.widths,
        row_scale=grid.scale,
        bias=bias,
        weight_mode="pm1" if pm1 else "signed",
        **act,
    )
    if layer.kind == "conv2d":
        stride, padding = tuple(layer.conv["stride"]), tuple(layer.conv["padding"])
        return QuantizedConv2d(
            linear, layer.mean.shape[1], tuple(layer.mean.shape[2:]), stride, padding
        )
    return _skipping_pruned_inputs(linear)


def _packed_words(k: int) -> int:
    """64-bit words of one packed row of k columns (the kernels pad k to 512-bit chunks)."""
    return -(-k // 512) * 8


def _skipping_pruned_inputs(linear: QuantizedLinear) -> QuantizedLinear:
    """The layer without the input columns whose every weight is 0 (column 0 kept if none is
    left), gathered by `input_index`, where that shortens the packed rows."""
    codes = linear.weight_codes
    alive = codes.ne(0).any(0)
    alive[0] |= not bool(alive.any())
    if _packed_words(int(alive.sum())) >= _packed_words(codes.shape[1]):
        return linear
    index = torch.nonzero(alive).flatten()
    return dataclasses.replace(
        linear,
        weight_codes=codes[:, index].contiguous(),
        input_index=index,
        input_features=codes.shape[1],
    )
