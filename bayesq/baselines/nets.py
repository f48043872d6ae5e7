"""A method's net: quantized layers, activation quantizers, and a reference net turned into one.

A method of the field is three choices per net, each a small module here:

  * a **weight quantizer** per layer (:class:`WeightQuantizer`): ``forward(w)`` gives the weights
    the layer computes with (gradients as the method passes them, mostly straight through) and
    ``codes(w)`` the integer codes and scale(s) those weights equal, which is how a trained net
    leaves for the kernels (`bayesq.baselines.export`); ``after_step()`` is the method's work on
    its float buffer after every optimizer step (BinaryConnect's clip, fixed point's rounding);
  * an **activation quantizer** in place of each hidden ReLU (:class:`ActivationQuantizer`), which
    names the glue op it stands for (a ReLU, or a sign) and the grid its outputs lie on;
  * batch norm after every hidden layer or not, and a gradient quantizer after every layer
    (DoReFa's k-bit gradients; identity in the forward pass).

:func:`quantized_net` builds a method's net from a reference net of `models/` (an
``nn.Sequential`` of Linear / Conv2d layers and the glue ops of `bayesq.ops`), copying its
weights, so a method can start from random or from pretrained weights (INQ, Deep Compression).

References: the methods' papers, cited by the quantizers in `bayesq.baselines.methods`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..quantizers import binary_connect, binary_connect_stochastic

__all__ = [
    "ActivationQuantizer",
    "BinaryConnectWeights",
    "FloatWeights",
    "NotIntegerCodes",
    "QuantConv2d",
    "QuantLinear",
    "WeightQuantizer",
    "glorot_scale",
    "quantized_layers",
    "quantized_net",
]


class NotIntegerCodes(ValueError):
    """A method's weights (or activations) are not integer codes times scales (k-means
    centroids, TTQ's unequal scales, float weights), so the kernels cannot run them."""


class WeightQuantizer(nn.Module):
    """The weights a layer computes with, from its float buffer w ((out, in) or (out, C, kh, kw)).

    Subclasses implement ``forward(w)`` and ``codes(w)``; ``bits`` is the weight width the method
    claims (for the comparison table; 32 for float).
    """

    bits: int = 32

    def codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes, scale): int64 codes of w's shape and a 0-d or (out,) float32 scale, with
        codes * scale (per output row) equal to ``forward(w)``; raises NotIntegerCodes where the
        method's values are no such thing."""
        raise NotIntegerCodes(f"{type(self).__name__} weights are not integer codes x scales")

    @torch.no_grad()
    def after_step(self, w: torch.Tensor) -> None:
        """The method's work on the float buffer after an optimizer step (default: none)."""


class FloatWeights(WeightQuantizer):
    """No quantization: the float net of a method's architecture (bits 32)."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w


def glorot_scale(layer: nn.Module) -> float:
    """H = sqrt(1.5 / (fan_in + fan_out)) of a Linear or Conv2d layer (fans counted over the
    kernel's positions): the Glorot initialisation bound over 2, BinaryConnect's binary value."""
    weight = layer.weight
    positions = weight[0, 0].numel() if weight.dim() == 4 else 1
    fan_in, fan_out = weight.shape[1] * positions, weight.shape[0] * positions
    return math.sqrt(1.5 / (fan_in + fan_out))


class BinaryConnectWeights(WeightQuantizer):
    """BinaryConnect (Courbariaux, Bengio, David 2015): +-H by the sign of w (Eq. 1), or drawn
    with P(+H) = hard_sigmoid(w / H) (Eq. 2-3, ``stochastic=True``; the evaluation net uses the
    sign, the paper's deterministic test-time rule); w clipped to [-H, H] after each update
    (Algorithm 1). H (``scale``) is the layer's Glorot bound (`glorot_scale`), as the authors'
    code binarizes to +-H: a stochastic weight then needs to travel H, not 1, to become sure,
    which at the layer's scale is what their per-layer learning rates 1 / H achieve. Codes +-1,
    scale H."""

    bits = 1

    def __init__(self, stochastic: bool = False, scale: float = 1.0) -> None:
        super().__init__()
        self.stochastic, self.scale = bool(stochastic), float(scale)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.stochastic and self.training:
            return binary_connect_stochastic(w, self.scale)
        return binary_connect(w, self.scale)

    def codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.where(w >= 0, 1, -1).to(torch.int64), torch.tensor(self.scale)

    @torch.no_grad()
    def after_step(self, w: torch.Tensor) -> None:
        w.clamp_(-self.scale, self.scale)


class ActivationQuantizer(nn.Module):
    """An activation quantizer in place of a hidden ReLU.

    ``glue``: the op of `bayesq.ops` it stands for in a discrete net ("relu": outputs >= 0;
    "sign": outputs +-1; None: none, its outputs take both signs). ``grid()``: {"bits", "mode",
    "scale"} of the uniform grid its outputs lie on (the next layer's input quantizer,
    `bayesq.quantize.quantize_posterior(activations=)`), with an "offset" where the grid is
    scale * q + offset (`bayesq.baselines.export` moves it into the biases), or None where they
    lie on no uniform grid (then the discrete net calibrates its own). ``bits`` is the
    activation width the method claims.
    """

    glue: str | None = "relu"
    bits: int = 32

    def grid(self) -> dict | None:
        return None


class QuantLinear(nn.Linear):
    """A linear layer computing with ``quantizer(weight)``; input (N, in) -> (N, out)."""

    def __init__(self, linear: nn.Linear, quantizer: WeightQuantizer) -> None:
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None)
        with torch.no_grad():
            self.weight.copy_(linear.weight)
            if linear.bias is not None:
                self.bias.copy_(linear.bias)
        self.quantizer = quantizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantizer(self.weight), self.bias)


class QuantConv2d(nn.Conv2d):
    """A 2-D convolution (groups 1, no dilation) computing with ``quantizer(weight)``."""

    def __init__(self, conv: nn.Conv2d, quantizer: WeightQuantizer) -> None:
        if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
            raise ValueError("QuantConv2d takes convolutions with groups 1, no dilation, zeros")
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            bias=conv.bias is not None,
        )
        with torch.no_grad():
            self.weight.copy_(conv.weight)
            if conv.bias is not None:
                self.bias.copy_(conv.bias)
        self.quantizer = quantizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.quantizer(self.weight), self.bias)


def quantized_layers(net: nn.Module) -> list[QuantLinear | QuantConv2d]:
    """The quantized layers of a method's net, in order."""
    return [m for m in net.modules() if isinstance(m, QuantLinear | QuantConv2d)]


def quantized_net(
    reference: nn.Sequential,
    weights: Callable[[str, nn.Module], WeightQuantizer],
    activation: Callable[[], nn.Module] | None = None,
    batch_norm: bool = False,
    gradient: Callable[[], nn.Module] | None = None,
) -> nn.Sequential:
    """A method's net with the reference net's architecture and (copied) weights.

    reference: an ``nn.Sequential`` of ``nn.Linear`` / ``nn.Conv2d`` layers and the glue modules
    of `bayesq.ops` (ReLU, max / average pooling, flatten). weights(name, layer): the weight
    quantizer of each layer. activation(): the module put in place of every ReLU (None keeps
    the ReLUs). batch_norm: a BatchNorm1d / 2d right after every layer, the last included (as
    BinaryConnect's and BNN's nets have it: binary weights give logits of no learned scale
    otherwise; it folds into the layer, `bayesq.baselines.export`). gradient(): a module put right after every
    layer (and its batch norm), e.g. DoReFa's gradient quantizer. The module names are the
    reference's, plus "<layer>_bn" and "<layer>_grad".
    """
    if not isinstance(reference, nn.Sequential):
        raise TypeError(f"reference must be an nn.Sequential, got {type(reference).__name__}")
    names = [n for n, m in reference.named_children() if isinstance(m, nn.Linear | nn.Conv2d)]
    if not names:
        raise ValueError("the reference net has no Linear or Conv2d layer")
    parts: dict[str, nn.Module] = OrderedDict()
    for name, module in reference.named_children():
        if isinstance(module, nn.Linear | nn.Conv2d):
            quantizer = weights(name, module)
            if not isinstance(quantizer, WeightQuantizer):
                raise TypeError(f"weights({name!r}) must give a WeightQuantizer")
            layer_type = QuantLinear if isinstance(module, nn.Linear) else QuantConv2d
            parts[name] = layer_type(module, quantizer)
            if batch_norm:
                width = (
                    module.out_features if isinstance(module, nn.Linear) else module.out_channels
                )
                norm = nn.BatchNorm1d if isinstance(module, nn.Linear) else nn.BatchNorm2d
                parts[f"{name}_bn"] = norm(width)
            if gradient is not None:
                parts[f"{name}_grad"] = gradient()
        elif isinstance(module, nn.ReLU) and activation is not None:
            parts[name] = activation()
        else:
            parts[name] = module
    return nn.Sequential(parts)
