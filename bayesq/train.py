"""Plain PyTorch training and evaluation helpers shared by the trainers and the experiments.

The float baseline that VNQ starts from (VNQ initializes its posterior means from a pretrained net)
is trained here with Adam and a linearly decaying learning rate, the schedule VNQ itself uses.
"""

from __future__ import annotations

import ctypes
import platform
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

__all__ = [
    "accuracy",
    "adam_options",
    "fit_deterministic",
    "keep_freed_memory",
    "linear_decay",
    "predict_logits",
]

# glibc's mallopt parameters (malloc.h) and the values keep_freed_memory sets
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_BYTES = 64 << 20
_TRIM_THRESHOLD_BYTES = 512 << 20
_freed_memory_kept: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed blocks of up to 64 MiB for reuse (no-op elsewhere).

    A CPU training step allocates and frees its activation and gradient buffers (megabytes each)
    anew every step, and PyTorch has no caching allocator on the CPU. glibc serves such blocks
    with mmap and hands them back to the kernel on free, or trims them off the top of its heap,
    so the next step touches fresh pages and page-faults on every 4 KiB of them. Measured on
    VNQ LeNet-5 (batch 128, 2 threads): about 6,000 page faults per step and 15-20 ms of an
    80-90 ms step; with this setting about 100 faults and 70-75 ms. The deterministic net, which
    allocates fewer buffers per step, stays near zero faults either way.

    It sets M_MMAP_THRESHOLD to 64 MiB (larger blocks are still mapped and returned at once) and
    M_TRIM_THRESHOLD to 512 MiB (the heap keeps up to that much free memory instead of trimming),
    for the whole process, once. The trainers call it; returns whether the setting is in effect.
    """
    global _freed_memory_kept
    if _freed_memory_kept is None:
        _freed_memory_kept = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
            if mallopt is not None:
                _freed_memory_kept = bool(
                    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
                    and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)
                )
    return _freed_memory_kept


def adam_options() -> dict:
    """Keyword arguments for torch.optim.Adam: the fused CPU kernel where torch has it (>= 2.4),
    about 8x faster than the per-tensor loop on a net the size of LeNet-5."""
    try:
        torch.optim.Adam([torch.zeros(1, requires_grad=True)], fused=True)
    except (RuntimeError, TypeError, ValueError):
        return {}
    return {"fused": True}


def linear_decay(total_steps: int):
    """LR multiplier falling linearly from 1 at step 0 to 0 at `total_steps`."""
    total_steps = max(1, int(total_steps))
    return lambda step: max(0.0, 1.0 - step / total_steps)


@torch.no_grad()
def predict_logits(
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 1024
) -> torch.Tensor:
    """Logits of `model` over x (N, ...) -> (N, classes), in batches of `batch_size` rows.

    `model` is anything that returns logits when called on a batch: an ``nn.Module`` (run in
    eval mode, its training flag restored afterwards), a `bayesq.runtime.DiscreteNet`, or a
    function such as ``lambda b: net(b, threads=2)``.
    """
    if not callable(model):
        raise TypeError(f"model must be callable on a batch, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or x.ndim < 1:
        raise TypeError(f"x must be a tensor of shape (N, ...), got {type(x).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    module = model if isinstance(model, nn.Module) else None
    was_training = module is not None and module.training
    if module is not None:
        module.eval()
    try:
        return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    finally:
        if module is not None:
            module.train(was_training)


def accuracy(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 1024,
) -> float:
    """Share (0..1) of the rows of x (N, ...) whose argmax logit equals the label y (N,).

    `model` is anything that returns logits (B, classes) when called on a batch (B, ...): an
    ``nn.Module``, a `bayesq.runtime.DiscreteNet`, a function (see :func:`predict_logits`).

    >>> accuracy(lambda b: b, torch.tensor([[0.0, 1.0], [2.0, 0.0]]), torch.tensor([1, 1]))
    0.5
    """
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex():
        raise TypeError(f"y must be an integer tensor of labels, got {getattr(y, 'dtype', y)!r}")
    if y.shape != (len(x),):
        raise ValueError(f"y must have shape ({len(x)},) to match x, got {tuple(y.shape)}")
    if len(y) == 0:
        raise ValueError("x and y hold no rows; accuracy needs at least one")
    logits = predict_logits(model, x, batch_size)
    return (logits.argmax(-1) == y).double().mean().item()


def fit_deterministic(
    net: nn.Module,
    loader,
    epochs: int,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train `net` by cross-entropy with Adam, lr decaying linearly to 0; returns epoch mean losses."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    keep_freed_memory()
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(
        net.parameters(), lr=lr, weight_decay=weight_decay, **adam_options()
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_decay(epochs * len(loader)))
    history = []
    net.train()
    bar = tqdm(range(epochs), desc="float", disable=not progress, leave=False)
    for _ in bar:
        total, count = 0.0, 0
        for x, y in loader:
            loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total, count = total + loss.item() * len(y), count + len(y)
        history.append(total / count)
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    net.eval()
    return history
