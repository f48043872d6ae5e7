"""The posterior of a fitted net, layer by layer: what bit budgets and discrete nets are made from.

A `Posterior` holds, for every quantizable layer of a sequential net, the posterior mean and
variance of each weight, the codebook levels, and the probability mass near each level; and the
net's structure (its layers and the glue between them: ReLU, max pooling, flatten), so that a
discrete net can be rebuilt from it without the trainer. Two kinds of posteriors fill it:

  * Gaussian (VNQ, `from_vnq`): q(w) = N(theta, sigma^2); the mass near level c_k is the
    Gaussian probability of the cell of c_k (the interval between the midpoints to its
    neighbours), so it sums to 1 over the levels;
  * discrete (EBP, `from_discrete`): a categorical distribution over the levels per weight; the
    mean and variance follow from it.

`to_inference_data` exports posterior draws of chosen weights as an ArviZ `InferenceData`, so that
`az.summary` and `az.plot_posterior` work on them.

This module imports no trainer: the trainers hand their state to the constructors here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

__all__ = ["GLUE_OPS", "LayerPosterior", "Posterior"]

_EPS = 1e-16
# The glue a discrete net may have between its quantized layers, by name: (kind, parameters).
# "sign": v = sign(u) with sign(0) = +1, the hidden units of EBP's nets (bayesq.runtime.Sign).
GLUE_OPS = ("relu", "maxpool2d", "flatten", "sign")


@dataclass(eq=False)
class LayerPosterior:
    """The posterior of one linear or 2-D convolutional layer.

    mean, variance: (out, in) or (out, in_channels, kh, kw), float32, variance > 0.
    levels: (L,) sorted codebook values (e.g. -r, 0, r); level_probs: the weight shape + (L,),
    the posterior probability of each level's cell (sums to 1 over the last axis).
    bias: (out,) or None. conv: for a convolution, its stride and padding (groups = 1).
    codebook_scale: r, the level spacing of a VNQ codebook (None for other posteriors).
    discrete: True for a categorical posterior over the levels (EBP), False for a Gaussian one.
    """

    name: str
    mean: torch.Tensor
    variance: torch.Tensor
    levels: torch.Tensor
    level_probs: torch.Tensor
    bias: torch.Tensor | None = None
    conv: dict | None = None
    codebook_scale: float | None = None
    discrete: bool = False  # a categorical posterior over the levels (else Gaussian)
    kind: str = field(init=False)

    def __post_init__(self) -> None:
        if self.mean.shape != self.variance.shape or self.mean.dim() not in (2, 4):
            raise ValueError(
                f"{self.name}: mean {tuple(self.mean.shape)} and variance "
                f"{tuple(self.variance.shape)} must share a 2-D or 4-D shape"
            )
        if not bool(torch.isfinite(self.mean).all()) or not bool((self.variance > 0).all()):
            raise ValueError(f"{self.name}: mean must be finite and variance > 0")
        if self.level_probs.shape != (*self.mean.shape, len(self.levels)):
            raise ValueError(f"{self.name}: level_probs must have shape weight + (levels,)")
        if self.mean.dim() == 4 and self.conv is None:
            raise ValueError(f"{self.name}: a convolution needs its stride and padding")
        self.kind = "conv2d" if self.mean.dim() == 4 else "linear"

    @property
    def std(self) -> torch.Tensor:
        return self.variance.sqrt()

    @property
    def log_alpha(self) -> torch.Tensor:
        """log alpha = log sigma^2 - log mean^2: the noise-to-signal ratio Sparse VD prunes by."""
        return self.variance.log() - torch.log(self.mean.square() + _EPS)

    @property
    def nearest_level(self) -> torch.Tensor:
        """Index (int64, weight shape) of the level nearest to the posterior mean."""
        return (self.mean.unsqueeze(-1) - self.levels).abs().argmin(-1)

    @property
    def zero_mass(self) -> torch.Tensor:
        """Posterior probability of the cell of the level 0 (zeros if no level is 0)."""
        zero = torch.nonzero(self.levels == 0).flatten()
        if len(zero) == 0:
            return torch.zeros_like(self.mean)
        return self.level_probs[..., int(zero[0])]

    def rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """mean and variance as (out, fan_in) matrices: one row per output channel."""
        return self.mean.reshape(self.mean.shape[0], -1), self.variance.reshape(
            self.mean.shape[0], -1
        )

    def sample(self, draws: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Posterior draws of every weight, (draws, *weight shape): Gaussian for a VNQ posterior,
        the levels drawn from their probabilities for a discrete one."""
        if not self.discrete:
            noise = torch.randn((draws, *self.mean.shape), generator=generator)
            return self.mean + self.std * noise
        flat = self.level_probs.reshape(-1, len(self.levels))
        idx = torch.multinomial(flat, draws, replacement=True, generator=generator)
        return self.levels[idx.T].reshape(draws, *self.mean.shape)


def gaussian_cell_mass(mean: torch.Tensor, std: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """P(w in the cell of each level) for w ~ N(mean, std^2); cells split at level midpoints.

    mean, std: any shape; levels: (L,) sorted. Returns mean.shape + (L,), summing to 1.
    """
    edges = (levels[1:] + levels[:-1]) / 2
    z = (edges - mean.unsqueeze(-1)) / std.unsqueeze(-1)
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2.0)))
    # from mean, not cdf: with one level there are no edges and cdf[..., :1] would be empty
    zeros = torch.zeros_like(mean).unsqueeze(-1)
    ones = torch.ones_like(mean).unsqueeze(-1)
    return torch.diff(torch.cat([zeros, cdf, ones], -1), dim=-1).clamp(min=0)


@dataclass(eq=False)
class Posterior:
    """The posterior of a sequential net: its layers and its structure.

    layers: name -> LayerPosterior, in forward order. ops: the forward pass as a list of
    ("layer", name) and glue entries ("relu",), ("maxpool2d", kernel_size), ("flatten",),
    ("sign",).
    input_shape: the shape of one input (e.g. (1, 28, 28)).
    """

    layers: dict[str, LayerPosterior]
    ops: list[tuple]
    input_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        names = [op[1] for op in self.ops if op[0] == "layer"]
        if names != list(self.layers):
            raise ValueError(f"ops name layers {names}, the posterior holds {list(self.layers)}")
        for op in self.ops:
            if op[0] != "layer" and op[0] not in GLUE_OPS:
                raise ValueError(f"unknown op {op!r}")

    @property
    def num_weights(self) -> int:
        return sum(layer.mean.numel() for layer in self.layers.values())

    # ---------------------------------------------------------------------------------------
    @classmethod
    @torch.no_grad()
    def from_vnq(cls, net: nn.Sequential, input_shape: tuple[int, ...]) -> Posterior:
        """The Gaussian posterior of a fitted VNQ net (an nn.Sequential of VNQ layers, ReLU,
        MaxPool2d and Flatten), with the level masses of each weight's codebook cells."""
        from .nn import VNQConv2d, VNQLayer  # the layer classes only; no training code

        layers, ops = {}, []
        for name, module in net.named_children():
            if isinstance(module, VNQLayer):
                mean = module.theta.detach().float().clone()
                variance = module.sigma2.detach().float().clone()
                levels = module.codebook().detach().float()
                conv = None
                if isinstance(module, VNQConv2d):
                    conv = {"stride": list(module.stride), "padding": list(module.padding)}
                layers[name] = LayerPosterior(
                    name=name,
                    mean=mean,
                    variance=variance,
                    levels=levels,
                    level_probs=gaussian_cell_mass(mean, variance.sqrt(), levels),
                    bias=None if module.bias is None else module.bias.detach().float().clone(),
                    conv=conv,
                    codebook_scale=float(module.codebook_scale),
                )
                ops.append(("layer", name))
            else:
                ops.append(_glue_op(name, module))
        return cls(layers, ops, tuple(input_shape))

    @classmethod
    def from_discrete(
        cls,
        layers: dict[str, dict],
        ops: list[tuple],
        input_shape: tuple[int, ...],
    ) -> Posterior:
        """A posterior with a categorical distribution over levels per weight (e.g. EBP).

        layers: name -> {"levels": (L,), "probs": weight shape + (L,), "bias": (out,) or None,
        and for convolutions "conv": {"stride", "padding"}}. Mean and variance follow from the
        probabilities (a variance floor of 1e-12 keeps log alpha finite for certain weights).
        """
        built = {}
        for name, spec in layers.items():
            levels = torch.as_tensor(spec["levels"], dtype=torch.float32)
            probs = torch.as_tensor(spec["probs"], dtype=torch.float32)
            if not bool((probs >= 0).all()) or not torch.allclose(
                probs.sum(-1), torch.ones(()), atol=1e-4
            ):
                raise ValueError(f"{name}: probs must be >= 0 and sum to 1 over the levels")
            mean = (probs * levels).sum(-1)
            variance = ((probs * levels.square()).sum(-1) - mean.square()).clamp(min=1e-12)
            layer = LayerPosterior(
                name=name,
                mean=mean,
                variance=variance,
                levels=levels,
                level_probs=probs,
                bias=spec.get("bias"),
                conv=spec.get("conv"),
                discrete=True,
            )
            built[name] = layer
        return cls(built, list(ops), tuple(input_shape))

    # ---------------------------------------------------------------------------------------
    def to_inference_data(
        self,
        weights: dict[str, list[tuple[int, ...]]] | None = None,
        draws: int = 1000,
        chains: int = 2,
        seed: int = 0,
    ):
        """ArviZ InferenceData with posterior draws of chosen weights.

        weights: layer name -> list of weight indices (e.g. {"fc1": [(0, 3), (2, 7)]}); default:
        the 4 weights of each layer with the largest |mean|. Each chosen weight is a variable
        "<layer>[i,j]" of shape (chains, draws), drawn independently from its posterior (the
        draws are exact, so the chains agree up to sampling error). The codebook scale r of each
        layer, a point estimate in VNQ, goes into the `constant_data` group.
        """
        import arviz as az

        if draws < 4 or chains < 1:
            raise ValueError("need at least 4 draws and 1 chain")
        generator = torch.Generator().manual_seed(seed)
        if weights is None:
            weights = {
                name: [
                    tuple(int(i) for i in np.unravel_index(int(k), tuple(layer.mean.shape)))
                    for k in layer.mean.abs().flatten().topk(4).indices
                ]
                for name, layer in self.layers.items()
            }
        posterior, constants = {}, {}
        for name, indices in weights.items():
            if name not in self.layers:
                raise ValueError(f"no layer named {name!r}; layers: {list(self.layers)}")
            layer = self.layers[name]
            samples = layer.sample(draws * chains, generator).reshape(
                chains, draws, *layer.mean.shape
            )
            for index in indices:
                index = tuple(index)
                if len(index) != layer.mean.dim():
                    raise ValueError(f"{name}: index {index} has the wrong number of axes")
                label = f"{name}[{','.join(map(str, index))}]"
                posterior[label] = samples[(slice(None), slice(None), *index)].numpy()
            if layer.codebook_scale is not None:
                constants[f"{name}.r"] = np.array(layer.codebook_scale)
        return az.from_dict(posterior=posterior, constant_data=constants or None)


def _glue_op(name: str, module: nn.Module) -> tuple:
    if isinstance(module, nn.ReLU):
        return ("relu",)
    if isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            raise ValueError(f"{name}: only Flatten(1, -1) is supported")
        return ("flatten",)
    if isinstance(module, nn.MaxPool2d):
        k = module.kernel_size
        stride = module.stride if module.stride is not None else k
        if k != stride or module.padding not in (0, (0, 0)) or module.dilation not in (1, (1, 1)):
            raise ValueError(f"{name}: only MaxPool2d(k) with stride k, no padding, is supported")
        return ("maxpool2d", k if isinstance(k, int) else int(k[0]))
    raise ValueError(f"layer {name!r} ({type(module).__name__}) has no discrete form")
