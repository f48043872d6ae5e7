"""Checkpoints round-trip nested state without pickle and refuse malformed files."""

import pytest
import torch
from safetensors.torch import save_file

from bayesq.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def test_round_trip(tmp_path):
    opt = torch.optim.Adam([torch.nn.Parameter(torch.randn(3))])
    opt.param_groups[0]["params"][0].grad = torch.ones(3)
    opt.step()
    state = {
        "net": {"w": torch.randn(2, 3), "b": torch.zeros(2)},
        "optimizer": opt.state_dict(),
        "epoch": 4,
        "history": [{"loss": 1.5}, {"loss": 1.2}],
        "name": "x",
        "none": None,
    }
    save_checkpoint(tmp_path / "c.ckpt", state)
    loaded = load_checkpoint(tmp_path / "c.ckpt")
    torch.testing.assert_close(loaded["net"]["w"], state["net"]["w"])
    assert loaded["epoch"] == 4 and loaded["history"][1]["loss"] == 1.2 and loaded["none"] is None
    restored = torch.optim.Adam([torch.nn.Parameter(torch.randn(3))])
    restored.load_state_dict(loaded["optimizer"])  # int keys survive
    assert 0 in loaded["optimizer"]["state"]


def test_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "missing.ckpt")
    good = tmp_path / "good.ckpt"
    save_checkpoint(good, {"a": torch.ones(100)})
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:-50])
    with pytest.raises(CheckpointError, match="safetensors"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00" * 7)
    with pytest.raises(CheckpointError):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.ckpt"
    save_file({"a": torch.ones(1)}, str(foreign), metadata={"format": "other"})
    with pytest.raises(CheckpointError, match="not a bayesq checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(TypeError, match="cannot store"):
        save_checkpoint(tmp_path / "x.ckpt", {"f": object()})
