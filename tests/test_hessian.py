"""bayesq.hessian: Hutchinson's trace estimator on losses whose Hessian is known."""

import doctest
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bayesq import hessian
from bayesq.hessian import hessian_vector_product, hutchinson_trace, rademacher


def _symmetric(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    return (a + a.T) / 2


def _off_diagonal_square_sum(a: torch.Tensor) -> float:
    return float(a.square().sum() - a.diagonal().square().sum())


def _quadratic(a: torch.Tensor):
    """x (n,) at a random point and 0.5 x^T A x: its Hessian is A wherever x is."""
    x = torch.randn(a.shape[0], dtype=torch.float64).requires_grad_()
    return x, 0.5 * x @ a @ x


def test_rademacher_draws_plus_and_minus_one_evenly():
    z = rademacher((4000,), generator=torch.Generator().manual_seed(1))
    assert z.dtype == torch.float32 and set(z.unique().tolist()) == {-1.0, 1.0}
    # the mean of 4000 +-1 draws has standard deviation 1 / sqrt(4000) = 0.016: 4 of them
    assert abs(float(z.mean())) < 4 / math.sqrt(4000)
    same = rademacher((4000,), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(same, z.double())


def test_hessian_vector_product_is_a_times_v():
    a = _symmetric(5, 0)
    x, loss = _quadratic(a)
    (g,) = torch.autograd.grad(loss, [x], create_graph=True)
    v = torch.arange(5, dtype=torch.float64)
    (hv,) = hessian_vector_product([g], [x], [v])
    torch.testing.assert_close(hv, a @ v)
    (again,) = hessian_vector_product([g], [x], [v])  # the graph is kept for the next draw
    torch.testing.assert_close(again, a @ v)


def test_trace_of_a_full_quadratic_within_the_rademacher_error():
    a = _symmetric(6, 3)
    x, loss = _quadratic(a)
    n = 400
    est = hutchinson_trace(
        loss, [x], max_samples=n, min_samples=n, generator=torch.Generator().manual_seed(0)
    )
    assert est.samples == n and est.converged
    # one draw z^T A z has variance 2 * sum_{i != j} A_ij^2; the mean of n draws its n-th part:
    # the estimate lies within 4 standard errors of tr(A) (fixed seed)
    sd = math.sqrt(2 * _off_diagonal_square_sum(a) / n)
    assert abs(float(est.traces[0]) - float(a.trace())) < 4 * sd
    # the reported standard error estimates that same sd: the sample sd of 400 draws is within
    # ~5 of its own standard errors (about 3.5% each) of the truth, so within 20%
    assert 0.8 * sd < float(est.stderr[0]) < 1.2 * sd
    assert est.sizes == (6,) and float(est.mean_traces[0]) == float(est.traces[0]) / 6
    # rows of a 1-D tensor are its entries: their sum is the tensor's estimate
    torch.testing.assert_close(est.row_traces[0].sum(), est.traces[0])


def test_a_diagonal_hessian_is_exact_and_stops_after_two_draws():
    # z^T D z = tr(D) for every z: m_1 = tr (a change from m_0 = 0), m_2 = tr (no change): stop
    d = torch.tensor([1.0, -2.0, 0.5, 4.0], dtype=torch.float64)
    x = torch.ones(4, dtype=torch.float64, requires_grad=True)
    est = hutchinson_trace((0.5 * d * x.square()).sum(), [x])
    assert est.samples == 2 and est.converged
    assert float(est.traces[0]) == 3.5 and float(est.stderr[0]) == 0.0
    assert est.row_traces[0].tolist() == [1.0, -2.0, 0.5, 4.0]
    assert est.row_stderr[0].tolist() == [0.0] * 4


def test_a_linear_loss_has_zero_trace_after_one_draw():
    # no second derivative: |m_1 - m_0| = 0 < tol * 1e-6 stops at once; one draw, no error bar
    w = torch.ones(2, 3, requires_grad=True)
    est = hutchinson_trace((torch.arange(6.0).reshape(2, 3) * w).sum(), [w])
    assert est.samples == 1 and est.converged
    assert est.traces.tolist() == [0.0] and est.row_traces[0].tolist() == [0.0, 0.0]
    assert math.isnan(float(est.stderr[0]))


def test_row_traces_of_a_block_diagonal_hessian():
    # loss = sum_r 0.5 w_r^T A_r w_r: the Hessian is block diagonal by row, row r's block A_r;
    # a row's draw is z_r^T A_r z_r, of variance 2 * sum of A_r's off-diagonal squares
    blocks = torch.stack([_symmetric(4, seed) for seed in (10, 11, 12)])
    blocks[1] = torch.diag(torch.tensor([3.0, 1.0, -1.0, 2.0], dtype=torch.float64))
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    loss = 0.5 * torch.einsum("ri,rij,rj->", w, blocks, w)
    n = 300
    est = hutchinson_trace(
        loss, [w], max_samples=n, min_samples=n, generator=torch.Generator().manual_seed(5)
    )
    exact = torch.einsum("rii->r", blocks)
    for r in (0, 2):
        sd = math.sqrt(2 * _off_diagonal_square_sum(blocks[r]) / n)
        assert abs(float(est.row_traces[0][r] - exact[r])) < 4 * sd
    assert float(est.row_traces[0][1]) == 5.0 and float(est.row_stderr[0][1]) == 0.0
    torch.testing.assert_close(est.row_traces[0].sum(), est.traces[0])


def test_blocks_of_two_coupled_tensors():
    # loss = 0.5 x^T A x + x^T B y: H_xx = A, H_yy = 0, H_xy = B. The y block's draw is
    # z_y^T B^T z_x, mean 0 and variance sum B_ij^2; the x block's adds the same cross term to
    # z_x^T A z_x: variance 2 * offdiag(A) + sum B_ij^2
    a, b = _symmetric(4, 20), torch.randn(4, 3, dtype=torch.float64)
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, dtype=torch.float64, requires_grad=True)
    n = 400
    est = hutchinson_trace(
        0.5 * x @ a @ x + x @ b @ y,
        [x, y],
        max_samples=n,
        min_samples=n,
        generator=torch.Generator().manual_seed(7),
    )
    cross = float(b.square().sum())
    sd_x = math.sqrt((2 * _off_diagonal_square_sum(a) + cross) / n)
    assert abs(float(est.traces[0]) - float(a.trace())) < 4 * sd_x
    assert abs(float(est.traces[1])) < 4 * math.sqrt(cross / n)
    assert est.sizes == (4, 3) and [len(r) for r in est.row_traces] == [4, 3]


def test_max_samples_caps_an_estimate_that_does_not_settle():
    x, loss = _quadratic(_symmetric(5, 30))
    est = hutchinson_trace(loss, [x], max_samples=7, tol=1e-12)
    assert est.samples == 7 and not est.converged


def test_the_pyhessian_rule_stops_when_the_mean_settles():
    # with tol 1e-3 the running mean of a noisy trace settles within PyHessian's 100 draws, and
    # at the stop its last change was below tol times its size
    x, loss = _quadratic(_symmetric(5, 31) + 10 * torch.eye(5, dtype=torch.float64))
    est = hutchinson_trace(loss, [x], tol=1e-2, generator=torch.Generator().manual_seed(2))
    assert est.converged and 2 < est.samples < 100


def test_the_generator_makes_it_reproducible():
    x, loss = _quadratic(_symmetric(5, 40))
    runs = [
        hutchinson_trace(loss, [x], max_samples=5, generator=torch.Generator().manual_seed(s))
        for s in (3, 3, 4)
    ]
    assert torch.equal(runs[0].traces, runs[1].traces)
    assert not torch.equal(runs[0].traces, runs[2].traces)


@given(
    shape=st.lists(st.integers(1, 4), min_size=0, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_diagonal_hessians_give_their_row_sums_exactly(shape, seed):
    # loss = 0.5 sum d * w^2: H = diag(d); every draw is exact, so each row's trace is the sum
    # of d over the row (a 0-D tensor is one row), whatever the shape
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(shape, generator=g, dtype=torch.float64)
    w = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    est = hutchinson_trace((0.5 * d * w.square()).sum(), [w], generator=g)
    rows = d.reshape(shape[0] if shape else 1, -1).sum(1)
    torch.testing.assert_close(est.row_traces[0], rows, rtol=0, atol=1e-12)
    torch.testing.assert_close(est.traces[0], d.sum(), rtol=0, atol=1e-12)


def test_bad_input():
    x = torch.ones(3, requires_grad=True)
    loss = x.square().sum()
    with pytest.raises(TypeError, match="loss must be a torch.Tensor"):
        hutchinson_trace(1.0, [x])
    with pytest.raises(ValueError, match="loss must be a floating-point scalar"):
        hutchinson_trace(x.square(), [x])
    with pytest.raises(ValueError, match="no autograd graph"):
        hutchinson_trace(torch.tensor(1.0), [x])
    with pytest.raises(ValueError, match="loss must be finite"):
        hutchinson_trace(loss * math.nan, [x])
    with pytest.raises(TypeError, match="params must be a non-empty list"):
        hutchinson_trace(loss, [])
    with pytest.raises(TypeError, match="params must be a non-empty list"):
        hutchinson_trace(loss, x)
    with pytest.raises(ValueError, match=r"params\[0\] must be a floating-point tensor"):
        hutchinson_trace(loss, [torch.ones(3)])
    with pytest.raises(TypeError, match="max_samples must be an integer"):
        hutchinson_trace(loss, [x], max_samples=2.5)
    with pytest.raises(ValueError, match="max_samples must be an integer >= 1"):
        hutchinson_trace(loss, [x], max_samples=0)
    with pytest.raises(ValueError, match="must not exceed max_samples"):
        hutchinson_trace(loss, [x], max_samples=3, min_samples=4)
    for tol in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="tol must be a finite number"):
            hutchinson_trace(loss, [x], tol=tol)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        hutchinson_trace(loss, [x], generator=0)
    # a Hessian that is not finite where the loss is: y^1.5 at 0 has second derivative inf
    y = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match=r"Hessian-vector product of params\[0\] is not finite"):
        hutchinson_trace(y.pow(1.5).sum(), [y])


def test_docstring_example_runs():
    result = doctest.testmod(hessian, raise_on_error=True)
    assert result.attempted == 4 and result.failed == 0
