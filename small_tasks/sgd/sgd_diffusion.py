"""Limiting dynamics of SGD on linear regression: the exact moments of torch SGD (heavy ball, coupled
weight decay) on online Gaussian data, their stationary solution and the displacement they imply.

Setup (derived here): x ~ N(0, H) with H = diag(h) (the coordinates are H's eigendirections),
y = x . theta* + sigma eps, loss (1/2S) sum over a fresh batch of S examples of (x . theta - y)^2.
With wd the minimum is theta_wd = (H + wd)^-1 H theta*, and per direction j the deviation
delta = theta - theta_wd and the last step p_n = theta_n - theta_{n-1} (p_0 = 0: momentum from rest) obey
    z_{n+1} = A_j z_n - lr (1, 1) xi_j,   z = (delta, p),   A_j = [[1 - lr k_j, momentum], [-lr k_j, momentum]],
with k_j = h_j + wd and xi the batch gradient's noise. Given theta, xi has mean 0 and covariance
    Sigma(e) / S = (H e e^T H + (e^T H e) H + sigma^2 H) / S,   e = theta - theta* = delta + b,  b = theta_wd - theta*
(Gaussian fourth moments), so the first two moments close exactly:
- mean: E z_{n+1} = A E z_n, the damped oscillator with gamma = (1 - momentum) / (lr (1 + momentum)) and
  omega_j^2 = 2 (h_j + wd) / (lr (1 + momentum)) in the continuous limit;
- stationary covariance: Z = A Z A^T + lr^2 P (x) Sigma / S with P = [[1, 1], [1, 1]] and Sigma evaluated at
  E e e^T = C + b b^T (C = Z's delta block). For momentum 0 the delta block is the discrete Lyapunov
  equation C = (I - lr K) C (I - lr K) + lr^2 Sigma / S; with momentum it is the 2x2-block equation above.
  Sigma depends on C linearly, so (C, Sigma) are solved jointly: per pair of directions a 4x4 system,
  and one scalar, T = tr(H (C + b b^T)), for the isotropic part.
- displacement at stationarity: E|theta_{t+tau} - theta_t|^2 = 2 tr C - 2 sum_j [A_j^tau Z_jj]_{delta delta},
  which for momentum 0 is 2 tr[(I - (I - lr K)^tau) C].
- before stationarity, from any start: the noise has conditional mean 0, so E[z_{t+tau} z_t^T] = A^tau E[z_t z_t^T]
  and E|theta_{t+tau} - theta_t|^2 = tr S_{t+tau} + tr S_t - 2 sum_j [A_j^tau S_t,jj]_{delta delta}, with S_t the
  exact second moment of step t from the recursion (``moments``): no stationarity assumed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Stationary:
    z: np.ndarray  # (d, d, 2, 2): E[z_j z_k^T] blocks, z = (delta, p)
    noise_trace: float  # T = tr(H E[e e^T])

    @property
    def cov(self) -> np.ndarray:
        """C = E[delta delta^T] (d, d)."""
        return self.z[:, :, 0, 0]


def transitions(h: np.ndarray, lr: float, wd: float, momentum: float) -> np.ndarray:
    """A_j for every direction: (d, 2, 2)."""
    k = np.asarray(h, dtype=np.float64) + wd
    a = np.zeros((len(k), 2, 2))
    a[:, 0, 0], a[:, 0, 1] = 1.0 - lr * k, momentum
    a[:, 1, 0], a[:, 1, 1] = -lr * k, momentum
    return a


def pair_response(a: np.ndarray, feedback: np.ndarray | float = 0.0) -> np.ndarray:
    """U_jk (d, d, 2, 2) solving U_jk = A_j U_jk A_k^T + P for every pair of directions (P = [[1, 1], [1, 1]]:
    a unit noise kick that moves position and step alike), with ``feedback`` (d, d, 4, 4) added to the
    map on vec(U) where the noise depends on the state. The stationary covariance of noise that enters
    direction pair (j, k) with weight w_jk is w_jk U_jk. Row-major vec: vec(A X B^T) = (A kron B) vec(X)."""
    d = len(a)
    kron = np.einsum("iab,jcd->ijacbd", a, a).reshape(d, d, 4, 4)
    m = np.eye(4) - kron - feedback
    return np.linalg.solve(m, np.broadcast_to(np.ones(4), (d, d, 4))[..., None])[..., 0].reshape(d, d, 2, 2)


def offset(h: np.ndarray, theta_star: np.ndarray, wd: float) -> np.ndarray:
    """b = theta_wd - theta* = -wd theta* / (h + wd)."""
    return -wd * np.asarray(theta_star, dtype=np.float64) / (np.asarray(h, dtype=np.float64) + wd)


def minimum(h: np.ndarray, theta_star: np.ndarray, wd: float) -> np.ndarray:
    """theta_wd = h theta* / (h + wd)."""
    return np.asarray(theta_star) + offset(h, theta_star, wd)


def stationary(
    h: np.ndarray, theta_star: np.ndarray, lr: float, wd: float, momentum: float, batch: int, sigma: float
) -> Stationary:
    """The stationary second moments of (delta, p); raises ValueError where none exists (unstable)."""
    h = np.asarray(h, dtype=np.float64)
    a = transitions(h, lr, wd, momentum)
    b = offset(h, theta_star, wd)
    c = lr * lr / batch
    p = np.ones(4)  # vec of [[1, 1], [1, 1]]
    # X_jk = A_j X A_k^T + c h_j h_k X_00 P + d_jk P: the multiplicative noise feeds X_00 back
    feedback = c * (h[:, None] * h[None, :])[..., None, None] * np.outer(p, np.eye(4)[0])
    unit = pair_response(a, feedback)
    # Z_jk = d_jk * unit_jk, d_jk = c (h_j h_k b_j b_k + [j == k] h_j (T + sigma^2)); solve for T first
    u00 = np.diagonal(unit[:, :, 0, 0])
    slope = float(np.sum(c * h * h * u00))
    if not np.all(np.isfinite(unit)) or slope >= 1.0 or np.any(u00 <= 0):
        raise ValueError("no stationary distribution: the second moments diverge at this learning rate")
    base = float(np.sum(h * b * b) + np.sum(c * h * (h * h * b * b + h * sigma**2) * u00))
    trace = base / (1.0 - slope)
    drive = c * np.outer(h * b, h * b) + np.diag(c * h * (trace + sigma**2))
    z = drive[..., None, None] * unit
    if np.any(np.linalg.eigvalsh(z[:, :, 0, 0]) < -1e-12 * np.abs(z[:, :, 0, 0]).max()):
        raise ValueError("no stationary distribution: the solved covariance is not positive")
    return Stationary(z=z, noise_trace=trace)


@dataclass
class Moments:
    means: np.ndarray  # (n + 1, d, 2): E z_n
    blocks: np.ndarray  # (n + 1, d, 2, 2): E z_j z_j^T, each direction's own block
    last: np.ndarray  # (d, d, 2, 2): all of E z z^T at the last step
    window: np.ndarray | None = None  # (d, d, 2, 2): E z z^T averaged over steps average_from..n_steps


def moments(
    h: np.ndarray,
    theta_star: np.ndarray,
    theta0: np.ndarray,
    lr: float,
    wd: float,
    momentum: float,
    batch: int,
    sigma: float,
    n_steps: int,
    average_from: int | None = None,
) -> Moments:
    """The exact first and second moments from theta_0 (at rest) for n = 0..n_steps, by iterating the
    moment recursion: the reference that the stationary solver is tested against, and the transient
    that a run is compared with; with ``average_from``, also all of E z z^T averaged over the steps
    average_from..n_steps (what a run measures over that window, stationary or not)."""
    h = np.asarray(h, dtype=np.float64)
    a = transitions(h, lr, wd, momentum)
    b = offset(h, theta_star, wd)
    c = lr * lr / batch
    mean = np.zeros((len(h), 2))
    mean[:, 0] = np.asarray(theta0) - minimum(h, theta_star, wd)
    second = np.einsum("ia,jb->ijab", mean, mean)
    means, blocks = [mean], [np.einsum("iiab->iab", second)]
    ones = np.ones((2, 2))
    window, count = np.zeros_like(second), 0
    for step in range(1, n_steps + 1):
        ee = second[:, :, 0, 0] + np.outer(mean[:, 0], b) + np.outer(b, mean[:, 0]) + np.outer(b, b)
        sigma_s = c * (np.outer(h, h) * ee + np.diag(h * (float(np.sum(h * np.diagonal(ee))) + sigma**2)))
        second = np.einsum("iab,ijbc,jdc->ijad", a, second, a) + sigma_s[..., None, None] * ones
        mean = np.einsum("iab,ib->ia", a, mean)
        means.append(mean)
        blocks.append(np.einsum("iiab->iab", second))
        if average_from is not None and step >= average_from:
            window += second
            count += 1
    return Moments(np.stack(means), np.stack(blocks), second, window / count if count else None)


def mean_trajectory(h: np.ndarray, delta0: np.ndarray, lr: float, wd: float, momentum: float, n_steps: int):
    """E[(delta, p)] for n = 0..n_steps from (delta0, 0): (n + 1, d, 2). Exact (the noise has mean 0)."""
    a = transitions(h, lr, wd, momentum)
    z = np.zeros((len(a), 2))
    z[:, 0] = delta0
    out = [z]
    for _ in range(n_steps):
        z = np.einsum("iab,ib->ia", a, z)
        out.append(z)
    return np.stack(out)


def displacement(stat: Stationary, h: np.ndarray, lr: float, wd: float, momentum: float, taus) -> np.ndarray:
    """E|theta_{t+tau} - theta_t|^2 at stationarity for each tau."""
    a = transitions(h, lr, wd, momentum)
    z_diag = np.stack([stat.z[j, j] for j in range(len(a))])  # (d, 2, 2)
    out = []
    for tau in np.asarray(taus, dtype=int):
        power = np.stack([np.linalg.matrix_power(aj, int(tau)) for aj in a])
        lagged = np.einsum("iab,ibc->iac", power, z_diag)[:, 0, 0]
        out.append(2.0 * float(np.trace(stat.cov)) - 2.0 * float(lagged.sum()))
    return np.array(out)


def transient_displacement(
    blocks: np.ndarray, h: np.ndarray, lr: float, wd: float, momentum: float, starts, taus
) -> np.ndarray:
    """E|theta_{t0+tau} - theta_{t0}|^2 for every start t0 and lag tau, (len(starts), len(taus)), from the
    exact per-step second moments ``blocks`` of ``moments`` (NaN where t0 + tau is past its last step)."""
    a = transitions(h, lr, wd, momentum)
    out = np.full((len(starts), len(taus)), np.nan)
    for i, tau in enumerate(np.asarray(taus, dtype=int)):
        power = np.stack([np.linalg.matrix_power(aj, int(tau)) for aj in a])
        for k, t0 in enumerate(np.asarray(starts, dtype=int)):
            if t0 + tau < len(blocks):
                lagged = np.einsum("iab,ibc->iac", power, blocks[t0])[:, 0, 0]
                out[k, i] = float(np.sum(blocks[t0 + tau, :, 0, 0] + blocks[t0, :, 0, 0] - 2.0 * lagged))
    return out


def exponent(taus: np.ndarray, msd: np.ndarray) -> float:
    """The least-squares slope of log MSD against log tau: 1 is ordinary diffusion, < 1 anomalous."""
    return float(np.polyfit(np.log(np.asarray(taus, dtype=float)), np.log(np.asarray(msd, dtype=float)), 1)[0])
