"""bayesq.binary_connect: the BinaryConnect layer (sign forward, straight-through backward, clip)
and the baselines' training loop."""

import pytest
import torch
from torch import nn

import models
from bayesq.binary_connect import BinaryConnectLinear, clip_binary_weights_, fit_baseline
from tests.common import toy_classification


def test_forward_uses_the_signs_and_the_gradient_passes_straight_through():
    torch.manual_seed(0)
    layer = BinaryConnectLinear(4, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -0.2, 0.0, 1.5], [-3.0, 0.1, 0.9, -0.9],
                                         [0.3, 0.3, -0.3, -1.0]]))  # fmt: skip
        layer.bias.copy_(torch.tensor([0.1, 0.0, -0.2]))
    x = torch.randn(5, 4, requires_grad=True)
    out = layer(x)
    signs = torch.where(layer.weight >= 0, 1.0, -1.0)
    assert torch.allclose(out, x @ signs.T + layer.bias)
    out.sum().backward()
    inside = layer.weight.detach().abs() <= 1
    expected = x.detach().sum(0).expand(3, 4)  # d sum / d w_b, passed to w where |w| <= 1
    assert torch.allclose(layer.weight.grad, torch.where(inside, expected, 0.0))
    assert torch.allclose(x.grad, signs.sum(0).expand(5, 4))


def test_clip_keeps_every_buffer_in_minus_one_one():
    net = models.binary_connect_mlp(6, (5,), 3)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(10)
    clip_binary_weights_(net)
    for m in net.modules():
        if isinstance(m, BinaryConnectLinear):
            assert float(m.weight.detach().abs().max()) <= 1.0
    assert any(
        float(p.detach().abs().max()) > 1 for p in net.parameters()
    )  # biases, batch norm: not


def test_fit_learns_is_reproducible_and_calls_back_every_epoch():
    x, y = toy_classification(n=301, features=8, classes=3, seed=1)  # a last batch of one row
    runs, seen = [], []
    for _ in range(2):
        torch.manual_seed(0)
        net = models.binary_connect_mlp(8, (16,), 3)
        losses = fit_baseline(net, x, y, epochs=6, batch_size=20, lr=1e-2, seed=3,
                              on_epoch=lambda epoch, n: seen.append(epoch))  # fmt: skip
        runs.append((losses, [p.detach().clone() for p in net.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=True))
    assert seen == [1, 2, 3, 4, 5, 6] * 2
    assert runs[0][0][-1] < 0.8 * runs[0][0][0]
    float_net = models.mlp(8, (16,), 3)
    assert fit_baseline(float_net, x, y, epochs=2, batch_size=300)[1] > 0  # the lone row trains


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"epochs": 0}, ValueError, "epochs"),
        ({"batch_size": 2.0}, TypeError, "batch_size"),
        ({"lr": -1.0}, ValueError, "lr"),
        ({"y": torch.zeros(3, 2, dtype=torch.long)}, ValueError, "y must have shape"),
    ],
)
def test_bad_arguments_are_refused(kwargs, error, match):
    x, y = toy_classification(n=10, features=4, classes=2)
    args = {"net": nn.Linear(4, 2), "x": x, "y": y, "epochs": 1, "batch_size": 4} | kwargs
    with pytest.raises(error, match=match):
        fit_baseline(**args)
