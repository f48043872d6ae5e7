"""bayesq.ops: one entry per glue op, and the code modes the C++ kernels name the same way."""

from pathlib import Path

import pytest
import torch
from torch import nn

from bayesq import ops
from bayesq.ops import GLUE_OPS, Sign, code_range, glue_module, glue_output_shape, glue_spec

MODULES = {
    "relu": nn.ReLU(),
    "sign": Sign(),
    "flatten": nn.Flatten(),
    "maxpool2d": nn.MaxPool2d(2),
    "avgpool2d": nn.AvgPool2d(2),
}


def test_every_glue_op_is_tested_here():
    assert set(MODULES) == set(GLUE_OPS)


@pytest.mark.parametrize("kind", sorted(MODULES))
def test_spec_round_trip_and_shape_arithmetic(kind):
    """spec_of -> build gives a module that computes the same, and output_shape agrees with
    running it."""
    module = MODULES[kind]
    spec = glue_spec(module)
    assert spec["kind"] == kind
    rebuilt = glue_module(spec)
    assert type(rebuilt) is type(module)
    x = torch.randn(3, 4, 6, 6)
    assert torch.equal(rebuilt(x), module(x))
    assert glue_output_shape(spec, (4, 6, 6)) == tuple(module(x).shape[1:])


def test_fused_ops_are_the_quantizers_own():
    """A ReLU before unsigned codes and a sign before {-1, +1} codes are what those quantizers
    compute already; nothing else fuses."""
    fused = {kind: op.fuses_into for kind, op in GLUE_OPS.items() if op.fuses_into}
    assert fused == {"relu": "unsigned", "sign": "pm1"}


def test_code_modes_match_the_cpp_enum():
    csrc = Path(__file__).resolve().parents[1] / "csrc"
    text = "".join(p.read_text() for p in csrc.rglob("bitpack.h"))
    assert "kUnsigned = 0, kSigned = 1, kPlusMinusOne = 2" in text
    assert ops.CODE_MODES == {"unsigned": 0, "signed": 1, "pm1": 2}
    assert code_range(3, "unsigned") == (0, 7) and code_range(3, "signed") == (-4, 3)
    assert code_range(1, "pm1") == (-1, 1)
    with pytest.raises(ValueError, match="mode"):
        code_range(3, "ternary")


@pytest.mark.parametrize(
    ("module", "match"),
    [
        (nn.MaxPool2d(2, stride=1), "stride"),
        (nn.MaxPool2d(2, padding=1), "stride k, no padding"),
        (nn.MaxPool2d((2, 3)), "square"),
        (nn.MaxPool2d(2, ceil_mode=True), "ceil_mode"),
        (nn.AvgPool2d(2, ceil_mode=True), "ceil_mode"),
        (nn.AvgPool2d(2, divisor_override=3), "divisor_override"),
        (nn.AvgPool2d(3, stride=2), "stride"),
        (nn.Flatten(2), "Flatten"),
        (nn.Sigmoid(), "no discrete form"),
    ],
)
def test_unsupported_settings_are_refused(module, match):
    with pytest.raises(ValueError, match=match):
        glue_spec(module)


@pytest.mark.parametrize(
    ("spec", "shape", "match"),
    [
        ({"kind": "gelu"}, (3,), "unknown kind 'gelu'"),
        ({"kind": "relu", "slope": 1}, (3,), "unexpected fields"),
        ({"kind": "maxpool2d", "kernel_size": 9}, (1, 8, 8), "kernel_size"),
        ({"kind": "maxpool2d", "kernel_size": True}, (1, 8, 8), "kernel_size"),
        ({"kind": "maxpool2d", "kernel_size": 2}, (64,), r"\(C, H, W\)"),
        ("relu", (3,), "unknown kind"),
    ],
)
def test_specs_read_from_files_are_checked(spec, shape, match):
    with pytest.raises(ValueError, match=match):
        glue_output_shape(spec, shape)


def test_avgpool2d_end_to_end(tmp_path):
    """The op added as one registry entry runs the whole road: a VNQ net with average pooling ->
    its posterior (saved and loaded) -> the builder -> the artifact (saved and loaded) -> the
    kernels, equal to the integer reference and predicting as the float net with the same
    quantized weights."""
    from collections import OrderedDict

    from bayesq.artifact import load_artifact, save_artifact
    from bayesq.nn import posterior_of
    from bayesq.posterior import Posterior
    from bayesq.quantize import quantize_posterior
    from bayesq.vnq import to_vnq_
    from bayesq.vnq_snap import quantize_vnq_

    torch.manual_seed(0)
    net = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 6, 3), pool1=nn.AvgPool2d(2), relu1=nn.ReLU(),
            conv2=nn.Conv2d(6, 8, 3, padding=1), pool2=nn.AvgPool2d(3), relu2=nn.ReLU(),
            flatten=nn.Flatten(), fc=nn.Linear(32, 5),
        )
    )  # fmt: skip
    to_vnq_(net, num_levels=3, zero_share=0.5)
    quantize_vnq_(net)
    posterior = posterior_of(net, (1, 14, 14))
    assert {"kind": "avgpool2d", "kernel_size": 3} in posterior.ops
    assert posterior.output_shapes()[-1] == (5,)
    posterior = Posterior.load(posterior.save(tmp_path / "posterior.safetensors"))
    x = torch.rand(64, 1, 14, 14)
    discrete = quantize_posterior(posterior, x[:32], act_bits=8)
    path = save_artifact(discrete, tmp_path / "net.safetensors", (1, 14, 14))
    loaded, _ = load_artifact(path)
    assert sum(isinstance(op, nn.AvgPool2d) for op in loaded.ops) == 2
    logits = loaded(x)
    assert torch.equal(logits, loaded.reference(x)) and torch.equal(logits, discrete(x))
    with torch.no_grad():
        float_logits = net.eval()(x)
    assert (logits.argmax(1) == float_logits.argmax(1)).float().mean() >= 0.9
