"""A method's trained net as a posterior: the same road to the kernels as VNQ and EBP.

A deterministic net is a posterior whose mass sits on one level per weight. For a net of
`bayesq.baselines.nets` whose weights are integer codes times scales, :func:`export_posterior`
gives a discrete `bayesq.posterior.Posterior` with one-hot level masses: levels -M..M in units
of one step (M the largest |code|; {-1, +1} when every code is +-1, which the kernels run as one
plane), each output row's unit its scale (``row_scale``), and the glue ops between the layers.
`bayesq.quantize.quantize_posterior` then builds the discrete net, as it does for VNQ and EBP.

Batch norm folds into the layer before it (the net in eval mode, running statistics): with
a = gamma / sqrt(var + eps) per output channel, BN(W x + b) = (a W) x + a (b - mu) + beta, so
a row's scale becomes |a| s, its codes take the sign of a, and its bias a (b - mu) + beta
(Ioffe and Szegedy 2015, Alg. 2's inference form). A batch norm must follow its layer directly.

The activation quantizers before each layer give its input grid (`quantize_posterior`'s
``activations``), so the discrete net quantizes activations as the trained net did; a
gradient quantizer (identity in the forward pass) and dropout leave no trace.
"""

from __future__ import annotations

import torch
from torch import nn

from ..ops import glue_spec, is_glue
from ..posterior import Posterior
from .nets import ActivationQuantizer, NotIntegerCodes, QuantConv2d, QuantLinear

__all__ = ["export_posterior", "folded_codes"]

_IDENTITY_IN_EVAL = (nn.Dropout, nn.Identity)


def _batch_norm_affine(norm: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, c) with BN(z) = a z + c per channel, from the running statistics."""
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError("a batch norm without running statistics cannot be folded")
    a = torch.rsqrt(norm.running_var.double() + norm.eps)
    c = -norm.running_mean.double() * a
    if norm.affine:
        a, c = a * norm.weight.double(), c * norm.weight.double() + norm.bias.double()
    return a, c


@torch.no_grad()
def folded_codes(
    layer: QuantLinear | QuantConv2d, norm: nn.modules.batchnorm._BatchNorm | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes int64 (out, ...), row_scale float32 (out,) > 0, bias float32 (out,)) of a layer and
    the batch norm after it: codes * row_scale (per row) + bias is the layer (and norm) as the
    trained net computes it in eval mode. Rows whose codes are all 0 (or whose norm scale is 0)
    get codes 0 and scale 1: they output their bias alone."""
    codes, scale = layer.quantizer.codes(layer.weight.detach())
    out = codes.shape[0]
    scale = torch.as_tensor(scale, dtype=torch.float64).expand(out).clone()
    bias = layer.bias.detach().double() if layer.bias is not None else torch.zeros(out).double()
    if norm is not None:
        if norm.num_features != out:
            raise ValueError(f"a batch norm of {norm.num_features} features after {out} outputs")
        a, c = _batch_norm_affine(norm)
        scale, bias = scale * a, a * bias + c
    flip = scale < 0
    codes = torch.where(flip.reshape((-1,) + (1,) * (codes.dim() - 1)), -codes, codes)
    scale = scale.abs()
    dead = (scale == 0) | ~codes.reshape(out, -1).ne(0).any(1)
    codes = codes * ~dead.reshape((-1,) + (1,) * (codes.dim() - 1))
    scale = torch.where(dead, 1.0, scale)
    if not bool(torch.isfinite(scale).all()) or not bool(torch.isfinite(bias).all()):
        raise ValueError("a layer's scales or bias are not finite")
    return codes.to(torch.int64), scale.float(), bias.float()


def _layer_spec(layer, norm, input_offset: float = 0.0) -> dict:
    codes, row_scale, bias = folded_codes(layer, norm)
    if input_offset:
        # inputs a = scale q + offset: W a = W (scale q) + offset * (the row's weights summed),
        # which the bias takes; a padded border would read 0, not the offset
        if isinstance(layer, QuantConv2d) and any(layer.padding):
            raise ValueError("an activation grid with an offset cannot feed a padded convolution")
        row_sums = codes.reshape(codes.shape[0], -1).sum(1).double() * row_scale.double()
        bias = (bias.double() + input_offset * row_sums).float()
    largest = int(codes.abs().max())
    if largest > 127:
        raise NotIntegerCodes(f"codes up to {largest} need more than 8 bits")
    binary = largest == 1 and bool(codes.ne(0).all())
    if binary:  # {-1, +1}: one plane in the kernels
        levels, index = torch.tensor([-1.0, 1.0]), (codes > 0).long()
    else:
        largest = max(largest, 1)
        levels = torch.arange(-largest, largest + 1, dtype=torch.float32)
        index = codes + largest
    spec = {
        "levels": levels,
        "probs": nn.functional.one_hot(index, len(levels)).float(),
        "bias": bias,
        "row_scale": row_scale,
    }
    if isinstance(layer, QuantConv2d):
        spec["conv"] = {"stride": list(layer.stride), "padding": list(layer.padding)}
    return spec


_SHIFT_COMMUTES = ("maxpool2d", "avgpool2d", "flatten")


def _shift_last_layer(layers: dict, ops: list, shift: float, where: str) -> None:
    """Add `shift` to the bias of the last layer so far: its outputs move by `shift`, which
    the pooling and flattening after it pass on unchanged (max(z + s) = max(z) + s)."""
    last = max((i for i, op in enumerate(ops) if op["kind"] == "layer"), default=None)
    if last is None or any(op["kind"] not in _SHIFT_COMMUTES for op in ops[last + 1 :]):
        raise ValueError(f"{where!r}: an activation grid with an offset needs a layer before it "
                         "with only pooling or flattening between")  # fmt: skip
    spec = layers[ops[last]["name"]]
    spec["bias"] = (spec["bias"].double() + shift).float()


def export_posterior(
    net: nn.Sequential, input_shape: tuple[int, ...]
) -> tuple[Posterior, dict[str, dict]]:
    """The discrete posterior of a trained method's net, and the input grid of each layer.

    net: an ``nn.Sequential`` of `QuantLinear` / `QuantConv2d` layers (each optionally followed
    directly by a batch norm), activation quantizers, the glue modules of `bayesq.ops`, gradient
    quantizers and dropout (ignored). input_shape: one sample's shape. Returns (posterior,
    activations): activations maps a layer name to {"bits", "mode", "scale"} where the
    activation quantizer before it has a uniform grid (`quantize_posterior(activations=...)`).
    A grid with an "offset" (values scale * q + offset, QNN's odd levels) moves into the biases:
    the layer before the quantizer subtracts the offset (so the kernels' round-to-nearest finds
    q), the layer after adds offset times each row's summed weights.
    Raises NotIntegerCodes where a layer's weights are not integer codes times scales, and
    ValueError for modules with no discrete form.
    """
    if not isinstance(net, nn.Sequential):
        raise TypeError(f"net must be an nn.Sequential, got {type(net).__name__}")
    children = list(net.named_children())
    layers, ops, activations = {}, [], {}
    pending_grid, pending_offset, i = None, 0.0, 0
    while i < len(children):
        name, module = children[i]
        if isinstance(module, QuantLinear | QuantConv2d):
            norm = None
            if i + 1 < len(children) and isinstance(
                children[i + 1][1], nn.modules.batchnorm._BatchNorm
            ):
                norm, i = children[i + 1][1], i + 1
            layers[name] = _layer_spec(module, norm, pending_offset)
            ops.append({"kind": "layer", "name": name})
            if pending_grid is not None:
                activations[name] = pending_grid
            pending_grid, pending_offset = None, 0.0
        elif isinstance(module, ActivationQuantizer):
            grid = module.grid() if module.glue != "sign" else None
            if module.glue is not None:
                ops.append({"kind": module.glue})
            if grid is not None and grid.get("offset"):
                pending_offset = float(grid["offset"])
                _shift_last_layer(layers, ops, -pending_offset, name)
                grid = {k: v for k, v in grid.items() if k != "offset"}
            pending_grid = grid
        elif getattr(module, "no_discrete_form", None):
            raise NotIntegerCodes(f"{name!r}: {module.no_discrete_form}")
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ValueError(f"{name!r}: a batch norm must follow its layer directly to fold")
        elif is_glue(module):
            ops.append(glue_spec(module, f"module {name!r}"))
            if ops[-1]["kind"] == "avgpool2d":
                pending_grid = None  # a mean of grid points is off the grid
        elif isinstance(module, _IDENTITY_IN_EVAL) or getattr(module, "identity_forward", False):
            pass  # no trace in the forward pass of the evaluated net
        else:
            raise ValueError(f"module {name!r} ({type(module).__name__}) has no discrete form")
        i += 1
    posterior = Posterior.from_discrete(layers, ops, tuple(input_shape))
    return posterior, activations
