"""INQ (bayesq.baselines.inq): levels, Eq. 4 against a loop over its intervals, the partition and
the schedule a training loop runs."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bayesq.baselines.inq import (
    INQ_PORTIONS,
    InqSchedule,
    freeze_,
    inq_codes,
    inq_exponents,
    inq_levels,
    inq_partition,
    inq_quantize,
    mask_frozen_grad_,
)

SHAPES = st.sampled_from([(1, 1), (3, 5), (4, 2, 3, 3), (2, 1, 1, 5)])


def _weights(shape, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(shape, generator=g, dtype=torch.float64)


def _eq4(v: float, n1: int, n2: int) -> float:
    """Eq. 4 read literally: beta sign(v) where (alpha + beta) / 2 <= |v| < 3 beta / 2 for adjacent
    levels alpha < beta; 0 below every interval; 2^n1 above the top one (our saturation)."""
    levels = [0.0] + [2.0**n for n in range(n2, n1 + 1)]
    for alpha, beta in zip(levels, levels[1:], strict=False):
        if (alpha + beta) / 2 <= abs(v) < 3 * beta / 2:
            return math.copysign(beta, v)
    return 0.0 if abs(v) < 2.0 ** (n2 - 1) else math.copysign(2.0**n1, v)


# --- exponents (Eq. 2-3) ----------------------------------------------------------------------------
def test_exponents_by_hand():
    assert inq_exponents(torch.tensor([[0.75, -0.1]]), 5) == (0, -7)  # 4/3 * 0.75 = 1
    assert inq_exponents(torch.tensor([[0.74, -0.1]]), 5) == (-1, -8)  # 0.9867 < 1
    assert inq_exponents(torch.tensor([[1.0]]), 5) == (0, -7)  # 4/3
    assert inq_exponents(torch.tensor([[0.2, -1.5]]), 5) == (1, -6)  # 2
    assert inq_exponents(torch.tensor([[-3.0, 0.1]]), 4) == (2, -1)  # 4; n2 = n1 + 1 - 4
    assert inq_exponents(torch.tensor([[0.75]]), 3) == (0, -1)
    assert inq_exponents(torch.tensor([[0.75]]), 2) == (0, 0)  # ternary {0, +-1}
    assert inq_exponents(torch.tensor([[0.75]]), 7) == (0, -31)


@given(shape=SHAPES, seed=st.integers(0, 1000), scale=st.sampled_from([1e-3, 0.1, 1.0, 30.0]))
def test_n1_puts_the_largest_weight_on_the_top_level_without_saturation(shape, seed, scale):
    w = _weights(shape, seed, scale)
    n1, n2 = inq_exponents(w, 5)
    s = float(w.abs().max())
    assert 3 * 2.0 ** (n1 - 2) <= s < 3 * 2.0 ** (n1 - 1)  # 2^n1 <= 4 s / 3 < 2^(n1 + 1)
    assert n2 == n1 - 7
    q = inq_quantize(w, n1, n2)
    assert float(q.abs().max()) == 2.0**n1


# --- quantization (Eq. 4) ---------------------------------------------------------------------------
def test_quantize_by_hand_with_ties_to_the_larger_level():
    # n1 = 0, n2 = -2: levels 0, 1/4, 1/2, 1; interval bounds 1/8, 3/8, 3/4
    w = torch.tensor([[0.1, 0.125, 0.2, 0.3749, 0.375, 0.74, 0.75, 1.4, 2.0]])
    assert inq_quantize(w, 0, -2).tolist() == [[0.0, 0.25, 0.25, 0.25, 0.5, 0.5, 1.0, 1.0, 1.0]]
    assert inq_quantize(-w, 0, -2).tolist() == [
        [-0.0, -0.25, -0.25, -0.25, -0.5, -0.5, -1.0, -1.0, -1.0]
    ]
    assert inq_levels(0, -2).tolist() == [0.0, 0.25, 0.5, 1.0]


def test_quantize_two_bits_is_ternary():
    w = torch.tensor([[0.49, 0.5, -0.5, 5.0, 0.0]])
    assert inq_quantize(w, 0, 0).tolist() == [[0.0, 1.0, -1.0, 1.0, 0.0]]


@given(
    shape=SHAPES,
    seed=st.integers(0, 1000),
    n1=st.integers(-3, 2),
    span=st.integers(0, 6),
)
def test_quantize_is_eq_4_and_the_nearest_level(shape, seed, n1, span):
    n2 = n1 - span
    w = _weights(shape, seed, scale=2.0**n1)
    q = inq_quantize(w, n1, n2)
    assert q.dtype == w.dtype and q.shape == w.shape
    levels = inq_levels(n1, n2, torch.float64).tolist()
    for v, got in zip(w.flatten().tolist(), q.flatten().tolist(), strict=True):
        assert got == _eq4(v, n1, n2)
        assert min(abs(abs(v) - level) for level in levels) == abs(abs(v) - abs(got))


def test_quantize_is_not_differentiable_and_idempotent():
    w = torch.tensor([[0.3, -0.9]], requires_grad=True)
    q = inq_quantize(w, 0, -3)
    assert not q.requires_grad
    assert torch.equal(inq_quantize(q, 0, -3), q)


# --- codes ------------------------------------------------------------------------------------------
def test_codes_by_hand_and_their_width():
    codes, scale = inq_codes(torch.tensor([[0.3, -1.0, 0.05, 0.5]]), 0, -2)
    assert codes.tolist() == [[1, -4, 0, 2]] and scale.dim() == 0 and float(scale) == 0.25
    w = torch.ones(1, 1)
    # n1 - n2 + 2 bits signed: 8 -> int8, 9 (the paper's 5 bits) -> int16, 17 -> int32, 33 -> int64
    assert inq_codes(w, 0, -6)[0].dtype == torch.int8 and int(inq_codes(w, 0, -6)[0]) == 64
    assert inq_codes(w, 0, -7)[0].dtype == torch.int16
    assert inq_codes(w, 0, -15)[0].dtype == torch.int32
    assert inq_codes(w, 0, -31)[0].dtype == torch.int64 and int(inq_codes(w, 0, -31)[0]) == 2**31
    with pytest.raises(ValueError, match="int64"):
        inq_codes(w.double(), 0, -63)


@given(shape=SHAPES, seed=st.integers(0, 1000), bits=st.integers(2, 7))
def test_codes_reproduce_the_quantized_weights(shape, seed, bits):
    w = _weights(shape, seed)
    n1, n2 = inq_exponents(w, bits)
    codes, scale = inq_codes(w, n1, n2)
    assert torch.equal(codes.to(w.dtype) * scale, inq_quantize(w, n1, n2))
    assert int(codes.abs().max()) == 2 ** (n1 - n2)  # the largest weight: the top code


# --- partition and schedule -------------------------------------------------------------------------
W8 = [[0.1, -0.9, 0.5, 0.3], [-0.7, 0.2, 0.05, 0.8]]


def test_partition_freezes_the_largest_magnitudes_first():
    w = torch.tensor(W8)
    frozen = torch.zeros(2, 4, dtype=torch.bool)
    expected = [
        (0.5, [[0, 1, 1, 0], [1, 0, 0, 1]]),  # 0.9, 0.8, 0.7, 0.5
        (0.75, [[0, 1, 1, 1], [1, 1, 0, 1]]),  # + 0.3, 0.2
        (0.875, [[1, 1, 1, 1], [1, 1, 0, 1]]),  # + 0.1
        (1.0, [[1, 1, 1, 1], [1, 1, 1, 1]]),
    ]
    for portion, mask in expected:
        frozen = inq_partition(w, frozen, portion)
        assert frozen.int().tolist() == mask


def test_partition_keeps_the_frozen_and_rounds_half_up():
    w = torch.tensor(W8)
    frozen = torch.zeros(2, 4, dtype=torch.bool)
    frozen[1, 2] = True  # 0.05, the smallest, frozen already: it stays and counts
    grown = inq_partition(w, frozen, 0.25)
    assert grown.int().tolist() == [[0, 1, 0, 0], [0, 0, 1, 0]]
    assert not frozen[0, 1]  # a new tensor; the argument is untouched
    three = torch.tensor([[0.1, 0.3, 0.2]])
    empty = torch.zeros(1, 3, dtype=torch.bool)
    assert inq_partition(three, empty, 0.5).int().tolist() == [[0, 1, 1]]  # 1.5 -> 2
    ties = torch.tensor([[0.5, -0.5, 0.5, 0.1]])
    assert inq_partition(ties, torch.zeros(1, 4, dtype=torch.bool), 0.5).int().tolist() == [
        [1, 1, 0, 0]
    ]


def _sgd_step(weights, velocities, lr=0.1, momentum=0.9, weight_decay=0.1):
    """SGD with momentum and weight decay (torch.optim.SGD's rule), by hand: its first use in a
    process costs seconds of imports that these tests need not pay."""
    with torch.no_grad():
        for w, v in zip(weights, velocities, strict=True):
            v.mul_(momentum).add_(w.grad + weight_decay * w)
            w.sub_(lr * v)


def test_schedule_runs_the_paper_portions():
    g = torch.Generator().manual_seed(0)
    weights = [
        torch.nn.Parameter(torch.randn(4, 5, generator=g)),
        torch.nn.Parameter(torch.randn(3, 2, 2, 2, generator=g)),
    ]
    schedule = InqSchedule(weights, bits=5)
    assert schedule.portions == INQ_PORTIONS and schedule.portion == 0.0 and not schedule.done
    velocities = [torch.zeros_like(w) for w in weights]
    expected_counts = [[10, 12], [15, 18], [18, 21], [20, 24]]  # round(p * 20), round(p * 24)
    previous = [f.clone() for f in schedule.frozen]
    for step, portion in enumerate(INQ_PORTIONS):
        assert schedule.advance_() == portion and schedule.portion == portion
        assert schedule.frozen_counts() == expected_counts[step]
        for f, before in zip(schedule.frozen, previous, strict=True):
            assert bool((f | ~before).all())  # the frozen sets only grow
        levels_now = [w.detach().clone() for w in weights]
        for w, f, (n1, n2) in zip(weights, schedule.frozen, schedule.exponents, strict=True):
            assert torch.equal(w[f], inq_quantize(w.detach(), n1, n2)[f])
        for _ in range(3):  # retraining steps
            for w in weights:
                w.grad = torch.randn(w.shape, generator=g)
            schedule.mask_grads_()
            for w, f in zip(weights, schedule.frozen, strict=True):
                assert not bool(w.grad[f].any())
            _sgd_step(weights, velocities)
            schedule.restore_()
        for w, f, before in zip(weights, schedule.frozen, levels_now, strict=True):
            assert torch.equal(w.detach()[f], before[f])  # frozen weights did not move
            if not bool(f.all()):
                assert not torch.equal(w.detach()[~f], before[~f])  # the others were retrained
        previous = [f.clone() for f in schedule.frozen]
    assert schedule.done
    for w, (n1, n2) in zip(weights, schedule.exponents, strict=True):
        assert torch.equal(w.detach(), inq_quantize(w, n1, n2))  # everything on INQ's levels
    with pytest.raises(RuntimeError, match="every portion"):
        schedule.advance_()


def test_restore_undoes_what_a_masked_gradient_cannot_stop():
    # 2 bits from max |w| = 0.75: n1 = n2 = 0, levels 0 and 1 (interval bound 1/2)
    w = torch.nn.Parameter(torch.tensor([[0.75, 0.25]]))
    schedule = InqSchedule([w], bits=2, portions=(0.5, 1.0))
    schedule.advance_()
    assert w.tolist() == [[1.0, 0.25]] and schedule.frozen[0].tolist() == [[True, False]]
    w.grad = torch.tensor([[5.0, 1.0]])
    schedule.mask_grads_()
    assert w.grad.tolist() == [[0.0, 1.0]]
    velocity = [torch.zeros_like(w)]
    _sgd_step([w], velocity, lr=1.0, momentum=0.0, weight_decay=0.875)
    # weight decay alone took the frozen weight to 1/8, below the bound: re-quantizing it now
    # would give level 0, not the level 1 it was frozen at
    assert w.tolist() == [[0.125, -0.96875]]
    assert inq_quantize(w, 0, 0)[0, 0].item() == 0.0
    schedule.restore_()
    assert w.tolist() == [[1.0, -0.96875]]


def test_freeze_and_mask_by_hand():
    w = torch.nn.Parameter(torch.tensor([[0.75, 0.375, -0.1]]))
    frozen = torch.tensor([[True, False, True]])
    assert freeze_(w, frozen, 0, -2) is w
    assert w.tolist() == [[1.0, 0.375, -0.0]]
    w.grad = torch.tensor([[5.0, 1.0, 2.0]])
    mask_frozen_grad_(w, frozen)
    assert w.grad.tolist() == [[0.0, 1.0, 0.0]]
    bare = torch.zeros(1, 3)  # no grad: nothing to mask
    mask_frozen_grad_(bare, frozen)
    assert bare.grad is None


# --- bad input --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bits, error", [(1, ValueError), (8, ValueError), (True, TypeError), (5.0, TypeError)]
)
def test_exponents_reject_bad_bits(bits, error):
    with pytest.raises(error, match="bits"):
        inq_exponents(torch.ones(2, 2), bits)


def test_bad_weights_and_exponents():
    with pytest.raises(ValueError, match="all zero"):
        inq_exponents(torch.zeros(2, 2), 5)
    with pytest.raises(ValueError, match="weight tensor"):
        inq_quantize(torch.ones(4), 0, -2)
    with pytest.raises(TypeError, match="floating-point"):
        inq_quantize(torch.ones(2, 2, dtype=torch.int64), 0, -2)
    with pytest.raises(ValueError, match="NaN"):
        inq_quantize(torch.tensor([[float("nan"), 1.0]]), 0, -2)
    with pytest.raises(ValueError, match="n1 must be >= n2"):
        inq_quantize(torch.ones(2, 2), -3, -2)
    with pytest.raises(TypeError, match="n2"):
        inq_quantize(torch.ones(2, 2), 0, -2.0)
    with pytest.raises(ValueError, match="do not fit"):
        inq_quantize(torch.ones(2, 2), 0, -200)  # 2^-201 is below float32's normal range
    assert inq_quantize(torch.ones(2, 2, dtype=torch.float64), 0, -200).tolist() == [[1.0] * 2] * 2


def test_bad_partitions():
    w = torch.tensor(W8)
    none = torch.zeros(2, 4, dtype=torch.bool)
    for portion in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="portion"):
            inq_partition(w, none, portion)
    with pytest.raises(ValueError, match="frozen already"):
        inq_partition(w, inq_partition(w, none, 0.75), 0.5)
    with pytest.raises(TypeError, match="bool"):
        inq_partition(w, none.int(), 0.5)
    with pytest.raises(ValueError, match="shape"):
        inq_partition(w, none.T, 0.5)
    with pytest.raises(ValueError, match="shape"):
        freeze_(w, none[:1], 0, -2)


@pytest.mark.parametrize("portions", [(0.5, 0.4, 1.0), (0.5, 0.9), (), (0.5, 0.5, 1.0), (0.0, 1.0)])
def test_schedule_rejects_bad_portions(portions):
    with pytest.raises(ValueError, match="portions"):
        InqSchedule([torch.ones(2, 2)], bits=5, portions=portions)


def test_schedule_rejects_no_weights():
    with pytest.raises(ValueError, match="empty"):
        InqSchedule([], bits=5)
