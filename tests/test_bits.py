"""bayesq.bits: the rule, row widths, grids, budgets and the report."""

import math

import pytest
import torch

from bayesq import bit_rules, bits, sparse_codes
from bayesq.posterior import LayerPosterior, Posterior, gaussian_cell_mass


def layer(mean, std, name="fc", scale=None):
    mean = torch.as_tensor(mean, dtype=torch.float32)
    std = torch.as_tensor(std, dtype=torch.float32).expand_as(mean)
    levels = torch.tensor([-0.5, 0.0, 0.5])
    return LayerPosterior(
        name,
        mean,
        std.square(),
        levels,
        gaussian_cell_mass(mean, std, levels),
        codebook_scale=scale,
    )


def posterior(*layers):
    """The posterior of a net of these linear layers, in order (they must chain)."""
    ops = [{"kind": "layer", "name": lp.name} for lp in layers]
    return Posterior({lp.name: lp for lp in layers}, ops, (layers[0].mean.shape[1],))


def test_rule_on_hand_computed_weights():
    # row range R = 1: sigma 0.1 -> 1 + ceil(log2(1 / 0.1 + 1)) = 1 + 4 = 5 bits; sigma 0.01 ->
    # 1 + ceil(log2(101)) = 8; sigma 1 -> 1 + ceil(log2 2) = 2; the pruned weight (theta 0,
    # log alpha huge) -> 0
    lp = layer([[1.0, 0.5, -0.3, 0.0]], [[0.1, 0.01, 1.0, 0.5]])
    assert bits.weight_bits(lp).tolist() == [[5, 8, 2, 0]]
    assert bits.row_widths(lp).tolist() == [8]
    # c = 10 allows ten times the step: sigma 0.1 -> 1 + ceil(log2(2)) = 2
    assert bits.weight_bits(lp, bits.BitRule(step_multiple=10.0))[0, 0] == 2
    assert bits.row_widths(lp, bits.BitRule(row_quantile=0.5)).tolist() == [5]
    # a discrete-style certainty at zero prunes through the zero-mass rule too
    assert bits.weight_bits(layer([[0.01, 1.0]], [[0.1, 0.1]]))[0, 0] == 0


def test_narrower_posteriors_never_get_fewer_bits():
    torch.manual_seed(0)
    mean = torch.randn(6, 40)
    std = torch.rand(6, 40) * 0.2 + 0.01
    wide = bits.weight_bits(layer(mean, std * 2))
    narrow = bits.weight_bits(layer(mean, std))
    kept = (wide > 0) & (narrow > 0)
    assert bool((narrow[kept] >= wide[kept]).all())


def test_quantize_rows_codes_steps_and_error():
    torch.manual_seed(1)
    lp = layer(torch.randn(5, 64) * 0.3, torch.full((5, 64), 0.05))
    widths = torch.tensor([0, 2, 3, 5, 8])
    grid = bits.quantize_rows(lp, widths)
    assert grid.codes.dtype == torch.int8 and not grid.codes[0].any()
    kept = bits.kept_mask(lp)
    for r, w in enumerate(widths.tolist()[1:], start=1):
        n = 2 ** (w - 1) - 1
        assert int(grid.codes[r].abs().max()) <= n
        # inside the grid's range every kept weight is within half a step
        inside = kept[r] & (lp.mean[r].abs() <= n * grid.scale[r])
        err = (grid.codes[r].float() * grid.scale[r] - lp.mean[r]).abs()
        assert bool((err[inside] <= grid.scale[r] / 2 + 1e-6).all())
    # more bits, less loss (the best grid of each width)
    losses = bits.row_losses(lp)
    assert math.isinf(losses[0, 1])
    finite = losses[:, [2, 3, 4, 5, 6, 7, 8]]
    assert bool((finite[:, 1:] <= finite[:, :-1] + 1e-9).all())
    with pytest.raises(ValueError, match="widths"):
        bits.quantize_rows(lp, torch.tensor([1, 2, 2, 2, 2]))


def test_vnq_grid_represents_the_codebook_exactly():
    """On a VNQ-like posterior (weights at -r, 0, r), 2-bit rows give back the ternary net."""
    r = 0.37
    mean = torch.tensor([[r, -r, r, 0.0], [-r, -r, 0.0, 0.0]])
    std = torch.tensor([[0.01, 0.01, 0.01, 10.0], [0.01, 0.01, 10.0, 10.0]])
    lp = layer(mean, std, scale=r)
    grid = bits.quantize_rows(lp, torch.tensor([2, 2]))
    torch.testing.assert_close(grid.codes.float() * grid.scale[:, None], mean)


def test_allocate_meets_the_budget_and_spends_bits_where_they_pay():
    torch.manual_seed(2)
    precise = layer(torch.randn(8, 50) * 0.3, torch.full((8, 50), 0.002), "precise")
    vague = layer(torch.randn(50, 8) * 0.3, torch.full((50, 8), 0.2), "vague")  # chains on
    post = posterior(precise, vague)
    total_loss = []
    for budget in (2.0, 3.0, 4.0, 5.0):
        widths = bits.allocate(post, budget, stored=True)
        avg = bits.average_bits(post, widths, stored=True)
        assert avg <= budget + 1e-9 and avg > budget - 1.0
        assert widths["precise"].double().mean() > widths["vague"].double().mean()
        loss = sum(
            float(bits.quantize_rows(post.layers[n], w).loss.sum()) for n, w in widths.items()
        )
        total_loss.append(loss)
        uniform = bits.uniform_widths(post, int(budget))
        uniform_loss = sum(
            float(bits.quantize_rows(post.layers[n], w).loss.sum()) for n, w in uniform.items()
        )
        assert loss <= uniform_loss + 1e-6
    assert total_loss == sorted(total_loss, reverse=True)
    with pytest.raises(ValueError, match="average"):
        bits.allocate(post, 9.0)


def test_codes_only_counts_pruned_weights_as_free_and_the_total_counts_everything():
    mean = torch.tensor([[0.4, 0.4, 0.0, 0.0], [0.4, 0.0, 0.0, 0.0]])
    std = torch.tensor([[0.01, 0.01, 1.0, 1.0], [0.01, 1.0, 1.0, 1.0]])
    post = posterior(layer(mean, std))
    widths = {"fc": torch.tensor([4, 8])}
    assert bits.average_bits(post, widths, count="codes") == pytest.approx((4 * 2 + 8 * 1) / 8)
    assert bits.average_bits(post, widths, stored=True) == pytest.approx((4 * 4 + 8 * 4) / 8)
    grid = bits.quantize_rows(post.layers["fc"], widths["fc"])
    parts = sparse_codes.layer_storage_bits(
        grid.codes.numpy(), widths["fc"].numpy(), grid.scale.numpy()
    )
    assert bits.average_bits(post, widths) == parts["total"] / 8
    assert parts["positions"] > 0 and parts["scales"] >= 64
    allocated = bits.allocate(post, 1.5, count="codes")
    assert 1.0 <= bits.average_bits(post, allocated, count="codes") <= 1.5  # 3 kept weights pay
    with pytest.raises(ValueError, match="count"):
        bits.average_bits(post, widths, count="all")


def test_report_counts_bytes_and_shares():
    lp = layer(torch.ones(4, 16) * 0.4, torch.full((4, 16), 0.01))
    post = posterior(lp)
    widths = {"fc": torch.tensor([0, 2, 4, 8])}
    report = bits.bit_report(post, widths)
    fc, total = report
    assert fc["bytes_packed"] == (0 + 4 + 8 + 16) + 8 * 4
    assert fc["bytes_float32"] == 4 * (64 + 4)
    assert fc["stored_mean_bits"] == pytest.approx(3.5) and fc["width_counts"] == {
        0: 1,
        2: 1,
        4: 1,
        8: 1,
    }
    assert total["stored_mean_bits"] == pytest.approx(3.5)
    grid = bits.quantize_rows(lp, widths["fc"])
    parts = sparse_codes.layer_storage_bits(
        grid.codes.numpy(), widths["fc"].numpy(), grid.scale.numpy()
    )
    assert fc["mean_bits"] == total["mean_bits"] == parts["total"] / 64
    assert fc["position_bits"] == parts["positions"] / 64
    assert fc["bytes_sparse"] == total["bytes_sparse"] == math.ceil(parts["total"] / 8)
    assert total["compression"] == pytest.approx(272 / fc["bytes_sparse"])
    assert fc["codes_only_bits"] == pytest.approx((2 + 4 + 8) * 16 / 64)
    with pytest.raises(ValueError):
        bits.BitRule(step_multiple=0.0)


def test_one_level_codebook_prunes_by_log_alpha_only():
    """Sparse VD's prior has the single level 0, whose cell holds all the mass: the zero-mass
    test would prune every weight, so only log alpha decides."""
    mean = torch.tensor([[0.4, 0.01, -0.3]])
    std = torch.tensor([[0.01, 0.5, 0.02]])
    levels = torch.zeros(1)
    lp = LayerPosterior("fc", mean, std.square(), levels, gaussian_cell_mass(mean, std, levels))
    assert bits.kept_mask(lp).tolist() == [[True, False, True]]
    assert bits.weight_bits(lp)[0, 1] == 0 and bits.weight_bits(lp)[0, 0] > 0


def test_uniform_widths_with_a_rule_keep_its_pruning():
    mean = torch.tensor([[0.4, 0.0], [0.0, 0.0]])  # the second row holds no kept weight
    std = torch.tensor([[0.01, 1.0], [1.0, 1.0]])
    post = posterior(layer(mean, std))
    assert bits.uniform_widths(post, 3)["fc"].tolist() == [3, 3]
    assert bits.uniform_widths(post, 3, bits.BitRule())["fc"].tolist() == [3, 0]
    kept_rows = bits.uniform_widths(post, 3, bits.BitRule())
    assert bits.average_bits(post, kept_rows, count="codes") == 3 / 4


# --- Bayesian Compression's rule beside bayesq's -------------------------------------------------
def test_significand_bits_keep_the_unit_round_off_above_twice_the_variance():
    # t = the most t with 2^-t > 2 Var: Var = 0.75 * 2^-10 -> 2 Var = 0.75 * 2^-9 -> t = 9
    # (= floor(-log2 Var) - 1); at Var = 2^-10 exactly, 2^-9 > 2^-9 fails -> t = 8
    var = torch.tensor([0.75 * 2**-10, 2**-10, 1.0, 1e-30, 0.3 * 2**-4])
    assert bits.significand_bits(var).tolist() == [9, 8, 0, 23, 4]
    assert bits.significand_bits(torch.tensor([1e-30]), max_bits=10).tolist() == [10]


def _compression_layer():
    """3 x 4 linear layer: row 1 all noise (group log alpha >> 3), column 2 all noise; the other
    weights known to a variance of 0.75 * 2^-10 (9 significand bits) or, two of them,
    0.3 * 2^-4 (4 bits)."""
    mean = torch.tensor(
        [[0.25, -0.125, 0.01, 0.05], [0.01, 0.01, 0.01, 0.01], [0.0625, 0.25, 0.01, -0.25]]
    )
    var = torch.full((3, 4), 0.75 * 2**-10)  # t = 9
    var[1] = 0.1  # row 1: noise only
    var[:, 2] = 1.0  # column 2: noise only
    var[0, 3] = 0.3 * 2**-4  # t = 4; log alpha = log(0.01875 / 0.0025) = 2.0 < 3: kept
    var[2, 0] = 0.3 * 2**-4  # t = 4; log alpha = log(0.01875 / 0.0039) = 1.6
    return layer_from(mean, var)


def layer_from(mean, var, name="fc", conv=None):
    levels = torch.zeros(1)
    return LayerPosterior(
        name, mean, var, levels, gaussian_cell_mass(mean, var.sqrt(), levels), conv=conv
    )


def test_compression_rule_prunes_groups_and_takes_the_layer_mean_of_significand_bits():
    lp = _compression_layer()
    rule = bits.CompressionRule()
    rows, inputs = bit_rules.group_log_alpha(lp)
    assert rows[1] > 3 and inputs[2] > 3 and rows[[0, 2]].max() < 3
    kept = bits.kept_mask(lp, rule)
    expected = torch.tensor([[1, 1, 0, 1], [0, 0, 0, 0], [1, 1, 0, 1]], dtype=torch.bool)
    assert torch.equal(kept, expected)
    # six kept weights: four at t = 9, two at t = 4 -> mean 44 / 6 = 7.33 -> 8 bits, step 2^-8;
    # range 0.25 -> a code of 1 + ceil(log2(0.25 * 256 + 1)) = 1 + 7 = 8 bits
    layer_bits = bits.compression_layer_bits(lp, rule)
    assert (layer_bits.significand_bits, layer_bits.step) == (8, 2**-8)
    assert (layer_bits.range, layer_bits.code_bits) == (0.25, 8)
    assert bits.weight_bits(lp, rule).tolist() == [[8, 8, 0, 8], [0] * 4, [8, 8, 0, 8]]
    post = Posterior({"fc": lp}, [{"kind": "layer", "name": "fc"}], (4,))
    assert bits.compression_widths(post, rule)["fc"].tolist() == [8, 0, 8]
    # on the layer's fixed-point grid of step 2^-8 (0.05 * 256 = 12.8 -> 13)
    grid = bits.quantize_rows(lp, torch.tensor([8, 0, 8]), rule)
    assert grid.scale[[0, 2]].tolist() == [2**-8] * 2
    assert grid.codes.tolist() == [[64, -32, 0, 13], [0] * 4, [16, 64, 0, -64]]
    # a narrower row cannot span 0.25 on that step: its grid widens to 0.25 / 3
    narrow = bits.quantize_rows(lp, torch.tensor([3, 0, 8]), rule)
    assert narrow.scale[0] == pytest.approx(0.25 / 3) and narrow.codes[0].tolist() == [3, -2, 0, 1]
    # bayesq's rule on the same posterior: per weight, the row maximum, unstructured pruning
    assert bits.kept_mask(lp).tolist() == [
        [True, True, False, True], [False] * 4, [True, True, False, True]
    ]  # fmt: skip
    # R = 0.25; sigma 0.0271 -> 1 + ceil(log2(0.25 / 0.0271 + 1)) = 5; sigma 0.137 -> 3
    assert bits.weight_bits(lp).tolist() == [[5, 5, 0, 3], [0] * 4, [3, 5, 0, 5]]
    assert bits.row_widths(lp).tolist() == [5, 0, 5]


def test_the_two_rules_differ_under_a_change_of_scale():
    """Scaling every weight by k (theta -> k theta, sigma -> k sigma) is a change of units:
    bayesq's rule (step against sigma) gives the same bits; Bayesian Compression's (step
    against a variance) changes: Var x 16 -> t - 4, step x 16, range x 4 -> 2 bits fewer."""
    lp = _compression_layer()
    scaled = layer_from(lp.mean * 4, lp.variance * 16)
    assert torch.equal(bits.weight_bits(scaled), bits.weight_bits(lp))
    rule = bits.CompressionRule()
    before, after = (bits.compression_layer_bits(x, rule) for x in (lp, scaled))
    assert after.significand_bits == before.significand_bits - 4
    assert after.code_bits == before.code_bits - 2


def test_compression_rule_groups_a_convolution_by_filter_and_input_channel():
    mean = torch.full((2, 3, 2, 2), 0.5)
    var = torch.full((2, 3, 2, 2), 1e-4)
    var[:, 1] = 10.0  # input channel 1 is noise in both filters
    var[1, :, 0, 0] = 10.0  # filter 1: one noisy tap per channel is not enough to prune it
    lp = layer_from(mean, var, "conv", conv={"stride": [1, 1], "padding": [0, 0]})
    kept = bits.kept_mask(lp, bits.CompressionRule())
    assert kept.shape == (2, 12)
    assert kept[:, 4:8].sum() == 0 and bool(kept[:, :4].all()) and bool(kept[:, 8:].all())
    # bayesq's rule prunes the noisy taps one by one (log alpha = log(10 / 0.25) >= 3)
    assert not bool(bits.kept_mask(lp)[1, [0, 8]].any()) and bool(bits.kept_mask(lp)[1, 9:].all())
    only_rows = bits.CompressionRule(prune_inputs=False)
    assert bool(bits.kept_mask(lp, only_rows).all())  # no filter is noise as a whole
    with pytest.raises(TypeError, match="rule"):
        bits.kept_mask(lp, "bayes")


# --- positions count: a sparse net must say which weights it kept ---------------------------------
def _sparse_layer(name, out, fan_in, density, seed):
    g = torch.Generator().manual_seed(seed)
    kept = torch.rand(out, fan_in, generator=g) < density
    magnitude = 0.1 + 0.3 * torch.rand(out, fan_in, generator=g)  # log alpha < 3 where kept
    sign = torch.randint(0, 2, (out, fan_in), generator=g) * 2 - 1
    mean = torch.where(kept, sign * magnitude, 1e-3)
    std = torch.where(kept, 0.01 * torch.rand(out, fan_in, generator=g) + 0.005, 1.0)
    return layer_from(mean, std.square(), name), kept


def test_a_99_percent_pruned_layer_counts_at_least_the_mask_information():
    lp, kept = _sparse_layer("fc", 200, 500, 0.01, 3)
    assert torch.equal(bits.kept_mask(lp), kept)
    post = Posterior({"fc": lp}, [{"kind": "layer", "name": "fc"}], (500,))
    widths = {"fc": bits.row_widths(lp)}
    fc, total = bits.bit_report(post, widths)
    n, k = kept.numel(), int(kept.sum())
    # any code that can name every k-subset of n positions needs log2 C(n, k) bits for some
    log2_subsets = (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)
    assert fc["position_bits"] * n >= log2_subsets
    assert total["mean_bits"] >= fc["codes_only_bits"] + log2_subsets / n
    assert total["mean_bits"] == pytest.approx(bits.average_bits(post, widths))
    # the old figure (codes only) is far below the honest one at this sparsity
    assert fc["codes_only_bits"] < 0.6 * fc["mean_bits"]


def test_allocation_respects_the_budget_counting_positions_and_steps():
    first, _ = _sparse_layer("fc1", 64, 400, 0.05, 4)
    second, _ = _sparse_layer("fc2", 16, 64, 0.3, 5)
    post = posterior(first, second)
    rule_widths = {n: bits.row_widths(lp) for n, lp in post.layers.items()}
    full = bits.average_bits(post, rule_widths)
    for budget in (0.3 * full, 0.7 * full):
        widths = bits.allocate(post, budget)
        spent = bits.average_bits(post, widths)
        assert budget - 0.1 * full <= spent <= budget  # within the budget, and using it
        # the file the encoder writes holds exactly the counted bits
        encoded = 0
        for name, lp in post.layers.items():
            grid = bits.quantize_rows(lp, widths[name])
            encoded += sparse_codes.encode_layer(
                grid.codes.numpy(), widths[name].numpy(), grid.scale.numpy()
            ).bits
        assert encoded == spent * post.num_weights
        # an allocation that pays for codes only overspends the same budget once positions count
        codes_only = bits.allocate(post, budget, count="codes")
        assert bits.average_bits(post, codes_only) > budget
