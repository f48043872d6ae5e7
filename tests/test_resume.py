"""A VNQ fit killed by SIGKILL and resumed from its checkpoint ends bit-identical to one that ran
through: the kill is real (a child process, given no chance to clean up), the comparison is
torch.equal on every parameter."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bayesq.checkpoint import load_checkpoint
from bayesq.vnq import VNQ, to_vnq_
from tests.common import toy_classification

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 4


class _Paused(TensorDataset):
    """Pauses on every example: slows a fit down enough to be killed mid-way (no number changes)."""

    def __init__(self, x, y, pause: float):
        super().__init__(x, y)
        self.pause = pause

    def __getitem__(self, i):
        if self.pause:
            time.sleep(self.pause)
        return super().__getitem__(i)


def small_fit(checkpoint, pause: float = 0.0) -> dict[str, torch.Tensor]:
    """A VNQ fit of an MLP 8-16-3 on 128 examples (4 batches per epoch, EPOCHS epochs) with a
    checkpoint, on one torch thread (the thread count can change float sums); its parameters."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, y = toy_classification(128)
        torch.manual_seed(0)
        net = to_vnq_(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)))
        data = DataLoader(
            _Paused(x, y, pause),
            batch_size=32,
            shuffle=True,
            generator=torch.Generator().manual_seed(0),
        )
        VNQ(net, num_data=128, seed=3).fit(
            data, EPOCHS, lr=1e-2, kl_warmup_epochs=2, checkpoint=checkpoint, progress=False
        )
        return net.state_dict()
    finally:
        torch.set_num_threads(threads)


def _epochs_done(checkpoint: Path) -> int:
    """Epochs in the checkpoint, 0 while there is none (a reader never sees half a file)."""
    if not checkpoint.exists():
        return 0
    return load_checkpoint(checkpoint)["epochs_done"]


def test_fit_killed_and_resumed_is_bit_identical(tmp_path):
    checkpoint = tmp_path / "killed.ckpt"
    child = subprocess.Popen(  # about 0.3 s per epoch with the pauses
        [sys.executable, "-c", f"from tests.test_resume import small_fit; small_fit({str(checkpoint)!r}, 0.002)"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while _epochs_done(checkpoint) < 1:
            assert child.poll() is None, child.communicate()[1]
            assert time.monotonic() < deadline, "the child wrote no checkpoint"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.communicate()
    assert child.returncode == -signal.SIGKILL
    stopped_at = _epochs_done(checkpoint)
    assert 1 <= stopped_at < EPOCHS  # killed in the middle of the fit

    through = small_fit(tmp_path / "through.ckpt")  # the fit that runs through
    resumed = small_fit(checkpoint)
    assert _epochs_done(checkpoint) == EPOCHS
    assert not list(tmp_path.glob(".killed.ckpt.tmp-*"))  # a save the kill cut short is cleared
    assert through.keys() == resumed.keys()
    for name in through:
        assert torch.equal(through[name], resumed[name]), f"{name} differs after the resume"
    history = load_checkpoint(tmp_path / "through.ckpt")["history"]
    assert load_checkpoint(checkpoint)["history"] == history
