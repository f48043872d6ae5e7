"""Checkpoints round-trip nested state without pickle and refuse malformed files; the random
number generators and state dicts a resumable fit stores."""

import random

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset

from bayesq.checkpoint import (
    CheckpointError,
    check_state_dict,
    load_checkpoint,
    restore_rng_states,
    rng_states,
    save_checkpoint,
)


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


def test_save_is_atomic_and_clears_stale_temporary_files(tmp_path, monkeypatch):
    """An interrupted save leaves the last checkpoint whole and no temporary file behind; a
    temporary file a killed save left is removed by the next save (bayesq.files.atomic_path)."""
    import bayesq.checkpoint as checkpoint

    path = tmp_path / "c.ckpt"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(4)})
    stale = tmp_path / ".c.ckpt.tmp-killed"  # what a save killed before its rename leaves
    stale.write_bytes(b"half a checkpoint")

    def save_half_then_die(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 10)
        raise KeyboardInterrupt  # the process is stopped in the middle of the write

    monkeypatch.setattr(checkpoint, "save_file", save_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(4)})
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.ckpt"]  # stale and new tmp gone


def _forge(path, state_json: str, tensors=None):
    save_file(tensors or {"t0": torch.ones(1)}, str(path), metadata={
        "format": "bayesq-checkpoint", "version": "1", "state": state_json
    })  # fmt: skip
    return path


@pytest.mark.parametrize(
    "state_json, message",
    [
        ('{"__dict__": [["a", false]]}', "malformed dict entry"),
        ('{"__dict__": [[["a"], false, 1]]}', "malformed dict entry"),
        ('{"__dict__": [["a", true, 1]]}', "marked as an integer is not one"),
        ('{"__dict__": 5}', "unexpected object in the header"),
        ('{"__tensor__": "t9"}', "missing tensor 't9'"),
        ('{"__tensor__": ["t0"]}', "missing tensor"),
        ('{"__list__": [[1, 2]]}', "bare list"),
        ('{"other": 1}', "unexpected object"),
        ("[" * 100_000 + "]" * 100_000, "not JSON|nested too deeply"),
        ('{"__list__": ' * 5000 + "1" + "}" * 5000, "not JSON|nested too deeply"),
        ("{nope", "not JSON"),
    ],
    ids=lambda value: value[:24] if isinstance(value, str) else None,
)
def test_malformed_headers_raise_checkpoint_error_naming_the_file(tmp_path, state_json, message):
    path = _forge(tmp_path / "forged.ckpt", state_json)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    """rng_states captures torch's, Python's, numpy's and the loader's generators; restored from
    a checkpoint file, each of them draws again exactly what it drew after the capture."""
    generator = torch.Generator().manual_seed(7)
    loader = DataLoader(TensorDataset(torch.arange(10)), shuffle=True, generator=generator)

    def draws():
        return (
            torch.rand(3).tolist(),
            random.random(),
            float(np.random.rand()),
            [int(b[0]) for b in loader],
        )

    save_checkpoint(tmp_path / "r.ckpt", {"rng": rng_states(loader)})
    first = draws()
    assert draws() != first
    restore_rng_states(load_checkpoint(tmp_path / "r.ckpt")["rng"], loader)
    assert draws() == first
    with pytest.raises(CheckpointError, match=r"x.ckpt: malformed random number generator"):
        restore_rng_states({"loader": [], "python": {}}, loader, "x.ckpt")


def test_check_state_dict_names_the_entry_that_does_not_fit():
    expected = {"w": torch.zeros(2, 3), "b": torch.zeros(2)}
    check_state_dict("c.ckpt", {"w": torch.ones(2, 3), "b": torch.ones(2)}, expected)
    with pytest.raises(CheckpointError, match=r"c.ckpt: net state .*missing \['b'\]"):
        check_state_dict("c.ckpt", {"w": torch.ones(2, 3)}, expected)
    with pytest.raises(CheckpointError, match=r"'w' is torch.float64 \(2, 3\), expected"):
        check_state_dict("c.ckpt", {"w": torch.ones(2, 3).double(), "b": torch.ones(2)}, expected)
