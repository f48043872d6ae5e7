"""bayesq.baselines.export: a method's trained net as a one-hot discrete posterior, batch norm
folded, activation grids carried, on the same builder and kernels as VNQ and EBP."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

from bayesq.baselines.export import export_posterior, folded_codes
from bayesq.baselines.nets import (
    ActivationQuantizer,
    BinaryConnectWeights,
    FloatWeights,
    NotIntegerCodes,
    QuantConv2d,
    QuantLinear,
    WeightQuantizer,
    quantized_net,
)
from bayesq.quantize import quantize_posterior


class UnitGrid(ActivationQuantizer):
    """k-bit codes on [0, 1] (DoReFa's activation grid), straight through."""

    def __init__(self, bits):
        super().__init__()
        self.bits = bits

    def forward(self, x):
        top = 2**self.bits - 1
        q = (x.clamp(0, 1) * top).round() / top
        return x + (q - x).detach()

    def grid(self):
        return {"bits": self.bits, "mode": "unsigned", "scale": 1 / (2**self.bits - 1)}


class ThirdSteps(WeightQuantizer):
    """Codes -3..3 on a layer-wide step s = max|w| / 3 (a 3-bit uniform quantizer)."""

    bits = 3

    def forward(self, w):
        codes, step = self.codes(w)
        return w + (codes * step - w).detach()

    def codes(self, w):
        step = w.detach().abs().max() / 3
        return (w.detach() / step).round().clamp(-3, 3).long(), step


def _reference(conv=False):
    if conv:
        return nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(1, 4, 3), pool1=nn.MaxPool2d(2), relu1=nn.ReLU(),
            flatten=nn.Flatten(), fc1=nn.Linear(4 * 3 * 3, 5)))  # fmt: skip
    return nn.Sequential(OrderedDict(
        fc1=nn.Linear(6, 8), relu1=nn.ReLU(), fc2=nn.Linear(8, 7), relu2=nn.ReLU(),
        fc3=nn.Linear(7, 3)))  # fmt: skip


def _randomize_norms(net):
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.randn(n, generator=g))  # some negative: codes flip
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)


@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("weights", [BinaryConnectWeights, ThirdSteps])
def test_the_discrete_net_computes_what_the_trained_net_did(conv, weights):
    torch.manual_seed(0)
    net = quantized_net(_reference(conv), lambda n, m: weights(), lambda: UnitGrid(3), True)
    _randomize_norms(net)
    net.eval()
    shape = (1, 8, 8) if conv else (6,)
    x = torch.randint(0, 256, (40, *shape)) / 255  # on the 8-bit input grid...
    x[0].fill_(1.0)  # ...whose calibrated scale is then 1/255
    posterior, grids = export_posterior(net, shape)
    assert set(grids) == ({"fc1"} if conv else {"fc2", "fc3"})
    discrete = quantize_posterior(posterior, x, activations=grids)
    with torch.no_grad():
        expected = net(x)
    torch.testing.assert_close(discrete.reference(x), expected, atol=2e-4, rtol=1e-4)
    assert torch.equal(discrete(x), discrete.reference(x))
    linears = [getattr(layer, "linear", layer) for layer in discrete.layers]
    widths = {int(w) for layer in linears for w in layer.row_bits.unique()}
    assert widths <= ({1} if weights is BinaryConnectWeights else {0, 3})


@pytest.mark.parametrize("conv", [False, True])
def test_an_offset_grid_moves_into_the_biases_exactly(conv):
    """QNN's odd activation levels (both signs, no ReLU): the layer before subtracts the
    offset, the layer after adds it back through its summed weights."""
    from bayesq.baselines.modules import QNNActivation

    torch.manual_seed(3)
    net = quantized_net(_reference(conv), lambda n, m: ThirdSteps(), lambda: QNNActivation(2), True)
    _randomize_norms(net)
    net.eval()
    shape = (1, 8, 8) if conv else (6,)
    x = torch.randint(0, 256, (40, *shape)) / 255
    x[0].fill_(1.0)
    posterior, grids = export_posterior(net, shape)
    assert all(op["kind"] != "relu" for op in posterior.ops)
    discrete = quantize_posterior(posterior, x, activations=grids)
    with torch.no_grad():
        expected = net(x)
    torch.testing.assert_close(discrete.reference(x), expected, atol=2e-4, rtol=1e-4)
    assert torch.equal(discrete(x), discrete.reference(x))
    padded = nn.Sequential(QuantConv2d(nn.Conv2d(1, 2, 3), ThirdSteps()), QNNActivation(2),
                           QuantConv2d(nn.Conv2d(2, 2, 3, padding=1), ThirdSteps()))  # fmt: skip
    with pytest.raises(ValueError, match="padded convolution"):
        export_posterior(padded, (1, 8, 8))
    first = nn.Sequential(QNNActivation(2), QuantLinear(nn.Linear(6, 3), ThirdSteps()))
    with pytest.raises(ValueError, match="needs a layer before it"):
        export_posterior(first, (6,))


def test_folding_flips_codes_of_negative_norm_scales_and_clears_dead_rows():
    layer = QuantLinear(nn.Linear(2, 3), BinaryConnectWeights())
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -0.2], [-0.1, 0.3], [0.4, 0.4]]))
        layer.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
    norm = nn.BatchNorm1d(3, eps=0.0).eval()
    norm.running_mean.copy_(torch.tensor([0.0, 1.0, 0.0]))
    norm.running_var.copy_(torch.tensor([4.0, 1.0, 1.0]))
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([2.0, -3.0, 0.0]))
        norm.bias.copy_(torch.tensor([0.0, 0.5, 7.0]))
    codes, scale, bias = folded_codes(layer, norm)
    assert codes.tolist() == [[1, -1], [1, -1], [0, 0]]  # row 1 ([-1, +1]) flipped, row 2 dead
    assert scale.tolist() == [1.0, 3.0, 1.0]
    torch.testing.assert_close(bias, torch.tensor([0.1, -3 * (0.2 - 1) + 0.5, 7.0]))


def test_what_has_no_discrete_form_is_refused():
    floats = quantized_net(_reference(), lambda n, m: FloatWeights())
    with pytest.raises(NotIntegerCodes, match="FloatWeights"):
        export_posterior(floats, (6,))
    gelu = nn.Sequential(QuantLinear(nn.Linear(6, 4), ThirdSteps()), nn.GELU())
    with pytest.raises(ValueError, match="no discrete form"):
        export_posterior(gelu, (6,))
    late_norm = nn.Sequential(QuantLinear(nn.Linear(6, 4), ThirdSteps()), nn.ReLU(),
                              nn.BatchNorm1d(4))  # fmt: skip
    with pytest.raises(ValueError, match="follow its layer directly"):
        export_posterior(late_norm, (6,))
    with pytest.raises(TypeError, match="nn.Sequential"):
        export_posterior(QuantLinear(nn.Linear(6, 4), ThirdSteps()), (6,))


def test_quantized_net_keeps_names_and_weights():
    ref = _reference()
    net = quantized_net(ref, lambda n, m: ThirdSteps(), None, batch_norm=True)
    assert list(dict(net.named_children())) == [
        "fc1", "fc1_bn", "relu1", "fc2", "fc2_bn", "relu2", "fc3", "fc3_bn"]  # fmt: skip
    assert torch.equal(net.fc2.weight, ref.fc2.weight) and net.fc2.weight is not ref.fc2.weight
    with pytest.raises(TypeError, match="WeightQuantizer"):
        quantized_net(ref, lambda n, m: nn.Identity())
    with pytest.raises(ValueError, match="no Linear or Conv2d"):
        quantized_net(nn.Sequential(nn.ReLU()), lambda n, m: ThirdSteps())
