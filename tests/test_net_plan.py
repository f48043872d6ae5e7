"""bayesq.net_plan: a whole discrete net in one native call equals the PyTorch integer reference
exactly, on every engine and path, over random nets (convolutions with stride, padding and
gathered columns, fused and unfused pooling, signed and unsigned codes, sign units)."""

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from bayesq import lowbit_gemm, sparse_ternary_gemm
from bayesq.net_plan import DIRECT_ISAS, NetPlan
from bayesq.ops import Sign
from bayesq.runtime import DiscreteNet, QuantizedConv2d, QuantizedLinear

# (engine, isa) pairs this CPU runs; the direct engine's portable path runs anywhere
PATHS = [(None, None), ("bitserial", None)]
PATHS += [("ternary", isa) for isa in lowbit_gemm.ternary_isas()]
PATHS += [("direct", isa) for isa in DIRECT_ISAS]
PATHS += [("sparse", isa) for isa in sparse_ternary_gemm.sparse_ternary_isas()]


def _avx2_exact(layer) -> bool:
    """The direct GEMM's AVX2 path runs the layer only where no vpmaddubsw pair can saturate:
    2 * (largest unsigned byte u: the code, or code + 128 when signed) * max|w| <= 32767."""
    lin = _linear(layer)
    if lin.act_mode == "signed":
        act_max = 127 + 2 ** (lin.act_bits - 1)
    else:
        act_max = 2**lin.act_bits - 1
    return 2 * act_max * max(1, int(lin.weight_codes.abs().max())) <= 32767


def _layer(rng, out, k, width, act_bits, act_mode, gather, weight_mode="signed"):
    """A QuantizedLinear with random codes of `width` bits (2: ternary) and 70% zeros."""
    if weight_mode == "pm1":
        codes = np.where(rng.random((out, k)) < 0.5, -1, 1).astype(np.int8)
        bits = np.ones(out, dtype=np.int64)
    else:
        top = 2 ** (width - 1) - 1
        codes = rng.integers(-top, top + 1, (out, k)).astype(np.int8)
        codes[rng.random((out, k)) < 0.7] = 0
        bits = np.full(out, width, dtype=np.int64)
        bits[rng.random(out) < 0.2] = 0  # pruned rows
        codes[bits == 0] = 0
    fields = dict(
        row_bits=torch.from_numpy(bits),
        row_scale=torch.from_numpy(rng.uniform(-0.5, 1.0, out).astype(np.float32)),
        bias=torch.from_numpy(rng.normal(0, 1, out).astype(np.float32)),
        act_bits=act_bits, act_mode=act_mode,
        act_scale=float(rng.uniform(0.01, 0.3)), weight_mode=weight_mode,
    )  # fmt: skip
    if gather and k > 1:
        keep = np.sort(rng.choice(k, size=max(1, k // 2), replace=False))
        return QuantizedLinear(
            torch.from_numpy(np.ascontiguousarray(codes[:, keep])),
            input_index=torch.from_numpy(keep.astype(np.int64)),
            input_features=k,
            **fields,
        )
    return QuantizedLinear(torch.from_numpy(codes), **fields)


@st.composite
def nets(draw):
    """A random discrete net and an input batch for it."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    width = draw(st.sampled_from([2, 2, 3, 8]))
    act = st.sampled_from([(8, "unsigned"), (4, "unsigned"), (2, "unsigned"), (8, "signed"),
                           (3, "signed")])  # fmt: skip
    c, h, w = draw(st.integers(1, 3)), draw(st.integers(4, 11)), draw(st.integers(4, 11))
    ops, shape = [], (c, h, w)
    for _ in range(draw(st.integers(0, 2))):  # convolutions, each maybe followed by glue
        kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        sh, sw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
        ph, pw = draw(st.integers(0, 1)), draw(st.integers(0, 1))
        oh, ow = (shape[1] + 2 * ph - kh) // sh + 1, (shape[2] + 2 * pw - kw) // sw + 1
        if oh < 1 or ow < 1:
            break
        out = draw(st.integers(1, 20))
        bits, mode = draw(act)
        linear = _layer(rng, out, shape[0] * kh * kw, width, bits, mode, draw(st.booleans()))
        ops.append(QuantizedConv2d(linear, shape[0], (kh, kw), (sh, sw), (ph, pw)))
        shape = (out, oh, ow)
        glue = draw(st.sampled_from(["none", "maxpool2", "maxpool3", "avgpool2", "relu"]))
        pool = {"maxpool2": (nn.MaxPool2d, 2), "maxpool3": (nn.MaxPool2d, 3),
                "avgpool2": (nn.AvgPool2d, 2)}.get(glue)  # fmt: skip
        if pool and min(shape[1:]) >= pool[1]:
            ops.append(pool[0](pool[1]))
            shape = (out, shape[1] // pool[1], shape[2] // pool[1])
        elif glue == "relu":
            ops.append(nn.ReLU())
    ops.append(nn.Flatten())
    features = int(np.prod(shape))
    for _ in range(draw(st.integers(1, 2))):
        out = draw(st.integers(1, 70))
        bits, mode = draw(act)
        ops.append(_layer(rng, out, features, width, bits, mode, draw(st.booleans())))
        ops.append(nn.ReLU())
        features = out
    if draw(st.booleans()):  # a sign unit and a binary (+-1) layer after it
        ops[-1] = Sign()
        ops.append(_layer(rng, 3, features, 1, 1, "pm1", False, weight_mode="pm1"))
    else:
        ops.pop()
    n = draw(st.integers(1, 40))
    x = torch.from_numpy(rng.normal(0, 2, (n, c, h, w)).astype(np.float32))
    return DiscreteNet(ops), x


@settings(max_examples=60, deadline=None)
@given(case=nets(), path=st.sampled_from(PATHS), threads=st.integers(1, 3))
def test_plan_equals_the_reference_exactly(case, path, threads):
    net, x = case
    engine, isa = path
    ternary = all(int(layer.row_bits.max()) <= 2 for layer in map(_linear, net.layers))
    pm1 = any(_linear(layer).act_mode == "pm1" for layer in net.layers)
    needs_ternary = engine in ("ternary", "sparse")
    if engine in ("ternary", "direct", "sparse") and (pm1 or (needs_ternary and not ternary)):
        with pytest.raises(ValueError, match=f"the {engine} engine needs"):
            net(x, threads=threads, isa=isa, engine=engine)
        return
    if isa == "avx2" and not all(map(_avx2_exact, net.layers)):
        with pytest.raises(ValueError, match="could saturate"):
            net(x, threads=threads, isa=isa, engine=engine)
        return
    assert torch.equal(net(x, threads=threads, isa=isa, engine=engine), net.reference(x))


def _linear(op):
    return op.linear if isinstance(op, QuantizedConv2d) else op


@pytest.mark.parametrize("isa", DIRECT_ISAS)
def test_fused_pooling_of_signed_codes_whose_offset_products_wrap_int32(isa):
    # u = x + 128 = 255 against weights 127 over K = 70000: u . w passes 2^31 (the kernel's sums
    # wrap), x . w = 127 * 127 * K does not: the max of the wrapped sums would pick the -128 pixel
    k = 70000
    codes = torch.full((2, k), 127, dtype=torch.int8)
    codes[1] = -127
    linear = QuantizedLinear(codes, torch.full((2,), 8), torch.tensor([1e-6, 1e-6]),
                             torch.zeros(2), 8, "signed", 1.0)  # fmt: skip
    net = DiscreteNet([QuantizedConv2d(linear, k, (1, 1)), nn.MaxPool2d(2), nn.Flatten()])
    x = torch.full((1, k, 2, 2), 127.0)
    x[0, :, 1, 1] = -128.0  # u = 0: no wrap; the other three wrap to below 0
    if isa == "avx2":  # 8-bit signed codes x weights of 127: vpmaddubsw would saturate
        with pytest.raises(ValueError, match="could saturate"):
            net(x, engine="direct", isa=isa)
        return
    assert torch.equal(net(x, engine="direct", isa=isa), net.reference(x))


def test_plan_refuses_what_it_cannot_run():
    layer = _layer(np.random.default_rng(0), 5, 12, 2, 8, "unsigned", False)
    net = DiscreteNet([nn.Flatten(), layer])
    x = torch.rand(3, 12)
    with pytest.raises(ValueError, match="DiscreteNet.forward: x contains NaN"):
        net(torch.where(x > 0.5, float("nan"), x))
    with pytest.raises(ValueError, match=r"needs \(12,\), gets \(13,\)"):
        net(torch.rand(3, 13))
    with pytest.raises(ValueError, match="engine must be one of"):
        net(x, engine="gpu")
    with pytest.raises(ValueError, match="direct engine's isa"):
        net(x, engine="direct", isa="avx9")
    plan = NetPlan()
    with pytest.raises(ValueError, match="no glue op"):
        plan.add_glue("softmax")
    with pytest.raises(ValueError, match="an isa needs a forced engine"):
        net.plan().run(x, isa="portable")


def test_a_plan_is_made_once_and_reused():
    layer = _layer(np.random.default_rng(1), 5, 12, 2, 8, "unsigned", False)
    net = DiscreteNet([layer])
    x = torch.rand(20, 12)
    first = net(x)
    assert net.plan() is net.plan()
    assert torch.equal(net(x), first) and torch.equal(first, net.reference(x))


def test_a_batch_bigger_than_a_slice_goes_through_in_slices():
    # about 1 MB of activations per sample: the plan's 16 MB slices take 16 samples at a time
    layer = _layer(np.random.default_rng(2), 4, 200_000, 2, 8, "unsigned", False)
    net = DiscreteNet([layer])
    x = torch.rand(37, 200_000)
    assert torch.equal(net(x, threads=2), net.reference(x))


def test_a_replaced_layer_does_not_carry_the_old_plan():
    layer = _layer(np.random.default_rng(3), 5, 12, 2, 8, "unsigned", False)
    conv = QuantizedConv2d(
        _layer(np.random.default_rng(4), 3, 4, 2, 8, "unsigned", False), 1, (2, 2)
    )
    x, image = torch.rand(4, 12), torch.rand(2, 1, 5, 5)
    layer.forward(x), conv.forward(image)  # both make their plans
    moved = dataclasses.replace(layer, bias=layer.bias + 1)
    assert torch.equal(moved.forward(x), moved.reference(x))
    assert not torch.equal(moved.forward(x), layer.forward(x))
    moved_conv = dataclasses.replace(
        conv, linear=dataclasses.replace(conv.linear, bias=conv.linear.bias + 1)
    )
    assert torch.equal(moved_conv.forward(image), moved_conv.reference(image))
