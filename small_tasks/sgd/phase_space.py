"""The stationary state of heavy-ball SGD on a quadratic with additive gradient noise of any covariance: its
spread, lagged correlations, displacement and probability current, exact for the discrete update.

Setup (derived here): the loss of one example is 1/2 (theta - c)^T H (theta - c), H = diag(h) (coordinates
are H's eigendirections), its centre c = theta* + H^-1 L eps with L L^T = Sigma, eps ~ N(0, I). The mean
gradient of a batch of S examples is H delta - xi, delta = theta - theta*, with xi ~ N(0, Sigma / S) whatever
theta is (additive noise). Per direction j, z = (delta, p), p the last step, obeys
    z_{n+1} = A_j z_n + lr (1, 1) xi_j,   A_j = [[1 - lr h_j, momentum], [-lr h_j, momentum]]
(``sgd_diffusion.transitions``), so the stationary second moments are exactly
    Z_jk = lr^2 / S * Sigma_jk * U_jk,   U_jk = A_j U_jk A_k^T + [[1, 1], [1, 1]]   (``sgd_diffusion.pair_response``)
and they exist iff every |eigenvalue of A_j| < 1, i.e. 0 < lr h_j < 2 (1 + momentum).

Scaling (derived here from the diagonal pairs): the stationary variance of direction j is
    C_jj = lr Sigma_jj / S * (1 + momentum) / (h_j (1 - momentum) (2 (1 + momentum) - lr h_j)),
the continuous limit lr Sigma_jj / (2 S h_j (1 - momentum)): the spread grows as lr / S and as 1 / (1 - momentum);
the discrete factor adds 2 (1 + momentum) / (2 (1 + momentum) - lr h_j) >= 1. For momentum 0 every pair has
C_jk = lr Sigma_jk / (S (h_j + h_k - lr h_j h_k)).

Lagged correlations: the noise after step t is independent of z_t, so E[z_{t+tau} z_t^T] = A^tau Z and
    C(tau)_jk = E[delta_{t+tau, j} delta_{t, k}] = sum_b (A_j^tau)_{0b} (Z_jk)_{b0},
    E|theta_{t+tau} - theta_t|^2 = 2 tr C - 2 tr C(tau)   (``sgd_diffusion.displacement``).

Probability current: a stationary Gaussian chain is reversible (detailed balance) iff E[x_{t+tau} x_t^T] is
symmetric. Its antisymmetric part in position, C(tau) - C(tau)^T, is the circulation of the stationary
cloud. For momentum 0, C(1) - C(1)^T = -lr (H C - C H) = -2 lr Q, Q = (H C - C H) / 2 the antisymmetric
part of the drift in the decomposition H = (D + Q) C^-1 of the continuous limit (D = lr Sigma / (2 S)).
When Sigma commutes with H (noise aligned with the curvature), every block is diagonal in H's basis, so
C(tau) is diagonal and the current vanishes exactly, with momentum or not; when it does not, C is not
diagonal in H's basis and C(tau)_jk - C(tau)_kj is non-zero wherever h_j != h_k and Sigma_jk != 0.
"""

from __future__ import annotations

import numpy as np

from small_tasks.sgd import sgd_diffusion


def noise_covariance(h: np.ndarray, orientation: str, scale: float, seed: int) -> np.ndarray:
    """Sigma = scale * R diag(h) R^T: the same spectrum as H, aligned (R = I: Sigma commutes with H) or
    rotated (R a Haar-random rotation from ``seed``: Sigma does not commute with H when h has distinct values).
    The two differ only in orientation, so their traces and spectra are equal."""
    h = np.asarray(h, dtype=np.float64)
    if orientation == "aligned":
        return scale * np.diag(h)
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(h), len(h))))
    q = q * np.sign(np.diag(r))  # Haar measure: fix the signs QR leaves free
    return scale * (q * h) @ q.T


def stable(h: np.ndarray, lr: float, momentum: float) -> bool:
    """Every A_j contracts: 0 < lr h_j < 2 (1 + momentum) for heavy ball with 0 <= momentum < 1."""
    a = sgd_diffusion.transitions(h, lr, 0.0, momentum)
    return bool(np.max(np.abs(np.linalg.eigvals(a))) < 1.0)


def stationary(h: np.ndarray, sigma: np.ndarray, lr: float, momentum: float, batch: int) -> np.ndarray:
    """Z (d, d, 2, 2): E[z_j z_k^T] at stationarity, z = (delta, p); ValueError where none exists."""
    if not stable(h, lr, momentum):
        raise ValueError(
            f"no stationary distribution: lr {lr:g} x h_max {float(np.max(h)):g} is past the stability limit "
            f"2 (1 + momentum) = {2 * (1 + momentum):g}"
        )
    a = sgd_diffusion.transitions(h, lr, 0.0, momentum)
    return lr * lr / batch * np.asarray(sigma)[..., None, None] * sgd_diffusion.pair_response(a)


def variance_closed_form(h: np.ndarray, sigma_diag: np.ndarray, lr: float, momentum: float, batch: int) -> np.ndarray:
    """C_jj in closed form (see the module's docstring); the solver is tested against it."""
    h = np.asarray(h, dtype=np.float64)
    b = momentum
    return lr * np.asarray(sigma_diag) / batch * (1 + b) / (h * (1 - b) * (2 * (1 + b) - lr * h))


def variance_continuous(h: np.ndarray, sigma_diag: np.ndarray, lr: float, momentum: float, batch: int) -> np.ndarray:
    """The continuous limit lr Sigma_jj / (2 S h_j (1 - momentum)): the scaling the discrete factor corrects."""
    return lr * np.asarray(sigma_diag) / (2 * batch * np.asarray(h) * (1 - momentum))


def lagged(z: np.ndarray, h: np.ndarray, lr: float, momentum: float, taus) -> np.ndarray:
    """C(tau)_jk = E[delta_{t+tau, j} delta_{t, k}] at stationarity for each tau: (len(taus), d, d)."""
    a = sgd_diffusion.transitions(h, lr, 0.0, momentum)
    out = []
    for tau in np.asarray(taus, dtype=int):
        row = np.stack([np.linalg.matrix_power(aj, int(tau))[0] for aj in a])  # (d, 2): (A_j^tau)_{0b}
        out.append(np.einsum("jb,jkb->jk", row, z[:, :, :, 0]))
    return np.stack(out)


def displacement(z: np.ndarray, h: np.ndarray, lr: float, momentum: float, taus) -> np.ndarray:
    """E|theta_{t+tau} - theta_t|^2 at stationarity."""
    stat = sgd_diffusion.Stationary(z=z, noise_trace=float("nan"))
    return sgd_diffusion.displacement(stat, h, lr, 0.0, momentum, taus)


def circulation(lagged_c: np.ndarray) -> np.ndarray:
    """C(tau) - C(tau)^T: zero for every tau iff the stationary chain obeys detailed balance in position."""
    return lagged_c - np.swapaxes(lagged_c, -1, -2)


def drift_rotation(h: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Q = (H C - C H) / 2: the antisymmetric part of the drift, H = (D + Q) C^-1 (continuous limit)."""
    hc = np.asarray(h)[:, None] * c
    return 0.5 * (hc - hc.T)
