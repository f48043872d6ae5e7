"""Strongly convex test problems for the bounds, with the constants the bounds need.

Both live on a box [-B, B]^d; choose B a multiple of every grid step Delta so that rounding keeps
iterates inside. D = 2 B sqrt(d) is its diameter.

* :class:`QuadraticProblem`: F(w) = (1/2) sum_i a_i (w_i - w*_i)^2, g = a (w - w*) + sigma xi.
  mu = min a_i, L2 = 0, G^2 = sup_box E||g||^2 = sum_i a_i^2 (B + |w*_i|)^2 + d sigma^2 (exact).
* :class:`LogisticProblem`: F(w) = mean_i [softplus(x_i.w) - y_i x_i.w] + (lam/2) ||w||^2 over
  given data (y in {0, 1}), g its gradient on a minibatch drawn with replacement. mu = lam;
  G = max_i ||x_i|| + lam B sqrt(d) bounds ||g|| surely (|sigmoid - y| <= 1); the Hessian is
  L2-Lipschitz with L2 = mean_i ||x_i||^3 / (6 sqrt 3), since the Hessian is
  mean_i s'(x_i.w) x_i x_i^T + lam I and |s''| <= 1/(6 sqrt 3) for the logistic s;
  F* = min over the box, found by accelerated projected gradient to a KKT residual < 1e-10.

``grad(w, generator)`` and ``loss(w)`` act on a batch of C independent iterates w (C, d), float64.

References:
    Li, De, Xu, Studer, Samet, Goldstein. Training Quantized Nets: A Deeper Understanding.
    NeurIPS 2017, Sec. 3 (the assumptions on G, D, mu and L2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["LogisticProblem", "QuadraticProblem"]


@dataclass
class QuadraticProblem:
    """Separable quadratic with additive Gaussian gradient noise on [-box, box]^d (see module)."""

    a: np.ndarray  # (d,) curvatures
    w_star: np.ndarray  # (d,) minimizer, inside the box
    noise_std: float
    box: float
    name: str = "quadratic"

    @classmethod
    def make(cls, d=10, mu=1.0, L=4.0, noise_std=1.0, box=1.0, seed=0) -> QuadraticProblem:
        """Curvatures geometric from mu to L; w* uniform in the inner 80% of the box (a generic,
        off-grid point)."""
        rng = np.random.default_rng(seed)
        a = np.geomspace(mu, L, d)
        return cls(a, rng.uniform(-0.8 * box, 0.8 * box, d), float(noise_std), float(box))

    @property
    def d(self) -> int:
        return len(self.a)

    @property
    def mu(self) -> float:
        return float(self.a.min())

    @property
    def L2(self) -> float:
        return 0.0

    @property
    def f_star(self) -> float:
        return 0.0

    @property
    def G(self) -> float:
        far = self.box + np.abs(self.w_star)  # the farthest box face from w*, per coordinate
        return float(np.sqrt(np.sum(self.a**2 * far**2) + self.d * self.noise_std**2))

    @property
    def grad_inf_bound(self) -> float:
        """sup over the box of ||grad F||_inf (noise-free): for the freezing argument."""
        return float(np.max(self.a * (self.box + np.abs(self.w_star))))

    def loss(self, w: torch.Tensor) -> torch.Tensor:
        """F at each row of w (C, d) -> (C,)."""
        a, ws = (torch.as_tensor(v, dtype=w.dtype) for v in (self.a, self.w_star))
        return 0.5 * (a * (w - ws) ** 2).sum(dim=1)

    def grad(self, w: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        a, ws = (torch.as_tensor(v, dtype=w.dtype) for v in (self.a, self.w_star))
        g = a * (w - ws)
        if self.noise_std > 0:
            g = g + self.noise_std * torch.randn(w.shape, generator=generator, dtype=w.dtype)
        return g


@dataclass
class LogisticProblem:
    """L2-regularized logistic regression on fixed data, constrained to [-box, box]^d."""

    x: np.ndarray  # (n, d) float64 (include a column of ones for a bias)
    y: np.ndarray  # (n,) in {0, 1}
    lam: float
    box: float
    batch_size: int = 1
    name: str = "logistic"

    def __post_init__(self):
        self.x = np.asarray(self.x, dtype=np.float64)
        self.y = np.asarray(self.y, dtype=np.float64)
        if self.x.ndim != 2 or self.y.shape != (len(self.x),) or not np.isin(self.y, (0, 1)).all():
            raise ValueError("x must be (n, d) and y (n,) with values in {0, 1}")
        if not (self.lam > 0 and self.box > 0):
            raise ValueError("lam and box must be > 0")
        self._xt = torch.from_numpy(self.x)
        self._yt = torch.from_numpy(self.y)
        self.w_star, self.f_star = self._solve()

    @classmethod
    def synthetic(cls, n=500, d=10, lam=0.1, box=1.0, batch_size=1, seed=0) -> LogisticProblem:
        """x ~ N(0, I_{d-1}) plus a bias column; labels drawn from a logistic model."""
        rng = np.random.default_rng(seed)
        x = np.concatenate([rng.standard_normal((n, d - 1)), np.ones((n, 1))], axis=1)
        w_true = rng.standard_normal(d)
        y = (rng.random(n) < 1 / (1 + np.exp(-x @ w_true))).astype(np.float64)
        return cls(x, y, lam, box, batch_size, name="logistic (synthetic)")

    @property
    def d(self) -> int:
        return self.x.shape[1]

    @property
    def mu(self) -> float:
        return float(self.lam)

    @property
    def G(self) -> float:
        return float(np.linalg.norm(self.x, axis=1).max() + self.lam * self.box * math.sqrt(self.d))

    @property
    def L2(self) -> float:
        return float(np.mean(np.linalg.norm(self.x, axis=1) ** 3) / (6 * math.sqrt(3)))

    def loss(self, w: torch.Tensor) -> torch.Tensor:
        z = w @ self._xt.T  # (C, n)
        data = (torch.nn.functional.softplus(z) - self._yt * z).mean(dim=1)
        return data + 0.5 * self.lam * (w**2).sum(dim=1)

    def grad(self, w: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(self.y), (w.shape[0], self.batch_size), generator=generator)
        xb, yb = self._xt[idx], self._yt[idx]  # (C, b, d), (C, b)
        resid = torch.sigmoid((xb @ w[:, :, None]).squeeze(2)) - yb
        return (resid[:, :, None] * xb).mean(dim=1) + self.lam * w

    def _solve(self, max_iter: int = 200_000, tol: float = 1e-10) -> tuple[np.ndarray, float]:
        """argmin over the box by FISTA with adaptive restart, float64; raises if not converged."""
        x, y, n = self.x, self.y, len(self.y)
        step = 1.0 / (np.linalg.eigvalsh(x.T @ x / n).max() / 4 + self.lam)  # 1 / smoothness

        def grad(w):
            return x.T @ (1 / (1 + np.exp(-(x @ w))) - y) / n + self.lam * w

        w = v = np.zeros(self.d)
        theta = 1.0
        for _ in range(max_iter):
            w_new = np.clip(v - step * grad(v), -self.box, self.box)
            # KKT residual: the gradient mapping at w_new (0 exactly at the constrained minimum)
            if np.linalg.norm(w_new - np.clip(w_new - step * grad(w_new), -self.box, self.box)) < (
                tol * step
            ):
                w = w_new
                break
            theta_new = (1 + math.sqrt(1 + 4 * theta**2)) / 2
            if (v - w_new) @ (w_new - w) > 0:  # restart when momentum points uphill
                theta_new, v = 1.0, w_new
            else:
                v = w_new + (theta - 1) / theta_new * (w_new - w)
            w, theta = w_new, theta_new
        else:
            raise RuntimeError("the box-constrained logistic problem did not converge")
        z = x @ w
        return w, float(np.mean(np.logaddexp(0, z) - y * z) + 0.5 * self.lam * w @ w)
