"""bayesq.net_costs: bytes (from the artifact's own accounting) and BOPs, on hand-made nets."""

import pytest
import torch
from torch import nn

from bayesq.artifact import header_bytes, save_artifact
from bayesq.net_costs import layer_costs, net_costs, reference_bops
from bayesq.runtime import DiscreteNet, QuantizedConv2d, QuantizedLinear


def _linear(codes, row_bits, act_bits, act_mode="unsigned", weight_mode="signed"):
    out = codes.shape[0]
    return QuantizedLinear(
        codes.to(torch.int8), row_bits=torch.tensor(row_bits), row_scale=torch.ones(out),
        bias=torch.zeros(out), act_bits=act_bits, act_mode=act_mode, act_scale=0.1,
        weight_mode=weight_mode,
    )  # fmt: skip


def _net():
    # conv: 2 filters of 1 x 3 x 3 on 1 x 6 x 6 -> 2 x 4 x 4, pool -> 2 x 2 x 2, flatten -> 8
    conv_codes = torch.tensor([[1, 0, -1, 0, 0, 0, 1, 1, 0], [0] * 9])
    conv = QuantizedConv2d(_linear(conv_codes, [2, 0], 8), 1, (3, 3))
    fc_codes = torch.tensor([[1, -1, 1, 1, -1, -1, 1, 1], [3, 0, 0, 0, 0, 0, 0, -2], [0] * 8])
    fc = _linear(fc_codes, [2, 3, 0], 4)
    return DiscreteNet([conv, nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), fc])


def test_bops_count_each_row_width_times_its_activation_bits():
    conv, fc = layer_costs(_net(), (1, 6, 6))
    # conv: one live row of width 2, 9 columns, 16 positions, 8-bit activations; 4 kept weights
    assert conv == {"kind": "conv2d", "weights": 18, "kept": 4, "positions": 16, "macs": 144,
                    "act_bits": 8, "bops_dense": 2 * 9 * 16 * 8, "bops_sparse": 2 * 4 * 16 * 8}  # fmt: skip
    # fc: rows of width 2 and 3 (8 columns each), 4-bit activations; 8 + 2 kept weights
    assert fc == {"kind": "linear", "weights": 24, "kept": 10, "positions": 1, "macs": 16,
                  "act_bits": 4, "bops_dense": (2 + 3) * 8 * 4, "bops_sparse": (2 * 8 + 3 * 2) * 4}  # fmt: skip


def test_net_costs_bytes_are_the_artifacts(tmp_path):
    net = _net()
    costs = net_costs(net, (1, 6, 6))
    assert costs["macs"] == 160 and costs["kept"] == 14 and costs["weights"] == 42
    path = save_artifact(net, tmp_path / "net.safetensors", (1, 6, 6))
    layer_bytes = path.stat().st_size - header_bytes(path)
    # the file: each layer's bits rounded up to a byte, plus the header
    assert costs["bytes"] <= layer_bytes <= costs["bytes"] + len(net.layers)
    assert costs["bits_per_weight"] == costs["storage_bits"]["total"] / 42
    assert costs["storage_bits"]["positions"] > 0  # where the kept weights are is not free


def test_pm1_rows_cost_one_bit_and_dropped_columns_no_work():
    codes = torch.tensor([[1, -1, 1], [-1, -1, 1]])
    binary = DiscreteNet([_linear(codes, [1, 1], 1, "pm1", "pm1")])
    (cost,) = layer_costs(binary, (3,))
    assert cost["bops_dense"] == 2 * 3 * 1 * 1 and cost["macs"] == 6
    skipping = _linear(torch.tensor([[1, 1], [1, -1]]), [2, 2], 8)
    skipping = QuantizedLinear(**{**{k: getattr(skipping, k) for k in (
        "weight_codes", "row_bits", "row_scale", "bias", "act_bits", "act_mode", "act_scale")},
        "input_index": torch.tensor([0, 3]), "input_features": 5})  # fmt: skip
    (cost,) = layer_costs(DiscreteNet([skipping]), (5,))
    assert cost["weights"] == 10 and cost["macs"] == 4  # the kernels read 2 of 5 columns


def test_reference_bops_count_the_float_net():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(32, 5))
    assert reference_bops(net, (1, 6, 6)) == {"macs": 2 * 16 * 9 + 32 * 5,
                                              "bops": (2 * 16 * 9 + 32 * 5) * 1024}  # fmt: skip
    assert reference_bops(net, (1, 6, 6), bits=8)["bops"] == (2 * 16 * 9 + 32 * 5) * 64
    with pytest.raises(TypeError, match="DiscreteNet"):
        layer_costs(net, (1, 6, 6))
