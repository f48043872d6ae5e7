"""bayesq.runtime: discrete nets on the bit-serial kernels equal their PyTorch integer reference."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from bayesq import bitserial, kernels, lowbit_gemm, sparse_ternary_gemm
from bayesq.net_plan import ENGINES, HAS_DIRECT, HAS_DIRECT_AMX, HAS_DIRECT_AVX2
from bayesq.quantizers import activation_scale, quantize_codes
from bayesq.runtime import DiscreteNet, QuantizedConv2d, QuantizedLinear
from bayesq.vnq_snap import quantize_vnq_
from tests.common import discrete_of_vnq, pruned_vnq

ISAS = bitserial.bitserial_isas()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    ("name", "shape", "act_bits"),
    [("lenet5", (5, 1, 28, 28), 4), ("lenet300", (3, 1, 28, 28), 8), ("mlp", (1, 1, 8, 8), 2)],
)
def test_kernels_give_the_reference_logits_exactly(isa, name, shape, act_bits):
    net = pruned_vnq(name, log_sigma2=(-12.0, -4.0))
    x = torch.rand(shape)
    discrete = discrete_of_vnq(net, torch.rand(16, *shape[1:]), act_bits=act_bits)
    for threads in (1, 2):
        logits = discrete(x, threads=threads, isa=isa)
        assert torch.equal(logits, discrete.reference(x))


def test_the_discrete_net_follows_the_float_net_with_quantized_weights():
    """Only the activation quantization separates them: close at 8 bits, further at 2."""
    net = pruned_vnq("lenet300", log_sigma2=(-12.0, -4.0))
    x = torch.rand(64, 1, 28, 28)
    net.eval()
    with torch.no_grad():
        float_logits = net(x)
    errors = {}
    for bits in (2, 8):
        logits = discrete_of_vnq(net, x, act_bits=bits)(x)
        errors[bits] = float((logits - float_logits).abs().max())
    assert errors[8] < 0.02 * float(float_logits.abs().max())
    assert errors[8] < errors[2]


def test_vnq_codes_pruning_and_row_widths():
    net = pruned_vnq("lenet300", log_sigma2=(-12.0, -4.0))
    fc1 = net.fc1 if hasattr(net, "fc1") else [m for m in net.modules() if hasattr(m, "theta")][0]
    fc1.theta.data[3] = 0.0  # a row with every weight at the zero spike: 0 planes
    quantize_vnq_(net)
    discrete = discrete_of_vnq(net, torch.rand(8, 1, 28, 28))
    layer = discrete.layers[0]
    expected = (fc1.quantized_weight() / fc1.codebook_scale).round().to(torch.int8)
    assert layer.in_features == 784 and len(layer.input_index) == 500
    assert torch.equal(layer.weight_codes, expected[:, layer.input_index])
    dropped = torch.ones(784, dtype=torch.bool)
    dropped[layer.input_index] = False
    assert dropped.any() and not expected[:, dropped].any()  # only all-zero columns are dropped
    assert layer.row_bits[3] == 0 and set(layer.row_bits.tolist()) <= {0, 2}
    assert torch.allclose(layer.row_scale, fc1.codebook_scale.expand(layer.out_features))
    assert layer.act_mode == "unsigned"  # images in [0, 1]
    assert [op.act_mode for op in discrete.layers[1:]] == ["unsigned", "unsigned"]  # after ReLU


def test_dropping_pruned_input_columns_changes_nothing():
    net = pruned_vnq("lenet300", log_sigma2=(-12.0, -4.0))
    x = torch.rand(9, 1, 28, 28)
    discrete = discrete_of_vnq(net, x, act_bits=4)
    layer = discrete.layers[0]
    assert layer.input_index is not None and len(layer.input_index) < 784
    full_codes = torch.zeros(layer.out_features, 784, dtype=torch.int8)
    full_codes[:, layer.input_index] = layer.weight_codes
    full = dataclasses.replace(
        layer, weight_codes=full_codes, input_index=None, input_features=None
    )
    flat = x.flatten(1)
    assert torch.equal(full.reference(flat), layer.reference(flat))
    assert torch.equal(full.forward(flat), layer.forward(flat))


def test_reference_linear_is_the_dequantized_product():
    torch.manual_seed(1)
    codes = torch.randint(-3, 4, (6, 40), dtype=torch.int8)
    layer = QuantizedLinear(
        codes, torch.full((6,), 3), torch.rand(6) + 0.1, torch.randn(6), 5, "signed", 0.05
    )
    x = torch.randn(4, 40)
    dequantized = quantize_codes(x, 0.05, 5, "signed").float() * 0.05
    expected = dequantized @ (codes.float() * layer.row_scale[:, None]).T + layer.bias
    torch.testing.assert_close(layer.reference(x), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(layer.forward(x), layer.reference(x))


def test_conv_matches_torch_conv_on_dequantized_values():
    torch.manual_seed(2)
    codes = torch.randint(-1, 2, (7, 3 * 3 * 3), dtype=torch.int8)
    linear = QuantizedLinear(
        codes, torch.full((7,), 2), torch.full((7,), 0.3), torch.randn(7), 8, "unsigned", 0.01
    )
    conv = QuantizedConv2d(linear, 3, (3, 3), stride=(2, 1), padding=(1, 2))
    x = torch.rand(2, 3, 9, 11)
    dequantized = quantize_codes(x, 0.01, 8, "unsigned").float() * 0.01
    expected = torch.nn.functional.conv2d(
        dequantized,
        codes.float().view(7, 3, 3, 3) * 0.3,
        linear.bias,
        stride=(2, 1),
        padding=(1, 2),
    )
    torch.testing.assert_close(conv.reference(x), expected, rtol=1e-5, atol=1e-4)
    assert torch.equal(conv.forward(x, threads=2), conv.reference(x))


def test_activation_scale_uses_the_whole_code_range():
    x = torch.tensor([[-2.0, 0.5, 1.5]])
    assert activation_scale(x, 4, "unsigned") == pytest.approx(1.5 / 15)
    assert activation_scale(x, 4, "signed") == pytest.approx(2.0 / 7)
    assert activation_scale(torch.zeros(3), 4, "unsigned") == 1.0
    with pytest.raises(ValueError, match="NaN"):
        activation_scale(torch.tensor([math.nan]), 4, "unsigned")


def test_bad_layers_and_inputs_raise_value_error():
    codes = torch.zeros(3, 10, dtype=torch.int8)
    ok = dict(row_bits=torch.full((3,), 2), row_scale=torch.ones(3), bias=torch.zeros(3),
              act_bits=4, act_mode="unsigned", act_scale=0.1)  # fmt: skip
    QuantizedLinear(codes, **ok)
    for change, match in (
        ({"act_bits": 9}, "act_bits"),
        ({"act_bits": 0}, "act_bits"),
        ({"act_mode": "ternary"}, "act_mode"),
        ({"act_scale": math.nan}, "act_scale"),
        ({"row_scale": torch.tensor([1.0, math.nan, 1.0])}, "row_scale"),
        ({"bias": torch.zeros(4)}, "bias"),
    ):
        with pytest.raises(ValueError, match=match):
            QuantizedLinear(codes, **{**ok, **change})
    with pytest.raises(ValueError, match="int8"):
        QuantizedLinear(codes.to(torch.int16), **ok)
    with pytest.raises(ValueError, match="outside"):  # a code wider than its row's planes
        QuantizedLinear(torch.full((3, 10), 5, dtype=torch.int8), **ok).forward(torch.zeros(1, 10))
    layer = QuantizedLinear(codes, **ok)
    for x in (torch.zeros(2, 11), torch.zeros(2, 10, dtype=torch.float64), torch.zeros(10)):
        with pytest.raises(ValueError, match="input"):
            layer.forward(x)
    with pytest.raises(ValueError, match="NaN"):
        layer.forward(torch.tensor([[math.nan] * 10]))
    with pytest.raises(ValueError, match="no discrete form"):
        discrete_of_vnq(nn.Sequential(nn.Linear(3, 3)), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="cannot run"):
        DiscreteNet([nn.Sigmoid()])
    with pytest.raises(ValueError, match="smaller"):
        QuantizedConv2d(
            QuantizedLinear(torch.zeros(3, 9, dtype=torch.int8), **ok), 1, (3, 3)
        ).forward(torch.zeros(1, 1, 2, 2))


def _small_net() -> DiscreteNet:
    codes = torch.tensor([[1, -1, 0, 1], [0, 1, 1, -1]], dtype=torch.int8)
    layer = QuantizedLinear(
        codes, torch.full((2,), 2), torch.ones(2), torch.zeros(2), 8, "signed", 0.1
    )
    return DiscreteNet([nn.Flatten(), layer])


@pytest.mark.parametrize("run", ["forward", "reference"])
def test_discrete_net_inputs_are_checked(run):
    net = _small_net()
    call = getattr(net, run)
    with pytest.raises(TypeError, match=rf"DiscreteNet.{run}: x must be a torch.Tensor.*numpy"):
        call(np.zeros((1, 4), dtype=np.float32))
    with pytest.raises(TypeError, match="floating-point"):
        call(torch.zeros(1, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="NaN"):
        call(torch.tensor([[0.0, math.nan, 1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"batch \(N, \.\.\.\)"):
        call(torch.zeros(4))
    x = torch.rand(3, 4, dtype=torch.float64)  # other float types are converted
    assert torch.equal(call(x), net.reference(x.float()))


def test_threads_and_isa_of_a_forward_are_checked_before_the_native_call():
    net, x = _small_net(), torch.rand(2, 4)
    for threads in (0, 2**40, kernels.MAX_THREADS + 1, 2.0):
        with pytest.raises(ValueError, match="DiscreteNet.forward: threads must be an int"):
            net.forward(x, threads=threads)
    with pytest.raises(ValueError, match="isa must be None"):
        net.forward(x, isa=5)
    assert torch.equal(net.forward(x, threads=kernels.MAX_THREADS), net.reference(x))


def test_layer_fields_that_would_fail_later_are_refused_at_construction():
    codes = torch.zeros(3, 9, dtype=torch.int8)
    ok = dict(row_bits=torch.full((3,), 2), row_scale=torch.ones(3), bias=torch.zeros(3),
              act_bits=4, act_mode="unsigned", act_scale=0.1)  # fmt: skip
    for change, match in (
        ({"act_scale": 1e39}, "act_scale must be a positive normal float32"),
        ({"act_scale": 1e-300}, "act_scale must be a positive normal float32"),
        ({"act_scale": "0.1"}, "act_scale must be a float"),
        ({"weight_mode": "ternary"}, "weight_mode must be one of"),
        ({"row_bits": torch.full((4,), 2)}, "row_bits must be an integer tensor"),
        ({"row_bits": torch.full((3,), 9)}, "row_bits must lie in 0..8"),
        ({"weight_mode": "pm1"}, "row_bits of a pm1 layer"),
    ):
        with pytest.raises(ValueError, match=match):
            QuantizedLinear(codes, **{**ok, **change})
    with pytest.raises(ValueError, match="outside their row's width"):
        QuantizedLinear(torch.full((3, 9), 2, dtype=torch.int8), **ok)
    linear = QuantizedLinear(codes, **ok)
    for change, match in (
        ({"stride": (0, 1)}, "stride must be two ints >= 1"),
        ({"padding": (-1, 0)}, "padding must be two ints >= 0"),
        ({"kernel_size": (3,)}, "kernel_size must be two ints"),
        ({"in_channels": 0}, "in_channels"),
    ):
        args = {"in_channels": 1, "kernel_size": (3, 3), **change}
        with pytest.raises(ValueError, match=match):
            QuantizedConv2d(linear, **args)


@pytest.mark.parametrize("name", ["lenet5", "lenet300"])
def test_dead_units_are_dropped_without_changing_a_logit(name):
    """Rows whose outputs only meet zero weights downstream: zeroed, and the logits are equal."""
    net = pruned_vnq(name, log_sigma2=(-12.0, -4.0))
    with torch.no_grad():
        if name == "lenet5":
            net.conv2.theta[:, :5] = 0.0  # conv1's channels 0..4: read by nothing
            net.fc1.theta[:, : 3 * 16] = 0.0  # conv2's channels 0..2 (16 features each)
            dead = {0: range(5), 1: range(3), 2: range(100)}
        else:
            dead = {0: range(100), 1: range(20)}
        net.fc2.theta[:, :100] = 0.0  # fc1's rows 0..99
        if name == "lenet300":
            net.fc3.theta[:, :20] = 0.0
    quantize_vnq_(net)
    shape = (1, 28, 28)
    discrete = discrete_of_vnq(net, torch.rand(16, *shape), act_bits=4)
    lean = discrete.without_dead_units()
    for i, rows in dead.items():
        layer = getattr(lean.layers[i], "linear", lean.layers[i])
        rows = list(rows)
        assert not layer.weight_codes[rows].any() and not layer.row_bits[rows].any()
        assert not layer.bias[rows].any()
        before = getattr(discrete.layers[i], "linear", discrete.layers[i])
        assert before.row_bits[rows].any() and before.bias[rows].any()  # they were alive
    x = torch.rand(6, *shape)
    assert torch.equal(lean(x), discrete(x))
    assert torch.equal(lean.reference(x), discrete.reference(x))
    if name == "lenet300":  # the gather follows the columns still read
        first = lean.layers[0]
        assert first.input_index is not None and bool(first.weight_codes.ne(0).any(0).all())


# --- the engine of each layer: VNNI for ternary rows, bit-serial otherwise ---------------------
TERNARY_ISAS = lowbit_gemm.ternary_isas()
HAS_TERNARY = any(isa != "portable" for isa in TERNARY_ISAS)
VNQ_BATCH = 20


def _layer(codes, act_bits, act_mode, row_bits=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = codes.shape[0]
    return QuantizedLinear(
        codes, row_bits=torch.full((out,), 2) if row_bits is None else row_bits,
        row_scale=torch.rand(out, generator=g) + 0.01, bias=torch.randn(out, generator=g),
        act_bits=act_bits, act_mode=act_mode, act_scale=0.037,
    )  # fmt: skip


@pytest.mark.parametrize("isa", TERNARY_ISAS)
@pytest.mark.parametrize(("act_bits", "act_mode"), [(8, "unsigned"), (8, "signed"), (3, "signed"),
                                                    (2, "unsigned")])  # fmt: skip
@pytest.mark.parametrize(("out", "k"), [(1, 1), (7, 63), (33, 257), (9, 1000)])
def test_vnni_engine_equals_the_reference_exactly(isa, act_bits, act_mode, out, k):
    g = torch.Generator().manual_seed(out * k + act_bits)
    codes = torch.randint(-1, 2, (out, k), generator=g, dtype=torch.int8)
    codes[torch.rand(out, k, generator=g) < 0.7] = 0  # VNQ's sparsity
    layer = _layer(codes, act_bits, act_mode)
    x = torch.randn(5, k, generator=g) * 3  # beyond the codes' range: clamped
    for threads in (1, 3):
        y = layer.forward(x, threads=threads, isa=isa, engine="ternary")
        assert torch.equal(y, layer.reference(x))
    assert torch.equal(layer.forward(x, engine="bitserial"), layer.reference(x))


# The dense 2-bit GEMM's path decides where the sparse engine takes over (NetPlan.sparse_pays):
# in a small layer from 16 rows against AVX2, never against VNNI or AMX; in a large one (2^21
# weights) from 64 rows against VNNI without AMX.
_DENSE_ISA = lowbit_gemm.ternary_isa_for(64)
_SPARSE_FAST = any(isa != "portable" for isa in sparse_ternary_gemm.sparse_ternary_isas())
SPARSE_FROM_ROWS = 16 if _SPARSE_FAST and _DENSE_ISA == "avx2" else None
_VNNI_ONLY = _SPARSE_FAST and _DENSE_ISA not in ("avx2", "amx", "portable")
SPARSE_LARGE_FROM_ROWS = 64 if _VNNI_ONLY else SPARSE_FROM_ROWS


def test_sparse_rows_take_the_sparse_engine_where_it_pays():
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(-1, 2, (64, 300), generator=g, dtype=torch.int8)
    sparse = codes.clone()
    sparse[torch.rand(64, 300, generator=g) < 0.8] = 0  # about 80% zeros, as VNQ leaves them
    half = codes.clone()
    half[torch.rand(64, 300, generator=g) < 0.5] = 0
    for rows in (1, 15, 16, 63, 64, 256):
        dense = _layer(half, 8, "unsigned").engine_for(rows)
        expected = "sparse" if SPARSE_FROM_ROWS and rows >= SPARSE_FROM_ROWS else dense
        assert _layer(sparse, 8, "unsigned").engine_for(rows) == expected, rows
        assert dense != "sparse"  # 50% kept: a dense engine wins at every batch
    large = torch.randint(-1, 2, (2048, 1024), generator=g, dtype=torch.int8)
    large_half = large.clone()
    large[torch.rand(2048, 1024, generator=g) < 0.8] = 0
    large_half[torch.rand(2048, 1024, generator=g) < 0.5] = 0
    for rows in (1, 15, 16, 63, 64, 128):
        dense = _layer(large_half, 8, "unsigned").engine_for(rows)
        expected = "sparse" if SPARSE_LARGE_FROM_ROWS and rows >= SPARSE_LARGE_FROM_ROWS else dense
        assert _layer(large, 8, "unsigned").engine_for(rows) == expected, rows
        assert dense != "sparse"
    assert _layer(sparse, 1, "pm1").engine_for(256) == "bitserial"
    x = torch.randn(20, 300, generator=g) * 3
    for isa in sparse_ternary_gemm.sparse_ternary_isas():
        layer = _layer(sparse, 8, "signed")
        assert torch.equal(layer.forward(x, engine="sparse", isa=isa), layer.reference(x))
    with pytest.raises(ValueError, match="sparse engine needs ternary rows"):
        _layer(sparse * 3, 8, "unsigned", row_bits=torch.full((64,), 3)).forward(x, engine="sparse")


def test_each_layer_takes_the_engine_its_shape_and_widths_ask_for():
    small = torch.randint(-1, 2, (4, 20), dtype=torch.int8)
    big = torch.randint(-1, 2, (2048, 1024), dtype=torch.int8)
    fast_direct = HAS_DIRECT or HAS_DIRECT_AVX2
    tern = "ternary" if HAS_TERNARY else "bitserial"
    direct = "direct" if fast_direct else tern
    assert _layer(small, 8, "unsigned").engine_for(1) == direct  # weights that stay in cache
    assert _layer(small, 2, "signed").engine_for(256) == direct
    # 2 MB of weights as bytes: the ternary GEMM reads 2 bits a weight; without it the
    # direct GEMM, bit-serial only while the 2 x 4 planes are too many for it
    big_4bit = tern if HAS_TERNARY else direct
    assert _layer(big, 4, "unsigned").engine_for(15) == big_4bit
    # with VNNI but no AMX the direct GEMM takes large ternary layers from 16 rows
    vnni_only = HAS_DIRECT and not HAS_DIRECT_AMX
    assert _layer(big, 4, "unsigned").engine_for(127) == ("direct" if vnni_only else big_4bit)
    assert _layer(big, 4, "unsigned").engine_for(128) == (
        "direct" if HAS_DIRECT_AMX or vnni_only else big_4bit
    )
    assert _layer(big, 1, "unsigned").engine_for(256) == "bitserial"  # 2 x 1 binary GEMMs
    assert _layer(big.abs(), 1, "pm1").engine_for(256) == "bitserial"
    wide = _layer(small * 3, 8, "unsigned", row_bits=torch.full((4,), 3))
    assert wide.engine_for(256) == direct.replace("ternary", "bitserial")  # not ternary
    with pytest.raises(ValueError, match="ternary engine needs ternary rows"):
        wide.forward(torch.zeros(1, 20), engine="ternary")
    with pytest.raises(ValueError, match="engine"):
        wide.forward(torch.zeros(1, 20), engine="gpu")
    net = discrete_of_vnq(
        pruned_vnq("lenet300", log_sigma2=(-12.0, -4.0)), torch.rand(16, 1, 28, 28)
    )
    x = torch.rand(VNQ_BATCH, 1, 28, 28)
    for engine in (None, *ENGINES):
        if engine == "direct" and not (HAS_DIRECT or HAS_DIRECT_AVX2):
            continue  # its portable path: tests/test_net_plan.py
        assert torch.equal(net(x, engine=engine), net.reference(x))
    assert [op.engine_for(VNQ_BATCH) for op in net.layers] == [direct, direct, direct]
