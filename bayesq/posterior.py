"""The posterior of a fitted net, layer by layer: what bit budgets and discrete nets are made from.

A `Posterior` holds, for every quantizable layer of a sequential net, the posterior mean and
variance of each weight, the codebook levels, and the probability mass near each level; and the
net's structure (its layers and the glue ops of `bayesq.ops` between them), so that a discrete
net can be rebuilt from it without the trainer. The trainers hand them out:

  * Gaussian (VNQ, `bayesq.nn.posterior_of` / `VNQ.posterior()`): q(w) = N(theta, sigma^2); the
    mass near level c_k is the Gaussian probability of the cell of c_k (the interval between the
    midpoints to its neighbours), so it sums to 1 over the levels;
  * discrete (EBP, `from_discrete` / `EBPNet.posterior()`): a categorical distribution over the
    levels per weight; the mean and variance follow from it.

`PruningRule` says which weights a posterior prunes (one value object, one default, passed to
whatever prunes). `Posterior.save` / `Posterior.load` keep a posterior in one safetensors file
with a JSON header (structure included), validated on load. `to_inference_data` exports
posterior draws of chosen weights as an ArviZ `InferenceData`.

This module imports no trainer: the trainers hand their state to the constructors here.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .ops import glue_output_shape

__all__ = [
    "LayerPosterior",
    "Posterior",
    "PruningRule",
    "gaussian_cell_mass",
]

_EPS = 1e-16


@dataclass(eq=False)
class LayerPosterior:
    """The posterior of one linear or 2-D convolutional layer.

    mean, variance: (out, in) or (out, in_channels, kh, kw), float32, variance > 0.
    levels: (L,) sorted codebook values (e.g. -r, 0, r); level_probs: the weight shape + (L,),
    the posterior probability of each level's cell (sums to 1 over the last axis).
    bias: (out,) or None. conv: for a convolution, its stride and padding (groups = 1).
    codebook_scale: r, the level spacing of a VNQ codebook (None for other posteriors).
    discrete: True for a categorical posterior over the levels (EBP), False for a Gaussian one.
    row_scale: (out,) float32 > 0 or None, a discrete posterior's levels per output row: the
    weights of row o take the values levels * row_scale[o] (mean and variance are in those
    units). A deterministic net whose rows have their own scales (XNOR-Net's per-filter mean
    |W|, a batch norm folded into the layer) is such a posterior with one-hot level_probs.
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
    row_scale: torch.Tensor | None = None  # a discrete posterior's per-row unit of its levels
    kind: str = field(init=False)

    def __post_init__(self) -> None:
        if self.mean.shape != self.variance.shape or self.mean.dim() not in (2, 4):
            raise ValueError(
                f"{self.name}: mean {tuple(self.mean.shape)} and variance "
                f"{tuple(self.variance.shape)} must share a 2-D or 4-D shape"
            )
        if not bool(torch.isfinite(self.mean).all()) or not bool(
            ((self.variance > 0) & (self.variance < math.inf)).all()
        ):
            raise ValueError(f"{self.name}: mean must be finite and variance finite and > 0")
        if self.levels.dim() != 1 or self.level_probs.shape != (*self.mean.shape, len(self.levels)):
            raise ValueError(f"{self.name}: level_probs must have shape weight + (levels,)")
        levels = self.levels
        if not bool(torch.isfinite(levels).all()) or not bool((levels[1:] > levels[:-1]).all()):
            raise ValueError(f"{self.name}: levels must be finite and increasing")
        if not bool(((self.level_probs >= 0) & (self.level_probs <= 1)).all()):
            raise ValueError(f"{self.name}: level_probs must lie in [0, 1]")
        if self.mean.dim() == 4:
            if self.conv is None:
                raise ValueError(f"{self.name}: a convolution needs its stride and padding")
            self.conv = _check_conv(self.name, self.conv, tuple(self.mean.shape[2:]))
        elif self.conv is not None:
            raise ValueError(f"{self.name}: a linear layer has no conv settings")
        if self.bias is not None and (
            self.bias.shape != (self.mean.shape[0],) or not bool(torch.isfinite(self.bias).all())
        ):
            raise ValueError(f"{self.name}: bias must be finite, ({self.mean.shape[0]},)")
        if self.row_scale is not None:
            if not self.discrete:
                raise ValueError(f"{self.name}: only a discrete posterior has a row_scale")
            if self.row_scale.shape != (self.mean.shape[0],) or not bool(
                ((self.row_scale > 0) & (self.row_scale < math.inf)).all()
            ):
                raise ValueError(
                    f"{self.name}: row_scale must be finite and > 0, ({self.mean.shape[0]},)"
                )
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
        return (self.mean.unsqueeze(-1) - self.row_levels()).abs().argmin(-1)

    def row_levels(self) -> torch.Tensor:
        """The levels in weight units, broadcastable against weight shape + (L,): `levels`
        itself, or levels * row_scale per output row."""
        if self.row_scale is None:
            return self.levels
        shape = (-1,) + (1,) * (self.mean.dim() - 1) + (1,)
        return self.levels * self.row_scale.reshape(shape)

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
        draws_of = self.levels[idx.T].reshape(draws, *self.mean.shape)
        if self.row_scale is not None:
            draws_of = draws_of * self.row_scale.reshape((-1,) + (1,) * (self.mean.dim() - 1))
        return draws_of


@dataclass(frozen=True)
class PruningRule:
    """Which weights a posterior prunes: they are 0 in its discrete net and cost no code.

    Gaussian posteriors (VNQ, Sparse VD): log alpha = log sigma^2 - log theta^2 at or above
    `log_alpha_threshold` (3: then 0 lies within theta +- sigma / sqrt(e^3), VNQ Sec. 3.3,
    Sparse VD Sec. 4), or, with more than one level, the zero level's cell holding more than
    `zero_mass_threshold` of the mass (which puts the mean in that cell: its code is 0 anyway).
    Discrete posteriors (EBP): the zero level's probability above `zero_mass_threshold` (a
    variance says nothing there).

    References: Achterhold et al. Variational Network Quantization. ICLR 2018 (Sec. 3.3);
    Molchanov, Ashukha, Vetrov. Variational Dropout Sparsifies DNNs. ICML 2017.
    """

    log_alpha_threshold: float = 3.0
    zero_mass_threshold: float = 0.5

    def __post_init__(self) -> None:
        for name in ("log_alpha_threshold", "zero_mass_threshold"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"PruningRule: {name} must be a finite number, got {v!r}")
        if not 0 < self.zero_mass_threshold <= 1:
            raise ValueError("PruningRule: zero_mass_threshold must lie in (0, 1]")

    def prunes_log_alpha(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """Bool, the shape of log_alpha: the Gaussian weights the log alpha test prunes."""
        return log_alpha >= self.log_alpha_threshold

    def pruned(self, layer: LayerPosterior) -> torch.Tensor:
        """Bool, the layer's weight shape: the weights this rule prunes."""
        zero_dominates = layer.zero_mass > self.zero_mass_threshold
        if layer.discrete:
            return zero_dominates
        pruned = self.prunes_log_alpha(layer.log_alpha)
        if len(layer.levels) > 1:  # with one level (Sparse VD's prior) its cell holds all mass
            pruned |= zero_dominates
        return pruned


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
    {"kind": "layer", "name": <a layer's name>} and the glue specs of `bayesq.ops`
    ({"kind": "relu"}, {"kind": "maxpool2d", "kernel_size": 2}, ...).
    input_shape: the shape of one input (e.g. (1, 28, 28)). The layers must chain from it,
    which is checked by shape arithmetic on construction.
    """

    layers: dict[str, LayerPosterior]
    ops: list[dict]
    input_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        self.ops = [dict(op) if isinstance(op, dict) else op for op in self.ops]
        self.input_shape = tuple(self.input_shape)
        names = [
            op.get("name") for op in self.ops if isinstance(op, dict) and op.get("kind") == "layer"
        ]
        if names != list(self.layers):
            raise ValueError(f"ops name layers {names}, the posterior holds {list(self.layers)}")
        for name, layer in self.layers.items():
            if layer.name != name:
                raise ValueError(f"layer {name!r} is named {layer.name!r} inside")
        self.output_shapes()

    @property
    def num_weights(self) -> int:
        return sum(layer.mean.numel() for layer in self.layers.values())

    def output_shapes(self) -> list[tuple[int, ...]]:
        """The shape of one sample after each op, by arithmetic (ValueError where the layers do
        not chain from input_shape)."""
        shape = self.input_shape
        if not shape or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape
        ):
            raise ValueError(f"input_shape must be ints >= 1, got {shape!r}")
        shapes = []
        for i, op in enumerate(self.ops):
            where = f"op {i}"
            if not isinstance(op, dict):
                raise ValueError(f"{where}: an op is a dict, got {op!r}")
            if op.get("kind") == "layer":
                if set(op) != {"kind", "name"}:
                    raise ValueError(
                        f"{where}: a layer op holds 'kind' and 'name' only, got {op!r}"
                    )
                shape = _layer_output_shape(self.layers[op["name"]], shape)
            else:
                shape = glue_output_shape(op, shape, where)
            shapes.append(shape)
        return shapes

    # ---------------------------------------------------------------------------------------
    @classmethod
    def from_discrete(
        cls,
        layers: dict[str, dict],
        ops: list[dict],
        input_shape: tuple[int, ...],
    ) -> Posterior:
        """A posterior with a categorical distribution over levels per weight (e.g. EBP).

        layers: name -> {"levels": (L,), "probs": weight shape + (L,), "bias": (out,) or None,
        for convolutions "conv": {"stride", "padding"}, and optionally "row_scale": (out,) > 0,
        each row's unit of the levels}. Mean and variance follow from the probabilities (a
        variance floor of 1e-12, in the squared units of the levels, keeps log alpha finite for
        certain weights).
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
            row_scale = spec.get("row_scale")
            if row_scale is not None:
                row_scale = torch.as_tensor(row_scale, dtype=torch.float32)
                per_row = row_scale.reshape((-1,) + (1,) * (mean.dim() - 1))
                valid = row_scale.shape == (mean.shape[0],) and bool(
                    ((row_scale > 0) & (row_scale < math.inf)).all()
                )
                if valid:  # else LayerPosterior names the fault
                    mean, variance = mean * per_row, variance * per_row.square()
            built[name] = LayerPosterior(
                name=name,
                mean=mean,
                variance=variance,
                levels=levels,
                level_probs=probs,
                bias=spec.get("bias"),
                conv=spec.get("conv"),
                discrete=True,
                row_scale=row_scale,
            )
        return cls(built, list(ops), tuple(input_shape))

    # ---------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the posterior to one safetensors file, atomically, with its structure (the
        format: `bayesq.posterior_file`). Returns the path."""
        from .posterior_file import save_posterior  # the file format builds on this module

        return save_posterior(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Posterior:
        """Read and validate a posterior written by `save` (`bayesq.posterior_file`); any fault
        raises ValueError naming the file."""
        from .posterior_file import load_posterior

        return load_posterior(path)

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
                    for k in layer.mean.abs().flatten().topk(min(4, layer.mean.numel())).indices
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


def _layer_output_shape(layer: LayerPosterior, shape: tuple[int, ...]) -> tuple[int, ...]:
    """One sample's shape after `layer` (ValueError where it does not fit the input)."""
    out = layer.mean.shape[0]
    if layer.kind == "linear":
        if shape != (layer.mean.shape[1],):
            raise ValueError(
                f"{layer.name}: needs ({layer.mean.shape[1]},) inputs, gets {list(shape)}"
            )
        return (out,)
    channels, kh, kw = layer.mean.shape[1:]
    if len(shape) != 3 or shape[0] != channels:
        raise ValueError(f"{layer.name}: needs ({channels}, H, W) inputs, gets {list(shape)}")
    stride, padding = layer.conv["stride"], layer.conv["padding"]
    oh = (shape[1] + 2 * padding[0] - kh) // stride[0] + 1
    ow = (shape[2] + 2 * padding[1] - kw) // stride[1] + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"{layer.name}: a {shape[1]}x{shape[2]} input is smaller than the kernel")
    return (out, oh, ow)


def _check_conv(name: str, conv, kernel: tuple[int, int]) -> dict:
    """A convolution's {"stride": [sh, sw], "padding": [ph, pw]}: stride >= 1, padding below
    the kernel size (what the discrete nets run)."""
    if not isinstance(conv, dict) or set(conv) != {"stride", "padding"}:
        raise ValueError(
            f"{name}: conv must be {{'stride': [.., ..], 'padding': [.., ..]}}, got {conv!r}"
        )
    out = {}
    for key, low in (("stride", 1), ("padding", 0)):
        pair = conv[key]
        if isinstance(pair, tuple):
            pair = list(pair)
        if not (
            isinstance(pair, list)
            and len(pair) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in pair)
        ):
            raise ValueError(f"{name}: conv {key} must be two ints >= {low}, got {pair!r}")
        out[key] = pair
    if any(p >= k for p, k in zip(out["padding"], kernel, strict=True)):
        raise ValueError(
            f"{name}: conv padding {out['padding']} must be below the kernel {list(kernel)}"
        )
    return out
