"""One training loop for every method of the field, so that they differ only where their papers do.

:func:`fit_method` trains a method's net (`bayesq.baselines.nets`) by cross-entropy with Adam,
the learning rate falling linearly to 0 (the schedule of `bayesq.train` and of the BinaryConnect
baseline), each epoch's order drawn from a generator seeded by ``seed``. After every optimizer
step each quantized layer's weight quantizer does its method's work on the float buffer
(``WeightQuantizer.after_step``: BinaryConnect's clip, fixed point's rounding at the update
width) and an optional ``after_step(net)`` hook runs (INQ's and Deep Compression's masks).
``penalty(net)`` adds a term to the loss (PACT's L2 on its clipping levels). A net with batch
norm skips a last batch of one row (its statistics need two).

The staged methods (INQ's partitions, Deep Compression's prune / share / fine-tune) call it once
per stage: `bayesq.baselines.methods`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..checks import integer, positive
from ..train import adam_options, linear_decay
from .nets import quantized_layers

__all__ = ["fit_method", "recalibrate_batch_norm_"]


def fit_method(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    batch_size: int,
    lr: float = 1e-3,
    seed: int = 0,
    penalty: Callable[[nn.Module], torch.Tensor] | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
    parameters: list[nn.Parameter] | None = None,
    progress: bool = False,
    label: str = "train",
) -> list[float]:
    """Train `net` on x (N, ...) float inputs and y (N,) int64 labels; the mean loss per epoch.

    parameters: what Adam updates (default: every parameter of the net), e.g. only the shared
    centroids in Deep Compression's fine-tuning. Leaves the net in eval mode.
    """
    epochs, batch_size = integer("epochs", epochs), integer("batch_size", batch_size)
    lr = positive("lr", lr)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point tensor (N, ...)")
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != (len(x),):
        raise ValueError(f"y must be int64 labels of shape ({len(x)},)")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x holds NaN or infinite values")
    params = list(net.parameters()) if parameters is None else list(parameters)
    optimizer = torch.optim.Adam(params, lr=lr, **adam_options())
    steps = epochs * -(-len(y) // batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_decay(steps))
    generator = torch.Generator().manual_seed(seed)
    has_batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    layers = quantized_layers(net)
    net.train()
    losses = []
    for _ in tqdm(range(epochs), desc=label, disable=not progress, leave=False):
        total, count = 0.0, 0
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            if has_batch_norm and len(idx) < 2:
                continue
            loss = F.cross_entropy(net(x[idx]), y[idx])
            objective = loss if penalty is None else loss + penalty(net)
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            schedule.step()
            for layer in layers:
                layer.quantizer.after_step(layer.weight)
            if after_step is not None:
                after_step(net)
            total, count = total + loss.item() * len(idx), count + len(idx)
        losses.append(total / max(count, 1))
        if math.isnan(losses[-1]):  # a diverged run: stop and say so rather than train on NaN
            raise FloatingPointError(f"{label}: the loss became NaN in epoch {len(losses)}")
    net.eval()
    return losses


@torch.no_grad()
def recalibrate_batch_norm_(net: nn.Module, x: torch.Tensor, batch_size: int = 256) -> int:
    """Re-estimate every batch norm's running mean and variance over x with the rest of the net
    as it is evaluated (e.g. stochastic BinaryConnect's deterministic sign instead of the draws
    it trained with, whose activations have other statistics): one pass, a cumulative average
    (momentum None). Returns the number of batch norms; leaves the net in eval mode."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    net.eval()
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for start in range(0, len(x), batch_size):
            if len(x) - start >= 2:  # batch statistics need two rows
                net(x[start : start + batch_size])
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum
            m.eval()
    return len(norms)
