"""bayesq.baselines.modules / methods / training: every method's modules keep their promises
(codes x scales equal the forward pass, activation grids equal the runtime's quantizer), every
method builds and trains on both architectures, and the loop refuses bad input."""

import pytest
import torch
from torch import nn

import models
from bayesq.baselines import modules as M
from bayesq.baselines.methods import DOREFA_TRIPLES, METHODS, Budget, method
from bayesq.baselines.nets import NotIntegerCodes, quantized_layers
from bayesq.baselines.training import fit_method, recalibrate_batch_norm_
from bayesq.quantizers import quantize_codes

WEIGHTS = [
    M.SignWeights(), M.QNNWeights(2), M.QNNWeights(3), M.XnorWeights(), M.DoReFaWeights(1),
    M.DoReFaWeights(2), M.DoReFaWeights(4), M.TWNWeights(), M.FixedPointWeights(8, 6, 12),
    M.LogWeights(4),
]  # fmt: skip


@pytest.mark.parametrize("quantizer", WEIGHTS, ids=lambda q: f"{type(q).__name__}{q.bits}")
@pytest.mark.parametrize("shape", [(5, 7), (4, 3, 3, 3)])
def test_codes_times_scales_are_the_forward_weights(quantizer, shape):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 0.4
    codes, scale = quantizer.codes(w)
    assert codes.dtype == torch.int64 and codes.shape == w.shape
    per_row = scale.reshape((-1,) + (1,) * (w.dim() - 1)) if scale.dim() else scale
    torch.testing.assert_close(codes.float() * per_row, quantizer(w), rtol=1e-6, atol=0)
    assert int(codes.abs().max()) <= 127  # each of these fits the kernels (8-bit codes)


def test_what_is_no_codes_says_so():
    w = torch.randn(4, 6)
    with pytest.raises(NotIntegerCodes, match="32-bit"):
        M.DoReFaWeights(32).codes(w)
    ttq = M.TTQWeights()
    with torch.no_grad():
        ttq.scales.w_pos.fill_(0.7)
    with pytest.raises(NotIntegerCodes, match="W_n == W_p"):
        ttq.codes(w)
    with pytest.raises(NotIntegerCodes, match="frozen"):
        M.InqWeights(3).codes(w)


def test_fixed_point_codes_stay_symmetric_for_the_kernels():
    quantizer = M.FixedPointWeights(8, 6, 12)
    codes, scale = quantizer.codes(torch.tensor([[-5.0, 0.1, 3.0]]))
    assert codes.tolist() == [[-127, 6, 127]]  # not two's complement's -128
    assert torch.equal(codes * scale, quantizer(torch.tensor([[-5.0, 0.1, 3.0]])))


def test_after_step_does_each_methods_work_on_the_buffer():
    w = torch.tensor([[-2.0, 0.3, 1.7]])
    M.SignWeights().after_step(w)
    assert torch.equal(w, torch.tensor([[-1.0, 0.3, 1.0]]))  # BNN's clip
    w = torch.tensor([[0.1234567, -0.5]])
    M.FixedPointWeights(8, 6, 12).after_step(w)  # the update width: 12 bits, 10 after the point
    assert torch.equal(w, torch.tensor([[round(0.1234567 * 1024) / 1024, -0.5]]))


@pytest.mark.parametrize(
    "activation",
    [
        M.DoReFaActivation(2),
        M.DoReFaActivation(4),
        M.PACTActivation(3, 2.5),
        M.FixedPointActivation(8, 4),
    ],  # fmt: skip
    ids=lambda a: type(a).__name__,
)
def test_activation_grids_are_the_runtime_quantizer(activation):
    """What the next layer of a discrete net computes from the raw values equals what the trained
    net's activation quantizer gave (ties aside: none in these draws)."""
    x = torch.randn(2000, generator=torch.Generator().manual_seed(2)) * 3
    grid = activation.grid()
    codes = quantize_codes(x, grid["scale"], grid["bits"], grid["mode"])
    torch.testing.assert_close(codes.float() * grid["scale"], activation(x), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_qnn_odd_levels_are_signed_codes_plus_an_offset(bits):
    x = torch.randn(3000, generator=torch.Generator().manual_seed(bits)) * 1.5
    grid = M.QNNActivation(bits).grid()
    codes = quantize_codes(x - grid["offset"], grid["scale"], grid["bits"], grid["mode"])
    values = codes.float() * grid["scale"] + grid["offset"]
    torch.testing.assert_close(values, M.QNNActivation(bits)(x), rtol=1e-6, atol=1e-6)
    assert M.QNNActivation(bits).glue is None  # both signs: no ReLU in the discrete net


def test_activations_without_a_grid_and_the_sign():
    assert M.LogActivation(3, 2).grid() is None
    assert M.SignActivation().glue == "sign"
    x = torch.tensor([-0.5, 0.0, 2.0])
    assert M.SignActivation()(x).tolist() == [-1.0, 1.0, 1.0]


def test_gradient_quantizer_is_identity_forward_and_quantizes_backward():
    quantize = M.GradientQuantizer(2, torch.Generator().manual_seed(0))
    x = torch.randn(3, 5, requires_grad=True)
    assert torch.equal(quantize(x), x)
    (quantize(x) * torch.randn(3, 5)).sum().backward()
    levels = x.grad / x.grad.abs().amax(1, keepdim=True)  # on 2 * k / 3 - 1 grid per row
    assert torch.allclose(levels * 1.5 + 1.5, (levels * 1.5 + 1.5).round(), atol=1e-5)
    quantize.eval()
    assert quantize(x) is x


def test_xnor_block_scales_the_binary_product_by_k():
    layer = nn.Linear(4, 2, bias=False)
    block = M.XnorBlock(layer)
    x = torch.tensor([[1.0, -2.0, 0.5, -0.5]])
    expected = layer(torch.tensor([[1.0, -1.0, 1.0, -1.0]])) * x.abs().mean()
    torch.testing.assert_close(block(x), expected)


def test_the_registry_holds_the_issues_methods():
    expected = {"binary_connect", "binary_connect_stochastic", "bnn", "qnn_2", "xnor", "bwn",
                "twn", "ttq", "inq_5", "fixed_point", "dynamic_fixed_point", "log", "pact_2",
                "pact_4", "deep_compression"}  # fmt: skip
    assert expected <= set(METHODS)
    assert {f"dorefa_{w}_{a}_{g}" for w, a, g in DOREFA_TRIPLES} <= set(METHODS)
    with pytest.raises(ValueError, match="unknown method"):
        method("magic")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_builds_and_trains_a_step_on_lenet5(name):
    torch.manual_seed(0)
    x, y = torch.rand(24, 1, 28, 28), torch.randint(0, 10, (24,))
    m = method(name)
    net = m.build(models.lenet5())
    report = m.train(net, x, y, Budget(epochs=2, batch_size=12))
    assert len(report["losses"]) >= 1 and all(v == v for v in report["losses"])
    assert net(x).shape == (24, 10) and not net.training
    assert quantized_layers(net)


def test_fit_method_checks_its_input_and_calls_the_hooks():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.rand(10, 4), torch.randint(0, 3, (10,))
    calls = []
    fit_method(net, x, y, 2, 4, after_step=lambda n: calls.append(1))
    assert len(calls) == 2 * 3  # steps: ceil(10 / 4) per epoch
    with pytest.raises(ValueError, match="int64 labels"):
        fit_method(net, x, y.float(), 1, 4)
    with pytest.raises(ValueError, match="NaN"):
        fit_method(net, x.masked_fill(x > 0.9, float("nan")), y, 1, 4)
    with pytest.raises(TypeError, match="floating-point"):
        fit_method(net, x.long(), y, 1, 4)


def test_recalibrated_batch_norm_holds_the_statistics_of_the_evaluated_net():
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    x = torch.randn(64, 3)
    assert recalibrate_batch_norm_(net, x, batch_size=16) == 1
    z = net[0](x).detach()
    torch.testing.assert_close(net[1].running_mean, z.mean(0), rtol=1e-5, atol=1e-6)
    assert not net.training and net[1].momentum == 0.1
