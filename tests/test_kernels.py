"""The common face of the compiled kernel module: it builds, imports, reports the CPU, counts
bits as numpy does, and bounds its thread pool."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bayesq import bitserial, kernels, vnq_kernels


def test_cpu_features_reports_booleans():
    features = kernels.cpu_features()
    assert set(features) == {"avx2", "avx512f", "avx512vpopcntdq"}
    assert all(isinstance(v, bool) for v in features.values())


@given(st.lists(st.integers(0, 2**64 - 1), max_size=130))
def test_popcount_matches_python(values):
    words = np.array(values, dtype=np.uint64)
    assert kernels.popcount(words) == sum(bin(v).count("1") for v in values)


def test_popcount_rejects_bad_input():
    with pytest.raises(ValueError, match="uint64"):
        kernels.popcount(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="1-D"):
        kernels.popcount(np.zeros((2, 2), dtype=np.uint64))


def test_each_kernel_name_lives_in_one_module():
    """The split of the kernels' Python face: every public name is defined in the module that
    exports it, and no module re-exports another's."""
    modules = (kernels, vnq_kernels, bitserial)
    exported = [name for m in modules for name in m.__all__]
    assert len(exported) == len(set(exported))
    for m in modules:
        for name in m.__all__:
            obj = getattr(m, name)
            if callable(obj):
                assert obj.__module__ == m.__name__, (m.__name__, name)


# --- threads are bounded, and so is the native pool --------------------------------------------

POOL_CHECK = """
import re
import numpy as np
from bayesq import _kernels, bitserial, kernels

def threads():
    with open("/proc/self/status") as f:
        return int(re.search(r"^Threads:\\s+(\\d+)", f.read(), re.M).group(1))

before = threads()
rng = np.random.default_rng(0)
a = rng.integers(0, 256, (400, 512)).astype(np.uint8)   # 400 activation rows: work for 400
w = rng.integers(-128, 128, (400, 512)).astype(np.int8)  # threads at 2^15 word ops each
pa, pw = bitserial.pack_activations(a, 8), bitserial.pack_weights(w, 8)
want = a.astype(np.int64) @ w.astype(np.int64).T
np.testing.assert_array_equal(bitserial.bitserial_matmul_int(pa, pw, threads=kernels.MAX_THREADS), want)
out = np.empty((400, 400), np.int32)
for asked in (10_000, 2**31 - 1):  # the bindings called directly, past the Python check
    _kernels.bitserial_gemm(pa.planes, pa.plane_offsets, pa.row_sums, 0, pw.planes,
                            pw.plane_offsets, pw.row_sums, 1, 512, out, None, None, None, None,
                            asked)
    np.testing.assert_array_equal(out, want)
x = rng.normal(size=(4096, 512)).astype(np.float32)
one = bitserial.quantize_activations(x, 0.1, threads=1)
many = bitserial.quantize_activations(x, 0.1, threads=kernels.MAX_THREADS)
planes, sums = np.empty_like(one.planes), np.empty_like(one.row_sums)
scale = np.array([0.1], np.float32)
_kernels.quantize_pack_bit_planes(x, scale, 8, 0, planes, sums, None, 10_000)  # 64 tasks
for got in (many.planes, planes):
    np.testing.assert_array_equal(got, one.planes)
mean = rng.normal(size=2 * 65536 * 24).astype(np.float32)  # 24 blocks of noise pairs
var = rng.uniform(0, 1, mean.size).astype(np.float32)
outs = [np.empty_like(mean) for _ in range(4)]
assert not _kernels.lrt_sample(mean, var, outs[0], outs[1], 7, 1e-8, None, 1)
assert not _kernels.lrt_sample(mean, var, outs[2], outs[3], 7, 1e-8, None, 10_000)
np.testing.assert_array_equal(outs[0], outs[2])
np.testing.assert_array_equal(outs[1], outs[3])
print(before, threads(), kernels.MAX_THREADS)
"""


def test_the_native_pool_never_grows_beyond_max_threads():
    """bitserial_matmul(threads=10000) left 10,001 threads in the process: the pool kept one
    worker per thread ever asked for. Now any request, even straight to the bindings, runs on at
    most MAX_THREADS threads (the caller's and MAX_THREADS - 1 workers) and the results are
    exact."""
    done = subprocess.run(
        [sys.executable, "-c", POOL_CHECK],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr
    before, after, cap = map(int, done.stdout.split())
    assert after - before <= cap - 1
