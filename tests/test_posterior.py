"""bayesq.posterior: layer posteriors from VNQ and discrete trainers, level masses, ArviZ export."""

import arviz as az
import numpy as np
import pytest
import torch

from bayesq.nn import posterior_of
from bayesq.posterior import LayerPosterior, Posterior, gaussian_cell_mass
from tests.common import untrained_vnq


def tiny_vnq_net():
    return untrained_vnq("lenet5")


def test_posterior_of_a_vnq_net_holds_every_layer_and_the_structure():
    net = tiny_vnq_net()
    post = posterior_of(net, (1, 28, 28))
    assert list(post.layers) == ["conv1", "conv2", "fc1", "fc2"]
    assert post.ops[:4] == [
        {"kind": "layer", "name": "conv1"},
        {"kind": "maxpool2d", "kernel_size": 2},
        {"kind": "relu"},
        {"kind": "layer", "name": "conv2"},
    ]
    conv1 = post.layers["conv1"]
    assert conv1.kind == "conv2d" and conv1.conv == {"stride": [1, 1], "padding": [0, 0]}
    torch.testing.assert_close(conv1.mean, net.conv1.theta.detach())
    torch.testing.assert_close(conv1.variance, net.conv1.sigma2.detach())
    torch.testing.assert_close(conv1.log_alpha, net.conv1.log_alpha.detach(), rtol=1e-5, atol=1e-4)
    fc1 = post.layers["fc1"]
    assert fc1.level_probs.shape == (*fc1.mean.shape, 3)
    torch.testing.assert_close(fc1.level_probs.sum(-1), torch.ones_like(fc1.mean))
    assert post.num_weights == sum(m.theta.numel() for m in net.modules() if hasattr(m, "theta"))


def test_cell_mass_matches_monte_carlo():
    levels = torch.tensor([-0.2, 0.0, 0.2])
    mean = torch.tensor([-0.25, 0.02, 0.1, 0.3])
    std = torch.tensor([0.05, 0.2, 0.1, 0.01])
    mass = gaussian_cell_mass(mean, std, levels)
    draws = mean + std * torch.randn(200_000, 4)
    nearest = (draws.unsqueeze(-1) - levels).abs().argmin(-1)
    empirical = torch.stack([(nearest == k).float().mean(0) for k in range(3)], -1)
    torch.testing.assert_close(mass, empirical, atol=4e-3, rtol=0)


def test_cell_mass_of_a_single_level_codebook_is_one():
    """Sparse VD's prior has one spike (levels = [0]): its one cell holds all the mass."""
    mass = gaussian_cell_mass(torch.randn(2, 3), torch.ones(2, 3), torch.zeros(1))
    assert torch.equal(mass, torch.ones(2, 3, 1))


def test_from_discrete_moments_and_sampling():
    probs = torch.tensor([[[0.1, 0.2, 0.7], [1.0, 0.0, 0.0]]])  # (1, 2, 3 levels)
    post = Posterior.from_discrete(
        {"fc": {"levels": [-1.0, 0.0, 1.0], "probs": probs, "bias": torch.zeros(1)}},
        [{"kind": "flatten"}, {"kind": "layer", "name": "fc"}],
        (2,),
    )
    fc = post.layers["fc"]
    torch.testing.assert_close(fc.mean, torch.tensor([[0.6, -1.0]]))
    torch.testing.assert_close(fc.variance, torch.tensor([[0.8 - 0.36, 1e-12]]))
    draws = fc.sample(20_000, torch.Generator().manual_seed(1))
    assert set(draws.unique().tolist()) <= {-1.0, 0.0, 1.0}
    torch.testing.assert_close(draws.mean(0), fc.mean, atol=0.02, rtol=0)
    with pytest.raises(ValueError, match="sum to 1"):
        Posterior.from_discrete(
            {"fc": {"levels": [-1, 1], "probs": torch.ones(1, 2, 2)}},
            [{"kind": "layer", "name": "fc"}],
            (2,),
        )


def test_row_scale_gives_each_row_its_unit_of_the_levels():
    """A deterministic net with per-row scales (XNOR-Net's mean |W| per filter, a folded batch
    norm): one-hot level masses, each row's levels times its row_scale."""
    probs = torch.nn.functional.one_hot(torch.tensor([[0, 2, 1], [2, 2, 0]]), 3).float()
    post = Posterior.from_discrete(
        {"fc": {"levels": [-1.0, 0.0, 1.0], "probs": probs, "row_scale": [0.5, 2.0]}},
        [{"kind": "layer", "name": "fc"}],
        (3,),
    )
    fc = post.layers["fc"]
    assert torch.equal(fc.mean, torch.tensor([[-0.5, 0.5, 0.0], [2.0, 2.0, -2.0]]))
    torch.testing.assert_close(fc.variance, torch.tensor([[0.25, 0.25, 0.25], [4, 4, 4]]) * 1e-12)
    assert torch.equal(fc.nearest_level, torch.tensor([[0, 2, 1], [2, 2, 0]]))
    draws = fc.sample(3, torch.Generator().manual_seed(0))
    assert torch.equal(draws, fc.mean.expand(3, 2, 3))
    for bad, match in (
        ([0.5], "row_scale"),
        ([0.5, 0.0], "row_scale"),
        ([1, float("nan")], "row_scale"),
    ):
        with pytest.raises(ValueError, match=match):
            Posterior.from_discrete(
                {"fc": {"levels": [-1.0, 0.0, 1.0], "probs": probs, "row_scale": bad}},
                [{"kind": "layer", "name": "fc"}],
                (3,),
            )
    gaussian = post.layers["fc"]
    with pytest.raises(ValueError, match="only a discrete posterior"):
        type(gaussian)(
            name="fc",
            mean=gaussian.mean,
            variance=torch.ones(2, 3),
            levels=gaussian.levels,
            level_probs=gaussian.level_probs,
            row_scale=torch.ones(2),
        )


def test_to_inference_data_works_with_arviz():
    post = posterior_of(tiny_vnq_net(), (1, 28, 28))
    data = post.to_inference_data({"fc2": [(0, 0), (3, 7)]}, draws=500, chains=2, seed=0)
    summary = az.summary(data)
    assert list(summary.index) == ["fc2[0,0]", "fc2[3,7]"]
    fc2 = post.layers["fc2"]
    for label, index in (("fc2[0,0]", (0, 0)), ("fc2[3,7]", (3, 7))):
        se = float(fc2.std[index]) / np.sqrt(1000)
        assert abs(summary.loc[label, "mean"] - float(fc2.mean[index])) < 5 * se + 1e-3
        assert summary.loc[label, "r_hat"] < 1.05
    assert float(data.constant_data["fc2.r"].values.ravel()[0]) == pytest.approx(
        post.layers["fc2"].codebook_scale
    )
    default = post.to_inference_data(draws=100)
    assert len(default.posterior.data_vars) == 4 * len(post.layers)
    with pytest.raises(ValueError, match="no layer"):
        post.to_inference_data({"fc9": [(0, 0)]})


def test_bad_posteriors_raise():
    with pytest.raises(ValueError, match="variance"):
        LayerPosterior(
            "x", torch.zeros(2, 2), torch.zeros(2, 2), torch.tensor([0.0]), torch.ones(2, 2, 1)
        )
    with pytest.raises(ValueError, match="stride"):
        LayerPosterior(
            "x",
            torch.zeros(2, 1, 3, 3),
            torch.ones(2, 1, 3, 3),
            torch.tensor([0.0]),
            torch.ones(2, 1, 3, 3, 1),
        )
    with pytest.raises(ValueError, match="no discrete form"):
        posterior_of(torch.nn.Sequential(torch.nn.Sigmoid()), (3,))
