"""Reference architectures, each buildable as a deterministic net or as its VNQ version.

>>> net = build("lenet300", in_features=64, variational=True)
>>> type(net.fc1).__name__
'VNQLinear'
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from bayesq.binary_connect import BinaryConnectLinear
from bayesq.vnq import to_vnq_

__all__ = ["ARCHITECTURES", "binary_connect_mlp", "build", "lenet5", "lenet300", "mlp"]


def mlp(in_features: int = 64, hidden: tuple[int, ...] = (512, 256), num_classes: int = 10):
    """ReLU MLP on flattened images; the default sizes suit scikit-learn's 8x8 digits."""
    layers: dict[str, nn.Module] = {"flatten": nn.Flatten()}
    width = in_features
    for i, h in enumerate(hidden, start=1):
        layers[f"fc{i}"] = nn.Linear(width, h)
        layers[f"relu{i}"] = nn.ReLU()
        width = h
    layers[f"fc{len(hidden) + 1}"] = nn.Linear(width, num_classes)
    return nn.Sequential(OrderedDict(layers))


def binary_connect_mlp(
    in_features: int = 64, hidden: tuple[int, ...] = (100,), num_classes: int = 10
) -> nn.Sequential:
    """BinaryConnect's MLP (Courbariaux, Bengio, David 2015): each layer a
    `bayesq.binary_connect.BinaryConnectLinear` (weights +-1 in the forward pass, real bias)
    followed by batch norm, ReLU between layers; (N, in_features) -> (N, num_classes) logits.
    The baseline beside EBP in `experiments.ebp` (train it with `bayesq.binary_connect.fit_baseline`).
    """
    sizes = [in_features, *hidden, num_classes]
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers += [BinaryConnectLinear(fan_in, fan_out), nn.BatchNorm1d(fan_out)]
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def lenet300(in_features: int = 784, num_classes: int = 10):
    """LeNet-300-100 (LeCun et al. 1998): in -> 300 -> 100 -> classes, ReLU."""
    return mlp(in_features, (300, 100), num_classes)


def lenet5(in_channels: int = 1, num_classes: int = 10):
    """LeNet-5-Caffe for 28x28 inputs: conv 20@5x5, max-pool 2, conv 50@5x5, max-pool 2,
    fc 800 -> 500, fc 500 -> classes. ReLU after each pooling and the hidden fc layer (the Caffe
    prototxt has ReLU only after fc1; Sparse VD and VNQ reimplementations add them after the convs)."""
    return nn.Sequential(
        OrderedDict(
            {
                "conv1": nn.Conv2d(in_channels, 20, 5),
                "pool1": nn.MaxPool2d(2),
                "relu1": nn.ReLU(),
                "conv2": nn.Conv2d(20, 50, 5),
                "pool2": nn.MaxPool2d(2),
                "relu2": nn.ReLU(),
                "flatten": nn.Flatten(),
                "fc1": nn.Linear(800, 500),
                "relu3": nn.ReLU(),
                "fc2": nn.Linear(500, num_classes),
            }
        )
    )


ARCHITECTURES = {"mlp": mlp, "lenet300": lenet300, "lenet5": lenet5}


def build(name: str, variational: bool = False, num_levels: int = 3, **kwargs) -> nn.Module:
    """A reference net by name; `variational=True` converts it to VNQ layers (see to_vnq_)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}")
    net = ARCHITECTURES[name](**kwargs)
    return to_vnq_(net, num_levels=num_levels) if variational else net
