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


def pruned_vnq(name: str, seed: int = 0, log_sigma2=(-12.0, -2.0)):
    """`untrained_vnq` snapped by `quantize_vnq_` (some weights pruned by log alpha), with the
    weights of the first 284 inputs all 0 where the first layer is linear with more than 512
    inputs (as VNQ leaves MNIST's blank border: enough dead inputs to save a 512-bit chunk)."""
    from bayesq.vnq_snap import quantize_vnq_

    net = untrained_vnq(name, seed, log_sigma2)
    first = next(m for m in net.modules() if hasattr(m, "theta"))
    if first.theta.dim() == 2 and first.theta.shape[1] > 512:
        first.theta.data[:, :284] = 0.0
    quantize_vnq_(net)
    return net


def run_limited(code: str, limit_gib: float = 4.0, timeout: float = 120.0):
    """Run `code` in a fresh Python interpreter whose address space is capped at `limit_gib`
    (RLIMIT_AS), so that an input which makes the library allocate what an untrusted header says
    fails inside the child (MemoryError / a refused allocation) instead of taking the machine down.
    Returns the CompletedProcess (text stdout/stderr); the child's cwd is the repository root."""
    import resource
    import subprocess
    import sys
    from pathlib import Path

    limit = int(limit_gib * 2**30)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run(
        [sys.executable, "-c", code],
        preexec_fn=cap,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parent.parent,
    )


def discrete_of_vnq(net, calibration: torch.Tensor, act_bits: int = 8, pruning=None):
    """The discrete net of a fitted VNQ net on its own codebook levels, by the one builder."""
    from bayesq.nn import posterior_of
    from bayesq.quantize import quantize_posterior

    posterior = posterior_of(net, tuple(calibration.shape[1:]))
    return quantize_posterior(posterior, calibration, act_bits=act_bits, pruning=pruning)


def gaussian_layer(mean, std, name: str = "fc", scale: float | None = None):
    """A Gaussian posterior layer (mean, std: (out, fan_in)) over the levels -0.5, 0, 0.5 (a
    VNQ-like codebook, of scale `scale` if given)."""
    from bayesq.posterior import LayerPosterior, gaussian_cell_mass

    mean = torch.as_tensor(mean, dtype=torch.float32)
    std = torch.as_tensor(std, dtype=torch.float32).expand_as(mean)
    levels = torch.tensor([-0.5, 0.0, 0.5])
    cells = gaussian_cell_mass(mean, std, levels)
    return LayerPosterior(name, mean, std.square(), levels, cells, codebook_scale=scale)


def sparse_vd_layer(mean, var, name: str = "fc", conv: dict | None = None):
    """A Gaussian posterior layer (mean, var: the weight shape) over Sparse VD's one level 0."""
    from bayesq.posterior import LayerPosterior, gaussian_cell_mass

    levels = torch.zeros(1)
    cells = gaussian_cell_mass(mean, var.sqrt(), levels)
    return LayerPosterior(name, mean, var, levels, cells, conv=conv)


def chain_posterior(*layers):
    """The posterior of a net of these linear layers, in order (they must chain)."""
    from bayesq.posterior import Posterior

    ops = [{"kind": "layer", "name": lp.name} for lp in layers]
    return Posterior({lp.name: lp for lp in layers}, ops, (layers[0].mean.shape[1],))


def compression_example():
    """3 x 4 linear Sparse VD layer: row 1 all noise (group log alpha >> 3), column 2 all noise;
    the other weights known to a variance of 0.75 * 2^-10 (9 significand bits) or, two of them,
    0.3 * 2^-4 (4 bits)."""
    mean = torch.tensor(
        [[0.25, -0.125, 0.01, 0.05], [0.01, 0.01, 0.01, 0.01], [0.0625, 0.25, 0.01, -0.25]]
    )
    var = torch.full((3, 4), 0.75 * 2**-10)  # t = 9
    var[1] = 0.1  # row 1: noise only
    var[:, 2] = 1.0  # column 2: noise only
    var[0, 3] = 0.3 * 2**-4  # t = 4; log alpha = log(0.01875 / 0.0025) = 2.0 < 3: kept
    var[2, 0] = 0.3 * 2**-4  # t = 4; log alpha = log(0.01875 / 0.0039) = 1.6
    return sparse_vd_layer(mean, var)
