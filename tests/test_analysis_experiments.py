"""Measured suboptimality of quantized SGD against the bounds, on seeded small problems."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bayesq.analysis import experiments as ex
from bayesq.quantizers import deterministic_round

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quadratic():
    return ex.QuadraticProblem.make(d=10, mu=1.0, L=4.0, noise_std=1.0, box=1.0, seed=0)


def _digits_problem():
    from bayesq.data import load_dataset

    data = load_dataset("digits").flat().subset(300, 10, seed=0)
    x = np.concatenate([data.x_train.double().numpy(), np.ones((300, 1))], axis=1)
    return ex.LogisticProblem(x, (data.y_train.numpy() >= 5).astype(float), lam=0.1, box=1.0)


def test_problem_constants_bound_what_they_claim(quadratic):
    # quadratic: E||g(w)||^2 = ||a (w - w*)||^2 + d sigma^2 is convex, so its maximum over the box
    # is at a corner; G^2 is that maximum exactly
    corners = np.array(np.meshgrid(*[[-1.0, 1.0]] * quadratic.d)).reshape(quadratic.d, -1).T
    eg2 = ((quadratic.a * (corners - quadratic.w_star)) ** 2).sum(1) + quadratic.d
    assert eg2.max() == pytest.approx(quadratic.G**2)
    # logistic: ||g|| <= G for every minibatch and every w in the box (a sure bound)
    gen = torch.Generator().manual_seed(0)
    logistic = ex.LogisticProblem.synthetic(n=200, d=6, lam=0.1, box=1.0, batch_size=4)
    corners = (torch.randint(0, 2, (4000, 6), generator=gen) * 2 - 1).double()
    inside = torch.rand(4000, 6, generator=gen, dtype=torch.float64) * 2 - 1
    for w in (corners, inside):
        assert (logistic.grad(w, gen) ** 2).sum(1).max().item() <= logistic.G**2
        assert (logistic.loss(w) >= logistic.f_star - 1e-10).all()  # F* is the box minimum
    # L2 bounds the Hessian's change: ||H(u) - H(v)|| <= L2 ||u - v|| on random pairs
    x = torch.from_numpy(logistic.x)

    def hessian(w):
        s = torch.sigmoid(x @ w)
        return (x.T * (s * (1 - s))) @ x / len(x) + 0.1 * torch.eye(6, dtype=torch.float64)

    for _ in range(50):
        u, v = (torch.rand(6, generator=gen, dtype=torch.float64) * 2 - 1 for _ in range(2))
        change = torch.linalg.matrix_norm(hessian(u) - hessian(v), ord=2).item()
        assert change <= logistic.L2 * torch.linalg.vector_norm(u - v).item()
    # the constrained minimizer satisfies the KKT conditions
    w = torch.from_numpy(logistic.w_star)[None].requires_grad_(True)
    logistic.loss(w).sum().backward()
    step = np.clip(logistic.w_star - w.grad[0].numpy(), -1, 1)
    np.testing.assert_allclose(step, logistic.w_star, atol=1e-8)


def test_every_point_of_a_small_sweep_lies_below_its_bound(quadratic):
    problems = [
        (quadratic, "strongly_convex", None),
        (quadratic, "convex", 2 * math.sqrt(10) / (quadratic.G * math.sqrt(2))),
        (ex.LogisticProblem.synthetic(n=200, d=6, lam=0.1, box=1.0), "strongly_convex", None),
        (_digits_problem(), "strongly_convex", None),
    ]
    for problem, schedule, c in problems:
        res = ex.sweep(
            problem, [1 / 16, 1 / 4], [10, 100, 1000], 6, ("float", "sr", "bc"), schedule, c
        )
        for method, entry in res["methods"].items():
            upper = np.asarray(entry["mean"]) + 2 * np.asarray(entry["se"])
            assert (upper < np.asarray(entry["bound"])).all(), (problem.name, schedule, method)
            assert entry["below"]
        assert res["methods"]["bc"]["below_published"]


def test_stochastic_rounding_floor_grows_linearly_with_delta(quadratic):
    # 32 replicates over a 16-fold range of Delta: the slope's sampling spread is about +-0.03
    deltas = [1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4]
    sr = ex.run(quadratic, "sr", deltas, [10_000], 32, seed=1)["subopt"][:, :, -1].mean(1)
    fl = ex.run(quadratic, "float", [1.0], [10_000], 8, seed=2)["subopt"][:, :, -1].mean()
    assert sr.min() > 10 * fl  # the floor, not the SGD term, dominates at T = 10^4
    slope = ex.floor_slope(deltas, sr)
    assert 0.8 < slope < 1.2, slope


def test_binary_connect_reaches_the_quadratic_optimum_up_to_sampling_noise(quadratic):
    T = [1000, 10_000]
    bc = ex.run(quadratic, "bc", [1 / 4], T, 16, seed=3)
    fl = ex.run(quadratic, "float", [1 / 4], T, 16, seed=4)["subopt"][0].mean(0)
    sr = ex.run(quadratic, "sr", [1 / 4], T, 16, seed=5)["subopt"][0].mean(0)
    sub = bc["subopt"][0].mean(0)
    assert sub[1] < sub[0] / 5  # keeps converging like (log T) / T ...
    assert sub[1] < 2 * fl[1]  # ... at float SGD's level ...
    assert sub[1] < sr[1] / 20 and sr[1] > sr[0] / 2  # ... while SR sits on its floor
    # the average buffer is unbiased for w*: chi^2 over the 10 coordinates (p ~ 0.001 at 30)
    wbar = bc["wbar"][0]
    z = (wbar.mean(0) - quadratic.w_star) / (wbar.std(0, ddof=1) / math.sqrt(len(wbar)))
    assert (z**2).sum() < 30


def test_deterministic_rounding_freezes_once_the_step_is_below_half_delta():
    noiseless = ex.QuadraticProblem.make(d=10, mu=1.0, L=4.0, noise_std=0.0, box=1.0, seed=0)
    delta, T = 1 / 32, 3000
    # the rule by hand: w <- Q_d(P(w - a_t grad F(w))), watching a_t ||grad F(w_t)||_inf
    w = torch.zeros(1, 10, dtype=torch.float64)
    first_small, moves = None, []
    for t in range(T):
        a = 1.0 / (t + 1)
        g = noiseless.grad(w, None)
        if first_small is None and a * g.abs().max().item() < delta / 2:
            first_small = t
        new = deterministic_round((w - a * g).clamp(-1, 1), delta)
        if not torch.equal(new, w):
            moves.append(t)
        w = new
    # it moves until the step is below Delta / 2 and never after: frozen at first_small
    assert first_small is not None and moves and max(moves) == first_small - 1
    # and the freeze comes no later than the domain-wide bound a_t sup ||grad F||_inf < Delta / 2
    assert first_small <= math.ceil(2 * noiseless.grad_inf_bound / (noiseless.mu * delta)) - 1
    # the library's run does the same, and stalls far from the optimum float SGD reaches
    res = ex.run(noiseless, "det", [delta], [100, 1000, T], 2, seed=0)
    assert (res["last_move"] == first_small).all()
    assert noiseless.loss(w).item() > 1e-3
    fl = ex.run(noiseless, "float", [delta], [T], 1)["subopt"][0, 0, -1]
    assert res["subopt"][0, 0, -1] > 100 * fl


@given(
    k=st.lists(st.integers(-20, 20), min_size=1, max_size=8),
    frac=st.floats(-0.499, 0.499),
)
def test_one_rounded_step_below_half_delta_never_moves_above_it_always_does(k, frac):
    delta = 0.125
    w = torch.tensor(k, dtype=torch.float64) * delta
    step = torch.full_like(w, frac * delta)
    assert torch.equal(deterministic_round(w - step, delta), w)
    big = torch.full_like(w, (0.5 + abs(frac) + 1e-3) * delta)
    assert bool((deterministic_round(w - big, delta) != w).all())


def test_li_bounds_experiment_tiny(tmp_path):
    spec = importlib.util.spec_from_file_location("li_bounds", ROOT / "experiments/li_bounds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "li"
    summary = module.main(["--tiny", "--out", str(out)])
    assert summary["all_below"] and summary["tiny"]
    saved = json.loads((out / "summary.json").read_text())
    assert saved["markov_1d"]["mixing_time"] == summary["markov_1d"]["mixing_time"]
    for name in module.FIGURES:
        assert (out / name).stat().st_size > 20_000
    again = module.main(["--tiny", "--out", str(out), "--plot-only"])  # redraws from the JSON
    assert again["sweeps"] == summary["sweeps"]
