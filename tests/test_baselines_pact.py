"""bayesq.baselines.pact: the clipped, quantized activation of PACT (Eq. 1-2), its gradients in x
and alpha (Eq. 3), per layer and per channel, the module and the L2 penalty of alpha."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from bayesq.baselines.pact import PACT, pact, pact_penalty


def test_hand_values_and_gradients_of_one_alpha():
    x = torch.tensor([-1.0, 0.0, 0.4, 0.5, 1.2, 2.6, 3.0, 5.0], requires_grad=True)
    alpha = torch.tensor(3.0, requires_grad=True)
    out = pact(x, alpha, 2)
    # step alpha / (2^2 - 1) = 1: round(clip(x, 0, 3)); 0.5 is a tie, half to even -> 0
    assert out.tolist() == [0.0, 0.0, 0.0, 0.0, 1.0, 3.0, 3.0, 3.0]
    (out * torch.arange(8.0)).sum().backward()
    # dy_q/dx = 1 on [0, alpha): x = 0 passes, x = alpha does not
    assert x.grad.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0]
    # dy_q/dalpha = 1{x >= alpha}, summed: entries 6 and 7
    assert alpha.grad.item() == 13.0


def test_a_step_that_is_not_one():
    x = torch.tensor([0.3, 1.0, 1.5, 1.99], dtype=torch.float64)
    # alpha 2, k = 2: y * 3 / 2 = 0.45, 1.5, 2.25, 2.985 -> 0, 2 (tie, to even), 2, 3; times 2 / 3
    out = pact(x, torch.tensor(2.0, dtype=torch.float64), 2)
    expected = torch.tensor([0.0, 4.0, 4.0, 6.0], dtype=torch.float64) / 3
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-15)


def test_one_alpha_per_channel_sums_its_gradient_over_batch_and_positions():
    x = torch.tensor(
        [[[0.2, 1.5], [1.1, 3.0], [-1.0, 4.5]], [[1.0, 0.6], [2.5, 1.1], [5.0, 1.9]]],
        requires_grad=True,
    )  # (N=2, C=3, L=2)
    alpha = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    out = pact(x, alpha, 1)  # one bit: levels 0 and alpha_c, threshold alpha_c / 2
    assert out.tolist() == [
        [[0.0, 1.0], [2.0, 2.0], [0.0, 4.0]],
        [[1.0, 1.0], [2.0, 2.0], [4.0, 0.0]],
    ]
    out.backward(torch.ones_like(out))
    # x >= alpha_c: channel 0 at 1.5 and 1.0; channel 1 at 3.0 and 2.5; channel 2 at 4.5 and 5.0
    assert alpha.grad.tolist() == [2.0, 2.0, 2.0]
    expected_x = [[[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]]
    assert x.grad.tolist() == expected_x


def test_thirty_two_bits_clip_without_rounding():
    x = torch.tensor([-0.5, 0.3, 2.0, 7.0], requires_grad=True)
    alpha = torch.tensor(2.0, requires_grad=True)
    out = pact(x, alpha, 32)
    assert out.tolist() == [0.0, pytest.approx(0.3), 2.0, 2.0]
    out.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 0.0, 0.0] and alpha.grad.item() == 2.0


@given(
    values=st.lists(st.floats(-5, 15, allow_nan=False), min_size=1, max_size=40),
    alpha=st.floats(0.1, 10.0),
    bits=st.integers(1, 8),
)
def test_output_is_the_nearest_level_of_the_clipped_input(values, alpha, bits):
    m = 2**bits - 1
    x = torch.tensor(values, dtype=torch.float64)
    out = pact(x, torch.tensor(alpha, dtype=torch.float64), bits)
    j = out * m / alpha
    assert bool(((j - torch.round(j)).abs() <= 1e-9).all())  # on the levels j alpha / m
    assert bool((out >= 0).all()) and bool((out <= alpha * (1 + 1e-12)).all())
    y = x.clamp(0, alpha)
    assert bool(((out - y).abs() <= alpha / (2 * m) * (1 + 1e-9)).all())


def test_module_holds_alpha_and_learns_it_by_the_clipping_gradient():
    layer = PACT(2)
    assert isinstance(layer.alpha, nn.Parameter) and layer.alpha.shape == ()
    assert layer.alpha.item() == 10.0 and "bits=2" in repr(layer)
    x = torch.tensor([1.0, 12.0, 20.0, -3.0])
    assert torch.equal(layer(x), pact(x, layer.alpha, 2))
    layer(x).sum().backward()
    assert layer.alpha.grad.item() == 2.0  # two activations at or above alpha = 10
    per_channel = PACT(4, alpha_init=6.0, channels=3)
    assert per_channel.alpha.tolist() == [6.0, 6.0, 6.0]
    z = torch.randn(2, 3, 4, 4) * 8
    assert torch.equal(per_channel(z), pact(z, per_channel.alpha, 4))


def test_penalty_sums_alpha_squared_over_the_pact_modules():
    net = nn.Sequential(
        nn.Linear(3, 3), PACT(2), nn.Sequential(nn.Linear(3, 2), PACT(4, 0.5, channels=2))
    )
    net[2][1].alpha.data = torch.tensor([1.0, 2.0])
    penalty = pact_penalty(net)
    assert penalty.item() == 100.0 + 1.0 + 4.0
    penalty.backward()
    assert net[1].alpha.grad.item() == 20.0 and net[2][1].alpha.grad.tolist() == [2.0, 4.0]
    assert net[0].weight.grad is None  # the weights are not in it
    assert pact_penalty(nn.Linear(2, 2)).item() == 0.0


# --- bad input ------------------------------------------------------------------------------------
def test_bad_alpha():
    x = torch.ones(2, 3)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="alpha"):
            pact(x, torch.tensor(bad), 2)
    with pytest.raises(ValueError, match="alpha"):
        pact(x, torch.tensor([1.0, 0.0, 1.0]), 2)
    with pytest.raises(ValueError, match="per-channel"):
        pact(x, torch.ones(2), 2)
    with pytest.raises(ValueError, match="per-channel"):
        pact(torch.ones(3), torch.ones(3), 2)
    with pytest.raises(ValueError, match="0-d or"):
        pact(x, torch.ones(2, 3), 2)
    with pytest.raises(TypeError, match="dtype"):
        pact(x, torch.tensor(1.0, dtype=torch.float64), 2)
    with pytest.raises(TypeError, match="alpha"):
        pact(x, 1.0, 2)


def test_bad_x_and_bits():
    alpha = torch.tensor(1.0)
    with pytest.raises(ValueError, match="NaN"):
        pact(torch.tensor([float("nan")]), alpha, 2)
    with pytest.raises(TypeError, match="floating-point"):
        pact(torch.tensor([1, 2]), alpha, 2)
    for bad in (0, 17, 31):
        with pytest.raises(ValueError, match="bits"):
            pact(torch.ones(2), alpha, bad)
        with pytest.raises(ValueError, match="bits"):
            PACT(bad)
    with pytest.raises(TypeError, match="bits"):
        pact(torch.ones(2), alpha, 2.0)
    with pytest.raises(ValueError, match="alpha_init"):
        PACT(2, alpha_init=0.0)
    with pytest.raises(ValueError, match="channels"):
        PACT(2, channels=0)
    with pytest.raises(TypeError, match="net"):
        pact_penalty([PACT(2)])
