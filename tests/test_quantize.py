"""bayesq.quantize: the one builder from a posterior to a discrete net.

Until commit 301f570 it was held to the three builders it replaced (same codes, torch.equal
logits on the kernels and the reference for VNQ LeNet-5 / LeNet-300-100 / MLP at 8, 4, 2
activation bits and the EBP-D net); those oracles are gone, and these tests hold the net to
what it must be: the posterior's own levels, the kernels equal to the integer reference.
"""

import pytest
import torch
import torch.nn.functional as F

from bayesq.ebp import EBPNet
from bayesq.nn import VNQLayer, posterior_of
from bayesq.posterior import Posterior, PruningRule
from bayesq.quantize import quantize_posterior
from tests.common import pruned_vnq, toy_classification

SHAPES = {"lenet5": (1, 28, 28), "lenet300": (1, 28, 28), "mlp": (1, 8, 8)}


@pytest.mark.parametrize("name", ["lenet5", "lenet300", "mlp"])
@pytest.mark.parametrize("act_bits", [8, 4, 2])
def test_vnq_posterior_snaps_to_its_codebook_and_runs_exactly(name, act_bits):
    net = pruned_vnq(name)
    shape = SHAPES[name]
    calibration, x = torch.rand(16, *shape), torch.rand(7, *shape)
    new = quantize_posterior(posterior_of(net, shape), calibration, act_bits=act_bits)
    vnq = [m for m in net.modules() if isinstance(m, VNQLayer)]
    for layer, module in zip(new.layers, vnq, strict=True):
        linear = getattr(layer, "linear", layer)
        codes = linear.weight_codes
        if linear.input_index is not None:  # the pruned input columns are skipped
            full = torch.zeros(codes.shape[0], linear.input_features, dtype=codes.dtype)
            full[:, linear.input_index] = codes
            codes = full
        r = float(module.codebook_scale.detach())
        weight = module.quantized_weight().detach().reshape(codes.shape[0], -1)
        assert torch.equal(codes.float() * r, weight)  # snapped and pruned as VNQ's own net
        assert torch.equal(linear.row_scale, torch.full_like(linear.row_scale, r))
        assert torch.equal(linear.row_bits, torch.where(codes.ne(0).any(1), 2, 0))
        assert linear.act_bits in (act_bits, 1)
    skips = any(getattr(op, "input_index", None) is not None for op in new.layers)
    assert skips == (name == "lenet300")
    assert torch.equal(new(x), new.reference(x))


def _ebp(family: str):
    x, y = toy_classification(n=300, features=24, classes=4, seed=3)
    x = (x - x.min()) / (x.max() - x.min())  # in [0, 1], as images
    shift = x[:200].mean(0)
    net = EBPNet([24, 40, 30, 4], family, seed=0).fit(x[:200] - shift, y[:200], epochs=3)
    return net, x, shift


@pytest.mark.parametrize("family", ["binary", "ternary"])
@pytest.mark.parametrize("centred", [False, True])
def test_ebp_posterior_gives_the_ebp_d_net(family, centred):
    net, x, shift = _ebp(family)
    shift = shift if centred else torch.zeros(24)
    codes = net.discrete_weights()
    new = quantize_posterior(
        net.posterior(), x[:200], act_bits=8, input_shift=shift if centred else None
    )
    for layer, code in zip(new.layers, codes, strict=True):
        full = torch.zeros_like(code)
        if layer.input_index is None:
            full = layer.weight_codes
        else:
            full[:, layer.input_index] = layer.weight_codes
        assert torch.equal(full, code)
    test = x[200:]
    assert torch.equal(new(test), new.reference(test))
    agree = (new(test).argmax(1) == net.predict(test - shift, "deterministic")).float().mean()
    assert agree >= 0.95  # only the 8-bit input differs from EBP-D


def test_pruning_rule_is_the_one_passed():
    net = pruned_vnq("mlp")
    post = posterior_of(net, SHAPES["mlp"])
    cal = torch.rand(8, *SHAPES["mlp"])
    nothing = quantize_posterior(post, cal, pruning=PruningRule(log_alpha_threshold=1e9))
    everything = quantize_posterior(post, cal, pruning=PruningRule(log_alpha_threshold=-1e9))
    default = quantize_posterior(post, cal)
    zeros = [int(layer.weight_codes.eq(0).sum()) for layer in default.layers]
    assert [int(lay.weight_codes.eq(0).sum()) for lay in nothing.layers] < zeros
    assert all(int(lay.row_bits.sum()) == 0 for lay in everything.layers)


def test_builder_refuses_what_it_cannot_build():
    net = pruned_vnq("mlp")
    post = posterior_of(net, SHAPES["mlp"])
    with pytest.raises(ValueError, match="calibration"):
        quantize_posterior(post, torch.rand(4, 64))
    with pytest.raises(TypeError, match="calibration"):
        quantize_posterior(post, torch.zeros(4, 1, 8, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match="pruning"):
        quantize_posterior(post, torch.rand(4, 1, 8, 8), pruning=3.0)
    with pytest.raises(ValueError, match="no row widths"):
        quantize_posterior(post, torch.rand(4, 1, 8, 8), widths={})
    with pytest.raises(ValueError, match="input_shift"):
        quantize_posterior(post, torch.rand(4, 1, 8, 8), input_shift=torch.zeros(3))
    one_level = Posterior(
        {
            name: type(layer)(
                name=name,
                mean=layer.mean,
                variance=layer.variance,
                levels=torch.zeros(1),
                level_probs=torch.ones(*layer.mean.shape, 1),
                bias=layer.bias,
                conv=layer.conv,
            )
            for name, layer in post.layers.items()
        },
        post.ops,
        post.input_shape,
    )
    with pytest.raises(ValueError, match="no grid of its own"):
        quantize_posterior(one_level, torch.rand(4, 1, 8, 8))


def _point_net(row_scale):
    """A deterministic two-layer net as a discrete posterior: codes -3..3 on a step of 1/3,
    each row of fc1 in its own unit (row_scale), ReLU between."""
    g = torch.Generator().manual_seed(5)
    codes1 = torch.randint(-3, 4, (6, 5), generator=g)
    codes2 = torch.randint(-3, 4, (3, 6), generator=g)
    levels = [k / 3 for k in range(-3, 4)]
    layers = {
        "fc1": {"levels": levels, "probs": F.one_hot(codes1 + 3, 7).float(),
                "bias": torch.linspace(-0.2, 0.3, 6), "row_scale": row_scale},
        "fc2": {"levels": levels, "probs": F.one_hot(codes2 + 3, 7).float(), "bias": None},
    }  # fmt: skip
    ops = [{"kind": "layer", "name": "fc1"}, {"kind": "relu"}, {"kind": "layer", "name": "fc2"}]
    return Posterior.from_discrete(layers, ops, (5,)), codes1, codes2


def test_row_scales_and_given_activation_grids_reach_the_discrete_net():
    row_scale = torch.tensor([0.5, 1.0, 2.0, 0.25, 4.0, 1.5])
    post, codes1, codes2 = _point_net(row_scale)
    x = torch.rand(64, 5)
    given = {"fc1": {"bits": 4, "mode": "unsigned", "scale": 1 / 15},
             "fc2": {"bits": 3, "mode": "unsigned", "scale": 0.25}}  # fmt: skip
    net = quantize_posterior(post, x, activations=given)
    fc1, fc2 = net.layers
    assert torch.equal(fc1.weight_codes.long(), codes1) and torch.equal(
        fc2.weight_codes.long(), codes2
    )
    torch.testing.assert_close(fc1.row_scale, row_scale / 3)
    assert (fc1.act_bits, fc1.act_mode, fc1.act_scale) == (4, "unsigned", 1 / 15)
    assert (fc2.act_bits, fc2.act_mode, fc2.act_scale) == (3, "unsigned", 0.25)
    # the trained net's arithmetic: inputs on their grids, weights codes x step x row_scale
    q1 = (x * 15).round().clamp(0, 15) / 15
    h = F.linear(q1, codes1.float() / 3 * row_scale[:, None], post.layers["fc1"].bias)
    q2 = (h.relu() / 0.25).round().clamp(0, 7) * 0.25
    expected = F.linear(q2, codes2.float() / 3)
    torch.testing.assert_close(net.reference(x), expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(net(x), net.reference(x))


@pytest.mark.parametrize(
    ("given", "match"),
    [
        ({"fc9": {"bits": 4, "mode": "unsigned", "scale": 0.1}}, "no such layer"),
        ({"fc1": {"bits": 4, "mode": "unsigned"}}, "bits, mode and scale"),
        ({"fc1": {"bits": 9, "mode": "unsigned", "scale": 0.1}}, "bits must be in 1..8"),
        ({"fc1": {"bits": 1, "mode": "signed", "scale": 0.1}}, "bits must be in 2..8"),
        ({"fc1": {"bits": 4, "mode": "pm1", "scale": 0.1}}, "mode must be"),
        ({"fc1": {"bits": 4, "mode": "unsigned", "scale": float("nan")}}, "finite and > 0"),
        ({"fc1": {"bits": 4, "mode": "unsigned", "scale": 0}}, "finite and > 0"),
    ],
)
def test_given_activation_grids_are_checked(given, match):
    post, _, _ = _point_net(torch.ones(6))
    with pytest.raises(ValueError, match=match):
        quantize_posterior(post, torch.rand(4, 5), activations=given)
