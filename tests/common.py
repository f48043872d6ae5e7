"""Helpers shared by several test modules."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from bayesq import kernels


def toy_classification(n: int = 256, features: int = 8, classes: int = 3, seed: int = 0):
    """Linearly separable-ish blobs: x (n, features) float32, y (n,) int64."""
    g = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(classes, features, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    x = centres[y] + torch.randn(n, features, generator=g)
    return x, y


def loader(x, y, batch_size: int = 32, seed: int = 0) -> DataLoader:
    return DataLoader(
        TensorDataset(x, y),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )


# The ISA paths of the VNQ kernels (KL, noise) this CPU can run, each tested by forcing it.
KERNEL_ISAS = [
    isa
    for isa, ok in [
        ("portable", True),
        ("avx2", kernels.cpu_features()["avx2"]),
        ("avx512", kernels.cpu_features()["avx512f"]),
    ]
    if ok
]
