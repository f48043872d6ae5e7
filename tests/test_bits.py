"""bayesq.bits: what row widths cost, budgets and the report; and bayesq.bit_rules' rules, which
they start from (the grids themselves: tests/test_row_grids.py)."""

import math

import numpy as np
import pytest
import torch

from bayesq import bit_rules, bits, sparse_codes
from bayesq.bit_rules import BitRule, CompressionRule
from bayesq.nn import posterior_of
from bayesq.posterior import LayerPosterior, Posterior, PruningRule, gaussian_cell_mass
from bayesq.quantizers import codebook_codes
from bayesq.row_grids import quantize_rows
from tests.common import (
    chain_posterior,
    compression_example,
    gaussian_layer,
    sparse_vd_layer,
    untrained_vnq,
)


def test_rule_on_hand_computed_weights():
    # row range R = 1: sigma 0.1 -> 1 + ceil(log2(1 / 0.1 + 1)) = 1 + 4 = 5 bits; sigma 0.01 ->
    # 1 + ceil(log2(101)) = 8; sigma 1 -> 1 + ceil(log2 2) = 2; the pruned weight (theta 0,
    # log alpha huge) -> 0
    lp = gaussian_layer([[1.0, 0.5, -0.3, 0.0]], [[0.1, 0.01, 1.0, 0.5]])
    assert bit_rules.weight_bits(lp).tolist() == [[5, 8, 2, 0]]
    assert bit_rules.row_widths(lp).tolist() == [8]
    # c = 10 allows ten times the step: sigma 0.1 -> 1 + ceil(log2(2)) = 2
    assert bit_rules.weight_bits(lp, BitRule(step_multiple=10.0))[0, 0] == 2
    assert bit_rules.row_widths(lp, BitRule(row_quantile=0.5)).tolist() == [5]
    # a discrete-style certainty at zero prunes through the zero-mass rule too
    assert bit_rules.weight_bits(gaussian_layer([[0.01, 1.0]], [[0.1, 0.1]]))[0, 0] == 0


def test_narrower_posteriors_never_get_fewer_bits():
    torch.manual_seed(0)
    mean = torch.randn(6, 40)
    std = torch.rand(6, 40) * 0.2 + 0.01
    wide = bit_rules.weight_bits(gaussian_layer(mean, std * 2))
    narrow = bit_rules.weight_bits(gaussian_layer(mean, std))
    kept = (wide > 0) & (narrow > 0)
    assert bool((narrow[kept] >= wide[kept]).all())


def test_allocate_meets_the_budget_and_spends_bits_where_they_pay():
    torch.manual_seed(2)
    precise = gaussian_layer(torch.randn(8, 50) * 0.3, torch.full((8, 50), 0.002), "precise")
    vague = gaussian_layer(torch.randn(50, 8) * 0.3, torch.full((50, 8), 0.2), "vague")  # chains on
    post = chain_posterior(precise, vague)
    total_loss = []
    for budget in (2.0, 3.0, 4.0, 5.0):
        widths = bits.allocate(post, budget, stored=True)
        avg = bits.average_bits(post, widths, stored=True)
        assert avg <= budget + 1e-9 and avg > budget - 1.0
        assert widths["precise"].double().mean() > widths["vague"].double().mean()
        loss = sum(float(quantize_rows(post.layers[n], w).loss.sum()) for n, w in widths.items())
        total_loss.append(loss)
        uniform = bit_rules.uniform_widths(post, int(budget))
        uniform_loss = sum(
            float(quantize_rows(post.layers[n], w).loss.sum()) for n, w in uniform.items()
        )
        assert loss <= uniform_loss + 1e-6
    assert total_loss == sorted(total_loss, reverse=True)
    with pytest.raises(ValueError, match="average"):
        bits.allocate(post, 9.0)


def test_codes_only_counts_pruned_weights_as_free_and_the_total_counts_everything():
    mean = torch.tensor([[0.4, 0.4, 0.0, 0.0], [0.4, 0.0, 0.0, 0.0]])
    std = torch.tensor([[0.01, 0.01, 1.0, 1.0], [0.01, 1.0, 1.0, 1.0]])
    post = chain_posterior(gaussian_layer(mean, std))
    widths = {"fc": torch.tensor([4, 8])}
    assert bits.average_bits(post, widths, count="codes") == pytest.approx((4 * 2 + 8 * 1) / 8)
    assert bits.average_bits(post, widths, stored=True) == pytest.approx((4 * 4 + 8 * 4) / 8)
    grid = quantize_rows(post.layers["fc"], widths["fc"])
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
    lp = gaussian_layer(torch.ones(4, 16) * 0.4, torch.full((4, 16), 0.01))
    post = chain_posterior(lp)
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
    grid = quantize_rows(lp, widths["fc"])
    parts = sparse_codes.layer_storage_bits(
        grid.codes.numpy(), widths["fc"].numpy(), grid.scale.numpy()
    )
    assert fc["mean_bits"] == total["mean_bits"] == parts["total"] / 64
    assert fc["position_bits"] == parts["positions"] / 64
    assert fc["bytes_sparse"] == total["bytes_sparse"] == math.ceil(parts["total"] / 8)
    assert total["compression"] == pytest.approx(272 / fc["bytes_sparse"])
    assert fc["codes_only_bits"] == pytest.approx((2 + 4 + 8) * 16 / 64)
    with pytest.raises(ValueError):
        BitRule(step_multiple=0.0)


def test_one_level_codebook_prunes_by_log_alpha_only():
    """Sparse VD's prior has the single level 0, whose cell holds all the mass: the zero-mass
    test would prune every weight, so only log alpha decides."""
    mean = torch.tensor([[0.4, 0.01, -0.3]])
    std = torch.tensor([[0.01, 0.5, 0.02]])
    levels = torch.zeros(1)
    lp = LayerPosterior("fc", mean, std.square(), levels, gaussian_cell_mass(mean, std, levels))
    assert bit_rules.kept_mask(lp).tolist() == [[True, False, True]]
    assert bit_rules.weight_bits(lp)[0, 1] == 0 and bit_rules.weight_bits(lp)[0, 0] > 0


def test_uniform_widths_with_a_rule_keep_its_pruning():
    mean = torch.tensor([[0.4, 0.0], [0.0, 0.0]])  # the second row holds no kept weight
    std = torch.tensor([[0.01, 1.0], [1.0, 1.0]])
    post = chain_posterior(gaussian_layer(mean, std))
    assert bit_rules.uniform_widths(post, 3)["fc"].tolist() == [3, 3]
    assert bit_rules.uniform_widths(post, 3, BitRule())["fc"].tolist() == [3, 0]
    kept_rows = bit_rules.uniform_widths(post, 3, BitRule())
    assert bits.average_bits(post, kept_rows, count="codes") == 3 / 4


# --- Bayesian Compression's rule beside bayesq's -------------------------------------------------
def test_significand_bits_keep_the_unit_round_off_above_twice_the_variance():
    # t = the most t with 2^-t > 2 Var: Var = 0.75 * 2^-10 -> 2 Var = 0.75 * 2^-9 -> t = 9
    # (= floor(-log2 Var) - 1); at Var = 2^-10 exactly, 2^-9 > 2^-9 fails -> t = 8
    var = torch.tensor([0.75 * 2**-10, 2**-10, 1.0, 1e-30, 0.3 * 2**-4])
    assert bit_rules.significand_bits(var).tolist() == [9, 8, 0, 23, 4]
    assert bit_rules.significand_bits(torch.tensor([1e-30]), max_bits=10).tolist() == [10]


def test_compression_rule_prunes_groups_and_takes_the_layer_mean_of_significand_bits():
    lp = compression_example()
    rule = CompressionRule()
    rows, inputs = bit_rules.group_log_alpha(lp)
    assert rows[1] > 3 and inputs[2] > 3 and rows[[0, 2]].max() < 3
    kept = bit_rules.kept_mask(lp, rule)
    expected = torch.tensor([[1, 1, 0, 1], [0, 0, 0, 0], [1, 1, 0, 1]], dtype=torch.bool)
    assert torch.equal(kept, expected)
    # six kept weights: four at t = 9, two at t = 4 -> mean 44 / 6 = 7.33 -> 8 bits, step 2^-8;
    # range 0.25 -> a code of 1 + ceil(log2(0.25 * 256 + 1)) = 1 + 7 = 8 bits
    layer_bits = bit_rules.compression_layer_bits(lp, rule)
    assert (layer_bits.significand_bits, layer_bits.step) == (8, 2**-8)
    assert (layer_bits.range, layer_bits.code_bits) == (0.25, 8)
    assert bit_rules.weight_bits(lp, rule).tolist() == [[8, 8, 0, 8], [0] * 4, [8, 8, 0, 8]]
    post = Posterior({"fc": lp}, [{"kind": "layer", "name": "fc"}], (4,))
    assert bit_rules.compression_widths(post, rule)["fc"].tolist() == [8, 0, 8]
    # bayesq's rule on the same posterior: per weight, the row maximum, unstructured pruning
    assert bit_rules.kept_mask(lp).tolist() == [
        [True, True, False, True], [False] * 4, [True, True, False, True]
    ]  # fmt: skip
    # R = 0.25; sigma 0.0271 -> 1 + ceil(log2(0.25 / 0.0271 + 1)) = 5; sigma 0.137 -> 3
    assert bit_rules.weight_bits(lp).tolist() == [[5, 5, 0, 3], [0] * 4, [3, 5, 0, 5]]
    assert bit_rules.row_widths(lp).tolist() == [5, 0, 5]


def test_the_two_rules_differ_under_a_change_of_scale():
    """Scaling every weight by k (theta -> k theta, sigma -> k sigma) is a change of units:
    bayesq's rule (step against sigma) gives the same bits; Bayesian Compression's (step
    against a variance) changes: Var x 16 -> t - 4, step x 16, range x 4 -> 2 bits fewer."""
    lp = compression_example()
    scaled = sparse_vd_layer(lp.mean * 4, lp.variance * 16)
    assert torch.equal(bit_rules.weight_bits(scaled), bit_rules.weight_bits(lp))
    rule = CompressionRule()
    before, after = (bit_rules.compression_layer_bits(x, rule) for x in (lp, scaled))
    assert after.significand_bits == before.significand_bits - 4
    assert after.code_bits == before.code_bits - 2


def test_compression_rule_groups_a_convolution_by_filter_and_input_channel():
    mean = torch.full((2, 3, 2, 2), 0.5)
    var = torch.full((2, 3, 2, 2), 1e-4)
    var[:, 1] = 10.0  # input channel 1 is noise in both filters
    var[1, :, 0, 0] = 10.0  # filter 1: one noisy tap per channel is not enough to prune it
    lp = sparse_vd_layer(mean, var, "conv", conv={"stride": [1, 1], "padding": [0, 0]})
    kept = bit_rules.kept_mask(lp, CompressionRule())
    assert kept.shape == (2, 12)
    assert kept[:, 4:8].sum() == 0 and bool(kept[:, :4].all()) and bool(kept[:, 8:].all())
    # bayesq's rule prunes the noisy taps one by one (log alpha = log(10 / 0.25) >= 3)
    assert not bool(bit_rules.kept_mask(lp)[1, [0, 8]].any()) and bool(
        bit_rules.kept_mask(lp)[1, 9:].all()
    )
    only_rows = CompressionRule(prune_inputs=False)
    assert bool(bit_rules.kept_mask(lp, only_rows).all())  # no filter is noise as a whole
    with pytest.raises(TypeError, match="rule"):
        bit_rules.kept_mask(lp, "bayes")


# --- positions count: a sparse net must say which weights it kept ---------------------------------
def _sparse_layer(name, out, fan_in, density, seed):
    g = torch.Generator().manual_seed(seed)
    kept = torch.rand(out, fan_in, generator=g) < density
    magnitude = 0.1 + 0.3 * torch.rand(out, fan_in, generator=g)  # log alpha < 3 where kept
    sign = torch.randint(0, 2, (out, fan_in), generator=g) * 2 - 1
    mean = torch.where(kept, sign * magnitude, 1e-3)
    std = torch.where(kept, 0.01 * torch.rand(out, fan_in, generator=g) + 0.005, 1.0)
    return sparse_vd_layer(mean, std.square(), name), kept


def test_a_99_percent_pruned_layer_counts_at_least_the_mask_information():
    lp, kept = _sparse_layer("fc", 200, 500, 0.01, 3)
    assert torch.equal(bit_rules.kept_mask(lp), kept)
    post = Posterior({"fc": lp}, [{"kind": "layer", "name": "fc"}], (500,))
    widths = {"fc": bit_rules.row_widths(lp)}
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
    post = chain_posterior(first, second)
    rule_widths = {n: bit_rules.row_widths(lp) for n, lp in post.layers.items()}
    full = bits.average_bits(post, rule_widths)
    for budget in (0.3 * full, 0.7 * full):
        widths = bits.allocate(post, budget)
        spent = bits.average_bits(post, widths)
        assert budget - 0.1 * full <= spent <= budget  # within the budget, and using it
        # the file the encoder writes holds exactly the counted bits
        encoded = 0
        for name, lp in post.layers.items():
            grid = quantize_rows(lp, widths[name])
            encoded += sparse_codes.encode_layer(
                grid.codes.numpy(), widths[name].numpy(), grid.scale.numpy()
            ).bits
        assert encoded == spent * post.num_weights
        # an allocation that pays for codes only overspends the same budget once positions count
        codes_only = bits.allocate(post, budget, count="codes")
        assert bits.average_bits(post, codes_only) > budget


# --- the report of a posterior's own levels ------------------------------------------------------
@pytest.mark.parametrize("threshold", [3.0, -2.0])
def test_report_of_the_own_levels_counts_the_sparse_file_of_vnqs_snapped_net(threshold):
    """widths=None: the report of the posterior's own levels. For a VNQ posterior its total bits
    per weight are sparse_codes' exact count of VNQ's own snapped codes (nearest codebook level,
    0 where log alpha prunes; a row of width 2 unless all its codes are 0) over all weights,
    the figure `vnq_snap` reports as stored bits."""
    net = untrained_vnq("mlp")
    pruning = PruningRule(log_alpha_threshold=threshold)
    post = posterior_of(net, (1, 8, 8))
    fc, *_, total = bits.bit_report(post, None, BitRule(pruning=pruning))
    counted = 0
    for module in (m for m in net.modules() if hasattr(m, "theta")):
        r = float(module.codebook_scale.detach())
        codes = codebook_codes(module.theta.detach(), r, module.num_levels)
        rows = codes.masked_fill(pruning.prunes_log_alpha(module.log_alpha), 0).flatten(1)
        counted += sparse_codes.layer_storage_bits(
            rows.numpy(),
            rows.ne(0).any(1).numpy() * 2,
            np.full(len(rows), r, np.float32),
            module.bias.detach().numpy(),
        )["total"]
    assert total["mean_bits"] == pytest.approx(counted / post.num_weights, rel=1e-12)
    assert set(fc["width_counts"]) <= {0, 2} and 0 < total["pruned_share"] < 1
    from bayesq.vnq_snap import quantize_vnq_

    assert total["mean_bits"] == pytest.approx(quantize_vnq_(net, pruning).stored_bits, rel=1e-12)
    with pytest.raises(TypeError, match="BitRule"):
        bits.bit_report(post, None, CompressionRule())
