"""VNQ layers: local reparameterization moments, eval modes, Pyro sites, initialisation."""

import pyro
import pytest
import torch
from pyro import poutine

from bayesq.nn import LOG_SIGMA2_RANGE, LocalReparameterization, VNQConv2d, VNQLinear


def _randomize_posterior(layer):
    with torch.no_grad():
        layer.theta.normal_(0.0, 0.3)
        layer.log_sigma2.uniform_(-4.0, -1.0)
    return layer


def _sampled_weight_outputs(layer, x, samples):
    """Outputs with full weights drawn from q: the slow, obvious reference for LRT."""
    sigma = layer.sigma2.sqrt()
    outs = []
    for _ in range(samples):
        w = layer.theta + sigma * torch.randn_like(sigma)
        outs.append(layer._apply_weight(x, w, layer.bias))
    return torch.stack(outs)


@pytest.mark.parametrize(
    "layer, x",
    [
        (VNQLinear(7, 5), torch.randn(3, 7)),
        (VNQConv2d(2, 3, 3, padding=1), torch.randn(2, 2, 5, 5)),
        (VNQConv2d(2, 4, (3, 2), stride=2), torch.randn(1, 2, 7, 6)),
    ],
)
def test_local_reparameterization_moments_match_sampled_weights(layer, x):
    layer = _randomize_posterior(layer).train()
    n = 4000
    with torch.no_grad():
        lrt = torch.stack([layer(x) for _ in range(n)])
        ref = _sampled_weight_outputs(layer, x, n)
    # Means agree within sampling error: both means are estimates, so their difference has the
    # standard error sqrt(se_lrt^2 + se_ref^2); 5 of those over ~150 outputs fails with
    # probability ~1e-4. Standard deviations agree within a few percent.
    se = ref.std(0) / n**0.5
    se_difference = (lrt.var(0) / n + ref.var(0) / n).sqrt()
    assert ((lrt.mean(0) - ref.mean(0)).abs() < 5 * se_difference + 1e-4).all()
    torch.testing.assert_close(lrt.std(0), ref.std(0), rtol=0.08, atol=1e-3)
    # and the analytic moments: E = x theta^T + b, Var = x^2 sigma^2^T
    mean = layer._apply_weight(x, layer.theta, layer.bias)
    var = layer._apply_weight(x.square(), layer.sigma2, None)
    torch.testing.assert_close(ref.var(0), var.detach(), rtol=0.1, atol=1e-3)
    assert ((ref.mean(0) - mean).abs() < 5 * se + 1e-4).all()


def test_eval_uses_mean_or_quantized_weights():
    layer = _randomize_posterior(VNQLinear(6, 4)).eval()
    x = torch.randn(5, 6)
    torch.testing.assert_close(layer(x), x @ layer.theta.T + layer.bias)
    layer.eval_weights = "quantized"
    q = layer.quantized_weight()
    torch.testing.assert_close(layer(x), x @ q.T + layer.bias)
    levels = set(torch.unique(q).tolist())
    r = layer.codebook_scale.item()
    assert levels <= {-r, 0.0, r} or all(min(abs(v - c) for c in (-r, 0, r)) < 1e-6 for v in levels)
    layer.eval_weights = "median"
    with pytest.raises(ValueError, match="eval_weights"):
        layer(x)


def test_log_alpha_and_sigma_clipping():
    layer = VNQLinear(3, 2)
    with torch.no_grad():
        layer.theta.fill_(0.5)
        layer.log_sigma2.copy_(torch.tensor([[-20.0, 0.0, 5.0], [-3.0, -3.0, -3.0]]))
    clipped = layer.log_sigma2.clamp(*LOG_SIGMA2_RANGE)
    torch.testing.assert_close(layer.log_alpha, clipped - torch.log(torch.tensor(0.25)))


def test_load_deterministic_and_codebook_init():
    layer = VNQLinear(100, 50)
    w = torch.randn(50, 100) * 0.1
    layer.load_deterministic_(w, torch.zeros(50), zero_share=0.6)
    torch.testing.assert_close(layer.theta.detach(), w)
    r = layer.codebook_scale.item()
    share_near_zero = (w.abs() < r / 2).float().mean().item()
    assert share_near_zero == pytest.approx(0.6, abs=0.01)
    with pytest.raises(ValueError, match="shape"):
        layer.load_deterministic_(torch.zeros(3, 3), None)
    with pytest.raises(ValueError, match="zero_share"):
        layer.init_codebook_scale_(1.5)


def test_pyro_site_and_local_reparameterization_handler():
    layer = _randomize_posterior(VNQLinear(4, 3))
    x = torch.randn(2, 4)
    with pytest.raises(RuntimeError, match="site_name"):
        poutine.trace(layer).get_trace(x)
    layer.site_name = "layer.weight"
    w = torch.randn(3, 4)
    # Outside the handler the layer uses the site's value (e.g. under Predictive)...
    conditioned = poutine.condition(layer, data={"layer.weight": w})
    trace = poutine.trace(conditioned).get_trace(x)
    assert trace.nodes["layer.weight"]["fn"].event_shape == (3, 4)
    torch.testing.assert_close(trace.nodes["_RETURN"]["value"], x @ w.T + layer.bias)
    # ...and inside it, pre-activations are drawn from q whatever the site's value.
    with LocalReparameterization():
        outs = torch.stack([conditioned(x) for _ in range(2000)]).detach()
    torch.testing.assert_close(
        outs.mean(0), (x @ layer.theta.T + layer.bias).detach(), atol=0.05, rtol=0
    )
    assert pyro.get_param_store().keys() == set()


@pytest.mark.parametrize(
    "layer, x",
    [
        (VNQLinear(7, 5), torch.randn(3, 7)),
        (VNQConv2d(2, 3, 3, padding=1), torch.randn(2, 2, 5, 5)),
    ],
)
def test_a_training_step_refuses_non_finite_pre_activations(layer, x):
    """The local reparameterization sample (fused C++) used to return NaN for a NaN or infinite
    input, and training carried on with NaN gradients; its own pass now finds it."""
    layer = _randomize_posterior(layer).train()
    assert torch.isfinite(layer(x)).all()
    for value in (float("nan"), float("inf")):
        bad = x.clone()
        bad.view(-1)[1] = value
        with pytest.raises(ValueError, match="local_reparameterization_sample: (mean|var)"):
            layer(bad)
