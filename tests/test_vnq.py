"""VNQ through Pyro's SVI: the ELBO's KL, warm-up, training, prediction and resuming."""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bayesq.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from bayesq.nn import LocalReparameterization, VNQConv2d, VNQLinear
from bayesq.train import accuracy, fit_deterministic
from bayesq.vnq import VNQ, to_vnq_, vnq_layers
from bayesq.vnq_snap import set_eval_weights_
from tests.common import loader, toy_classification


def _net(features=8, classes=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, classes))


def test_to_vnq_replaces_layers_and_keeps_weights():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3), nn.Linear(3, 2))
    weights = [m.weight.detach().clone() for m in net if hasattr(m, "weight")]
    to_vnq_(net, exclude=("3",))
    assert isinstance(net[0], VNQConv2d) and isinstance(net[2], VNQLinear)
    assert isinstance(net[3], nn.Linear)
    torch.testing.assert_close(net[0].theta.detach(), weights[0])
    torch.testing.assert_close(net[2].theta.detach(), weights[1])
    assert [n for n, _ in vnq_layers(net)] == ["0", "2"]
    with pytest.raises(ValueError, match="groups"):
        to_vnq_(nn.Sequential(nn.Conv2d(2, 2, 3, groups=2)))


def test_elbo_equals_likelihood_minus_registered_kl():
    net = to_vnq_(_net())
    x, y = toy_classification(40)
    vnq = VNQ(net, num_data=40)
    # With the weights fixed to their means (sigma -> tiny) the likelihood is deterministic.
    with torch.no_grad():
        for layer in vnq.layers.values():
            layer.log_sigma2.fill_(-30.0)  # clipped to -10: sigma = 0.0067, tiny
    loss = TraceMeanField_ELBO().loss(vnq.model, vnq.guide, x, y)
    net.eval()
    nll = nn.functional.cross_entropy(net(x), y, reduction="sum").item()
    kl = vnq.kl().item()
    assert loss == pytest.approx(nll + kl, rel=2e-3)


def _fit_with_dead_inputs(num_levels):
    # Inputs 4..7 are always zero: the data says nothing about their first-layer weights.
    x, y = toy_classification(512, features=4)
    x = torch.cat([x, torch.zeros(512, 4)], 1)
    net = _net()
    fit_deterministic(net, loader(x, y, 64), epochs=5, lr=1e-2, progress=False)
    to_vnq_(net, num_levels=num_levels)
    vnq = VNQ(net, num_data=len(y))
    history = vnq.fit(loader(x, y, 64), epochs=8, lr=1e-2, kl_warmup_epochs=2, progress=False)
    assert [h["epoch"] for h in history] == list(range(1, 9))
    assert accuracy(net, x, y) > 0.9
    return vnq


def test_svi_fit_moves_unconstrained_weights_onto_the_spikes():
    vnq = _fit_with_dead_inputs(num_levels=3)
    first = vnq.layers["0"]
    r = first.codebook_scale.detach()
    distance = (first.theta.detach().unsqueeze(-1) - first.codebook().detach()).abs().min(-1).values
    # weights the data does not constrain sit on a codebook value (the KL vanishes only there)
    assert distance[:, 4:].max() < 0.02 * r
    # the ternary net classifies as well as the posterior mean
    set_eval_weights_(vnq.net, "quantized")
    assert accuracy(vnq.net, *_toy_with_dead_inputs()) > 0.9


def test_svi_fit_with_one_spike_prunes_irrelevant_inputs():
    # num_levels = 1 is sparse variational dropout's log-uniform prior: unconstrained weights
    # are pruned (log alpha >= 3), the informative ones are kept.
    vnq = _fit_with_dead_inputs(num_levels=1)
    first = vnq.layers["0"]
    pruned = first.log_alpha >= 3.0
    # (whole hidden units die too, in this over-wide net: hence a margin, not "none kept")
    assert pruned[:, 4:].float().mean() > 0.8
    assert pruned[:, 4:].float().mean() > pruned[:, :4].float().mean() + 0.25


def _toy_with_dead_inputs():
    x, y = toy_classification(512, features=4)
    return torch.cat([x, torch.zeros(512, 4)], 1), y


def test_predictive_samples_and_mean_prediction():
    x, y = toy_classification(64)
    net = to_vnq_(_net())
    vnq = VNQ(net, num_data=64)
    mean_probs = vnq.predict_proba(x)
    torch.testing.assert_close(mean_probs.sum(-1), torch.ones(64))
    sampled = vnq.predict_proba(x, num_samples=20)
    torch.testing.assert_close(sampled.sum(-1), torch.ones(64))
    # different weight draws, so not identical to the mean net, but close at log sigma^2 = -8
    assert not torch.equal(sampled, mean_probs)
    assert (sampled - mean_probs).abs().max() < 0.2


class _Interrupted(Exception):
    """Raised by the data set of an interrupted fit (an in-process stand-in for a kill)."""


class _InterruptingDataset(TensorDataset):
    """Serves `limit` examples, then raises _Interrupted: the fit stops in mid-epoch."""

    def __init__(self, x, y, limit=None):
        super().__init__(x, y)
        self.limit = limit

    def __getitem__(self, i):
        if self.limit is not None:
            if self.limit == 0:
                raise _Interrupted
            self.limit -= 1
        return super().__getitem__(i)


def _resumable_fit(x, y, epochs, path, limit=None, seed=3, num_levels=3, lr=1e-2, batch=32):
    """A small VNQ fit with a checkpoint; the data set stops serving after `limit` examples."""
    torch.manual_seed(123)
    net = to_vnq_(_net(), num_levels=num_levels)
    vnq = VNQ(net, num_data=len(y), seed=seed)
    data = DataLoader(
        _InterruptingDataset(x, y, limit),
        batch_size=batch,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    vnq.fit(data, epochs, lr=lr, kl_warmup_epochs=2, checkpoint=path, progress=False)
    return vnq


def test_fit_is_reproducible(tmp_path):
    x, y = toy_classification(128)
    a = _resumable_fit(x, y, 3, tmp_path / "a.ckpt")
    b = _resumable_fit(x, y, 3, tmp_path / "b.ckpt")
    for name, value in a.net.state_dict().items():
        assert torch.equal(value, b.net.state_dict()[name]), name
    assert a.history == b.history


@pytest.mark.parametrize("stopped_in_epoch", [2, 3])
def test_fit_interrupted_and_resumed_is_bit_identical(tmp_path, stopped_in_epoch):
    """A fit stopped in the middle of an epoch and resumed from its checkpoint ends with the
    parameters (bit for bit) and history of the fit that ran through: the loader's shuffle
    order, the weight noise and the schedule continue where the checkpoint left them."""
    x, y = toy_classification(128)  # 4 batches of 32 per epoch
    through = _resumable_fit(x, y, 3, tmp_path / "through.ckpt")
    path = tmp_path / "stopped.ckpt"
    # the fit's first check reads one batch, then each epoch 128 examples; stop 2 batches in
    served = 32 + 128 * (stopped_in_epoch - 1) + 64
    with pytest.raises(_Interrupted):
        _resumable_fit(x, y, 3, path, limit=served)
    assert load_checkpoint(path)["epochs_done"] == stopped_in_epoch - 1
    pyro.clear_param_store()
    torch.manual_seed(999)  # the resumed process starts from other RNG states
    resumed = _resumable_fit(x, y, 3, path)
    assert resumed.history == through.history
    for name, value in through.net.state_dict().items():
        assert torch.equal(value, resumed.net.state_dict()[name]), name


def test_resume_refuses_another_configuration(tmp_path):
    x, y = toy_classification(128)
    path = tmp_path / "c.ckpt"
    _resumable_fit(x, y, 3, path)
    before = path.read_bytes()
    cases = [
        (dict(epochs=2), r"made with epochs = 3, this fit has epochs = 2"),
        (dict(num_levels=5), r"num_levels\['0'\] = 3, this fit has num_levels\['0'\] = 5"),
        (dict(lr=3e-3), r"lr = 0.01, this fit has lr = 0.003"),
        (dict(seed=4), r"seed = 3, this fit has seed = 4"),
        (dict(batch=16), r"batch_size = 32, this fit has batch_size = 16"),
    ]
    for change, message in cases:
        kwargs = dict(epochs=3) | change
        with pytest.raises(CheckpointError, match=message) as info:
            _resumable_fit(x, y, kwargs.pop("epochs"), path, **kwargs)
        assert str(path) in str(info.value)
    # another net: the layer that differs is named
    torch.manual_seed(123)
    wider = to_vnq_(nn.Sequential(nn.Linear(8, 17), nn.ReLU(), nn.Linear(17, 3)))
    with pytest.raises(CheckpointError, match=r"architecture\[0\] = \['0', 'VNQLinear'"):
        VNQ(wider, num_data=128, seed=3).fit(loader(x, y, 32), 3, lr=1e-2, checkpoint=path)
    with pytest.raises(CheckpointError, match="num_data = 128, this fit has num_data = 1000"):
        VNQ(to_vnq_(_net()), num_data=1000, seed=3).fit(
            loader(x, y, 32), 3, lr=1e-2, kl_warmup_epochs=2, checkpoint=path
        )
    assert path.read_bytes() == before  # a refused resume leaves the checkpoint alone


@pytest.fixture(scope="module")
def finished_checkpoint(tmp_path_factory):
    """The checkpoint of a finished 3-epoch fit of _resumable_fit (toy data, 128 examples)."""
    path = tmp_path_factory.mktemp("finished") / "c.ckpt"
    _resumable_fit(*toy_classification(128), 3, path)
    return path


def _forged(path, tmp_path, edit):
    """A copy of the checkpoint at `path` with `edit(state)` applied."""
    state = load_checkpoint(path)
    edit(state)
    forged = tmp_path / "forged.ckpt"
    save_checkpoint(forged, state)
    return forged


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.update(epochs_done=-3), r"epochs_done = -3 lies outside 0..3"),
        (lambda s: s.update(epochs_done=4), r"epochs_done = 4 lies outside 0..3"),
        (lambda s: s.update(epochs_done=2.0), r"'epochs_done' is a float, expected int"),
        (lambda s: s.update(epochs_done=True), r"'epochs_done' is a bool, expected int"),
        (lambda s: s.update(epochs_done=2), r"history holds 3 epochs, epochs_done = 2"),
        (lambda s: s["history"][1].update(epoch=7), r"history\[1\] is of epoch 7, not 2"),
        (lambda s: s["history"][0].pop("loss"), r"no entry 'history\[0\].loss'"),
        (lambda s: s["history"].__setitem__(2, "x"), r"history\[2\] is a str, not a dict"),
        (lambda s: s.pop("net"), r"no entry 'net'"),
        (lambda s: s.pop("config"), r"no entry 'config'"),
        (lambda s: s["config"].pop("lr"), r"configuration lacks the field 'lr'"),
        (lambda s: s.update(kind=None), r"not a checkpoint of VNQ.fit"),
        (lambda s: s.update(version=1), r"VNQ checkpoint version 1, expected 2"),
        (lambda s: s["net"].pop("0.theta"), r"missing \['0.theta'\]"),
        (lambda s: s["net"].update({"0.theta": torch.zeros(3)}), r"'0.theta' is torch.float32"),
        (lambda s: s["net"].update({"0.theta": 1.0}), r"'0.theta' is float, expected"),
        (
            lambda s: s["optimizer"]["optimizer"]["state"][0].update(exp_avg=torch.zeros(2)),
            r"exp_avg of parameter 0 is not a tensor of shape \(16, 8\)",
        ),
        (lambda s: s["optimizer"].pop("scheduler"), r"not a JointAdam state"),
        (lambda s: s["rng"].update(torch=torch.zeros(3, dtype=torch.uint8)), r"generator state"),
        (lambda s: s["rng"].pop("numpy"), r"generator state"),
        (lambda s: s["rng"].update(loader=[]), r"0 loader generator state\(s\) for 1"),
    ],
)
def test_resume_refuses_malformed_contents(finished_checkpoint, tmp_path, edit, message):
    """Malformed checkpoint contents raise CheckpointError naming the file, never a raw
    KeyError / TypeError, and never resume with a counter out of range."""
    x, y = toy_classification(128)
    forged = _forged(finished_checkpoint, tmp_path, edit)
    with pytest.raises(CheckpointError, match=message) as info:
        _resumable_fit(x, y, 3, forged)
    assert str(forged) in str(info.value)


def test_bad_arguments():
    with pytest.raises(ValueError, match="no VNQ layers"):
        VNQ(_net(), num_data=10)
    with pytest.raises(ValueError, match="num_data"):
        VNQ(to_vnq_(_net()), num_data=0)
    vnq = VNQ(to_vnq_(_net()), num_data=10)
    with pytest.raises(ValueError, match="epochs"):
        vnq.fit(loader(*toy_classification(10)), epochs=0)
    for kwargs, error, message in [
        (dict(epochs=2.0), TypeError, "epochs must be an integer >= 1, got float"),
        (dict(epochs=2, lr=0.0), ValueError, "lr must be a finite number > 0"),
        (dict(epochs=2, lr=float("nan")), ValueError, "lr must be a finite number"),
        (dict(epochs=2, lr="1e-3"), TypeError, "lr must be a number, got str"),
        (
            dict(epochs=2, kl_warmup_epochs=-1),
            ValueError,
            "kl_warmup_epochs must be an integer >= 0",
        ),
    ]:
        with pytest.raises(error, match=message):
            vnq.fit(loader(*toy_classification(10)), **kwargs)


def test_local_reparameterization_inside_svi_model_trace():
    net = to_vnq_(_net())
    vnq = VNQ(net, num_data=10)
    x, y = toy_classification(10)
    guide_trace = poutine.trace(vnq.guide).get_trace(x, y)
    with LocalReparameterization():
        model_trace = poutine.trace(poutine.replay(vnq.model, trace=guide_trace)).get_trace(x, y)
    sites = [n for n, s in model_trace.nodes.items() if s["type"] == "sample"]
    assert sites == ["0.weight", "2.weight", "data", "y"] or set(sites) >= {
        "0.weight",
        "2.weight",
        "y",
    }


def test_guide_spares_weight_draws_only_under_local_reparameterization():
    vnq = VNQ(to_vnq_(_net()), num_data=10)
    x, y = toy_classification(10)
    theta = vnq.layers["0"].theta
    with LocalReparameterization():
        placeholder = poutine.trace(vnq.guide).get_trace(x, y).nodes["0.weight"]["value"]
    torch.testing.assert_close(placeholder, theta)
    drawn = poutine.trace(vnq.guide).get_trace(x, y).nodes["0.weight"]["value"]
    assert not torch.equal(drawn, theta)
