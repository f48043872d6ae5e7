"""Codebook snapping and pruning against an obvious loop."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bayesq.quantizers import codebook_codes, snap_to_codebook


@given(
    values=st.lists(st.floats(-3, 3, allow_nan=False), min_size=1, max_size=50),
    scale=st.floats(0.01, 2.0),
    half=st.integers(0, 4),
)
def test_snapping_picks_the_nearest_level(values, scale, half):
    num_levels = 2 * half + 1
    x = torch.tensor(values, dtype=torch.float64)
    snapped = snap_to_codebook(x, scale, num_levels)
    levels = [k * scale for k in range(-half, half + 1)]
    for v, s in zip(values, snapped.tolist(), strict=True):
        best = min(abs(v - level) for level in levels)
        assert abs(v - s) <= best + 1e-9
        assert min(abs(s - level) for level in levels) < 1e-9


def test_pruning_mask_zeroes_weights():
    x = torch.tensor([0.3, -0.3, 0.05, 0.31])
    mask = torch.tensor([True, False, False, False])
    out = snap_to_codebook(x, 0.3, 3, prune_mask=mask)
    torch.testing.assert_close(out, torch.tensor([0.0, -0.3, 0.0, 0.3]))
    codes = codebook_codes(x, 0.3, 3)
    assert codes.dtype == torch.int8 and codes.tolist() == [1, -1, 0, 1]


@pytest.mark.parametrize("bad_levels", [0, 2, 256])
def test_bad_level_counts(bad_levels):
    with pytest.raises(ValueError, match="num_levels"):
        codebook_codes(torch.zeros(2), 0.1, bad_levels)


def test_bad_scale_and_values():
    with pytest.raises(ValueError, match="scale"):
        codebook_codes(torch.zeros(2), 0.0, 3)
    with pytest.raises(ValueError, match="scale"):
        codebook_codes(torch.zeros(2), float("nan"), 3)
    with pytest.raises(ValueError, match="NaN"):
        codebook_codes(torch.tensor([0.0, float("nan")]), 0.1, 3)
    with pytest.raises(ValueError, match="prune_mask"):
        snap_to_codebook(torch.zeros(3), 0.1, 3, prune_mask=torch.zeros(2, dtype=torch.bool))
