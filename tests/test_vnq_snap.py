"""Post-training quantization of VNQ nets: pruning, snapping and the report."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from bayesq import sparse_codes
from bayesq.posterior import PruningRule
from bayesq.vnq import to_vnq_
from bayesq.vnq_snap import quantize_vnq_, set_eval_weights_


def _vnq_net():
    net = to_vnq_(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)))
    first = net[0]
    with torch.no_grad():
        first.log_codebook_scale.fill_(math.log(0.5))
        first.theta.copy_(torch.tensor([[0.3, -0.4, 0.1, 0.24]] * 6))
        # column 0 is pruned by its posterior variance although its mean is near +r
        first.log_sigma2.fill_(-10.0)
        first.log_sigma2[:, 0] = 1.0
    return net


def test_quantize_prunes_by_log_alpha_and_snaps_the_rest():
    net = _vnq_net()
    report = quantize_vnq_(net, PruningRule(log_alpha_threshold=3.0))
    q = net[0].quantized_weight()
    # log alpha of column 0 = 1 - log 0.09 > 3 -> pruned; others snap to -0.5, 0, 0
    assert q[0].tolist() == pytest.approx([0.0, -0.5, 0.0, 0.0])
    first = report.layers[0]
    assert first.name == "0" and first.weights == 24
    assert first.pruned_share == pytest.approx(0.25)
    assert first.zero_share == pytest.approx(0.75)
    assert first.level_shares == pytest.approx([0.25, 0.75, 0.0])
    assert first.code_bits == 2
    assert first.information_bits == pytest.approx(math.log2(3))
    expected_entropy = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))
    assert first.entropy_bits == pytest.approx(expected_entropy)
    x = torch.randn(5, 4)
    net.eval()
    torch.testing.assert_close(net[0](x), x @ q.T + net[0].bias)


def test_report_accuracy_before_and_after():
    net = _vnq_net()
    x = torch.randn(50, 4)
    set_eval_weights_(net, "mean")
    net.eval()
    with torch.no_grad():
        y = net(x).argmax(-1)
    report = quantize_vnq_(net, PruningRule(), x, y)
    assert report.accuracy_mean == 1.0
    assert 0.0 <= report.accuracy_quantized <= 1.0
    d = report.to_dict()
    assert d["summary"]["weights"] == 24 + 18
    assert set(d) >= {"accuracy_mean", "accuracy_quantized", "layers", "summary"}
    assert net[0].eval_weights == "quantized"


def test_threshold_moves_pruning():
    net = _vnq_net()
    assert quantize_vnq_(net, PruningRule(log_alpha_threshold=100.0)).layers[0].pruned_share == 0.0
    assert quantize_vnq_(net, PruningRule(log_alpha_threshold=-100.0)).layers[0].pruned_share == 1.0


def test_bad_input():
    with pytest.raises(ValueError, match="no VNQ layers"):
        quantize_vnq_(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="finite"):
        quantize_vnq_(_vnq_net(), PruningRule(log_alpha_threshold=float("nan")))
    with pytest.raises(ValueError, match="which"):
        set_eval_weights_(_vnq_net(), "median")


def test_stored_bits_count_positions_codes_step_and_biases():
    """Every kept weight of the first layer is code -1 in column 1: 6 of 24 weights kept. The
    stored figure counts where they are (at least log2 C(24, 6) bits), their 1-bit signs, one
    shared float32 step and the biases: exactly what bayesq.sparse_codes writes."""
    net = _vnq_net()
    first = quantize_vnq_(net).layers[0]
    codes = np.zeros((6, 4), np.int8)
    codes[:, 1] = -1
    bias = net[0].bias.detach().numpy()
    parts = sparse_codes.layer_storage_bits(codes, np.full(6, 2), np.full(6, 0.5, np.float32), bias)
    assert first.stored_bits == parts["total"] / 24
    assert first.position_bits * 24 >= math.log2(math.comb(24, 6))
    assert first.stored_bits * 24 >= math.log2(math.comb(24, 6)) + 6 + 32


def test_a_99_percent_pruned_vnq_layer_stores_at_least_its_mask_information():
    net = to_vnq_(nn.Sequential(nn.Linear(400, 100)))
    g = torch.Generator().manual_seed(0)
    kept = torch.rand(100, 400, generator=g) < 0.01
    with torch.no_grad():
        net[0].log_codebook_scale.fill_(math.log(0.5))
        net[0].theta.copy_(torch.where(kept, 0.5, 0.01))
        net[0].log_sigma2.copy_(torch.where(kept, -10.0, 0.0))
    report = quantize_vnq_(net)
    n, k = kept.numel(), int(kept.sum())
    assert report.pruned_share == pytest.approx(1 - k / n)
    assert report.position_bits * n >= math.log2(math.comb(n, k))
    summary = report.to_dict()["summary"]
    assert summary["stored_bits_per_weight"] >= (math.log2(math.comb(n, k)) + k) / n
    assert summary["position_bits_per_weight"] == report.position_bits
