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


def untrained_vnq(name: str = "lenet5", seed: int = 0, log_sigma2=(-12.0, -2.0)):
    """An untrained VNQ net of models/ with r set (zero share 0.6) and log sigma^2 spread
    uniformly, so that its posterior has both kept and pruned weights."""
    import models  # the reference architectures (tests may use them; the library may not)

    torch.manual_seed(seed)
    net = models.build(name, variational=True)
    for module in net.modules():
        if hasattr(module, "theta"):
            module.init_codebook_scale_(0.6)
            module.log_sigma2.data.uniform_(*log_sigma2)
    return net
