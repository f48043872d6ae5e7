"""The compiled kernel module builds, imports and agrees with numpy."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bayesq import kernels


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
