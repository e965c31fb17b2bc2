"""Conservation laws that symmetries impose on SGD, for torch.optim.SGD's exact update.

The update (dampening 0, no Nesterov), with coupled weight decay wd:
    d_n = g_n + wd * theta_n,   buf_n = momentum * buf_{n-1} + d_n (buf_0 = d_0),   theta_{n+1} = theta_n - lr * buf_n.

A symmetry of the loss makes the gradient orthogonal to the symmetry's generator, and each generator
has a charge whose recursion closes without the loss (derived here for this update):

- linear charge (translation: S = sum of the shifted parameters, <g, 1> = 0):
      S_{n+1} - S_n = momentum * (S_n - S_{n-1}) - lr * wd * S_n,        S_{-1} = S_0;
  with momentum 0 this is S_n = (1 - lr * wd)^n S_0.
- quadratic charge (scale: Q = |theta|^2 with <g, theta> = 0; rescale: Q = |out|^2 - |in|^2 with
  <g_out, out> = <g_in, in>; the GL(k) symmetry of a product A B: Q = A^T A - B B^T, a matrix):
      Q_{n+1} - Q_n = momentum * (Q_n - Q_{n-1}) - 2 lr wd Q_n + K_n + momentum * K_{n-1},   Q_{-1} = Q_0, K_{-1} = 0,
  where K_n is the same signed combination of the squared steps v_n = theta_{n+1} - theta_n (the
  kinetic term). Proof: v_n = momentum * v_{n-1} - lr * d_n, so <theta_n, v_n> = momentum * (<theta_{n-1},
  v_{n-1}> + |v_{n-1}|^2) - lr <theta_n, g_n> - lr wd |theta_n|^2, and 2 <theta_n, v_n> = Q_{n+1} - Q_n - |v_n|^2;
  the <theta, g> terms cancel in the signed combination by the symmetry.
  With momentum 0, |v_n|^2 = lr^2 (|g_n|^2 + wd^2 |theta_n|^2) turns it into the gradient form
      Q_n = (1 - lr wd)^{2n} Q_0 + lr^2 sum_k (1 - lr wd)^{2(n-1-k)} G_k,   G = the same combination of |g|^2.

Continuous approximation (t = n * lr): the recursion is q_{n+1} - q_n - momentum (q_n - q_{n-1}) =
-lr kappa q_n + K_n + momentum K_{n-1}, with stiffness kappa = wd for a linear charge (K = 0), 2 wd for a
quadratic one. Taylor expansion gives (1 + momentum) lr / 2 q'' + (1 - momentum) q' + kappa q =
(1 + momentum) K / lr: with momentum a damped oscillator
    q'' + 2 gamma q' + omega^2 q = 2 |theta'|^2 = 2 K / lr^2,
    gamma = (1 - momentum) / (lr (1 + momentum)),   omega^2 = 2 kappa / (lr (1 + momentum)),
and without it gradient flow's q' = -kappa q + K / lr. The same oscillator with kappa = h_k + wd is the
mean of a quadratic loss along a Hessian eigendirection.
"""

from __future__ import annotations

import numpy as np
import torch


def damping(lr: float, momentum: float) -> float:
    """gamma = (1 - momentum) / (lr (1 + momentum))."""
    return (1.0 - momentum) / (lr * (1.0 + momentum))


def frequency(lr: float, kappa: float, momentum: float) -> float:
    """omega = sqrt(2 kappa / (lr (1 + momentum))): kappa = wd (linear), 2 wd (quadratic), h + wd (a mode)."""
    return float(np.sqrt(2.0 * kappa / (lr * (1.0 + momentum))))


def second_order(q0: np.ndarray, lrs: np.ndarray, kappa: float, momentum: float, drive=None) -> np.ndarray:
    """q_0..q_n of q_{n+1} = q_n + momentum rho_n (q_n - q_{n-1}) - lr_n kappa q_n + drive_n, q_{-1} = q_0,
    rho_n = lr_n / lr_{n-1} (1 for a constant lr; a schedule rescales what the buffer carries over).

    ``lrs``: the learning rate of each of the n steps; ``q0`` may be an array (a vector or matrix
    charge); ``drive`` is None or (n, *q0.shape).
    """
    q0 = np.asarray(q0, dtype=np.float64)
    lrs = np.asarray(lrs, dtype=np.float64)
    out = np.empty((len(lrs) + 1, *q0.shape))
    out[0] = q0
    prev, cur = q0, q0
    for i, lr in enumerate(lrs):
        rho = lr / lrs[i - 1] if i > 0 else 1.0
        nxt = cur + momentum * rho * (cur - prev) - lr * kappa * cur
        if drive is not None:
            nxt = nxt + drive[i]
        out[i + 1] = nxt
        prev, cur = cur, nxt
    return out


def linear_charge(s0: np.ndarray, lrs: np.ndarray, wd: float, momentum: float) -> np.ndarray:
    """The translation law: S_0..S_n (exact for the update above, for any schedule)."""
    return second_order(s0, lrs, wd, momentum)


def quadratic_charge(q0: np.ndarray, kinetic: np.ndarray, lrs: np.ndarray, wd: float, momentum: float) -> np.ndarray:
    """The scale / rescale law: Q_0..Q_n from the signed squared steps K_0..K_{n-1} (exact, any schedule)."""
    kinetic = np.asarray(kinetic, dtype=np.float64)
    lrs = np.asarray(lrs, dtype=np.float64)
    carry = np.zeros(len(lrs))
    carry[1:] = momentum * lrs[1:] / lrs[:-1]
    drive = kinetic.copy()
    drive[1:] += carry[1:].reshape(-1, *([1] * (kinetic.ndim - 1))) * kinetic[:-1]
    return second_order(q0, lrs, 2.0 * wd, momentum, drive)


def quadratic_charge_sgd(q0: np.ndarray, grad_sq: np.ndarray, lrs: np.ndarray, wd: float) -> np.ndarray:
    """Plain SGD's gradient form: Q_{n+1} = (1 - lr_n wd)^2 Q_n + lr_n^2 G_n, i.e. for a constant lr
    Q_n = (1 - lr wd)^{2n} Q_0 + lr^2 sum_k (1 - lr wd)^{2(n-1-k)} G_k."""
    grad_sq = np.asarray(grad_sq, dtype=np.float64)
    out = np.empty((len(grad_sq) + 1, *np.shape(q0)))
    out[0] = q0
    for n, g in enumerate(grad_sq):
        out[n + 1] = (1.0 - lrs[n] * wd) ** 2 * out[n] + lrs[n] ** 2 * g
    return out


def oscillator(
    q0: np.ndarray,
    q1: np.ndarray,
    n_steps: int,
    lr: float,
    kappa: float,
    momentum: float,
    kinetic: np.ndarray | None = None,
) -> np.ndarray:
    """The continuous approximation at t = n lr, n = 0..n_steps, driven by K_n / lr over step n (a
    quadratic charge's kinetic term; None for a linear charge or a mean).

    With momentum, the damped oscillator q'' + 2 gamma q' + omega^2 q = 2 K / lr^2 through q(0) = q0 and
    q(lr) = q1: two points rather than q'(0), because heavy ball starts from rest half a step before
    t = 0, so no derivative at 0 is natural; matching the first step leaves an O((lr omega)^2) error.
    Without momentum, gradient flow's first-order q' = -kappa q + K / lr (the inertia term of the
    modified equation is O(lr), and against mini-batch noise it would only lag each step's kick).
    Both are solved by exact propagation over each step (a matrix exponential), so the only difference
    from the discrete law is the continuous-time model.
    """
    q0 = np.asarray(q0, dtype=np.float64)
    out = np.empty((n_steps + 1, *q0.shape))
    out[0] = q0
    if momentum == 0.0:
        x = kappa * lr
        decay, gain = np.exp(-x), (-np.expm1(-x) / x if x > 0 else 1.0)
        for n in range(n_steps):
            out[n + 1] = decay * out[n] + (gain * kinetic[n] if kinetic is not None else 0.0)
        return out
    gamma, omega2 = damping(lr, momentum), 2.0 * kappa / (lr * (1.0 + momentum))
    gen = torch.zeros(3, 3, dtype=torch.float64)
    gen[0, 1], gen[1, 0], gen[1, 1], gen[1, 2] = 1.0, -omega2, -2.0 * gamma, 1.0
    prop = torch.linalg.matrix_exp(gen * lr).numpy()
    phi, psi = prop[:2, :2], prop[:2, 2]
    forcing = None if kinetic is None else 2.0 * np.asarray(kinetic, dtype=np.float64) / lr**2
    first = 0.0 if forcing is None else forcing[0]
    dq0 = (np.asarray(q1, dtype=np.float64) - phi[0, 0] * q0 - psi[0] * first) / phi[0, 1]
    state = np.stack([q0, dq0 * np.ones_like(q0)])
    for n in range(n_steps):
        state = np.tensordot(phi, state, axes=1)
        if forcing is not None:
            state = state + psi.reshape(2, *([1] * q0.ndim)) * forcing[n]
        out[n + 1] = state[0]
    return out


def linear_charge_continuous(s0: np.ndarray, n_steps: int, lr: float, wd: float, momentum: float) -> np.ndarray:
    """The translation law's continuous form, through S_0 and the law's first step S_1 = (1 - lr wd) S_0."""
    s0 = np.asarray(s0, dtype=np.float64)
    return oscillator(s0, (1.0 - lr * wd) * s0, n_steps, lr, wd, momentum)


def quadratic_charge_continuous(
    q0: np.ndarray, kinetic: np.ndarray, lr: float, wd: float, momentum: float
) -> np.ndarray:
    """The scale / rescale law's continuous form driven by the kinetic terms, through Q_0 and the law's
    first step Q_1 = (1 - 2 lr wd) Q_0 + K_0."""
    kinetic = np.asarray(kinetic, dtype=np.float64)
    q0 = np.asarray(q0, dtype=np.float64)
    q1 = (1.0 - 2.0 * lr * wd) * q0 + kinetic[0]
    return oscillator(q0, q1, len(kinetic), lr, 2.0 * wd, momentum, kinetic)


def relative_error(observed: np.ndarray, predicted: np.ndarray, scale: float | None = None) -> float:
    """max |observed - predicted| over the run, over ``scale`` (default: max |predicted|, at least 1e-300)."""
    observed, predicted = np.asarray(observed), np.asarray(predicted)
    if observed.shape != predicted.shape:
        return float("inf")
    scale = scale if scale is not None else float(np.max(np.abs(predicted)))
    return float(np.max(np.abs(observed - predicted)) / max(scale, 1e-300))


def decay_factor(lrs: np.ndarray, kappa: float, momentum: float) -> np.ndarray:
    """h_0..h_n: the law's homogeneous solution from h_0 = 1 (the kinetic drive K dropped), i.e. the exact
    discrete form of exp(-kappa t) for heavy-ball SGD: h_{n+1} = h_n + momentum rho_n (h_n - h_{n-1}) -
    lr_n kappa h_n. With momentum 0 it is prod (1 - lr_k kappa); with momentum and a constant lr, overdamped,
    it falls per step by the slow root of r^2 - (1 + momentum - lr kappa) r + momentum = 0, ~ 1 - lr kappa /
    (1 - momentum) for lr kappa << (1 - momentum)^2. A quadratic charge (kappa = 2 wd)
    follows it in the gradient-flow limit, where K = O(lr^2 |g|^2) per step vanishes against lr wd Q."""
    return second_order(1.0, lrs, kappa, momentum)


def spherical_equilibrium(lr: float, wd: float, momentum: float) -> float:
    """The stationary relative squared step |theta_{n+1} - theta_n|^2 / |theta_n|^2 of a scale-invariant
    group under heavy-ball SGD with weight decay: 2 lr wd / (1 + momentum), whatever the loss and data.

    Summing the quadratic law over steps M..N-1 (constant lr) telescopes:
        (Q_N - Q_M) - momentum (Q_{N-1} - Q_{M-1}) = -2 lr wd sum Q_n + (1 + momentum) sum K_n - momentum K_{N-1}
                                                      + momentum K_{M-1},
    so once Q is stationary (the left side and the K boundary terms are O(1) against sums over N - M
    steps) sum K / sum Q -> 2 lr wd / (1 + momentum). Since the step is tangent up to the decay, its
    square root is the angle turned per step: the effective learning rate on the sphere settles where
    weight decay's shrinking balances the gradient's growth of |theta|, independent of the gradient."""
    return 2.0 * lr * wd / (1.0 + momentum)
