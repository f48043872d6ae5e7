"""Quantizers: small pure functions from real weights to grid points or codes.

Each names its scheme. They hold no state, so trainers, the analysis module and the artifact
writer can share them.
"""

from __future__ import annotations

import torch

__all__ = ["codebook_codes", "snap_to_codebook"]


def codebook_codes(
    values: torch.Tensor, scale: torch.Tensor | float, num_levels: int
) -> torch.Tensor:
    """Index of the nearest value of the symmetric codebook scale * [-m, ..., m] (num_levels = 2m+1).

    Returns int8 codes in [-m, m], the shape of `values`. Ties round half to even (torch.round).

    >>> codebook_codes(torch.tensor([-0.31, 0.04, 0.12, 0.9]), 0.2, 3).tolist()
    [-1, 0, 1, 1]
    """
    if num_levels < 1 or num_levels % 2 == 0 or num_levels > 255:
        raise ValueError(f"num_levels must be an odd integer in [1, 255], got {num_levels}")
    scale = torch.as_tensor(scale, dtype=values.dtype, device=values.device)
    if not bool((scale > 0).all()) or not bool(torch.isfinite(scale).all()):
        raise ValueError(f"codebook scale must be finite and > 0, got {scale}")
    if not bool(torch.isfinite(values).all()):
        raise ValueError("values to quantize contain NaN or infinity")
    half = (num_levels - 1) // 2
    return torch.round(values / scale).clamp(-half, half).to(torch.int8)


def snap_to_codebook(
    values: torch.Tensor,
    scale: torch.Tensor | float,
    num_levels: int,
    prune_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """values snapped to the nearest codebook value, and set to 0 where `prune_mask` is True.

    This is VNQ's post-training quantization (Achterhold et al. 2018, Sec. 3.3): weights whose
    posterior makes 0 plausible (log alpha >= 3) are pruned, the rest go to the nearest level.
    """
    codes = codebook_codes(values, scale, num_levels)
    if prune_mask is not None:
        if prune_mask.shape != values.shape:
            raise ValueError(f"prune_mask shape {tuple(prune_mask.shape)} != {tuple(values.shape)}")
        codes = codes.masked_fill(prune_mask, 0)
    return codes.to(values.dtype) * torch.as_tensor(scale, dtype=values.dtype)
