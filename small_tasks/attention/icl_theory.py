"""Alternating Gradient Flows for an attention-only linear transformer trained on in-context linear regression.

The model (small_tasks/attention/in_context.py): H heads of linear attention with rank-one query and key
projections q_h, k_h (reading x) and a merged value-output scalar v_h (reading y). For a sequence with
context (x_n, y_n), n = 1..N, and query x_q it predicts

    y_hat = sum_h v_h (q_h . x_q) (1/N) sum_n (k_h . x_n) y_n = x_q^T Gamma h,
    Gamma = sum_h v_h q_h k_h^T,  h = (1/N) sum_n y_n x_n,

so the loss is a quadratic in Gamma, L(Gamma) = 1/2 vec^T A vec - b^T vec + c with the features
phi = x_q (x) h of each sequence, and every head is a cubic (three-factor) rank-one term of Gamma.

AGF (derived; see docs/science.md, "Alternating Gradient Flows"):
- dormant heads follow gradient descent on L with the residual gradient G = -dL/dGamma frozen at the
  current plateau: v' = q^T G k, q' = v G k, k' = v G^T q. A head's utility is v q^T G k; on the unit
  sphere its maximum is G's top singular value. At the first plateau, in expectation over the data,
  G = Lambda^2 (Lambda the input covariance, diagonal in its principal components), so the first head to
  escape aligns with the first principal component, and a head aligned with component i grows as
  a' = lambda_i^2 a^2 (balanced a = |v| = |q| = |k|): it escapes after 1 / (lambda_i^2 a0) of flow
  time, the inverse of the init scale, not its logarithm (a cubic, not a quadratic model);
- active heads minimise L over their parameters: with j heads active, over Gamma of rank <= j. In
  expectation this is Eckart-Young after whitening, and the j-th plateau keeps the j largest principal
  components: L_j = 1/2 sum_i lambda_i - 1/2 sum_{i <= j} lambda_i^3 / H_ii, with
  H = E[h h^T] = Lambda^2 + (Lambda^2 + tr(Lambda) Lambda) / N for Gaussian inputs (``population_levels``).
  Learning component i leaves G_ii = 0 and the other entries unchanged, so the components are learned in
  descending order of lambda_i (equal eigenvalues: no order).

The checks use the same quantities computed exactly on the run's own data set (``Quadratic``): the levels
are the minima of its empirical loss over rank <= j, and the drop steps come from running the dormant
heads from the run's own initialization, with the run's own step sizes, on the frozen residual
(``agf_staircase``), so no sampling error of the population formulas enters a check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

MIDPOINT_FRACTION = 1.0 - 1.0 / math.sqrt(2.0)
"""A quadratic loss falls halfway from one level to the next when the new component holds 1 - 1/sqrt(2) of
its target: L(f) - L_end = (1 - f)^2 (L_start - L_end) = 1/2 (L_start - L_end). AGF's escape event is the
step at which the escaping head reaches this fraction, matched to the run's midpoint crossing."""


def context_features(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """h = (1/N) sum_n y_n x_n per sequence: (n, N, D), (n, N) -> (n, D)."""
    return (y[..., None] * x).mean(-2)


def gamma_of(wv: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor) -> torch.Tensor:
    """The model's end-to-end matrix sum_h v_h q_h k_h^T (D, D)."""
    return torch.einsum("h,hi,hj->ij", wv, wq, wk)


@dataclass
class Quadratic:
    """The empirical loss as a function of Gamma: 1/2 g^T A g - b^T g + c, g = vec(Gamma) (row-major)."""

    a: np.ndarray
    b: np.ndarray
    c: float
    dim: int

    @classmethod
    def from_data(cls, xq: torch.Tensor, h: torch.Tensor, yq: torch.Tensor) -> Quadratic:
        n, d = h.shape
        phi = (xq[:, :, None] * h[:, None, :]).reshape(n, d * d).double().cpu().numpy()
        yq = yq.double().cpu().numpy()
        return cls(phi.T @ phi / n, phi.T @ yq / n, 0.5 * float(np.mean(yq**2)), d)

    def loss(self, gamma: np.ndarray) -> float:
        g = gamma.reshape(-1)
        return float(0.5 * g @ self.a @ g - self.b @ g + self.c)

    def residual_gradient(self, gamma: np.ndarray) -> np.ndarray:
        """G = -dL/dGamma (D, D): the direction dormant heads grow along."""
        return (self.b - self.a @ gamma.reshape(-1)).reshape(self.dim, self.dim)

    def full_minimum(self) -> np.ndarray:
        return np.linalg.solve(self.a, self.b).reshape(self.dim, self.dim)

    def rank_minimum(self, rank: int) -> np.ndarray:
        """argmin of L over Gamma of rank <= ``rank``. Start: Eckart-Young after whitening with the
        Kronecker factors Sigma_q = E[x_q x_q^T], H = E[h h^T] (exact in expectation, since the query is
        independent of the context); then L-BFGS on the exact empirical quadratic through Gamma = U V^T."""
        d = self.dim
        if rank <= 0:
            return np.zeros((d, d))
        if rank >= d:
            return self.full_minimum()
        sq = self.a.reshape(d, d, d, d)
        # A = Sigma_q (x) H in expectation: its partial traces are tr(H) Sigma_q and tr(Sigma_q) H, whose
        # Kronecker product is tr(A) times A's
        sigma_q, hh = np.einsum("ijkj->ik", sq), np.einsum("ijil->jl", sq) / np.trace(self.a)
        rq, rh = _sqrtm(sigma_q), _sqrtm(hh)
        m = np.linalg.solve(rq, self.b.reshape(d, d)) @ np.linalg.inv(rh)
        u, s, vt = np.linalg.svd(m)
        start = np.linalg.solve(rq, (u[:, :rank] * s[:rank]) @ vt[:rank]) @ np.linalg.inv(rh)
        return self._polish(start, rank)

    def _polish(self, start: np.ndarray, rank: int) -> np.ndarray:
        u, s, vt = np.linalg.svd(start)
        root = np.sqrt(s[:rank])
        factors = torch.tensor(np.stack([u[:, :rank] * root, vt[:rank].T * root]), dtype=torch.float64)
        factors.requires_grad_()
        a, b = torch.tensor(self.a), torch.tensor(self.b)
        opt = torch.optim.LBFGS(
            [factors], max_iter=500, tolerance_grad=1e-14, tolerance_change=1e-16, line_search_fn="strong_wolfe"
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            g = (factors[0] @ factors[1].T).reshape(-1)
            loss = 0.5 * g @ a @ g - b @ g
            loss.backward()
            return loss

        opt.step(closure)
        return (factors[0] @ factors[1].T).detach().numpy()

    def levels(self) -> tuple[list[float], list[np.ndarray]]:
        """AGF's plateaus L_0..L_D (the minima over rank <= j) and the minimisers."""
        minima = [self.rank_minimum(j) for j in range(self.dim + 1)]
        return [self.loss(g) for g in minima], minima


def _sqrtm(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(0.5 * (m + m.T))
    return (v * np.sqrt(np.clip(w, 1e-300, None))) @ v.T


def second_moment_h(spectrum: np.ndarray, context: int) -> np.ndarray:
    """diag E[h h^T] for Gaussian x ~ N(0, Lambda), w ~ N(0, I): Lambda^2 + (Lambda^2 + tr(Lambda) Lambda) / N."""
    lam = np.asarray(spectrum, dtype=float)
    return lam**2 + (lam**2 + lam.sum() * lam) / context


def population_levels(spectrum: list[float], context: int) -> list[float]:
    """The closed-form plateaus in expectation over the data: L_j = 1/2 sum lambda - 1/2 sum_{i<=j} of the
    sorted lambda_i^3 / H_ii (each learned component i removes lambda_i^3 / (2 H_ii) of the loss)."""
    lam = np.asarray(spectrum, dtype=float)
    gain = np.sort(lam**3 / second_moment_h(lam, context))[::-1]
    return [float(0.5 * lam.sum() - 0.5 * gain[:j].sum()) for j in range(len(lam) + 1)]


def predicted_order(spectrum: list[float], tie_tol: float = 1e-9) -> list[list[int]]:
    """Components in descending eigenvalue order, equal eigenvalues (within ``tie_tol`` relative) in one
    group: AGF predicts no order between them."""
    order = sorted(range(len(spectrum)), key=lambda i: -spectrum[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and abs(spectrum[groups[-1][0]] - spectrum[i]) <= tie_tol * spectrum[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def agf_staircase(
    quad: Quadratic,
    minima: list[np.ndarray],
    wv: np.ndarray,
    wq: np.ndarray,
    wk: np.ndarray,
    lrs: np.ndarray,
    momentum: float = 0.0,
) -> list[dict]:
    """AGF's events in steps: the dormant heads take the run's own (heavy-ball) steps ``lrs`` on the loss with
    Gamma frozen at the current plateau's minimiser (their own contribution neglected); the first head
    whose term v q k^T, projected on the next component D = minima[j+1] - minima[j], reaches
    MIDPOINT_FRACTION of it (<v q k^T, D> >= MIDPOINT_FRACTION ||D||_F^2) escapes at that step, joins the
    active set and the plateau moves to minima[j+1]. The projection, not the head's size |v| |q| |k|: a head
    that grew along a component learned before keeps that part, which does not move the loss. Returns one
    {"step", "head"} per event, in order, for the events within len(lrs) steps."""
    wv, wq, wk = (np.array(t, dtype=float) for t in (wv, wq, wk))
    dormant = list(range(len(wv)))
    bufs = [np.zeros_like(wv), np.zeros_like(wq), np.zeros_like(wk)]
    events: list[dict] = []
    j = 0
    g = quad.residual_gradient(minima[0])
    delta = minima[1] - minima[0] if len(minima) > 1 else None
    for step, lr in enumerate(lrs):
        if j >= len(minima) - 1 or not dormant:
            break
        gk, gq = wk @ g.T, wq @ g  # rows: G k_h, G^T q_h
        grads = [np.einsum("hi,hi->h", wq, gk), wv[:, None] * gk, wv[:, None] * gq]  # -dL/d(v, q, k)
        for p, buf, d in zip((wv, wq, wk), bufs, grads):
            buf *= momentum  # torch's heavy-ball buffer: the first step's buffer is the gradient itself
            buf += d
            p += lr * buf
        size = wv * np.einsum("hi,ij,hj->h", wq, delta, wk)  # <v q k^T, D>
        ready = [hd for hd in dormant if size[hd] >= MIDPOINT_FRACTION * np.sum(delta**2)]
        if ready:
            head = max(ready, key=lambda hd: size[hd])
            events.append({"step": step + 1, "head": head})
            dormant.remove(head)
            for p in (wv, wq, wk):
                p[head] = 0.0  # an active head's contribution is in the plateau's minimiser
            j += 1
            g = quad.residual_gradient(minima[j])
            if j < len(minima) - 1:
                delta = minima[j + 1] - minima[j]
    return events
