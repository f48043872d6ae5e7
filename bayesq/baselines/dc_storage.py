"""Deep Compression's storage accounting: relative indices, filler zeros, and a layer's bits.

Han, Mao, Dally (ICLR 2016) store a pruned, weight-shared layer as (Sec. 2 / Fig. 2, Sec. 3,
Sec. 4, Tables 1-5): a cluster index per kept weight, the kept weights' positions as relative
indices (:func:`relative_indices`, gaps of `index_bits` bits: 8 for conv, 5 for fc layers, a
filler zero where a gap overflows), a float32 codebook and float32 biases; indices and
positions Huffman coded (`bayesq.baselines.huffman`) or fixed width. :func:`layer_storage`
counts a layer's bits exactly, :func:`net_storage` sums the layers and gives the compression
rate as the paper reports it (dense float32 bytes / compressed bytes). The pruning and the
k-means sharing that produce the inputs are in `bayesq.baselines.deep_compression`, which
re-exports these functions.

The relative index runs over the whole layer flattened row-major ((out, in) or (out, in, kh,
kw)), as in the authors' released AlexNet decoder, which rebuilds the positions as
cumsum(index + 1) - 1 over the layer; the paper's Fig. 2 draws the same stream. No CSR row
pointers are stored (the release stores none).

>>> relative_indices(np.array([0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1], dtype=bool), 3).tolist()
[1, 7, 0]
>>> positions_from_relative(np.array([1, 7, 0])).tolist()  # 9 is a filler zero
[1, 9, 10]

References: S. Han, H. Mao, W. J. Dally, "Deep Compression: Compressing Deep Neural Networks with
Pruning, Trained Quantization and Huffman Coding", ICLR 2016.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..checks import integer, tensor
from .huffman import huffman_encode

__all__ = [
    "COUNT_BITS",
    "FLOAT_BITS",
    "MAX_INDEX_BITS",
    "layer_storage",
    "net_storage",
    "positions_from_relative",
    "relative_indices",
]

MAX_INDEX_BITS = 16  # relative indices of up to 16 bits (the paper: 8 for conv, 5 for fc)
FLOAT_BITS = 32  # codebook entries, biases and the dense baseline are float32
COUNT_BITS = 32  # the per-layer entry count (the release's uint32 nz_num)


def _weight(name: str, w) -> torch.Tensor:
    w = tensor(name, w)
    if not torch.is_floating_point(w):
        raise TypeError(f"{name} must be a floating-point tensor, got {w.dtype}")
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"{name} contains NaN or infinity")
    return w


def _bool_mask(name: str, mask, shape: torch.Size) -> torch.Tensor:
    mask = tensor(name, mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor, got {mask.dtype}")
    if mask.shape != shape:
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, the weights {tuple(shape)}")
    return mask


def _assignment(assignment, k: int) -> torch.Tensor:
    assignment = tensor("assignment", assignment)
    if assignment.dtype != torch.int64:
        raise TypeError(f"assignment must be an int64 tensor, got {assignment.dtype}")
    if assignment.numel() and (int(assignment.min()) < -1 or int(assignment.max()) >= k):
        raise ValueError(f"assignment must lie in -1 (pruned) .. {k - 1}")
    return assignment


def _flat_mask(mask) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
        raise TypeError(f"mask must be a bool tensor or array, got {getattr(mask, 'dtype', mask)}")
    return mask.reshape(-1)


def _index_bits(index_bits) -> int:
    index_bits = integer("index_bits", index_bits)
    if index_bits > MAX_INDEX_BITS:
        raise ValueError(f"index_bits must be <= {MAX_INDEX_BITS}, got {index_bits}")
    return index_bits


def relative_indices(mask, index_bits: int) -> np.ndarray:
    """The relative index of a keep-mask (Deep Compression Sec. 2, Fig. 2), int64 entries.

    mask: bool tensor or array, read flattened row-major. Each kept weight is stored as the
    number of places skipped since the previous entry (the first: since the start), in
    `index_bits` bits, so at most E = 2^index_bits - 1. A gap g > E gets floor(g / 2^index_bits)
    filler entries before it: each is a zero weight placed after skipping E places, which
    stores E and, like any weight, a cluster index (the paper's Fig. 2: where the span from
    one entry to the next exceeds 2^3, "we add a filler zero"). Pruned
    places after the last kept weight need no entry. Decode with
    :func:`positions_from_relative`; the paper uses 8 bits for conv and 5 for fc layers.
    """
    return _relative(mask, _index_bits(index_bits))[0]


def _relative(mask, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The relative index entries and where in them the kept weights are (the rest: fillers)."""
    gaps = np.diff(np.flatnonzero(_flat_mask(mask)), prepend=-1) - 1
    span = 1 << index_bits
    fillers = gaps // span
    entries = np.full(gaps.size + int(fillers.sum()), span - 1, dtype=np.int64)
    real = np.cumsum(fillers + 1) - 1  # each kept weight comes after its fillers
    entries[real] = gaps % span
    return entries, real


def positions_from_relative(gaps: np.ndarray) -> np.ndarray:
    """Flat positions (int64) of every entry of a relative index, fillers included:
    cumsum(gaps + 1) - 1, as the authors' released decoder rebuilds a layer. The fillers are
    the positions a kept weight does not hold (their cluster index decodes to 0)."""
    if not isinstance(gaps, np.ndarray) or not np.issubdtype(gaps.dtype, np.integer):
        raise TypeError(f"gaps must be an integer numpy array, got {type(gaps).__name__}")
    if gaps.ndim != 1:
        raise ValueError(f"gaps must be 1-D, got shape {gaps.shape}")
    if gaps.size and int(gaps.min()) < 0:
        raise ValueError("gaps must be >= 0")
    return np.cumsum(gaps.astype(np.int64) + 1) - 1


def layer_storage(
    centroids: torch.Tensor,
    assignment: torch.Tensor,
    mask: torch.Tensor,
    index_bits: int,
    huffman: bool = True,
    bias: int | torch.Tensor | None = None,
) -> dict:
    """Bits of one layer stored the Deep Compression way (Sec. 2, 3, 4; Tables 1-5).

    Entries are the kept weights and the filler zeros of :func:`relative_indices`. Counted:
    ``cluster_bits``: each entry's cluster index, Huffman coded (payload + table of
    `bayesq.baselines.huffman`) or in ``cluster_width`` = max(1, ceil(log2 alphabet)) bits. A
    filler takes the index of a centroid that is exactly 0.0 (:func:`kmeans_share` with
    ``zero_centroid=True``) or, when the codebook has none, one extra symbol k meaning 0 (the
    alphabet grows to k + 1). ``position_bits``: the relative indices, Huffman coded or
    `index_bits` each. ``codebook_bits``: 32 per centroid; ``bias_bits``: 32 per bias (`bias`: a
    count or the bias tensor; None: one per output unit, assignment.shape[0]); ``header_bits``:
    the 32-bit entry count. ``dense_bits``: 32 per weight and bias, the float32 layer;
    ``compression`` = dense_bits / total_bits. All counts are ints except ``compression``.
    """
    centroids = _weight("centroids", centroids)
    if centroids.ndim != 1 or centroids.numel() == 0:
        raise ValueError(f"centroids must be 1-D and non-empty, got {tuple(centroids.shape)}")
    k = centroids.numel()
    assignment = _assignment(assignment, k)
    mask = _bool_mask("mask", mask, assignment.shape)
    if not torch.equal(mask, assignment >= 0):
        raise ValueError("mask must be True exactly where assignment >= 0")
    index_bits = _index_bits(index_bits)
    if not isinstance(huffman, bool):
        raise TypeError(f"huffman must be True or False, got {type(huffman).__name__}")
    if bias is None:
        bias = assignment.shape[0] if assignment.ndim else 1
    bias = bias.numel() if isinstance(bias, torch.Tensor) else integer("bias", bias, minimum=0)
    gaps, real = _relative(mask, index_bits)
    kept_codes = assignment.reshape(-1)[mask.reshape(-1)].cpu().numpy()
    zeros = torch.nonzero(centroids == 0).reshape(-1)
    filler = int(zeros[0]) if zeros.numel() else k
    codes = np.full(gaps.size, filler, dtype=np.int64)
    codes[real] = kept_codes
    fillers = gaps.size - kept_codes.size
    alphabet = k + 1 if fillers and filler == k else k
    width = max(1, (alphabet - 1).bit_length())
    if huffman:
        cluster_bits = huffman_encode(codes, symbol_bits=width).total_bits
        position_bits = huffman_encode(gaps, symbol_bits=index_bits).total_bits
    else:
        cluster_bits, position_bits = gaps.size * width, gaps.size * index_bits
    parts = {
        "cluster_bits": cluster_bits,
        "position_bits": position_bits,
        "codebook_bits": FLOAT_BITS * k,
        "bias_bits": FLOAT_BITS * bias,
        "header_bits": COUNT_BITS,
    }
    total = sum(parts.values())
    dense = FLOAT_BITS * (assignment.numel() + bias)
    return {
        "weights": assignment.numel(),
        "kept": int(kept_codes.size),
        "fillers": int(fillers),
        "cluster_width": width,
        "index_bits": index_bits,
        **parts,
        "total_bits": total,
        "dense_bits": dense,
        "compression": dense / total,
    }


_SUMMED = (
    "weights",
    "kept",
    "fillers",
    "cluster_bits",
    "position_bits",
    "codebook_bits",
    "bias_bits",
    "header_bits",
    "total_bits",
    "dense_bits",
)


def net_storage(layers: Mapping[str, dict] | Sequence[dict]) -> dict:
    """A net's storage from its layers' :func:`layer_storage` dicts (a list, or {name: dict}).

    Sums the counts and bits, and reports as the paper's Tables 1-5 do: ``dense_bytes`` (the
    float32 net), ``total_bytes`` (the layers' bits as one stream, rounded up to a byte) and
    ``compression`` = dense_bytes / total_bytes.
    """
    if isinstance(layers, Mapping):
        layers = list(layers.values())
    if not isinstance(layers, Sequence) or not layers:
        raise ValueError("layers must be a non-empty list or mapping of layer_storage dicts")
    out = {}
    for key in _SUMMED:
        try:
            out[key] = sum(int(layer[key]) for layer in layers)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"each layer must be a layer_storage dict; missing {key!r}") from exc
    out["layers"] = len(layers)
    out["dense_bytes"] = out["dense_bits"] // 8
    out["total_bytes"] = math.ceil(out["total_bits"] / 8)
    out["compression"] = out["dense_bytes"] / out["total_bytes"]
    return out
