"""Expectation backpropagation (EBP): a mean-field posterior over discrete weights, no learning rate.

Soudry, Hubara and Meir (2014) train an MLP of sign units, v_l = sign(W_l v_{l-1} + b_l), by an
online Bayes update of a factorized posterior q(W) = prod_ij q(W_ij), projected back onto the
factorized family after each mini-batch. The central limit theorem makes each pre-activation
Gaussian, so the forward pass carries a mean and a variance per unit, and the update of each
weight's natural parameter takes the form of backpropagation. :class:`EBPNet` holds the posterior
and runs the forward moments, the update (the math of one layer, with its equations:
``bayesq.ebp_moments``), training and both predictions, batched (batch-major tensors).

Weight families (``weights=``):

* ``"binary"``: W in {-1, +1}, q(W = w) proportional to exp(h w); Wbar = tanh h, Var W = 1 - tanh^2 h.
* ``"ternary"``: W in {-1, 0, +1}, natural parameters per level theta = (a - h, 0, a + h), i.e.
  q(W = s) proportional to exp(h s + a s^2). The first-order EBP rule written per level,
  ln q(W_ij = s) += s d ln P / d Wbar_ij, updates h exactly as in the binary case. The magnitude
  update (default on; this package's addition, not in the paper or its code, derived in
  ``bayesq.ebp_moments.magnitude_update``) keeps the s^2 term of the same expansion; without it,
  a keeps its prior value -``zero_logit`` and P(W = 0) only shrinks as |h| grows. Its EBP-D net
  takes each weight's most probable level.
* ``"real"``: the paper's real-weight variant: W ~ N(m, real_var); the first-order rule moves the
  natural parameter m / real_var, so m += real_var / 2 E^T vbar and the variance stays at its prior
  value (as in the authors' ``Real_EBP_minibatch.m``). Its EBP-D net uses W = m (not discrete).

Predictions: EBP-P takes the argmax of the output means vbar_L = 2 Phi(mu_L / sigma_L) - 1; EBP-D
runs the deterministic net v = sign(W v + b) (sign(0) = +1) with W the most probable level of each
weight (sign h for binary) and takes the argmax of the last layer's W v + b.

Inputs: centre them (x minus the training mean of each feature). A weight of +-1 cannot ignore a
feature, so with inputs that are all >= 0 (pixels in [0, 1]) each first-layer pre-activation
carries a common-mode part sum_j Wbar_j E[x_j] that the bias has to offset; experiments/ebp.py
centres by default (binary EBP-P on its MNIST subset: 97.16% against 96.93% raw, 3 seeds). The
EBP-D net on raw inputs is the same net with b_1 - W_1 E[x] as first-layer bias.

The posterior: :meth:`posterior` hands the level probabilities to
:class:`bayesq.posterior.Posterior` (layers joined by sign glue), the input of the bit
budgets in ``bayesq.bits``.

>>> net = EBPNet([4, 8, 3], seed=0)
>>> x, y = torch.randn(20, 4), torch.arange(20) % 3
>>> _ = net.fit(x, y, epochs=2, batch_size=5)
>>> net.predict(x).shape, net.discrete_weights()[0].dtype
(torch.Size([20]), torch.int8)

References:
    Soudry, Hubara, Meir. Expectation Backpropagation: Parameter-Free Training of Multilayer
    Neural Networks with Continuous or Discrete Weights. NeurIPS 2014 (Algorithm 1); the authors'
    Matlab release (Learning_Algorithms/Binary_EBP_minibatch.m, Real_EBP_minibatch.m).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .checks import integer, number, positive, tensor
from .ebp_moments import (
    Workspace,
    hidden_signal,
    layer_cache,
    magnitude_update,
    output_signal,
    preactivation_moments,
    ternary_moments,
)
from .posterior import Posterior

__all__ = ["FAMILIES", "EBPNet", "one_vs_all"]

FAMILIES = ("binary", "ternary", "real")
_LEVELS = {"binary": (-1.0, 1.0), "ternary": (-1.0, 0.0, 1.0)}
_LABEL_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8)
_EVAL_CHUNK = 4096  # rows per forward chunk at prediction time (bounds the (B, width) buffers)


def one_vs_all(labels: torch.Tensor, num_classes: int, dtype=torch.float32) -> torch.Tensor:
    """Class indices (B,) -> targets (B, num_classes) in {-1, +1}: +1 at the label, -1 elsewhere."""
    if tensor("labels", labels).ndim != 1 or labels.dtype not in _LABEL_DTYPES:
        raise ValueError(
            f"labels must be a 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}"
        )
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    y = torch.full((len(labels), num_classes), -1.0, dtype=dtype, device=labels.device)
    return y.scatter_(1, labels.long()[:, None], 1.0)


class EBPNet:
    """An MLP of sign units with a mean-field posterior over its weights, trained by EBP.

    Args:
        sizes: layer widths (inputs, hidden..., classes), at least two entries, classes >= 2.
        weights: ``"binary"`` ({-1, +1}), ``"ternary"`` ({-1, 0, +1}) or ``"real"`` (Gaussian).
        seed: seeds the initial h and the shuffling of :meth:`fit` (one ``torch.Generator``).
        sigma_w: initial h_ij ~ U(-1/2, 1/2) sqrt(12 sigma_w / K) (variance sigma_w / K).
        noise_var: variance of the Gaussian noise on each un-normalized pre-activation (the
            reference code's +1); > 0: it is the only part of sigma2 left once every weight is
            certain, and sigma2 = 0 would make the update 0 / 0.
        zero_logit: ternary only: the prior log-odds of level 0 against each of -1 and +1 at h = 0
            (a starts at -zero_logit); 0 is the uniform prior over the three levels.
        magnitude_update: ternary only: also update a (the exact ADF coefficient to order
            1 / (K + 1), ``bayesq.ebp_moments.magnitude_update``); the default None means True
            for ternary weights, as without it no weight ever settles on 0 from the uniform
            prior. For
            accuracy pass False: on a validation split of MNIST (784-500-10, 20 epochs) EBP-P /
            EBP-D ended at 91.97% / 90.08% with it and 96.75% / 94.85% without, as EBP's
            reuse of every example in every epoch drives a of the output layer far below 0
            (README, "Expectation backpropagation").
        real_var: real only: the variance of every weight (fixed by the first-order rule).
        dtype: floating dtype of all state (float32 by default; float64 for checks).

    Attributes:
        h: per layer (out, in): the natural parameter (binary, ternary) or the mean (real).
        a: ternary only, per layer (out, in): the natural parameter of s^2; else None.
        bias: per layer (out,), in the units of W v (un-normalized).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        weights: str = "binary",
        *,
        seed: int = 0,
        sigma_w: float = 1.0,
        noise_var: float = 1.0,
        zero_logit: float = 0.0,
        magnitude_update: bool | None = None,
        real_var: float = 1.0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        sizes = tuple(sizes)
        if len(sizes) < 2 or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes
        ):
            raise ValueError(f"sizes must be >= 2 positive integers, got {sizes!r}")
        if sizes[-1] < 2:
            raise ValueError(f"need at least 2 output classes (one-vs-all), got {sizes[-1]}")
        if weights not in FAMILIES:
            raise ValueError(f"weights must be one of {FAMILIES}, got {weights!r}")
        if integer("seed", seed, minimum=0) >= 2**63:
            raise ValueError(f"seed must lie in 0..2**63 - 1, got {seed}")
        zero_logit = number("zero_logit", zero_logit)
        if magnitude_update is not None and not isinstance(magnitude_update, bool):
            raise TypeError(
                f"magnitude_update must be True, False or None, got {type(magnitude_update).__name__}"
            )
        if magnitude_update and weights != "ternary":
            raise ValueError("magnitude_update applies to ternary weights only")
        if magnitude_update is None:
            magnitude_update = weights == "ternary"
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.sizes, self.family, self.seed, self.dtype = sizes, weights, int(seed), dtype
        self.sigma_w = positive("sigma_w", sigma_w)
        self.noise_var = positive("noise_var", noise_var)
        # sigma2 >= noise_var / (K + 1) must stay a normal number in dtype, or it rounds to 0
        if self.noise_var / (max(sizes[:-1]) + 1) < torch.finfo(dtype).tiny:
            raise ValueError(
                f"noise_var {noise_var!r} is too small for {dtype}: noise_var / (fan-in + 1) "
                f"must be at least {torch.finfo(dtype).tiny:.3g}"
            )
        self.real_var = positive("real_var", real_var)
        self.zero_logit, self.magnitude_update = float(zero_logit), bool(magnitude_update)
        self._gen = torch.Generator().manual_seed(self.seed)
        self._work = Workspace()  # the caches' buffers, reused from one mini-batch to the next
        self.h, self.bias = [], []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            u = torch.rand(fan_out, fan_in, generator=self._gen, dtype=dtype)
            self.h.append((u - 0.5) * math.sqrt(12.0 * self.sigma_w / fan_in))
            self.bias.append(torch.zeros(fan_out, dtype=dtype))
        self.a = None
        if weights == "ternary":
            self.a = [torch.full_like(h, -self.zero_logit) for h in self.h]
        self._refresh()

    # ------------------------------------------------------------------ posterior moments
    def weight_moments(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, variance) of every weight of one layer, each (out, in)."""
        h = self.h[layer]
        if self.family == "binary":
            mean = torch.tanh(h)
            return mean, 1.0 - mean.square()
        if self.family == "ternary":
            return ternary_moments(h, self.a[layer])
        return h.clone(), torch.full_like(h, self.real_var)

    def _refresh(self) -> None:
        """Rebuild the per-layer caches the forward pass reads, from the current h (and a)."""
        a = self.a or [None] * len(self.h)
        self._cache = [
            layer_cache(self.family, layer, h, a[layer], self.real_var, self._work)
            for layer, h in enumerate(self.h)
        ]

    def _layer(self, layer: int, mean_in: torch.Tensor, var_in: torch.Tensor | None):
        """Pre-activation moments (mu, sigma2) of one layer, each (B, out); var_in None: x."""
        return preactivation_moments(
            self._cache[layer], self.bias[layer], mean_in, var_in, self.noise_var
        )

    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        """x as a (B, sizes[0]) tensor of the net's dtype; TypeError / ValueError naming x."""
        if tensor("x", x).ndim != 2 or x.shape[1] != self.sizes[0]:
            raise ValueError(f"x must be a (B, {self.sizes[0]}) tensor, got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
        x = x.to(self.dtype)
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"x must be finite (no NaN or infinity) in {self.dtype}")
        # the forward pass sums x_j^2 over a row: it must not overflow (|x| ~ 1e19 in float32)
        if len(x) and not bool(torch.isfinite(x.square().sum(1)).all()):
            raise ValueError(f"x is too large: the sum of x^2 over a row overflows {self.dtype}")
        return x

    @torch.no_grad()
    def moments(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Forward moments: per layer (mu, sigma2), each (B, out), normalized by sqrt(K + 1).

        x: (B, sizes[0]) deterministic inputs. Hidden units pass on vbar = erf(mu / sqrt(2 sigma2))
        and Var v = 1 - vbar^2 (Soudry et al. 2014, Algorithm 1, forward pass).
        """
        x = self._check_x(x)
        out, mean, var = [], x, None
        for layer in range(len(self.h)):
            mu, s2 = self._layer(layer, mean, var)
            out.append((mu, s2))
            mean = torch.erf(mu / (2.0 * s2).sqrt())
            var = (1.0 - mean) * (1.0 + mean)
        return out

    # ------------------------------------------------------------------ the EBP update
    @torch.no_grad()
    def update(self, x: torch.Tensor, targets: torch.Tensor) -> None:
        """One EBP step on a mini-batch: forward moments, backward pass, update of h and b.

        x: (B, sizes[0]); targets: (B, classes) in {-1, +1}. The B updates are summed (computed
        with the same posterior), as in the authors' mini-batch code. The equations:
        ``bayesq.ebp_moments``.
        """
        x = self._check_x(x)
        shape = (len(x), self.sizes[-1])
        if tensor("targets", targets).shape != shape or not bool((targets.abs() == 1).all()):
            raise ValueError(
                f"targets must be a {shape} tensor of -1 and +1, got {tuple(targets.shape)}"
            )
        self._step(x, targets.to(self.dtype))
        self._check_state()

    def _check_state(self) -> None:
        """Raise FloatingPointError if any natural parameter or bias is no longer finite."""
        for name, tensors in (("h", self.h), ("a", self.a or []), ("bias", self.bias)):
            for layer, t in enumerate(tensors):
                if not bool(torch.isfinite(t).all()):
                    raise FloatingPointError(
                        f"EBP diverged: {name} of layer {layer + 1} is not finite (is x scaled "
                        f"to O(1) and noise_var = {self.noise_var} large enough?)"
                    )

    @torch.no_grad()
    def _step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """:meth:`update` on checked inputs: x (B, sizes[0]) and y (B, classes), the net's dtype."""
        inputs, pre = [], []
        mean, var = x, None
        for layer in range(len(self.h)):
            mu, s2 = self._layer(layer, mean, var)
            inputs.append(mean)
            pre.append((mu, s2.sqrt()))
            mean = torch.erf(mu / (math.sqrt(2.0) * pre[-1][1]))
            var = (1.0 - mean) * (1.0 + mean)
        delta = None
        for layer in reversed(range(len(self.h))):
            mu, sigma = pre[layer]
            root = math.sqrt(self.sizes[layer] + 1)
            z = mu / sigma
            if delta is None:
                g = output_signal(y, z, sigma, root)
            else:
                g = hidden_signal(delta, z, sigma, root)
            if layer > 0:  # the signal for the layer below uses this layer's mean before its update
                delta = g @ self._cache[layer].mean
            step = 0.5 * (self.real_var if self.family == "real" else 1.0)
            self.h[layer].addmm_(g.T, inputs[layer], alpha=step)
            self.bias[layer].add_(g.sum(0), alpha=0.5)
            if self.magnitude_update:
                magnitude_update(self.a[layer], g, z, sigma, root, inputs[layer], layer == 0)
        self._refresh()

    def fit(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        epochs: int = 1,
        batch_size: int = 10,
        callback: Callable[[int, EBPNet], None] | None = None,
        progress: bool = False,
    ) -> EBPNet:
        """Train for ``epochs`` passes over (x, labels) in shuffled mini-batches of ``batch_size``.

        x: (N, sizes[0]) float; labels: (N,) class indices in 0..classes-1 (one-vs-all targets are
        built here). The order is drawn from the net's seeded generator, so two nets with the same
        seed fed the same calls train identically. ``callback(epoch, net)`` runs after each epoch
        (epoch counted from 1), e.g. to record learning curves. Returns self.
        """
        x = self._check_x(x)
        y = one_vs_all(labels, self.sizes[-1], self.dtype)
        if len(y) != len(x) or len(x) == 0:
            raise ValueError(
                f"x and labels must hold the same number (>= 1) of rows, got {len(x)} and {len(y)}"
            )
        integer("epochs", epochs)
        integer("batch_size", batch_size)
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        for epoch in tqdm(range(1, epochs + 1), desc="EBP", disable=not progress, leave=False):
            order = torch.randperm(len(x), generator=self._gen)
            for start in range(0, len(x), batch_size):
                idx = order[start : start + batch_size]
                self._step(x[idx], y[idx])
            self._check_state()  # once per epoch: a cheap guard against a silent NaN posterior
            if callback is not None:
                callback(epoch, self)
        return self

    # ------------------------------------------------------------------ predictions
    @torch.no_grad()
    def output_means(self, x: torch.Tensor) -> torch.Tensor:
        """EBP-P outputs: vbar_L = 2 Phi(mu_L / sigma_L) - 1 in [-1, 1], (B, classes)."""
        x = self._check_x(x)
        chunks = []
        for start in range(0, len(x), _EVAL_CHUNK):
            mu, s2 = self.moments(x[start : start + _EVAL_CHUNK])[-1]
            chunks.append(torch.erf(mu / (2.0 * s2).sqrt()))
        return torch.cat(chunks) if chunks else x.new_zeros(0, self.sizes[-1])

    def _deterministic_weights(self) -> list[torch.Tensor]:
        if self.family == "real":
            return [h.clone() for h in self.h]
        return [c.to(self.dtype) for c in self.discrete_weights()]

    @torch.no_grad()
    def deterministic_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """EBP-D outputs: W v + b of the last layer, v = sign(W v + b) below (sign(0) = +1).

        W is each weight's most probable level (binary: sign h, 0 -> +1) or the mean (real).
        Returns (B, classes).
        """
        v = self._check_x(x)
        weights = self._deterministic_weights()
        for layer, w in enumerate(weights):
            u = torch.addmm(self.bias[layer], v, w.T)
            v = u if layer == len(weights) - 1 else torch.where(u >= 0, 1.0, -1.0).to(self.dtype)
        return v

    def predict(self, x: torch.Tensor, mode: str = "probabilistic") -> torch.Tensor:
        """Class indices (B,): argmax of the EBP-P (``"probabilistic"``) or EBP-D
        (``"deterministic"``) outputs."""
        if mode == "probabilistic":
            return self.output_means(x).argmax(1)
        if mode == "deterministic":
            return self.deterministic_outputs(x).argmax(1)
        raise ValueError(f"mode must be 'probabilistic' or 'deterministic', got {mode!r}")

    def accuracy(self, x: torch.Tensor, labels: torch.Tensor, mode: str = "probabilistic") -> float:
        """Share (0..1) of rows whose predicted class equals the label."""
        if tensor("labels", labels).is_floating_point() or labels.is_complex():
            raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
        if labels.shape != (len(tensor("x", x)),):
            raise ValueError(f"labels must have shape ({len(x)},), got {tuple(labels.shape)}")
        return (self.predict(x, mode) == labels.to(torch.int64)).double().mean().item()

    # ------------------------------------------------------------------ the posterior, exported
    def natural_parameters(self) -> list[torch.Tensor]:
        """Per layer (out, in, levels): log q(W = level) up to a constant, levels ascending.

        Binary: (-h, h); ternary: (a - h, 0, a + h). Raises ValueError for real weights.
        """
        if self.family == "binary":
            return [torch.stack([-h, h], -1) for h in self.h]
        if self.family == "ternary":
            return [
                torch.stack([a - h, torch.zeros_like(h), a + h], -1)
                for h, a in zip(self.h, self.a, strict=True)
            ]
        raise ValueError("real-weight EBP has a Gaussian posterior, not levels")

    def level_probabilities(self) -> dict[str, dict[str, torch.Tensor]]:
        """The posterior of every layer as probabilities of its levels.

        Returns ``{"fc1": {...}, "fc2": {...}, ...}`` in layer order, each with
        ``"levels"`` (L,) ascending level values ((-1, 1) or (-1, 0, 1)), ``"probs"`` (out, in, L)
        summing to 1 over the last axis, and ``"bias"`` (out,) in the units of W v (so the EBP-D
        net is v = sign(W v + b) with W the argmax level). Float32 copies, detached from the net
        (the layout ``bayesq.posterior.Posterior.from_discrete`` reads). Real weights: ValueError.
        """
        levels = torch.tensor(_LEVELS.get(self.family, ()), dtype=torch.float32)
        return {
            f"fc{i + 1}": {
                "levels": levels.clone(),
                "probs": torch.softmax(theta, -1).float(),
                "bias": self.bias[i].float().clone(),
            }
            for i, theta in enumerate(self.natural_parameters())
        }

    def posterior(self) -> Posterior:
        """The posterior as a :class:`bayesq.posterior.Posterior`, for bit budgets and export.

        Layers "fc1", "fc2", ... hold :meth:`level_probabilities` (mean and variance follow from
        them, float32; a certain weight gets the variance floor 1e-12 of ``from_discrete``),
        joined by {"kind": "sign"} glue: the EBP-D net v = sign(W v + b). Input shape (sizes[0],).
        Raises ValueError for real weights.
        """
        layers = self.level_probabilities()
        ops: list[dict] = []
        for name in layers:
            layer = {"kind": "layer", "name": name}
            ops += [{"kind": "sign"}, layer] if ops else [layer]
        return Posterior.from_discrete(layers, ops, (self.sizes[0],))

    def discrete_weights(self) -> list[torch.Tensor]:
        """EBP-D integer codes per layer, int8 (out, in): each weight's most probable level.

        Binary: sign(h) with h = 0 -> +1. Ternary: 0 where a + |h| <= 0 (ties go to 0), else
        sign(h) with h = 0 -> +1. Raises ValueError for real weights.
        """
        if self.family == "real":
            raise ValueError("real-weight EBP has no discrete codes")
        codes = [torch.where(h >= 0, 1, -1).to(torch.int8) for h in self.h]
        if self.family == "ternary":
            codes = [
                c.masked_fill(a + h.abs() <= 0, 0)
                for c, h, a in zip(codes, self.h, self.a, strict=True)
            ]
        return codes

    def __repr__(self) -> str:
        return f"EBPNet(sizes={self.sizes}, weights={self.family!r}, seed={self.seed})"
