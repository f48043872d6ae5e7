"""Deep Compression: magnitude pruning, k-means weight sharing, and the paper's storage accounting.

The three stages of Han, Mao, Dally (ICLR 2016), the last one in `bayesq.baselines.huffman`:

1. **Pruning** (Sec. 2; the method of Han, Pool, Tran, Dally, NeurIPS 2015): a layer keeps the
   weights with |w| > quality * std(w) (:func:`magnitude_masks`; or a target share of zeros,
   ``sparsity=``), the pruned ones are held at 0 while the rest retrain (:func:`apply_masks_`),
   and pruning is iterated by calling both again with a larger quality.
2. **Trained quantization** (Sec. 3): the kept weights of a layer are clustered into 2^bits
   shared values by 1-D k-means (:func:`kmeans_share`, Eq. 2) from a linear, random (Forgy) or
   density initialisation (:func:`init_centroids`, Sec. 3.2 / Fig. 4); retraining then updates
   the centroids by the summed gradients of their weights (Eq. 3: :func:`centroid_grad`,
   :class:`SharedWeight`).
3. **Storage** (Sec. 2 / Fig. 2, Sec. 4, Tables 1-5): relative indices with filler zeros, the
   bits of a layer and the net's compression rate, in `bayesq.baselines.dc_storage`
   (:func:`relative_indices`, :func:`positions_from_relative`, :func:`layer_storage`,
   :func:`net_storage`, re-exported here).

>>> w = torch.tensor([[0.9, -0.05, 0.4], [-0.7, 0.02, 0.45]])
>>> masks = magnitude_masks({"fc": w}, quality=0.5)  # std 0.499: keep |w| > 0.249
>>> masks["fc"].tolist()
[[True, False, True], [True, False, True]]
>>> centroids, assignment = kmeans_share(w, masks["fc"], bits=1)
>>> centroids.tolist(), assignment.tolist()
([-0.699999988079071, 0.5833333134651184], [[1, -1, 1], [0, -1, 1]])

References: S. Han, H. Mao, W. J. Dally, "Deep Compression: Compressing Deep Neural Networks with
Pruning, Trained Quantization and Huffman Coding", ICLR 2016; S. Han, J. Pool, J. Tran, W. J.
Dally, "Learning both Weights and Connections for Efficient Neural Networks", NeurIPS 2015.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import nn

from ..checks import integer, number
from .dc_storage import (
    MAX_INDEX_BITS,
    _assignment,
    _bool_mask,
    _weight,
    layer_storage,
    net_storage,
    positions_from_relative,
    relative_indices,
)

__all__ = [
    "INITS",
    "MAX_INDEX_BITS",
    "MAX_SHARE_BITS",
    "PruningHooks",
    "SharedWeight",
    "apply_masks_",
    "centroid_grad",
    "init_centroids",
    "kmeans_share",
    "layer_storage",
    "magnitude_masks",
    "net_storage",
    "positions_from_relative",
    "prunable_weights",
    "relative_indices",
]

INITS = ("linear", "random", "density")
MAX_SHARE_BITS = 16  # codebooks of up to 2^16 shared values (the paper uses 2..8 bits)


# --- 1. pruning -------------------------------------------------------------------------------
def _per_layer(name: str, value, names) -> dict:
    """A number per layer from one number or a mapping that names exactly these layers."""
    if isinstance(value, Mapping):
        if set(value) != set(names):
            missing, extra = sorted(set(names) - set(value)), sorted(set(value) - set(names))
            raise ValueError(f"{name} must name every layer: missing {missing}, unknown {extra}")
        return {k: number(f"{name}[{k!r}]", value[k]) for k in names}
    return dict.fromkeys(names, number(name, value))


def magnitude_masks(
    weights: Mapping[str, torch.Tensor],
    quality: float | Mapping[str, float] | None = None,
    *,
    sparsity: float | Mapping[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """Boolean keep-masks {name: mask (the weight's shape)}: magnitude pruning, layer by layer.

    With ``quality`` q (one number or one per layer, >= 0): keep |w| > q * std(w) (Han et al.
    2015, Sec. 4: "a quality parameter multiplied by the standard deviation of a layer's weights"; a
    weight exactly at the threshold is pruned). std is the population standard deviation of all
    of the layer's entries as given, zeros included: that is the tensor a retrained layer holds,
    so iterating (prune, retrain, prune again with a larger q) keeps shrinking the layer, and a
    weight already at 0 is never kept. With ``sparsity`` s in [0, 1] instead: prune the round(s *
    n) weights of least |w| (Python's round; equal magnitudes pruned in flat row-major order)
    and every weight that is already 0, so a layer ends with a zero share >= s.
    """
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be a mapping name -> tensor, got {type(weights).__name__}")
    if (quality is None) == (sparsity is None):
        raise ValueError("give exactly one of quality= and sparsity=")
    ws = {k: _weight(f"weights[{k!r}]", w).detach() for k, w in weights.items()}
    for k, w in ws.items():
        if w.numel() == 0:
            raise ValueError(f"weights[{k!r}] is empty")
    masks = {}
    if quality is not None:
        for k, q in _per_layer("quality", quality, list(ws)).items():
            if q < 0:
                raise ValueError(f"quality for {k!r} must be >= 0, got {q}")
            w = ws[k].double()
            masks[k] = w.abs() > q * w.std(correction=0)
        return masks
    for k, s in _per_layer("sparsity", sparsity, list(ws)).items():
        if not 0.0 <= s <= 1.0:
            raise ValueError(f"sparsity for {k!r} must lie in [0, 1], got {s}")
        flat = ws[k].reshape(-1)
        order = torch.sort(flat.abs(), stable=True).indices
        keep = torch.ones_like(flat, dtype=torch.bool)
        keep[order[: round(s * flat.numel())]] = False
        masks[k] = (keep & (flat != 0)).reshape(ws[k].shape)
    return masks


@dataclasses.dataclass
class PruningHooks:
    """The pruned weights of :func:`apply_masks_`: gradient hooks that zero their gradients,
    and :meth:`reapply` to zero the weights again after each optimizer step."""

    weights: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    handles: list

    @torch.no_grad()
    def reapply(self) -> None:
        """Zero the pruned weights in place. Call after every optimizer step: a zero gradient
        does not keep a weight at 0 under momentum or Adam state from before pruning."""
        for k, w in self.weights.items():
            w.masked_fill_(~self.masks[k], 0.0)

    def remove(self) -> None:
        """Remove the gradient hooks (before applying a new round of masks)."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def apply_masks_(
    module_weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
) -> PruningHooks:
    """Zero the pruned weights in place and keep them at zero while the net retrains.

    ``module_weights``: {name: parameter} (e.g. :func:`prunable_weights`), ``masks``: {name:
    bool keep-mask of that shape} for some or all of them. Does both of the ways a pruned
    weight is held at 0 (Han et al. 2015, Sec. 3.3-3.4: the pruned connections are removed, the
    kept ones retrain from their values): a
    gradient hook sets its gradient to 0 (so gradient clipping and the optimizer see none), and
    the returned :class:`PruningHooks` has ``reapply()``, which the training loop calls after
    each optimizer step (momentum, Adam moments or weight decay could move a weight whose
    gradient is 0). Iterative pruning: ``hooks.remove()``, then new masks and apply_masks_ again.
    """
    if not isinstance(module_weights, Mapping) or not isinstance(masks, Mapping):
        raise TypeError("module_weights and masks must be mappings name -> tensor")
    unknown = sorted(set(masks) - set(module_weights))
    if unknown:
        raise ValueError(f"masks name weights that module_weights lacks: {unknown}")
    chosen, held = {}, {}
    for k, mask in masks.items():
        w = _weight(f"module_weights[{k!r}]", module_weights[k])
        held[k] = _bool_mask(f"masks[{k!r}]", mask, w.shape).to(w.device)
        chosen[k] = w
    hooks = PruningHooks(chosen, held, [])
    hooks.reapply()
    for k, w in chosen.items():
        if w.requires_grad:
            hooks.handles.append(w.register_hook(lambda g, keep=held[k]: g.masked_fill(~keep, 0)))
    return hooks


def prunable_weights(net: nn.Module) -> dict[str, nn.Parameter]:
    """{"<module>.weight": weight} of every nn.Linear and nn.Conv1d/2d/3d inside `net` (the
    layers Deep Compression prunes and shares; biases are kept dense)."""
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return {
        f"{name}.weight" if name else "weight": m.weight
        for name, m in net.named_modules()
        if isinstance(m, kinds)
    }


# --- 2. trained quantization ------------------------------------------------------------------
def init_centroids(
    values: torch.Tensor, k: int, init: str = "linear", generator: torch.Generator | None = None
) -> torch.Tensor:
    """k initial centroids (float64, ascending) for the 1-D weights `values` (Sec. 3.2, Fig. 4).

    "linear": k points evenly spaced over [min, max] of the values, ends included (the paper's
    best: the rare large weights keep centroids of their own). "density": the paper's
    horizontal lines through the CDF at evenly spaced heights; we take the heights (i + 1/2) / k,
    i = 0..k-1 (equal-mass cells, the ends excluded, where the paper leaves the exact heights
    open) and the centroid is the least value v with empirical CDF(v) >= that height. "random"
    (Forgy): k distinct values drawn by `generator` (with n < k values, all of them, repeated).
    """
    k = integer("k", k)
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    v = _weight("values", values).detach().reshape(-1).double()
    n = v.numel()
    if n == 0:
        raise ValueError("values is empty: no centroids to initialise")
    if init == "linear":
        return torch.linspace(float(v.min()), float(v.max()), k, dtype=torch.float64)
    if init == "density":
        heights = torch.arange(k, dtype=torch.int64)  # ceil((2i + 1) n / 2k) - 1, in integers
        rank = ((2 * heights + 1) * n + 2 * k - 1) // (2 * k) - 1
        return torch.sort(v).values[rank]
    picks = torch.randperm(n, generator=generator)[torch.arange(k) % n]
    return torch.sort(v[picks]).values


def _lloyd(
    values: torch.Tensor, centroids: torch.Tensor, iters: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's algorithm in 1-D on `values` (float64, sorted) from ascending `centroids`.

    In 1-D the clusters of ascending centroids are consecutive runs of the sorted values, cut
    at the midpoints between neighbours (a value exactly at a midpoint goes to the smaller
    centroid), so a step costs O(k log n): the cuts by binary search, the means by prefix sums.
    Returns the centroids (the means of the returned clusters; an empty one keeps its value)
    and the cuts (k - 1,): cluster j holds sorted values cuts[j - 1] .. cuts[j] - 1.
    """
    n = values.numel()
    prefix = torch.cat([values.new_zeros(1), torch.cumsum(values, 0)])

    def cuts(c: torch.Tensor) -> torch.Tensor:
        return torch.searchsorted(values, (c[:-1] + c[1:]) / 2, right=True)

    def means(cut: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        edges = torch.cat([cut.new_zeros(1), cut, cut.new_full((1,), n)])
        counts = edges[1:] - edges[:-1]
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        return torch.where(counts > 0, sums / counts.clamp(min=1), c)

    cut = cuts(centroids)
    for _ in range(iters):
        # the means of ordered runs are ordered; the sort only guards an empty cluster's
        # stale value against a rounding step past a neighbour
        centroids = torch.sort(means(cut, centroids)).values
        recut = cuts(centroids)
        if torch.equal(recut, cut):
            break
        cut = recut
    return means(cut, centroids), cut


def kmeans_share(
    w: torch.Tensor,
    mask: torch.Tensor,
    bits: int,
    init: str = "linear",
    iters: int = 1000,
    generator: torch.Generator | None = None,
    zero_centroid: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight sharing by 1-D k-means over a layer's kept weights (Deep Compression Sec. 3.1).

    Minimises sum_i sum_{w in c_i} |w - c_i|^2 (Eq. 2) over k = 2^bits centroids by Lloyd's
    algorithm (float64), from :func:`init_centroids`: assign each kept weight to its nearest
    centroid (ties to the smaller), move each centroid to its cluster's mean, and repeat until
    no assignment changes or `iters` reassignments are done; a last update makes the returned
    centroids the means of the returned clusters either way. An empty cluster keeps its centroid where it
    was (re-seeding it elsewhere would undo the linear init's spread; an unused index costs no
    code in a Huffman stream). ``zero_centroid``: centroid 0 is fixed at 0.0 and no kept weight
    is assigned to it (2^bits - 1 are clustered): the layout of the authors' released AlexNet,
    whose decoder fills pruned places with codebook[0], and what lets a filler zero of
    :func:`relative_indices` use a code of a fixed-width index (:func:`layer_storage`).

    w: float tensor, any shape; mask: bool keep-mask, w's shape. Returns centroids (2^bits,)
    in w's dtype, each the mean of its cluster (ascending apart from a reserved zero), and the
    assignment (w.shape) int64, -1 where pruned. No kept weight: centroids all 0, assignment -1.
    """
    w = _weight("w", w).detach()
    mask = _bool_mask("mask", mask, w.shape)
    bits = integer("bits", bits)
    if bits > MAX_SHARE_BITS:
        raise ValueError(f"bits must be <= {MAX_SHARE_BITS}, got {bits}")
    iters = integer("iters", iters)
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    k = 1 << bits
    assignment = torch.full(w.shape, -1, dtype=torch.int64, device=w.device)
    kept = w[mask].double().cpu()
    if kept.numel() == 0:
        return torch.zeros(k, dtype=w.dtype, device=w.device), assignment
    centroids = init_centroids(kept, k - 1 if zero_centroid else k, init, generator)
    ranked, order = torch.sort(kept, stable=True)
    centroids, cut = _lloyd(ranked, centroids, iters)
    labels = torch.empty_like(order)
    labels[order] = torch.searchsorted(cut, torch.arange(kept.numel()), right=True)
    if zero_centroid:
        centroids, labels = torch.cat([centroids.new_zeros(1), centroids]), labels + 1
    assignment[mask] = labels.to(w.device)
    return centroids.to(dtype=w.dtype, device=w.device), assignment


def centroid_grad(grad: torch.Tensor, assignment: torch.Tensor, k: int) -> torch.Tensor:
    """dL/dC_j = sum over weights with assignment j of dL/dW (Deep Compression Eq. 3), (k,).

    grad: the weights' gradient, assignment's shape; pruned weights (-1) contribute nothing.
    """
    k = integer("k", k)
    grad = _weight("grad", grad)
    assignment = _assignment(assignment, k)
    if grad.shape != assignment.shape:
        raise ValueError(f"grad shape {tuple(grad.shape)} != assignment {tuple(assignment.shape)}")
    kept = assignment >= 0
    return grad.new_zeros(k).index_add_(0, assignment[kept], grad[kept])


class SharedWeight(nn.Module):
    """A layer's weight tensor as shared centroids: W = centroids[assignment], 0 where pruned.

    ``centroids`` (k,) is the trainable parameter, ``assignment`` (the weight's shape, int64,
    -1 where pruned) a buffer. The forward pass is a gather, whose autograd backward is the
    scatter-add of Eq. 3 (Deep Compression Sec. 3.3: the centroids' gradient is the sum of the
    gradients of the weights sharing them), so any optimizer fine-tunes the centroids as the
    paper does. A layer calls it for its weight: ``F.linear(x, shared(), bias)``.
    """

    def __init__(self, centroids: torch.Tensor, assignment: torch.Tensor) -> None:
        super().__init__()
        centroids = _weight("centroids", centroids)
        if centroids.ndim != 1 or centroids.numel() == 0:
            raise ValueError(f"centroids must be 1-D and non-empty, got {tuple(centroids.shape)}")
        assignment = _assignment(assignment, centroids.numel())
        self.centroids = nn.Parameter(centroids.detach().clone())
        self.register_buffer("assignment", assignment.detach().clone())

    @classmethod
    def from_weight(cls, w: torch.Tensor, mask: torch.Tensor, bits: int, **kmeans) -> SharedWeight:
        """Cluster `w`'s kept weights by :func:`kmeans_share` (its keyword arguments pass on)."""
        return cls(*kmeans_share(w, mask, bits, **kmeans))

    def forward(self) -> torch.Tensor:
        # index -1 (pruned) reads the appended 0, which is no parameter: no gradient flows there
        return torch.cat([self.centroids, self.centroids.new_zeros(1)])[self.assignment]
