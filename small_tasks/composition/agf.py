"""Alternating Gradient Flows in closed form: the utilities, order, plateaus and escape times of small-init
training, and the saddle-to-saddle solution of the diagonal linear network.

AGF alternates two phases: dormant neurons grow along the direction that maximises their utility
(their correlation with the residual) while the active ones sit at a minimum of the loss; when a
dormant neuron's norm reaches O(1) it joins the active set and the loss drops to a new plateau.

Group composition with the power network y = W_out (W_in [x_g1; ...; x_gk])^k (derived here; checked
against direct numerical maximisation in tests/test_agf.py). A neuron's utility against the initial
residual (the targets) is U = (2 / (|G|^k |G|)) sum_{g1..gk} (sum_j u_j . x_gj)^k <w, x_{g1...gk}>; for a
mean-centred template only the product of the k inputs survives, and by Schur orthogonality it splits
into one term per class c of irreps (an irrep with its conjugate), a trace of k + 1 factors of the
template's coefficient x_hat(rho). On the unit sphere its maximum is

    U*_c = 2 k! sigma_c^(k+1) (d_c m_c)^((1-k)/2) |G|^(-(k+3)/2) / (k+1)^((k+1)/2),

sigma_c the largest singular value of x_hat(rho), d_c the irrep's dimension, m_c = 1 for a real irrep and
2 for a conjugate pair; a neuron spread over several classes does worse (the utility is cubic per class,
the budget quadratic), so the dormant neurons' best directions each live in one class. For k = 2 on C_p
this is the AGF paper's u_k = sqrt(2p/27) |x_hat_k|^3 / p^2 times 2/p (its time unit). A fresh neuron
aligned with class c grows as d ln|theta|/dt = (k+1) U*_c under per-neuron SGD and as
d(1/|theta|^(k-1))/dt = -(k-1)(k+1) U*_c under plain gradient descent; its escape time to |theta| = 1 is
``escape_time``. So classes are learned in descending order of U*_c: the order of the power P only among
irreps of one dimension, since with equal singular values sigma_c = sqrt(P |G|) / d_c.

- ``staircase_levels``: the plateau levels when the classes are learned in a given order: the loss is
  (1/|G|) * sum of the class powers not yet learned.
- ``diagonal_linear``: AGF for f = <u*v, x>: the active set, the sign-constrained least squares on it,
  and the jump times at which a dormant coordinate's accumulated gradient reaches its threshold;
  ``transition_time``: how long gradient flow takes to make one of those jumps.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from small_tasks.composition.groups import Group, fourier


def class_max_utility(group: Group, template: np.ndarray, power: int) -> np.ndarray:
    """U*_c per class of ``group.classes()`` (the formula above): the initial growth rate of the best neuron."""
    hats = fourier(group, template)
    n, k = group.order, power
    out = []
    for cls in group.classes():
        sigma = float(np.linalg.svd(hats[cls[0]], compute_uv=False).max())
        dm = group.irreps[cls[0]].dim * len(cls)
        scale = 2 * math.factorial(k) * n ** (-(k + 3) / 2) / (k + 1) ** ((k + 1) / 2)
        out.append(scale * sigma ** (k + 1) * dm ** ((1 - k) / 2))
    return np.array(out)


def predicted_order(utilities: np.ndarray, rel_tol: float = 1e-9) -> list[list[int]]:
    """Classes with positive utility, strongest first, grouped where utilities tie (they drop together)."""
    floor = 1e-12 * max(float(np.max(utilities)), 0.0)  # a class absent from the template has U* ~ rounding
    ranked = sorted((c for c in range(len(utilities)) if utilities[c] > floor), key=lambda c: -utilities[c])
    groups: list[list[int]] = []
    for c in ranked:
        if groups and abs(utilities[groups[-1][0]] - utilities[c]) <= rel_tol * utilities[c]:
            groups[-1].append(c)
        else:
            groups.append([c])
    return groups


def staircase_levels(class_powers: list[float], n_out: int, order: list[list[int]]) -> list[float]:
    """Plateau levels: the initial loss, then the loss after each group of ``order`` is learned."""
    remaining = float(sum(class_powers))
    levels = [remaining / n_out]
    for grp in order:
        remaining -= sum(class_powers[c] for c in grp)
        levels.append(max(remaining, 0.0) / n_out)
    return levels


def escape_time(u_star: float, theta0: float, power: int, norm_power: float, threshold: float = 1.0) -> float:
    """Flow time for a neuron aligned with a class of utility u_star to grow from norm theta0 to ``threshold``,
    under d theta/dt = -|theta|^norm_power grad L (0: gradient descent; 1 - power: per-neuron SGD).

    With h = power + 1 and q = norm_power + h - 2: d ln|theta|/dt = h U |theta|^q, so q = 0 gives
    ln(threshold / theta0) / (h U) and q > 0 gives (theta0^-q - threshold^-q) / (q h U)."""
    h = power + 1
    q = norm_power + h - 2
    if q == 0:
        return math.log(threshold / theta0) / (h * u_star)
    return (theta0**-q - threshold**-q) / (q * h * u_star)


@dataclass
class DLNPrediction:
    times: list[float]  # gradient-flow time of each jump
    levels: list[float]  # loss before the first jump, then after each jump
    betas: list[np.ndarray]  # the saddle (beta) after each jump
    active: list[list[int]]  # its support
    rates: list[float]  # |gradient| of the jumping coordinate at the saddle it leaves: its escape speed


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
    pred = DLNPrediction([], [loss(beta)], [], [], [])
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
        dt, jumper = hit.min(), int(np.argmin(hit))
        xi = np.where(moving, xi - dt * g, xi)
        xi[jumper] = thr * -np.sign(g[jumper])
        pred.rates.append(float(abs(g[jumper])))
        t += dt
        signs = np.where(np.isclose(np.abs(xi), thr, rtol=0, atol=1e-9 * thr), np.sign(xi), 0.0)
        beta = _sign_constrained_lsq(h, b, signs)
        pred.times.append(t)
        pred.levels.append(loss(beta))
        pred.betas.append(beta.copy())
        pred.active.append([int(i) for i in np.nonzero(beta)[0]])
    return pred


def transition_time(rate: float) -> float:
    """Flow time a jump takes, from its start (the coordinate's norm reaches 1) to 98% of its loss drop:
    4 / |g| for a coordinate leaving a saddle at gradient g (derived: near the jump beta_i grows
    logistically, d beta_i/dt = 2 h beta_i (b - beta_i) with h b = |g|, whose rise from a few percent of b
    to 0.99 b takes ln(99) + ln(19) = 7.5 over rate 2|g|). Unlike the plateaus, it does not grow as the
    initialization shrinks, so a plateau shorter than the transitions into it is skipped by the run."""
    return 4.0 / rate
