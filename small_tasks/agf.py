"""Alternating Gradient Flows: predicted plateaus, order and drop times of small-initialization training.

AGF alternates two phases: dormant neurons grow along the direction that maximises their utility
(their correlation with the residual) while the active ones sit at a minimum of the loss; when a
dormant neuron's norm reaches O(1) it joins the active set and the loss drops to a new plateau.

- ``staircase_levels``: the plateau levels when irreps (classes) are learned one at a time in
  descending order of power: the loss is (1/|G|) * sum of the powers not yet learned.
- ``modular_addition_drops``: the closed-form first-drop times for the quadratic network on modular
  addition, assuming a neuron starts aligned with its frequency's best direction; real neurons first
  have to align, so these are lower bounds.
- ``diagonal_linear``: AGF for f = <u*v, x>: the active set, the sign-constrained least squares on it,
  and the jump times at which a dormant coordinate's accumulated gradient reaches its threshold.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np


def staircase_levels(class_powers: list[float], n_out: int) -> tuple[list[float], list[list[int]]]:
    """Plateau levels and, per drop, the classes learned then (equal powers drop together)."""
    order = sorted((p, c) for c, p in enumerate(class_powers) if p > 0)[::-1]
    remaining = sum(class_powers)
    levels, groups = [remaining / n_out], []
    for p in sorted({p for p, _ in order}, reverse=True):
        members = [c for q, c in order if q == p]
        remaining -= p * len(members)
        levels.append(max(remaining, 0.0) / n_out)
        groups.append(sorted(members))
    return levels, groups


def modular_addition_drops(
    p: int, amplitudes: dict[int, float], init_scale: float, lr: float, momentum: float
) -> list[dict[str, float]]:
    """Per frequency, strongest first: tau_k = (1/theta0 - 1) / (3 u_k) with u_k = sqrt(2p/27) |x_k|^3 / p^2,
    theta0 = sqrt(2) * init, in steps tau_k / ((2/p) * lr / (1 - momentum))."""
    theta0 = math.sqrt(2.0) * init_scale
    step_time = (2.0 / p) * lr / (1.0 - momentum)
    out = []
    for freq, a in sorted(amplitudes.items(), key=lambda fa: -fa[1]):
        u = math.sqrt(2 * p / 27) * a**3 / p**2
        tau = (1.0 / theta0 - 1.0) / (3.0 * u)
        out.append({"frequency": freq, "utility": u, "time": tau, "step": tau / step_time})
    return out


@dataclass
class DLNPrediction:
    times: list[float]  # gradient-flow time of each jump
    levels: list[float]  # loss before the first jump, then after each jump
    betas: list[np.ndarray]  # the saddle (beta) after each jump
    active: list[list[int]]  # its support


def _sign_constrained_lsq(h: np.ndarray, b: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """argmin 1/2 beta^T H beta - b^T beta with beta_i = 0 where signs_i = 0, else signs_i * beta_i >= 0.

    Exact by enumerating supports (the problem is a small convex QP): the minimiser is the feasible
    support's least-squares solution whose KKT multipliers are non-negative.
    """
    free = [i for i in range(len(b)) if signs[i] != 0]
    best, best_val = np.zeros_like(b), 0.0
    for r in range(1, len(free) + 1):
        for support in itertools.combinations(free, r):
            s = list(support)
            try:
                sol = np.linalg.solve(h[np.ix_(s, s)], b[s])
            except np.linalg.LinAlgError:
                continue
            if np.any(signs[s] * sol < 0):
                continue
            beta = np.zeros_like(b)
            beta[s] = sol
            val = 0.5 * beta @ h @ beta - b @ beta
            if val < best_val - 1e-12:
                best, best_val = beta, val
    return best


def diagonal_linear(x: np.ndarray, y: np.ndarray, alpha: float, max_jumps: int = 50) -> DLNPrediction:
    """AGF for f = <u*v, x> with u0 = sqrt(2)*alpha, v0 = 0 on loss 1/(2n) ||X beta - y||^2, beta = u*v.

    Under gradient flow u^2 - v^2 = 2 alpha^2 is conserved and u = sqrt(2) alpha cosh(xi),
    v = sqrt(2) alpha sinh(xi) with d xi/dt = -grad_beta L: xi integrates the gradient. A coordinate is
    dormant while |xi| < xi* = arccosh(1 / (2 alpha^2)) / 2, where its norm u^2 + v^2 = 2 alpha^2
    cosh(2 xi) reaches 1; then it jumps, and the loss falls to the sign-constrained least squares on
    the coordinates at the threshold. Active coordinates have zero gradient, so their xi stays put.
    """
    n = len(y)
    h, b = x.T @ x / n, x.T @ y / n
    base = 0.5 * float(y @ y) / n
    thr = 0.5 * math.acosh(1.0 / (2.0 * alpha**2))
    xi, beta, t = np.zeros(len(b)), np.zeros(len(b)), 0.0
    loss = lambda bt: base + 0.5 * bt @ h @ bt - b @ bt
    pred = DLNPrediction([], [loss(beta)], [], [])
    for _ in range(max_jumps):
        g = h @ beta - b
        at_thr = np.isclose(np.abs(xi), thr, rtol=0, atol=1e-9 * thr)
        moving = ~at_thr | (np.sign(xi) * g > 0)  # a coordinate at the threshold may only leave it
        hit = np.full(len(b), np.inf)
        for i in np.nonzero(moving & (np.abs(g) > 1e-12))[0]:
            target = thr * -np.sign(g[i])
            dt = (xi[i] - target) / g[i]
            if dt > 1e-12:
                hit[i] = dt
        if not np.isfinite(hit.min()):
            break
        dt = hit.min()
        xi = np.where(moving, xi - dt * g, xi)
        xi[np.argmin(hit)] = thr * -np.sign(g[np.argmin(hit)])
        t += dt
        signs = np.where(np.isclose(np.abs(xi), thr, rtol=0, atol=1e-9 * thr), np.sign(xi), 0.0)
        beta = _sign_constrained_lsq(h, b, signs)
        pred.times.append(t)
        pred.levels.append(loss(beta))
        pred.betas.append(beta.copy())
        pred.active.append([int(i) for i in np.nonzero(beta)[0]])
    return pred
