"""The discrete-net artifact: quantize a posterior, save, load, same logits; bad files raise."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bayesq import bits
from bayesq.artifact import load_artifact, save_artifact
from bayesq.posterior import Posterior
from bayesq.quantize import quantize_posterior
from tests.common import untrained_vnq


@pytest.fixture(scope="module")
def lenet5_artifact(tmp_path_factory):
    post = Posterior.from_vnq(untrained_vnq("lenet5"), (1, 28, 28))
    widths = bits.allocate(post, 3.0)
    discrete = quantize_posterior(post, widths, torch.rand(32, 1, 28, 28), act_bits=6)
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


def test_quantized_posterior_follows_the_row_widths(lenet5_artifact):
    discrete, _ = lenet5_artifact
    for layer in discrete.layers:
        linear = getattr(layer, "linear", layer)
        top = torch.where(linear.row_bits > 0, 2 ** (linear.row_bits - 1).clamp(min=0) - 1, 0)
        assert bool((linear.weight_codes.abs() <= top[:, None]).all())


def _rewrite(src, dst, tensors=None, header=None):
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        data = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    data = tensors(data) if tensors else data
    if header is not None:
        meta["bayesq"] = json.dumps(header(json.loads(meta["bayesq"])))
    save_file(data, str(dst), metadata=meta)
    return dst


def test_bad_files_raise_clear_errors(lenet5_artifact, tmp_path):
    _, path = lenet5_artifact
    raw = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="truncated.safetensors: not a readable"):
        load_artifact(truncated)
    with pytest.raises(ValueError, match="no such"):
        load_artifact(tmp_path / "missing.safetensors")

    def version(h):
        return {**h, "version": 99}

    with pytest.raises(ValueError, match="version 99"):
        load_artifact(_rewrite(path, tmp_path / "v.safetensors", header=version))

    def other_format(h):
        return {**h, "format": "something-else"}

    with pytest.raises(ValueError, match="not a bayesq"):
        load_artifact(_rewrite(path, tmp_path / "f.safetensors", header=other_format))

    def drop_bias(t):
        return {k: v for k, v in t.items() if k != "ops.0.bias"}

    with pytest.raises(ValueError, match="ops.0.bias.*missing"):
        load_artifact(_rewrite(path, tmp_path / "b.safetensors", tensors=drop_bias))

    def shrink_codes(t):
        return {**t, "ops.0.codes": t["ops.0.codes"][:-1].contiguous()}

    with pytest.raises(ValueError, match="out_features"):
        load_artifact(_rewrite(path, tmp_path / "s.safetensors", tensors=shrink_codes))

    def wide_codes(t):  # a code of 5 in a row of 2 bits (codes -1 .. 1)
        codes, widths = t["ops.0.codes"].clone(), t["ops.0.row_bits"].clone()
        codes[0, 0], widths[0] = 5, 2
        return {**t, "ops.0.codes": codes, "ops.0.row_bits": widths}

    with pytest.raises(ValueError, match="outside their row's width"):
        load_artifact(_rewrite(path, tmp_path / "w.safetensors", tensors=wide_codes))

    def nan_scale(t):
        scale = t["ops.0.row_scale"].clone()
        scale[0] = float("nan")
        return {**t, "ops.0.row_scale": scale}

    with pytest.raises(ValueError, match="row_scale"):
        load_artifact(_rewrite(path, tmp_path / "n.safetensors", tensors=nan_scale))

    def smaller_images(h):  # the convolutions then hand fc1 the wrong number of features
        return {**h, "input_shape": [1, 20, 20]}

    with pytest.raises(ValueError, match="input must be"):
        load_artifact(_rewrite(path, tmp_path / "c.safetensors", header=smaller_images))
    not_json = tmp_path / "j.safetensors"
    save_file({"x": torch.zeros(1)}, str(not_json), metadata={"bayesq": "{not json"})
    with pytest.raises(ValueError, match="JSON header"):
        load_artifact(not_json)
