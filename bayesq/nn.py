"""Variational layers of VNQ: a Gaussian posterior per weight, trained by local reparameterization.

Each layer holds, per weight, the posterior mean theta and log sigma^2 (additive parameterization,
w = theta + sigma * eps), a deterministic bias, and the log of its codebook scale r (the level
spacing of the multi-spike prior). log alpha = log sigma^2 - log theta^2 is derived, never stored.

How a layer computes its output depends on where it runs:

* inside a Pyro model (under SVI or ``Predictive``): the weight is a Pyro sample site named
  ``site_name`` with the multi-spike prior; its value comes from the guide. Inside a
  :class:`LocalReparameterization` handler the layer instead draws its pre-activations from their
  exact Gaussian marginal under the same posterior (Kingma et al. 2015), which has far lower
  gradient variance; the weight site still carries the KL term of the ELBO;
* outside Pyro, in ``train()`` mode: local reparameterization (for plain PyTorch loops);
* outside Pyro, in ``eval()`` mode: the posterior mean, or the quantized weights
  (``eval_weights = "quantized"``: snapped to the codebook, pruned by the layer's
  ``pruning``, a `bayesq.posterior.PruningRule`; `bayesq.vnq_snap.set_eval_weights_` sets both).

`posterior_of` hands a fitted net's posterior out as a `bayesq.posterior.Posterior`.

References:
    Achterhold et al. Variational Network Quantization. ICLR 2018 (Sec. 3, 4).
    Kingma, Salimans, Welling. Variational Dropout and the Local Reparameterization Trick. 2015.
    Molchanov et al. Variational Dropout Sparsifies Deep Neural Networks. ICML 2017 (Sec. 4.1, 4.3).
"""

from __future__ import annotations

import math

import pyro
import torch
import torch.nn.functional as F
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import _PYRO_STACK, am_i_wrapped
from torch import nn

from .ops import glue_spec, is_glue
from .posterior import LayerPosterior, Posterior, PruningRule, gaussian_cell_mass
from .priors import MultiSpikeLogUniform, NormalLogVariance, codebook_offsets, kl_multi_spike
from .quantizers import snap_to_codebook
from .vnq_kernels import local_reparameterization_sample

__all__ = ["LocalReparameterization", "VNQConv2d", "VNQLinear", "VNQLayer", "posterior_of"]

# VNQ clips log sigma^2 to (-10, 1) during training (Achterhold et al. 2018, Sec. 4).
LOG_SIGMA2_RANGE = (-10.0, 1.0)
LOG_SIGMA2_INIT = -8.0
# Keeps sqrt(var) differentiable where an input column is all zeros (padding, dead units).
_VARIANCE_FLOOR = 1e-8
_EPS_LOG = 1e-16


class LocalReparameterization(Messenger):
    """Pyro handler: inside it, VNQ layers sample pre-activations instead of weights.

    The weight sites are still visited (their values come from the guide and their KL enters the
    ELBO), but each layer's output is drawn as b + x theta^T + sqrt(x^2 sigma^2^T) * eps, the exact
    marginal of one example's pre-activation under q. The expected log-likelihood of a mini-batch
    is a sum of per-example terms, so this is an unbiased, lower-variance estimate of the same ELBO.

    Around the guide, the handler also spares the draw of the weights themselves: a guide site
    marked ``infer={"vnq_weight": True}`` takes the posterior mean as its value (nothing reads the
    value under this handler, and the KL is computed from the distribution, not from a draw).
    """

    def _pyro_sample(self, msg) -> None:
        if msg["value"] is None and not msg["is_observed"] and msg["infer"].get("vnq_weight"):
            msg["value"] = msg["fn"].mean


def _local_reparameterization_active() -> bool:
    return any(isinstance(handler, LocalReparameterization) for handler in _PYRO_STACK)


class VNQLayer(nn.Module):
    """Shared state and behaviour of the VNQ layers; subclasses supply the linear operation.

    Attributes:
        theta: posterior means, the weight shape.
        log_sigma2: posterior log variances, the weight shape (clipped to LOG_SIGMA2_RANGE in use).
        log_codebook_scale: log r, scalar; the codebook is r * [-m, ..., m].
        bias: deterministic bias (out_features,) or None.
        num_levels: odd codebook size (3 = ternary).
        site_name: Pyro sample-site name of the weight, set by the model that owns the layer.
        eval_weights: "mean" or "quantized", used by forward() in eval mode outside Pyro.
        pruning: the PruningRule of the "quantized" weights (default: PruningRule()).
    """

    def __init__(self, weight_shape, bias: bool, num_levels: int = 3):
        super().__init__()
        codebook_offsets(num_levels)  # validates
        self.num_levels = num_levels
        self.theta = nn.Parameter(torch.empty(weight_shape))
        self.log_sigma2 = nn.Parameter(torch.full(weight_shape, LOG_SIGMA2_INIT))
        self.bias = nn.Parameter(torch.zeros(weight_shape[0])) if bias else None
        self.log_codebook_scale = nn.Parameter(torch.zeros(()))
        self.site_name: str | None = None
        self.eval_weights = "mean"
        self.pruning = PruningRule()
        self.reset_parameters()

    # --- subclasses -------------------------------------------------------------------------
    def _apply_weight(self, x: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
        raise NotImplementedError

    # --- initialisation ---------------------------------------------------------------------
    def reset_parameters(self) -> None:
        fan_in = self.theta[0].numel()
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            self.theta.uniform_(-bound, bound)
            self.log_sigma2.fill_(LOG_SIGMA2_INIT)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)
        self.init_codebook_scale_()

    @torch.no_grad()
    def init_codebook_scale_(self, zero_share: float | None = None) -> None:
        """Set the codebook scale r from the current means theta.

        zero_share = None: as ternary weight networks do (Li, Zhang, Liu 2016), r = mean |theta|
        over the weights with |theta| > 0.7 mean |theta| (divided by the outermost level index m).
        zero_share = q in (0, 1): r = 2 * q-quantile of |theta|, so that the share q of the weights
        starts nearer to the zero spike than to any other. The multi-spike KL vanishes on every
        spike alike, so it does not move weights between spikes by itself; which spike a weight
        ends on is decided by where it starts and by how much the data needs it. This is the knob
        that sets how sparse the quantized net can become.
        """
        magnitude = self.theta.abs().flatten()
        if zero_share is None:
            large = magnitude[magnitude > 0.7 * magnitude.mean()]
            r = (large.mean() if large.numel() else magnitude.mean()) / max(
                1, (self.num_levels - 1) // 2
            )
        else:
            if not 0.0 < zero_share < 1.0:
                raise ValueError(f"zero_share must lie in (0, 1), got {zero_share}")
            r = 2.0 * torch.quantile(magnitude.double(), zero_share).to(magnitude.dtype)
        self.log_codebook_scale.fill_(torch.log(r.clamp_min(1e-6)))

    @torch.no_grad()
    def load_deterministic_(
        self, weight: torch.Tensor, bias: torch.Tensor | None, zero_share: float | None = None
    ) -> None:
        """Start the posterior at a pretrained weight (VNQ initializes theta this way)."""
        if weight.shape != self.theta.shape:
            raise ValueError(f"weight shape {tuple(weight.shape)} != {tuple(self.theta.shape)}")
        self.theta.copy_(weight)
        self.log_sigma2.fill_(LOG_SIGMA2_INIT)
        if self.bias is not None and bias is not None:
            self.bias.copy_(bias)
        self.init_codebook_scale_(zero_share)

    # --- posterior quantities ---------------------------------------------------------------
    @property
    def codebook_scale(self) -> torch.Tensor:
        return self.log_codebook_scale.exp()

    def codebook(self) -> torch.Tensor:
        """Codebook values r * [-m..m], shape (num_levels,)."""
        return self.codebook_scale * codebook_offsets(self.num_levels, dtype=self.theta.dtype)

    @property
    def clipped_log_sigma2(self) -> torch.Tensor:
        return self.log_sigma2.clamp(*LOG_SIGMA2_RANGE)

    @property
    def sigma2(self) -> torch.Tensor:
        return self.clipped_log_sigma2.exp()

    @property
    def log_alpha(self) -> torch.Tensor:
        """log alpha = log sigma^2 - log theta^2 (dropout rate relative to the spike at 0)."""
        return self.clipped_log_sigma2 - torch.log(self.theta.square() + _EPS_LOG)

    def posterior(self) -> NormalLogVariance:
        """q(w) = N(theta, sigma^2), batch shape = weight shape (a Normal that keeps log sigma^2)."""
        return NormalLogVariance(self.theta, self.clipped_log_sigma2)

    def prior(self) -> MultiSpikeLogUniform:
        """The multi-spike log-uniform prior, expanded to the weight shape."""
        return MultiSpikeLogUniform(self.codebook_scale, self.num_levels).expand(self.theta.shape)

    def kl(self) -> torch.Tensor:
        """Approximate KL(q || p) of the layer, summed over its weights (nats)."""
        return kl_multi_spike(
            self.theta, self.clipped_log_sigma2, self.codebook_scale, self.num_levels
        ).sum()

    @torch.no_grad()
    def quantized_weight(self, pruning: PruningRule | None = None) -> torch.Tensor:
        """theta snapped to the nearest codebook value, 0 where `pruning` (default: the
        layer's own) prunes by log alpha."""
        pruning = self.pruning if pruning is None else pruning
        return snap_to_codebook(
            self.theta,
            self.codebook_scale,
            self.num_levels,
            pruning.prunes_log_alpha(self.log_alpha),
        )

    # --- forward ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if am_i_wrapped():
            if self.site_name is None:
                raise RuntimeError(
                    f"{type(self).__name__} runs inside a Pyro model but has no site_name; "
                    "wrap the net in bayesq.vnq.VNQ (or set layer.site_name) first"
                )
            event_dims = self.theta.dim()
            weight = pyro.sample(self.site_name, self.prior().to_event(event_dims))
            if _local_reparameterization_active():
                return self._local_reparameterized(x)
            return self._apply_weight(x, weight, self.bias)
        if self.training:
            return self._local_reparameterized(x)
        if self.eval_weights == "mean":
            return self._apply_weight(x, self.theta, self.bias)
        if self.eval_weights == "quantized":
            return self._apply_weight(x, self.quantized_weight(), self.bias)
        raise ValueError(f"eval_weights must be 'mean' or 'quantized', got {self.eval_weights!r}")

    def _local_reparameterized(self, x: torch.Tensor) -> torch.Tensor:
        """A sample of the pre-activations: mean + sqrt(variance) * eps, eps ~ N(0, 1) per output."""
        mean = self._apply_weight(x, self.theta, self.bias)
        variance = self._apply_weight(x.square(), self.sigma2, None)
        if mean.dtype == torch.float32 and mean.device.type == "cpu":
            # fused in C++: one pass draws the noise and writes the sample and its slope in var
            return local_reparameterization_sample(mean, variance, _VARIANCE_FLOOR)
        return torch.addcmul(mean, (variance + _VARIANCE_FLOOR).sqrt(), torch.randn_like(mean))


class VNQLinear(VNQLayer):
    """Fully connected VNQ layer. Input (..., in_features) -> output (..., out_features)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, num_levels: int = 3):
        self.in_features, self.out_features = in_features, out_features
        super().__init__((out_features, in_features), bias, num_levels)

    def _apply_weight(self, x, weight, bias):
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, levels={self.num_levels}"


class VNQConv2d(VNQLayer):
    """2-D convolutional VNQ layer (groups = 1). Input (N, C_in, H, W) -> (N, C_out, H', W')."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        bias: bool = True,
        num_levels: int = 3,
    ):
        kernel_size = nn.modules.utils._pair(kernel_size)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = kernel_size
        self.stride = nn.modules.utils._pair(stride)
        self.padding = nn.modules.utils._pair(padding)
        super().__init__((out_channels, in_channels, *kernel_size), bias, num_levels)

    def _apply_weight(self, x, weight, bias):
        return F.conv2d(x, weight, bias, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, levels={self.num_levels}"
        )


@torch.no_grad()
@torch.no_grad()
def layer_posterior(name: str, module: VNQLayer) -> LayerPosterior:
    """The Gaussian posterior N(theta, sigma^2) of one VNQ layer, with the mass of each weight's
    codebook cells (`bayesq.posterior.gaussian_cell_mass`); copies, not views."""
    mean = module.theta.detach().float().clone()
    variance = module.sigma2.detach().float().clone()
    levels = module.codebook().detach().float()
    conv = None
    if isinstance(module, VNQConv2d):
        conv = {"stride": list(module.stride), "padding": list(module.padding)}
    return LayerPosterior(
        name=name,
        mean=mean,
        variance=variance,
        levels=levels,
        level_probs=gaussian_cell_mass(mean, variance.sqrt(), levels),
        bias=None if module.bias is None else module.bias.detach().float().clone(),
        conv=conv,
        codebook_scale=float(module.codebook_scale),
    )


def posterior_of(net: nn.Sequential, input_shape: tuple[int, ...]) -> Posterior:
    """The Gaussian posterior of a fitted VNQ net (an nn.Sequential of VNQ layers and the glue
    ops of `bayesq.ops`), with the mass of each weight's codebook cells.

    input_shape: one input sample's shape, e.g. (1, 28, 28) (the layers must chain from it).
    """
    if not isinstance(net, nn.Sequential):
        raise ValueError(f"posterior_of needs an nn.Sequential, got {type(net).__name__}")
    layers, ops = {}, []
    for name, module in net.named_children():
        if isinstance(module, VNQLayer):
            layers[name] = layer_posterior(name, module)
            ops.append({"kind": "layer", "name": name})
        elif is_glue(module):
            ops.append(glue_spec(module, f"layer {name!r}"))
        else:
            raise ValueError(f"layer {name!r} ({type(module).__name__}) has no discrete form")
    return Posterior(layers, ops, tuple(input_shape))
