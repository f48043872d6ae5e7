"""bayesq.train: the shared training helpers."""

import platform
import subprocess
import sys

import torch

from bayesq.train import fit_deterministic, keep_freed_memory, linear_decay


def test_keep_freed_memory_takes_effect_on_glibc_and_is_idempotent():
    on_glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is on_glibc
    assert keep_freed_memory() is on_glibc


_FAULTS_OF_REALLOCATION = """
import resource, sys, torch
from bayesq.train import keep_freed_memory
if sys.argv[1] == "keep":
    keep_freed_memory()
for _ in range(10):  # reach the steady state: the heap grows over the first few
    torch.empty(10 << 20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    torch.empty(10 << 20).fill_(1.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_freed_buffers_are_reused_without_page_faults():
    """A 40 MiB buffer is above glibc's largest dynamic mmap threshold (32 MiB), so by default
    every allocation of it is a fresh mapping that faults on each of its 10,240 pages. After
    keep_freed_memory it comes from the heap and, once freed, is reused without faults. Each
    side runs in a fresh interpreter, so the heap the other tests left does not count."""
    if not keep_freed_memory():
        return  # only glibc has the knob; elsewhere there is nothing to check

    def faults(mode: str) -> int:
        run = subprocess.run(
            [sys.executable, "-c", _FAULTS_OF_REALLOCATION, mode],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(run.stdout.split()[-1])

    assert faults("default") >= 5 * 10_240  # the case the setting is for
    assert faults("keep") < 10_240


def test_linear_decay_reaches_zero_at_the_last_step():
    f = linear_decay(10)
    assert f(0) == 1.0 and abs(f(5) - 0.5) < 1e-12 and f(10) == 0.0 and f(20) == 0.0


def test_fit_deterministic_lowers_the_loss():
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    y = (x[:, 0] > 0).long()
    net = torch.nn.Sequential(torch.nn.Linear(4, 2))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    history = fit_deterministic(net, loader, epochs=20, lr=5e-2, progress=False)
    assert history[-1] < 0.5 * history[0]
