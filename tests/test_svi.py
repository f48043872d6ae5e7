"""bayesq.svi: the lean mean-field ELBO, the KL warm-up weight and the fused Adam of a VNQ fit."""

import pyro
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO
from torch import nn

from bayesq.nn import LocalReparameterization
from bayesq.svi import CODEBOOK_LR_FACTOR, JointAdam, KLWeight, MeanFieldELBO
from bayesq.train import adam_options
from bayesq.vnq import VNQ, to_vnq_
from tests.common import toy_classification


def _net(features=8, classes=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, classes))


def test_lean_elbo_equals_trace_mean_field_elbo():
    net = to_vnq_(_net())
    x, y = toy_classification(40)
    vnq = VNQ(net, num_data=400)
    model = LocalReparameterization()(vnq.model)
    pyro.set_rng_seed(5)
    reference = TraceMeanField_ELBO().loss(model, vnq.guide, x, y)
    pyro.set_rng_seed(5)
    lean = MeanFieldELBO().loss(model, vnq.guide, x, y)
    assert lean == pytest.approx(reference, rel=1e-6)


def test_kl_weight_scales_only_the_kl_term():
    net = to_vnq_(_net())
    x, y = toy_classification(40)
    vnq = VNQ(net, num_data=40)
    with torch.no_grad():
        for layer in vnq.layers.values():
            layer.log_sigma2.fill_(-30.0)
    elbo = TraceMeanField_ELBO()
    pyro.set_rng_seed(1)  # the same weight noise in both evaluations
    full = elbo.loss(vnq.model, vnq.guide, x, y)
    half = KLWeight(0.5)
    pyro.set_rng_seed(1)
    halved = elbo.loss(half(vnq.model), half(vnq.guide), x, y)
    assert full - halved == pytest.approx(0.5 * vnq.kl().item(), rel=2e-3)


def test_joint_adam_steps_as_pyros_per_parameter_adam():
    """The single fused Adam of JointAdam makes the same updates as Pyro's one Adam per
    parameter with the same learning rates (codebook scales CODEBOOK_LR_FACTOR slower)."""
    x, y = toy_classification(64)

    def params_after_steps(make_optimizer):
        torch.manual_seed(0)
        pyro.set_rng_seed(0)
        net = to_vnq_(_net())
        vnq = VNQ(net, num_data=64)
        svi = pyro.infer.SVI(vnq.model, vnq.guide, make_optimizer(net), MeanFieldELBO())
        for _ in range(3):
            svi.step(x, y)
        return dict(net.named_parameters())

    def per_parameter_lr(module_name, param_name):
        slow = param_name.endswith("log_codebook_scale")
        return {"lr": 1e-2 * (CODEBOOK_LR_FACTOR if slow else 1.0), **adam_options()}

    joint = params_after_steps(lambda net: JointAdam(net, 1e-2, total_steps=100))
    separate = params_after_steps(lambda net: pyro.optim.Adam(per_parameter_lr))
    assert joint.keys() == separate.keys()
    for name in joint:
        torch.testing.assert_close(joint[name], separate[name], msg=name)
    moved = to_vnq_(_net())  # the same start: the steps moved every parameter
    assert not torch.equal(joint["0.theta"], dict(moved.named_parameters())["0.theta"])


def test_joint_adam_refuses_parameters_of_another_net():
    net, other = to_vnq_(_net()), to_vnq_(_net())
    with pytest.raises(ValueError, match="not the net's own"):
        JointAdam(net, 1e-3, 10)(list(other.parameters()))
    with pytest.raises(ValueError, match="not a JointAdam state"):
        JointAdam(net, 1e-3, 10).set_state({"x$$$0.theta": {}})


def test_joint_adam_checks_a_whole_state_before_loading_any_of_it():
    """A state whose Adam moments do not fit the net's parameters is refused (ValueError naming
    the moment) and the optimizer keeps its own state: torch's load_state_dict would take it and
    fail only at the next step."""
    net = to_vnq_(_net())
    source = JointAdam(net, 1e-3, 10)
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    source(list(net.parameters()))
    state = source.get_state()
    state["optimizer"]["state"][0]["exp_avg"] = torch.zeros(2)
    target = JointAdam(net, 1e-3, 10)
    with pytest.raises(ValueError, match=r"exp_avg of parameter 0 is not a tensor of shape"):
        target.set_state(state)
    assert target.optimizer.state_dict()["state"] == {}
    del state["optimizer"]["state"][0]["exp_avg"]
    with pytest.raises(ValueError, match=r"exp_avg of parameter 0"):
        target.set_state(state)
    state["optimizer"]["param_groups"][0]["params"].pop()
    with pytest.raises(ValueError, match=r"covers \d+ parameters, the net has"):
        target.set_state(state)
