"""The discrete-net artifact: quantize a posterior, save, load, same logits; the file is the size the
bit report counts; bad or hostile files raise ValueError naming the file and the field."""

import json
import textwrap
import zlib

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from bayesq import artifact, bits, sparse_codes
from bayesq.artifact import header_bytes, load_artifact, save_artifact, storage_bits
from bayesq.nn import posterior_of
from bayesq.ops import Sign
from bayesq.quantize import quantize_posterior
from bayesq.runtime import DiscreteNet, QuantizedLinear
from bayesq.vnq_snap import quantize_vnq_
from tests.common import discrete_of_vnq, run_limited, untrained_vnq

# The bytes of a file that are not layer data: safetensors framing (8 bytes + its JSON, about
# 70 bytes per layer tensor) and our compact JSON header (about 150 bytes per layer, 20 per glue
# op). The nets below have at most 12 ops: 2 KiB covers them.
HEADER_ALLOWANCE = 2048


@pytest.fixture(scope="module")
def lenet5_artifact(tmp_path_factory):
    post = posterior_of(untrained_vnq("lenet5"), (1, 28, 28))
    widths = bits.allocate(post, 3.0)
    discrete = quantize_posterior(post, torch.rand(32, 1, 28, 28), widths=widths, act_bits=6)
    path = save_artifact(discrete, tmp_path_factory.mktemp("a") / "net.safetensors", (1, 28, 28))
    return discrete, path


def test_round_trip_gives_the_same_logits(lenet5_artifact):
    discrete, path = lenet5_artifact
    loaded, shape = load_artifact(path)
    assert shape == (1, 28, 28)
    x = torch.rand(7, 1, 28, 28)
    assert torch.equal(loaded(x), discrete(x))
    assert torch.equal(loaded.reference(x), discrete(x))
    assert [type(op).__name__ for op in loaded.ops] == [type(op).__name__ for op in discrete.ops]
    for a, b in zip(loaded.layers, discrete.layers, strict=True):
        a, b = getattr(a, "linear", a), getattr(b, "linear", b)
        assert torch.equal(a.weight_codes, b.weight_codes)
        assert torch.equal(a.row_bits, b.row_bits) and torch.equal(a.bias, b.bias)
        kept = b.row_bits > 0
        assert torch.equal(a.row_scale[kept], b.row_scale[kept])


def test_quantized_posterior_follows_the_row_widths(lenet5_artifact):
    discrete, _ = lenet5_artifact
    for layer in discrete.layers:
        linear = getattr(layer, "linear", layer)
        top = torch.where(linear.row_bits > 0, 2 ** (linear.row_bits - 1).clamp(min=0) - 1, 0)
        assert bool((linear.weight_codes.abs() <= top[:, None]).all())


def test_a_net_that_skips_pruned_inputs_keeps_its_index(tmp_path):
    net = untrained_vnq("lenet300")
    net.fc1.theta.data[:, :284] = 0.0  # dead inputs, as MNIST's blank border
    quantize_vnq_(net)
    discrete = discrete_of_vnq(net, torch.rand(16, 1, 28, 28), act_bits=4)
    first = discrete.layers[0]
    assert first.input_index is not None
    path = save_artifact(discrete, tmp_path / "vnq.safetensors", (1, 28, 28))
    loaded, _ = load_artifact(path)
    assert torch.equal(loaded.layers[0].input_index, first.input_index)
    assert torch.equal(loaded.layers[0].weight_codes, first.weight_codes)
    x = torch.rand(5, 1, 28, 28)
    assert torch.equal(loaded(x), discrete(x))
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["bayesq"])["ops"][1]["gather"] == "kept-columns"
        assert "ops.1.input_index" not in f.keys()  # noqa: SIM118


def test_any_other_input_index_is_stored_as_it_is(tmp_path):
    codes = torch.tensor([[1, -1, 0], [0, 1, 1]], dtype=torch.int8)
    layer = QuantizedLinear(
        codes, torch.full((2,), 2), torch.ones(2), torch.zeros(2), 8, "signed", 0.1,
        input_index=torch.tensor([4, 0, 2]), input_features=6,
    )  # fmt: skip
    path = save_artifact(DiscreteNet([layer]), tmp_path / "i.safetensors", (6,))
    loaded, _ = load_artifact(path)
    assert torch.equal(loaded.layers[0].input_index, torch.tensor([4, 0, 2]))
    x = torch.rand(3, 6)
    assert torch.equal(loaded(x), layer.reference(x))


def _mlp(kept_share: float, seed: int, sizes=(784, 300, 100, 10)) -> DiscreteNet:
    """A ternary MLP with `kept_share` of its weights nonzero and a step per row."""
    g = torch.Generator().manual_seed(seed)
    ops = [nn.Flatten()]
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        signs = torch.where(torch.rand(n_out, n_in, generator=g) < 0.5, -1, 1)
        codes = (signs * (torch.rand(n_out, n_in, generator=g) < kept_share)).to(torch.int8)
        row_bits = torch.where(codes.ne(0).any(1), 2, 0)
        if i:
            ops.append(nn.ReLU())
        ops.append(
            QuantizedLinear(
                codes, row_bits, torch.rand(n_out, generator=g) + 0.5,
                torch.randn(n_out, generator=g), 8, "unsigned" if i else "signed", 0.05,
            )
        )  # fmt: skip
    return DiscreteNet(ops)


def _counted_bits(net: DiscreteNet) -> int:
    """Sum of layer_storage_bits over the layers, counted here independently of the artifact."""
    total = 0
    for op in net.layers:
        linear = getattr(op, "linear", op)
        codes = linear.weight_codes
        if linear.input_index is not None:
            full = torch.zeros(linear.out_features, linear.in_features, dtype=torch.int8)
            full[:, linear.input_index] = codes
            codes = full
        total += sparse_codes.layer_storage_bits(
            codes.numpy(), linear.row_bits.numpy(), linear.row_scale.numpy(), linear.bias.numpy()
        )["total"]
    return total


@pytest.mark.parametrize("which", ["99% pruned", "dense ternary", "lenet5", "lenet300 vnq"])
def test_the_file_is_the_size_the_report_counts(which, lenet5_artifact, tmp_path):
    if which == "lenet5":
        net, shape = lenet5_artifact[0], (1, 28, 28)
    elif which == "lenet300 vnq":
        vnq = untrained_vnq("lenet300")
        quantize_vnq_(vnq)
        net, shape = discrete_of_vnq(vnq, torch.rand(8, 1, 28, 28)), (1, 28, 28)
    else:
        net, shape = _mlp(0.01 if which == "99% pruned" else 1.0, 0), (1, 28, 28)
    path = save_artifact(net, tmp_path / "net.safetensors", shape)
    counted = _counted_bits(net)
    assert storage_bits(net)["total"] == counted
    size = path.stat().st_size
    assert size <= 1.1 * counted / 8 + HEADER_ALLOWANCE
    assert header_bytes(path) <= HEADER_ALLOWANCE
    assert size - header_bytes(path) <= counted / 8 + len(net.layers)  # byte padding per layer
    loaded, _ = load_artifact(path)
    x = torch.rand(4, *shape)
    assert torch.equal(loaded(x), net(x))


def _rewrite(src, dst, tensors=None, header=None, refresh_crc=True):
    """Copy an artifact with its tensors and/or header edited; the layers' crc32 fields are
    refreshed to the edited data unless refresh_crc=False."""
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        data = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    data = tensors(data) if tensors else data
    h = json.loads(meta["bayesq"])
    if refresh_crc:
        for i, op in enumerate(h["ops"]):
            if f"ops.{i}.data" in data and data[f"ops.{i}.data"].dtype == torch.uint8:
                op["crc32"] = zlib.crc32(data[f"ops.{i}.data"].numpy().tobytes())
    meta["bayesq"] = json.dumps(header(h) if header is not None else h)
    save_file(data, str(dst), metadata=meta)
    return dst


def _op(index: int, **change):
    def edit(h):
        ops = [dict(op) for op in h["ops"]]
        ops[index].update(change)
        return {**h, "ops": ops}

    return edit


def _reencode(key: str, **change):
    """Replace a layer's data by an encoding of its decoded fields with some changed."""

    def edit(t):
        raw = t[key].numpy().tobytes()
        out, fan_in = change.pop("shape")
        layer = sparse_codes.decode_layer(raw, out, fan_in)
        fields = {
            "codes": layer.codes,
            "row_bits": layer.row_bits,
            "row_scale": layer.row_scale,
            "bias": layer.bias,
        }
        for name, fn in change.items():
            fields[name] = fn(fields[name].copy())
        data = sparse_codes.encode_layer(**fields).data
        return {**t, key: torch.frombuffer(bytearray(data), dtype=torch.uint8)}

    return edit


def test_bad_files_raise_clear_errors(lenet5_artifact, tmp_path):
    _, path = lenet5_artifact
    raw = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="truncated.safetensors: not a readable"):
        load_artifact(truncated)
    with pytest.raises(ValueError, match="no such"):
        load_artifact(tmp_path / "missing.safetensors")

    def cases():
        yield "version 99", dict(header=lambda h: {**h, "version": 99})
        yield "version 1 .*older bayesq", dict(header=lambda h: {**h, "version": 1})
        yield "not a bayesq", dict(header=lambda h: {**h, "format": "something-else"})
        yield (
            r"ops.0.data'\] are missing",
            dict(tensors=lambda t: {k: v for k, v in t.items() if k != "ops.0.data"}),
        )
        yield "unexpected", dict(tensors=lambda t: {**t, "extra": torch.zeros(3)})
        yield (
            r"ops.0.data.*1-D U8",
            dict(tensors=lambda t: {**t, "ops.0.data": t["ops.0.data"].to(torch.int64)}),
        )
        yield (
            r"op 0 \(conv2d\): the layer data do not match their crc32",
            dict(
                tensors=lambda t: {**t, "ops.0.data": t["ops.0.data"][:-9].contiguous()},
                refresh_crc=False,
            ),
        )
        yield (
            r"op 7 \(linear\): the layer data do not match their crc32",
            dict(tensors=lambda t: {**t, "ops.7.data": t["ops.7.data"] ^ 4}, refresh_crc=False),
        )
        yield (
            r"op 0 \(conv2d\): layer data: .*truncated",
            dict(tensors=lambda t: {**t, "ops.0.data": t["ops.0.data"][:-9].contiguous()}),
        )
        yield (
            r"op 0 \(conv2d\): row_scale",
            dict(tensors=_reencode("ops.0.data", shape=(20, 25), row_scale=lambda s: s * np.nan)),
        )
        yield r"op 0 \(conv2d\): row_bits of a pm1", dict(header=_op(0, weight_mode="pm1"))
        # the convolutions then hand fc1 the wrong number of features
        yield (
            r"op 7 \(linear\): needs \(800,\) inputs",
            dict(header=lambda h: {**h, "input_shape": [1, 20, 20]}),
        )
        yield r"op 0 \(conv2d\): in_channels", dict(header=_op(0, in_channels=2))

    for i, (match, edit) in enumerate(cases()):
        bad = _rewrite(path, tmp_path / f"bad{i}.safetensors", **edit)
        with pytest.raises(ValueError, match=f"bad{i}.safetensors: .*{match}"):
            load_artifact(bad)
    not_json = tmp_path / "j.safetensors"
    save_file({"x": torch.zeros(1)}, str(not_json), metadata={"bayesq": "{not json"})
    with pytest.raises(ValueError, match="j.safetensors: the JSON header"):
        load_artifact(not_json)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_op(0, stride=[0, 1]), r"op 0 \(conv2d\): stride must be an int in 1\.\."),
        (_op(0, padding=[100000, 0]), r"op 0 \(conv2d\): padding"),
        (_op(0, kernel_size=[5, 0]), r"op 0 \(conv2d\): kernel_size"),
        (_op(7, act_scale=1e39), r"op 7 \(linear\): act_scale"),
        (_op(7, act_scale=1e-300), r"op 7 \(linear\): act_scale"),
        (_op(7, act_scale="0.1"), r"op 7 \(linear\): act_scale"),
        (_op(7, weight_mode="ternary"), r"op 7 \(linear\): weight_mode"),
        (_op(7, act_bits=True), r"op 7 \(linear\): act_bits"),
        (_op(1, kernel_size=50), r"op 1 \(maxpool2d\): kernel_size"),
        (_op(3, kind="gelu"), r"op 3 \(gelu\): unknown kind 'gelu'"),
        (lambda h: {**h, "ops": []}, "'ops' must be a list"),
        (lambda h: {**h, "input_shape": [1, 0, 28]}, "input_shape"),
    ],
)
def test_header_fields_are_checked_when_loading(lenet5_artifact, tmp_path, edit, match):
    _, path = lenet5_artifact
    bad = _rewrite(path, tmp_path / "bad.safetensors", header=edit)
    with pytest.raises(ValueError, match=f"bad.safetensors: {match}"):
        load_artifact(bad)


def test_a_deeply_nested_header_is_a_value_error(lenet5_artifact, tmp_path):
    _, path = lenet5_artifact
    with safe_open(str(path), framework="pt") as f:
        data = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    deep = '{"format": "bayesq.discrete-net", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    save_file(data, str(tmp_path / "deep.safetensors"), metadata={"bayesq": deep})
    with pytest.raises(ValueError, match="deep.safetensors: the JSON header .*nested"):
        load_artifact(tmp_path / "deep.safetensors")


def test_headers_asking_for_huge_allocations_are_refused_in_little_memory():
    """Under a 4 GiB address-space cap: a file of a few hundred bytes claiming huge images or
    padding is refused from the header's arithmetic, without allocating (peak RSS stays small)."""
    code = textwrap.dedent(
        """
        import json, resource, tempfile, pathlib, torch
        from safetensors import safe_open
        from safetensors.torch import save_file
        from torch import nn
        from bayesq.artifact import load_artifact, save_artifact
        from bayesq.runtime import DiscreteNet, QuantizedConv2d, QuantizedLinear

        def linear(out, fan_in, mode):
            codes = torch.ones(out, fan_in, dtype=torch.int8)
            return QuantizedLinear(codes, torch.full((out,), 2), torch.ones(out),
                                   torch.zeros(out), 8, mode, 0.1)

        net = DiscreteNet([QuantizedConv2d(linear(2, 9, "unsigned"), 1, (3, 3)), nn.ReLU(),
                           nn.Flatten(), linear(3, 72, "unsigned")])
        tmp = pathlib.Path(tempfile.mkdtemp())
        path = save_artifact(net, tmp / "small.safetensors", (1, 8, 8))
        with safe_open(str(path), framework="pt") as f:
            meta, data = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        cases = {
            "input_shape_40000": lambda h: {**h, "input_shape": [1, 40000, 40000]},
            "input_shape_20000": lambda h: {**h, "input_shape": [1, 20000, 20000]},
            "input_shape_5000": lambda h: {**h, "input_shape": [1, 5000, 5000]},
            "padding": lambda h: {**h, "ops": [{**h["ops"][0], "padding": [100000, 100000]}]
                                  + h["ops"][1:]},
            "out_features": lambda h: {**h, "ops": h["ops"][:3] + [{**h["ops"][3],
                                       "out_features": 2**40}]},
        }
        for name, edit in cases.items():
            bad = tmp / (name + ".safetensors")
            save_file(data, str(bad), metadata={"bayesq": json.dumps(edit(json.loads(meta["bayesq"])))})
            try:
                load_artifact(bad)
                print(name, "LOADED")
            except ValueError as err:
                print(name, "ValueError", err)
            except Exception as err:
                print(name, type(err).__name__, err)
        print("maxrss_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        """
    )
    result = run_limited(code, limit_gib=4)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.strip().splitlines())
    field = {"input_shape_5000": "op 0 (conv2d): its im2col", "out_features": "out_features"}
    for name in ("input_shape_40000", "input_shape_20000", "input_shape_5000", "padding",
                 "out_features"):  # fmt: skip
        assert lines[name].startswith("ValueError ") and f"{name}.safetensors: " in lines[name]
        assert field.get(name, name.split("_")[0]) in lines[name], lines[name]
    assert int(lines["maxrss_kib"]) < 1_000_000  # well under 1 GB: torch's import, no more


def test_save_writes_atomically(lenet5_artifact, tmp_path, monkeypatch):
    discrete, _ = lenet5_artifact
    path = save_artifact(discrete, tmp_path / "net.safetensors", (1, 28, 28))
    before = path.read_bytes()

    def broken_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(artifact, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_artifact(discrete, path, (1, 28, 28))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["net.safetensors"]


def test_a_net_that_does_not_chain_is_not_saved(tmp_path):
    net = _mlp(0.5, 1, sizes=(64, 8, 3))
    with pytest.raises(ValueError, match=r"x.safetensors: op 1 \(linear\): needs \(64,\)"):
        save_artifact(net, tmp_path / "x.safetensors", (1, 9, 9))
    assert not (tmp_path / "x.safetensors").exists()
    with pytest.raises(TypeError, match="input_shape must be a tuple of ints"):
        save_artifact(net, tmp_path / "x.safetensors", (1, 8.0, 8))
    with pytest.raises(TypeError, match="net must be a DiscreteNet"):
        save_artifact([net], tmp_path / "x.safetensors", (1, 8, 8))
    with pytest.raises(ValueError, match="x.safetensors: not a readable"):
        header_bytes(tmp_path / "x.safetensors")


def test_sign_nets_round_trip(tmp_path):
    codes = torch.where(torch.rand(5, 7) < 0.5, -1, 1).to(torch.int8)
    pm1 = QuantizedLinear(codes, torch.ones(5, dtype=torch.int64), torch.ones(5),
                          torch.zeros(5), 1, "pm1", 1.0, weight_mode="pm1")  # fmt: skip
    first = QuantizedLinear(torch.zeros(7, 4, dtype=torch.int8), torch.zeros(7, dtype=torch.int64),
                            torch.ones(7), torch.randn(7), 8, "signed", 0.1)  # fmt: skip
    net = DiscreteNet([first, Sign(), pm1])
    loaded, _ = load_artifact(save_artifact(net, tmp_path / "s.safetensors", (4,)))
    x = torch.randn(6, 4)
    assert torch.equal(loaded(x), net(x))
    assert isinstance(loaded.ops[1], Sign) and loaded.layers[1].weight_mode == "pm1"


def test_dropping_dead_units_shrinks_a_sparse_file(tmp_path):
    """A 99 % pruned MLP: most hidden units are read by no kept weight, so their biases (a
    float each, the largest part of such a file) need not be stored."""
    net = _mlp(0.01, 2)
    lean = net.without_dead_units()
    before, after = storage_bits(net), storage_bits(lean)
    assert after["biases"] < before["biases"] / 2 and after["total"] < 0.8 * before["total"]
    path = save_artifact(lean, tmp_path / "lean.safetensors", (1, 28, 28))
    assert path.stat().st_size <= 1.1 * after["total"] / 8 + HEADER_ALLOWANCE
    loaded, _ = load_artifact(path)
    x = torch.rand(5, 1, 28, 28)
    assert torch.equal(loaded(x), net(x))
