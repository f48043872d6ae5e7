"""Reference architectures build deterministic or VNQ and map inputs to class logits."""

import pytest
import torch
from torch import nn

import models
from bayesq.nn import VNQConv2d, VNQLinear


@pytest.mark.parametrize(
    "name, kwargs, x_shape, weights",
    [
        ("mlp", {}, (2, 1, 8, 8), 64 * 512 + 512 * 256 + 256 * 10),
        ("lenet300", {}, (2, 1, 28, 28), 784 * 300 + 300 * 100 + 100 * 10),
        ("lenet300", {"in_features": 64}, (2, 1, 8, 8), 64 * 300 + 300 * 100 + 100 * 10),
        ("lenet5", {}, (2, 1, 28, 28), 20 * 25 + 50 * 20 * 25 + 800 * 500 + 500 * 10),
    ],
)
@pytest.mark.parametrize("variational", [False, True])
def test_build(name, kwargs, x_shape, weights, variational):
    net = models.build(name, variational=variational, **kwargs).eval()
    assert net(torch.rand(x_shape)).shape == (2, 10)
    layer_types = (VNQLinear, VNQConv2d) if variational else (nn.Linear, nn.Conv2d)
    layers = [m for m in net.modules() if isinstance(m, layer_types)]
    count = sum((m.theta if variational else m.weight).numel() for m in layers)
    assert count == weights


def test_unknown_architecture():
    with pytest.raises(ValueError, match="unknown architecture"):
        models.build("resnet")
