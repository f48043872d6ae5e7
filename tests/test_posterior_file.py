"""bayesq.posterior_file: Posterior.save / Posterior.load, one file per posterior, structure
included, trusted by no one."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bayesq.nn import posterior_of
from bayesq.posterior import Posterior
from tests.common import untrained_vnq


def _same(a: Posterior, b: Posterior) -> None:
    assert a.ops == b.ops and a.input_shape == b.input_shape and list(a.layers) == list(b.layers)
    for name, la in a.layers.items():
        lb = b.layers[name]
        for part in ("mean", "variance", "levels", "level_probs"):
            assert torch.equal(getattr(la, part), getattr(lb, part)), (name, part)
        assert (la.bias is None) == (lb.bias is None)
        assert la.bias is None or torch.equal(la.bias, lb.bias)
        assert (la.row_scale is None) == (lb.row_scale is None)
        assert la.row_scale is None or torch.equal(la.row_scale, lb.row_scale)
        assert (la.conv, la.codebook_scale, la.discrete) == (
            lb.conv,
            lb.codebook_scale,
            lb.discrete,
        )


def test_save_load_round_trip_is_exact(tmp_path):
    vnq = posterior_of(untrained_vnq("lenet5"), (1, 28, 28))
    _same(vnq, Posterior.load(vnq.save(tmp_path / "vnq.safetensors")))
    probs = torch.tensor([[[0.1, 0.2, 0.7], [1.0, 0.0, 0.0]]])
    discrete = Posterior.from_discrete(
        {"fc": {"levels": [-1.0, 0.0, 1.0], "probs": probs, "bias": None}},
        [{"kind": "layer", "name": "fc"}],
        (2,),
    )
    _same(discrete, Posterior.load(discrete.save(tmp_path / "ebp.safetensors")))
    rows = Posterior.from_discrete(
        {"fc": {"levels": [-1.0, 0.0, 1.0], "probs": probs, "bias": None, "row_scale": [0.25]}},
        [{"kind": "layer", "name": "fc"}],
        (2,),
    )
    _same(rows, Posterior.load(rows.save(tmp_path / "rows.safetensors")))


def test_load_refuses_a_bad_row_scale(tmp_path):
    probs = torch.tensor([[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]])
    path = Posterior.from_discrete(
        {"fc": {"levels": [-1.0, 0.0, 1.0], "probs": probs, "row_scale": [0.25]}},
        [{"kind": "layer", "name": "fc"}],
        (2,),
    ).save(tmp_path / "good.safetensors")
    cases = [
        (None, lambda t: {**t, "fc.row_scale": -t["fc.row_scale"]}, "row_scale must be finite"),
        (None, lambda t: {**t, "fc.row_scale": torch.ones(2)}, r"row_scale must be .*\(1,\)"),
        (None, lambda t: {k: v for k, v in t.items() if k != "fc.row_scale"}, "missing"),
        (lambda h: {**h, "layers": [{**h["layers"][0], "row_scale": 1}]}, None, "must be true"),
    ]
    for header, tensors, match in cases:
        bad = _rewrite(path, tmp_path / "bad.safetensors", header, tensors)
        with pytest.raises(ValueError, match=f"bad.safetensors: .*{match}"):
            Posterior.load(bad)


def _rewrite(path, out, header=None, tensors=None):
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["bayesq"])
        data = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    if header is not None:
        meta = header(meta)
    if tensors is not None:
        data = tensors(data)
    save_file(data, str(out), metadata={"bayesq": json.dumps(meta)})
    return out


@pytest.mark.parametrize(
    ("header", "tensors", "match"),
    [
        (lambda h: {**h, "format": "x"}, None, "not a bayesq posterior"),
        (lambda h: {**h, "version": 9}, None, "version 9"),
        (lambda h: {**h, "ops": h["ops"][1:]}, None, "ops name layers"),
        (lambda h: {**h, "input_shape": [1, 20, 20]}, None, "needs"),
        (lambda h: {**h, "ops": [{"kind": "gelu"}, *h["ops"]]}, None, "unknown kind"),
        (lambda h: {**h, "layers": h["layers"][:-1]}, None, "unexpected"),
        (None, lambda t: {**t, "fc1.variance": -t["fc1.variance"]}, "variance"),
        (None, lambda t: {**t, "fc1.mean": t["fc1.mean"].double()}, "float32"),
        (None, lambda t: {**t, "fc1.levels": t["fc1.levels"].flip(0)}, "increasing"),
        (None, lambda t: {**t, "fc1.level_probs": t["fc1.level_probs"] * 2}, r"\[0, 1\]"),
        (None, lambda t: {k: v for k, v in t.items() if k != "fc2.bias"}, "missing"),
        (
            lambda h: {
                **h,
                "layers": [
                    {**h["layers"][0], "conv": {"stride": [0, 1], "padding": [0, 0]}},
                    *h["layers"][1:],
                ],
            },
            None,
            "stride",
        ),
    ],
)
def test_load_refuses_bad_files_naming_them(tmp_path, header, tensors, match):
    path = posterior_of(untrained_vnq("lenet5"), (1, 28, 28)).save(tmp_path / "good.safetensors")
    bad = _rewrite(path, tmp_path / "bad.safetensors", header, tensors)
    with pytest.raises(ValueError, match=f"bad.safetensors: .*{match}"):
        Posterior.load(bad)


def test_load_refuses_what_is_not_a_posterior(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00" * 20)
    with pytest.raises(ValueError, match="junk.safetensors"):
        Posterior.load(junk)
    with pytest.raises(ValueError, match="no such posterior file"):
        Posterior.load(tmp_path / "missing.safetensors")
