"""Deep Compression (Han, Mao, Dally 2016; Han, Pool, Tran, Dally 2015): magnitude pruning, k-means
weight sharing with its centroid gradient (Eq. 2, Eq. 3), and the storage accounting (Fig. 2)."""

import doctest

import numpy as np
import pytest
import torch
import torch._dynamo  # noqa: F401  (torch.optim imports it on first use, 2-3 s: here, at collection)
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from bayesq.baselines import dc_storage, deep_compression
from bayesq.baselines.deep_compression import (
    SharedWeight,
    apply_masks_,
    centroid_grad,
    init_centroids,
    kmeans_share,
    layer_storage,
    magnitude_masks,
    net_storage,
    positions_from_relative,
    prunable_weights,
    relative_indices,
)

f64 = torch.float64


def test_docstring_examples_run():
    assert doctest.testmod(deep_compression, raise_on_error=True).attempted >= 3
    assert doctest.testmod(dc_storage, raise_on_error=True).attempted >= 2


# --- pruning ----------------------------------------------------------------------------------
def _unit_std_layer():
    """(4, 5): -3, -1, 1, 3 and 16 zeros: mean 0, population variance 20 / 20 = 1 exactly."""
    w = torch.zeros(20)
    w[[2, 7, 11, 19]] = torch.tensor([-3.0, -1.0, 1.0, 3.0])
    return w.reshape(4, 5)


def test_quality_threshold_is_quality_times_the_layer_std():
    w = _unit_std_layer()
    keep = magnitude_masks({"fc": w}, quality=1.0)["fc"].reshape(-1)
    # threshold 1 * 1: |w| = 3 kept; |w| = 1 sits on the threshold and is pruned (strict >)
    assert torch.nonzero(keep).reshape(-1).tolist() == [2, 19]
    keep = magnitude_masks({"fc": w}, quality=0.5)["fc"].reshape(-1)
    assert torch.nonzero(keep).reshape(-1).tolist() == [2, 7, 11, 19]
    # quality 0: every nonzero weight is kept, a zero never is
    assert magnitude_masks({"fc": w}, quality=0.0)["fc"].sum() == 4
    assert not magnitude_masks({"z": torch.zeros(3, 3)}, quality=0.0)["z"].any()


def test_quality_per_layer():
    w = _unit_std_layer()
    masks = magnitude_masks({"a": w, "b": 2 * w}, quality={"a": 1.0, "b": 0.5})
    assert masks["a"].sum() == 2 and masks["b"].sum() == 4  # b: std 2, threshold 1 < 2
    assert masks["a"].dtype == torch.bool and masks["a"].shape == (4, 5)


def test_sparsity_prunes_the_smallest_share_ties_in_flat_order():
    w = torch.tensor([[0.5, -0.1, 0.3], [-0.3, 0.0, 2.0]])
    # round(0.5 * 6) = 3 pruned: 0.0, -0.1, then the first of the tied 0.3 / -0.3
    keep = magnitude_masks({"fc": w}, sparsity=0.5)["fc"]
    assert keep.tolist() == [[True, False, False], [True, False, True]]
    assert magnitude_masks({"fc": w}, sparsity=0.0)["fc"].sum() == 5  # the zero stays pruned
    assert not magnitude_masks({"fc": w}, sparsity=1.0)["fc"].any()
    # round(0.25 * 4) = 1, but both zeros are pruned: the zero share is >= the target
    keep = magnitude_masks({"fc": torch.tensor([0.0, 0.0, 1.0, 2.0])}, sparsity=0.25)["fc"]
    assert keep.tolist() == [False, False, True, True]


def _linear(rows):
    layer = nn.Linear(len(rows[0]), len(rows), bias=False)
    layer.weight.data = torch.tensor(rows)
    return layer


def test_apply_masks_zeroes_and_the_hooks_zero_the_gradient():
    layer = _linear([[1.0, -2.0, 0.5], [0.1, 3.0, -0.2]])
    weights = prunable_weights(layer)
    assert list(weights) == ["weight"]
    masks = magnitude_masks(weights, sparsity=0.5)
    hooks = apply_masks_(weights, masks)
    assert layer.weight.tolist() == [[1.0, -2.0, 0.0], [0.0, 3.0, 0.0]]
    layer(torch.ones(4, 3)).sum().backward()
    # dL/dW = column sums of the input (4 each), zero where pruned
    assert layer.weight.grad.tolist() == [[4.0, 4.0, 0.0], [0.0, 4.0, 0.0]]
    hooks.remove()
    layer.weight.grad = None
    layer(torch.ones(4, 3)).sum().backward()
    assert layer.weight.grad.tolist() == [[4.0] * 3] * 2


def test_reapply_holds_pruned_weights_under_momentum():
    layer = _linear([[1.0, -2.0, 0.5], [0.1, 3.0, -0.2]])
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    layer(torch.ones(1, 3)).sum().backward()
    opt.step()  # a momentum buffer of 1 everywhere, from before pruning
    opt.zero_grad()
    weights = prunable_weights(layer)
    hooks = apply_masks_(weights, magnitude_masks(weights, sparsity=0.5))
    layer(torch.ones(1, 3)).sum().backward()
    opt.step()
    # the pruned gradient is 0, yet the momentum moves the weight: 0 - 0.1 * 0.9 * 1
    assert layer.weight[0, 2].item() == pytest.approx(-0.09)
    hooks.reapply()
    assert layer.weight[0, 2].item() == 0.0 and layer.weight[1, 0].item() == 0.0
    assert layer.weight[1, 1].item() != 0.0


def test_iterative_pruning_with_growing_quality_nests_the_masks():
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 10))
    for p in net.parameters():
        p.data = torch.randn(p.shape, generator=g)
    weights = prunable_weights(net)
    assert list(weights) == ["0.weight", "2.weight"]
    previous, hooks = None, None
    for quality in (0.5, 1.0, 1.5):
        if hooks is not None:
            hooks.remove()
        masks = magnitude_masks(weights, quality=quality)
        for k, w in weights.items():  # the definition, zeros of earlier rounds included
            std = w.detach().double().std(correction=0)
            assert torch.equal(masks[k], w.detach().double().abs() > quality * std)
            if previous is not None:
                assert bool((masks[k] <= previous[k]).all()) and masks[k].sum() < previous[k].sum()
        hooks = apply_masks_(weights, masks)
        previous = masks
    assert all(bool((w[~previous[k]] == 0).all()) for k, w in weights.items())


def test_pruning_refuses_bad_input():
    w = {"fc": torch.ones(2, 2)}
    with pytest.raises(ValueError, match="exactly one"):
        magnitude_masks(w)
    with pytest.raises(ValueError, match="exactly one"):
        magnitude_masks(w, 1.0, sparsity=0.5)
    with pytest.raises(ValueError, match=">= 0"):
        magnitude_masks(w, quality=-0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        magnitude_masks(w, sparsity=1.5)
    with pytest.raises(ValueError, match="missing \\['fc'\\], unknown \\['fx'\\]"):
        magnitude_masks(w, quality={"fx": 1.0})
    with pytest.raises(TypeError, match="number"):
        magnitude_masks(w, quality="1")
    with pytest.raises(ValueError, match="NaN"):
        magnitude_masks({"fc": torch.tensor([1.0, float("nan")])}, quality=1.0)
    with pytest.raises(TypeError, match="floating-point"):
        magnitude_masks({"fc": torch.tensor([1, 2])}, quality=1.0)
    with pytest.raises(TypeError, match="mapping"):
        magnitude_masks(torch.ones(2), quality=1.0)
    with pytest.raises(ValueError, match="lacks"):
        apply_masks_(w, {"other": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="shape"):
        apply_masks_(w, {"fc": torch.ones(2, 3, dtype=torch.bool)})
    with pytest.raises(TypeError, match="bool"):
        apply_masks_(w, {"fc": torch.ones(2, 2)})


# --- trained quantization ---------------------------------------------------------------------
def test_init_centroids_of_hand_examples():
    v = torch.tensor([7.0, 0.0, 5.0, 1.0, 3.0, 2.0, 6.0, 4.0], dtype=f64)
    assert init_centroids(v, 3, "linear").tolist() == [0.0, 3.5, 7.0]
    # density: the least v with CDF(v) >= (i + 1/2) / k; 8 values 0..7, k = 2: heights 1/4, 3/4
    assert init_centroids(v, 2, "density").tolist() == [1.0, 5.0]
    assert init_centroids(v, 4, "density").tolist() == [0.0, 2.0, 4.0, 6.0]
    picks = init_centroids(v, 5, "random", torch.Generator().manual_seed(3))
    assert len(set(picks.tolist())) == 5 and set(picks.tolist()) <= set(v.tolist())
    assert picks.tolist() == sorted(picks.tolist())
    again = init_centroids(v, 5, "random", torch.Generator().manual_seed(3))
    other = init_centroids(v, 5, "random", torch.Generator().manual_seed(4))
    assert torch.equal(picks, again) and not torch.equal(picks, other)
    # fewer values than centroids: Forgy takes every value, repeated
    few = init_centroids(torch.tensor([1.0, 2.0]), 4, "random", torch.Generator().manual_seed(0))
    assert few.tolist() == [1.0, 1.0, 2.0, 2.0]


def test_kmeans_share_on_a_hand_example():
    w = torch.tensor([0.1, 5.0, 0.2, 0.9, 1.0], dtype=f64)
    mask = torch.tensor([True, False, True, True, True])
    centroids, assignment = kmeans_share(w, mask, bits=1)
    # linear init [0.1, 1.0], midpoint 0.55: {0.1, 0.2} and {0.9, 1.0}; the pruned 5.0 ignored
    torch.testing.assert_close(centroids, torch.tensor([0.15, 0.95], dtype=f64))
    assert assignment.dtype == torch.int64 and assignment.tolist() == [0, -1, 0, 1, 1]


def test_lloyd_moves_the_boundary_until_no_weight_changes_cluster():
    # linear init [0, 10] (midpoint 5): {0, 1, 2}, {6, 7, 10}; means 1 and 23/3 (midpoint
    # 4.33): unchanged, done. From density init [1, 7] (midpoint 4): the same clusters.
    w = torch.tensor([0.0, 1.0, 2.0, 6.0, 7.0, 10.0], dtype=f64)
    for init in ("linear", "density"):
        centroids, assignment = kmeans_share(w, torch.ones(6, dtype=torch.bool), 1, init=init)
        torch.testing.assert_close(centroids, torch.tensor([1.0, 23.0 / 3.0], dtype=f64))
        assert assignment.tolist() == [0, 0, 0, 1, 1, 1]
    # boundaries that must move twice: init [0, 12], midpoint 6 (6 goes left, a tie):
    # {0, 0, 1, 5, 6}, {7, 12}; means 2.4, 9.5, midpoint 5.95: 6 moves right; means 1.5, 25/3,
    # midpoint 4.92: 5 moves right; means 1/3, 7.5, midpoint 3.92: nothing moves, done
    w = torch.tensor([0.0, 0.0, 1.0, 5.0, 6.0, 7.0, 12.0], dtype=f64)
    every = torch.ones(7, dtype=torch.bool)
    centroids, assignment = kmeans_share(w, every, 1)
    torch.testing.assert_close(centroids, torch.tensor([1.0 / 3.0, 7.5], dtype=f64))
    assert assignment.tolist() == [0, 0, 0, 1, 1, 1, 1]
    # stopped after one reassignment: 5 has not moved yet; the centroids are those clusters' means
    centroids, assignment = kmeans_share(w, every, 1, iters=1)
    torch.testing.assert_close(centroids, torch.tensor([1.5, 25.0 / 3.0], dtype=f64))
    assert assignment.tolist() == [0, 0, 0, 0, 1, 1, 1]


def test_a_tie_goes_to_the_smaller_centroid():
    # init [0, 2]: 1 is exactly between; it joins 0, so the means are 0.5 and 2
    w = torch.tensor([0.0, 1.0, 2.0], dtype=f64)
    centroids, assignment = kmeans_share(w, torch.ones(3, dtype=torch.bool), 1, iters=1)
    assert assignment.tolist() == [0, 0, 1] and centroids.tolist() == [0.5, 2.0]


def test_an_empty_cluster_keeps_its_centroid():
    w = torch.tensor([0.0, 0.0, 0.0, 10.0], dtype=f64)
    centroids, assignment = kmeans_share(w, torch.ones(4, dtype=torch.bool), 2)
    assert torch.equal(centroids, torch.linspace(0, 10, 4, dtype=f64))
    assert assignment.tolist() == [0, 0, 0, 3]


def test_zero_centroid_reserves_code_zero():
    w = torch.tensor([0.1, 0.2, 0.9, 1.0], dtype=f64)
    centroids, assignment = kmeans_share(w, torch.ones(4, dtype=torch.bool), 2, zero_centroid=True)
    # 3 clusters from linear init [0.1, 0.55, 1.0]; 0.55 stays empty
    torch.testing.assert_close(centroids, torch.tensor([0.0, 0.15, 0.55, 0.95], dtype=f64))
    assert assignment.tolist() == [1, 1, 3, 3]


def test_all_pruned_gives_zero_centroids():
    centroids, assignment = kmeans_share(torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.bool), 2)
    assert centroids.tolist() == [0.0] * 4 and assignment.tolist() == [[-1] * 3] * 2


@given(
    values=st.lists(st.floats(-3, 3, allow_nan=False), min_size=1, max_size=60),
    bits=st.integers(1, 3),
    init=st.sampled_from(["linear", "density", "random"]),
)
def test_converged_kmeans_is_a_fixed_point_of_lloyd(values, bits, init):
    w = torch.tensor(values, dtype=f64)
    mask = torch.arange(len(values)) % 3 != 1
    if not mask.any():
        mask[0] = True
    g = torch.Generator().manual_seed(0)
    centroids, assignment = kmeans_share(w, mask, bits, init=init, iters=1000, generator=g)
    assert centroids.shape == (2**bits,) and bool((assignment[~mask] == -1).all())
    kept, labels = w[mask], assignment[mask]
    assert bool((labels >= 0).all())
    for j in labels.unique().tolist():  # each used centroid is its cluster's mean (Eq. 2)
        torch.testing.assert_close(centroids[j], kept[labels == j].mean())
    # each kept weight is at a nearest centroid
    distance = (kept[:, None] - centroids[None, :]).abs()
    assert bool((distance.gather(1, labels[:, None])[:, 0] <= distance.min(1).values + 1e-12).all())


def test_kmeans_keeps_the_weight_dtype_and_is_reproducible():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(20, 30, generator=g)
    mask = w.abs() > 0.5
    a = kmeans_share(w, mask, 3, init="random", generator=torch.Generator().manual_seed(5))
    b = kmeans_share(w, mask, 3, init="random", generator=torch.Generator().manual_seed(5))
    assert a[0].dtype == torch.float32 and a[1].shape == (20, 30)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_centroid_grad_sums_the_gradients_of_each_cluster():
    assignment = torch.tensor([[0, -1, 1], [1, 0, 2]])
    grad = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    # Eq. 3: C0 <- 1 + 5, C1 <- 3 + 4, C2 <- 6, C3 <- nothing; the pruned 2.0 is dropped
    assert centroid_grad(grad, assignment, 4).tolist() == [6.0, 7.0, 6.0, 0.0]


def test_shared_weight_forward_and_its_autograd_gradient_is_eq3():
    centroids = torch.tensor([-0.5, 0.25, 1.0, 2.0])
    assignment = torch.tensor([[0, -1, 1], [1, 0, 2]])
    shared = SharedWeight(centroids, assignment)
    w = shared()
    assert w.tolist() == [[-0.5, 0.0, 0.25], [0.25, -0.5, 1.0]]
    upstream = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    (w * upstream).sum().backward()
    assert torch.equal(shared.centroids.grad, centroid_grad(upstream, assignment, 4))
    torch.optim.SGD(shared.parameters(), lr=0.1).step()  # C <- C - lr dL/dC (Sec. 3.3)
    torch.testing.assert_close(shared.centroids.detach(), torch.tensor([-1.1, -0.45, 0.4, 2.0]))
    assert shared()[0, 1].item() == 0.0  # the pruned weight stays 0
    assert [n for n, _ in shared.named_buffers()] == ["assignment"]


def test_fine_tuning_the_centroids_lowers_the_loss():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 12, generator=g)
    target_w = torch.randn(5, 12, generator=g)
    y = x @ target_w.T
    shared = SharedWeight.from_weight(target_w + 0.3, torch.ones(5, 12, dtype=torch.bool), 2)
    opt = torch.optim.SGD(shared.parameters(), lr=0.05)
    losses = []
    for _ in range(5):
        loss = F.mse_loss(F.linear(x, shared()), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # a quadratic in the 4 centroids, small steps: every step lowers it (2.12 -> 1.34)
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False))
    assert losses[-1] < 0.7 * losses[0]


def test_quantization_refuses_bad_input():
    w, mask = torch.ones(2, 2), torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="bits"):
        kmeans_share(w, mask, 0)
    with pytest.raises(ValueError, match="bits must be <= 16"):
        kmeans_share(w, mask, 17)
    with pytest.raises(TypeError, match="bits"):
        kmeans_share(w, mask, True)
    with pytest.raises(ValueError, match="init"):
        kmeans_share(w, mask, 1, init="kmeans++")
    with pytest.raises(ValueError, match="iters"):
        kmeans_share(w, mask, 1, iters=0)
    with pytest.raises(ValueError, match="shape"):
        kmeans_share(w, torch.ones(4, dtype=torch.bool), 1)
    with pytest.raises(TypeError, match="bool"):
        kmeans_share(w, torch.ones(2, 2), 1)
    with pytest.raises(ValueError, match="NaN"):
        kmeans_share(torch.tensor([float("inf"), 1.0]), torch.ones(2, dtype=torch.bool), 1)
    with pytest.raises(ValueError, match="empty"):
        init_centroids(torch.zeros(0), 2)
    with pytest.raises(ValueError, match="grad shape"):
        centroid_grad(torch.ones(3), torch.zeros(2, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match=r"-1 \(pruned\) \.\. 1"):
        centroid_grad(torch.ones(2), torch.tensor([0, 2]), 2)
    with pytest.raises(TypeError, match="int64"):
        SharedWeight(torch.ones(2), torch.zeros(2, dtype=torch.int32))
    with pytest.raises(ValueError, match="1-D"):
        SharedWeight(torch.ones(2, 2), torch.zeros(2, dtype=torch.int64))


# --- storage ----------------------------------------------------------------------------------
def test_relative_index_with_a_long_gap_counts_fillers():
    mask = np.zeros(30, dtype=bool)
    mask[[1, 20, 21, 29]] = True
    # gaps 1, 18, 0, 7 at 3 bits (at most 7): 18 = 2 * 8 + 2 -> two fillers (each skips 7
    # places and holds a zero weight), then 2; the final 7 fits exactly, no filler
    gaps = relative_indices(mask, 3)
    assert gaps.dtype == np.int64 and gaps.tolist() == [1, 7, 7, 2, 0, 7]
    positions = positions_from_relative(gaps)
    assert positions.tolist() == [1, 9, 17, 20, 21, 29]  # fillers at 9 and 17
    assert positions[mask[positions]].tolist() == [1, 20, 21, 29]


def test_a_gap_of_exactly_two_to_the_bits_takes_one_filler():
    mask = np.zeros(10, dtype=bool)
    mask[[0, 9]] = True  # gap 8 at 3 bits
    assert relative_indices(mask, 3).tolist() == [0, 7, 0]
    assert positions_from_relative(np.array([0, 7, 0])).tolist() == [0, 8, 9]
    assert relative_indices(mask, 4).tolist() == [0, 8]


def test_relative_index_reads_masks_row_major():
    mask = torch.tensor([[False, True, False], [False, False, True]])
    assert relative_indices(mask, 2).tolist() == [1, 3]
    assert relative_indices(np.zeros((2, 3), dtype=bool), 2).size == 0
    assert relative_indices(np.ones(4, dtype=bool), 1).tolist() == [0, 0, 0, 0]


@given(st.lists(st.booleans(), max_size=120), st.integers(1, 4))
def test_fillers_decode_back_to_the_original_positions(flags, index_bits):
    mask = np.array(flags, dtype=bool)
    gaps = relative_indices(mask, index_bits)
    assert gaps.size == 0 or int(gaps.max()) <= 2**index_bits - 1
    positions = positions_from_relative(gaps)
    assert bool((np.diff(positions) > 0).all()) and (
        positions.size == 0 or positions[-1] < mask.size
    )
    kept = positions[mask[positions]] if positions.size else positions
    assert kept.tolist() == np.flatnonzero(mask).tolist()
    true_gaps = np.diff(np.flatnonzero(mask), prepend=-1) - 1
    assert positions.size - kept.size == int((true_gaps // 2**index_bits).sum())


def _hand_layer(centroids):
    """3 x 4 layer, kept at flat 1 (code 3), 9 (code 0), 10 (code 3); 2-bit relative index:
    gaps 1, 7, 0 -> entries 1, 3 (a filler at 5), 3, 0."""
    assignment = torch.full((3, 4), -1, dtype=torch.int64)
    assignment.view(-1)[[1, 9, 10]] = torch.tensor([3, 0, 3])
    return torch.tensor(centroids), assignment, assignment >= 0


def test_layer_storage_of_a_hand_example():
    centroids, assignment, mask = _hand_layer([-0.5, 0.0, 0.25, 0.75])
    assert relative_indices(mask, 2).tolist() == [1, 3, 3, 0]
    fixed = layer_storage(centroids, assignment, mask, index_bits=2, huffman=False)
    # 4 entries (3 kept + 1 filler, whose index is 1: the zero centroid) x 2 bits each for the
    # cluster index and for the position; codebook 4 x 32; bias 3 rows x 32; count 32
    expected = {
        "weights": 12, "kept": 3, "fillers": 1, "cluster_width": 2, "index_bits": 2,
        "cluster_bits": 8, "position_bits": 8, "codebook_bits": 128, "bias_bits": 96,
        "header_bits": 32, "total_bits": 272, "dense_bits": 32 * 15,
    }  # fmt: skip
    assert {k: fixed[k] for k in expected} == expected
    assert fixed["compression"] == 480 / 272
    coded = layer_storage(centroids, assignment, mask, index_bits=2, huffman=True)
    # cluster codes 3, 1, 0, 3: lengths 3 -> 1, 0 -> 2, 1 -> 2: 6 bits, table 3 + 3 x (2 + 6)
    # = 27; relative indices 1, 3, 3, 0: the same counts, 6 + 27
    assert coded["cluster_bits"] == 33 and coded["position_bits"] == 33
    assert coded["total_bits"] == 33 + 33 + 128 + 96 + 32 == 322
    assert layer_storage(centroids, assignment, mask, 2, False, bias=0)["total_bits"] == 176
    assert (
        layer_storage(centroids, assignment, mask, 2, False, bias=torch.ones(7))["bias_bits"]
        == 7 * 32
    )


def test_a_filler_without_a_zero_centroid_takes_an_extra_symbol():
    centroids, assignment, mask = _hand_layer([-0.5, 0.1, 0.25, 0.75])
    fixed = layer_storage(centroids, assignment, mask, 2, huffman=False)
    assert fixed["cluster_width"] == 3 and fixed["cluster_bits"] == 4 * 3  # alphabet 0..4
    # codes 3, 4, 0, 3: lengths 3 -> 1, 0 -> 2, 4 -> 2: 6 bits; table 4 + 3 x (3 + 6) = 31
    assert layer_storage(centroids, assignment, mask, 2)["cluster_bits"] == 37
    # no filler needed (3-bit index): the alphabet stays 4 symbols
    assert layer_storage(centroids, assignment, mask, 3, huffman=False)["cluster_width"] == 2


def test_dense_layer_storage_is_eq1_plus_positions():
    # Eq. 1: n weights, k = 2^b clusters: n b index bits + 32 k codebook bits
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 8, generator=g)
    mask = torch.ones_like(w, dtype=torch.bool)
    centroids, assignment = kmeans_share(w, mask, 3)
    s = layer_storage(centroids, assignment, mask, 5, huffman=False, bias=0)
    assert s["cluster_bits"] + s["codebook_bits"] == 128 * 3 + 32 * 8
    assert s["position_bits"] == 128 * 5 and s["fillers"] == 0


def test_huffman_shortens_the_positions_of_a_random_sparse_layer():
    # kept with probability 0.3: the gaps are geometric, entropy H(0.3) / 0.3 = 2.94 bits; a
    # Huffman code is within 1 bit of it and its table adds ~0.3 bits per entry here (892 kept):
    # at most ~0.84 of the 5-bit fixed index, about 0.64 in practice (seed fixed)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(60, 50, generator=g)
    mask = torch.rand(60, 50, generator=g) < 0.3
    centroids, assignment = kmeans_share(w, mask, 4)
    fixed = layer_storage(centroids, assignment, mask, 5, huffman=False)
    coded = layer_storage(centroids, assignment, mask, 5, huffman=True)
    assert coded["position_bits"] < 0.7 * fixed["position_bits"]
    assert coded["total_bits"] < fixed["total_bits"] and coded["compression"] > 8


def test_net_storage_sums_the_layers_and_rounds_to_bytes():
    centroids, assignment, mask = _hand_layer([-0.5, 0.0, 0.25, 0.75])
    a = layer_storage(centroids, assignment, mask, 2, huffman=True)  # 322 bits
    b = layer_storage(centroids, assignment, mask, 2, huffman=False)  # 272 bits
    net = net_storage({"fc1": a, "fc2": b})
    assert net["total_bits"] == 594 and net["total_bytes"] == 75  # 74.25 rounded up
    assert net["dense_bits"] == 960 and net["dense_bytes"] == 120
    assert net["compression"] == 120 / 75 and net["layers"] == 2
    assert net["kept"] == 6 and net["fillers"] == 2
    assert net_storage([a, b]) == net


def test_storage_refuses_bad_input():
    centroids, assignment, mask = _hand_layer([-0.5, 0.0, 0.25, 0.75])
    with pytest.raises(ValueError, match="index_bits"):
        relative_indices(mask, 0)
    with pytest.raises(ValueError, match="index_bits must be <= 16"):
        relative_indices(mask, 17)
    with pytest.raises(TypeError, match="bool"):
        relative_indices(np.ones(3, dtype=np.int64), 2)
    with pytest.raises(ValueError, match=">= 0"):
        positions_from_relative(np.array([1, -1]))
    with pytest.raises(TypeError, match="integer"):
        positions_from_relative(np.array([1.0]))
    with pytest.raises(ValueError, match="exactly where"):
        layer_storage(centroids, assignment, ~mask, 2)
    with pytest.raises(ValueError, match="1-D"):
        layer_storage(centroids[None], assignment, mask, 2)
    with pytest.raises(ValueError, match=r"\.\. 1"):
        layer_storage(centroids[:2], assignment, mask, 2)
    with pytest.raises(ValueError, match="bias"):
        layer_storage(centroids, assignment, mask, 2, bias=-1)
    with pytest.raises(TypeError, match="huffman"):
        layer_storage(centroids, assignment, mask, 2, huffman="no")
    with pytest.raises(ValueError, match="non-empty"):
        net_storage([])
    with pytest.raises(ValueError, match="missing 'weights'"):
        net_storage([{"total_bits": 3}])
