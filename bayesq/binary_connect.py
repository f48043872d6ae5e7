"""BinaryConnect: nets trained with binary weights in the forward pass, the seeds' baseline.

A BinaryConnect layer keeps a real-valued buffer w and computes with its binarization
w_b = sign(w) in {-1, +1} (0 maps to +1; the paper's deterministic rule, eq. 1). The gradient
with respect to w_b is applied to w unchanged where |w| <= 1 and cancelled where |w| > 1
(straight-through, `bayesq.quantizers.binary_connect`), and after every update w is clipped to
[-1, 1] (Algorithm 1), so that a buffer never drifts so far that its sign can no longer flip.

:func:`fit_baseline` is the training loop of the baselines beside EBP in `experiments.ebp`: the
BinaryConnect net (``models.binary_connect_mlp``: BinaryConnect layers, batch norm after each, ReLU)
and the float net of the same widths (``models.mlp``), both by cross-entropy (the paper used the
squared hinge loss) with Adam and a learning rate decaying linearly to 0.

References: M. Courbariaux, Y. Bengio, J.-P. David, "BinaryConnect: Training Deep Neural Networks
with binary weights during propagations", NeurIPS 2015 (eq. 1, Algorithm 1).

>>> layer = BinaryConnectLinear(3, 2)
>>> layer.weight.data = torch.tensor([[0.2, -0.5, 0.0], [-1.0, 0.3, 0.1]])
>>> layer(torch.ones(1, 3)).tolist()  # rows of sign(w) summed, zero bias
[[1.0, 1.0]]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .checks import integer, positive
from .quantizers import binary_connect
from .train import adam_options, linear_decay

__all__ = ["BinaryConnectLinear", "clip_binary_weights_", "fit_baseline"]


class BinaryConnectLinear(nn.Linear):
    """A fully connected layer whose forward pass uses sign(w) in {-1, +1} (0 -> +1) and a real
    bias; the gradient reaches the float buffer w straight through where |w| <= 1.

    Weights start Glorot-uniform (BinaryConnect's initialisation of the buffers), biases at 0.
    Call :meth:`clip_` after every optimizer step (:func:`fit_baseline` does).
    Input (N, fan_in) -> output (N, fan_out).
    """

    def __init__(self, fan_in: int, fan_out: int) -> None:
        super().__init__(fan_in, fan_out)
        bound = (6.0 / (fan_in + fan_out)) ** 0.5  # Glorot uniform
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, binary_connect(self.weight), self.bias)

    @torch.no_grad()
    def clip_(self) -> None:
        """Clip the float buffer to [-1, 1] in place (Algorithm 1's clip after the update)."""
        self.weight.clamp_(-1.0, 1.0)


def clip_binary_weights_(net: nn.Module) -> None:
    """Clip the buffer of every :class:`BinaryConnectLinear` inside `net` to [-1, 1]."""
    for module in net.modules():
        if isinstance(module, BinaryConnectLinear):
            module.clip_()


def fit_baseline(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    batch_size: int,
    lr: float = 1e-3,
    seed: int = 0,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
) -> list[float]:
    """Train `net` on (x (N, features), y (N,) class indices) by cross-entropy; mean loss per epoch.

    Adam with the learning rate falling linearly from `lr` to 0 over all steps; every epoch visits
    the rows in a new order drawn from a generator seeded by `seed` (the global RNG is not used,
    so a net built right after ``torch.manual_seed(seed)`` trains the same way every time). After
    each step the BinaryConnect buffers are clipped to [-1, 1]. A net with batch norm skips a
    last batch of one row (its batch statistics need two). ``on_epoch(epoch, net)`` is called
    after every epoch (1-based), with the net in training mode, e.g. to record test accuracy.
    """
    epochs, batch_size = integer("epochs", epochs), integer("batch_size", batch_size)
    lr = positive("lr", lr)
    if y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"y must have shape ({len(x)},), got {tuple(y.shape)}")
    has_batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, **adam_options())
    steps = epochs * -(-len(y) // batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_decay(steps))
    generator = torch.Generator().manual_seed(seed)
    net.train()
    losses = []
    for epoch in range(1, epochs + 1):
        total, count = 0.0, 0
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            if has_batch_norm and len(idx) < 2:
                continue
            loss = F.cross_entropy(net(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            clip_binary_weights_(net)
            total, count = total + loss.item() * len(idx), count + len(idx)
        losses.append(total / max(count, 1))
        if on_epoch is not None:
            on_epoch(epoch, net)
    return losses
