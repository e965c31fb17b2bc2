"""The equilibrium of scale-invariant weights under SGD with weight decay (Tanaka & Kunin 2021; Kunin et
al. 2021; derived here in the discrete form of torch.optim.SGD).

A group theta that feeds a normalisation is scale invariant: L(a theta) = L(theta), so <g, theta> = 0 and
the gradient is homogeneous of degree -1, g(theta) = g~(u) / |theta| with u = theta / |theta|; g~ is the
gradient at unit norm. Write Q = |theta|^2, G = |g~|^2 = |g|^2 Q.

Plain SGD (coupled weight decay lam, lr eta): theta_{n+1} = (1 - eta lam) theta_n - eta g_n and <g, theta> = 0 give
    Q_{n+1} = (1 - eta lam)^2 Q_n + eta^2 G_n / Q_n,
so a large Q shrinks (weight decay) and a small one grows (the gradient's kick is large where |g| ~ 1/|theta|
is): Q is driven to an equilibrium. Taking means at stationarity with small relative fluctuations of Q
(E[G / Q] ~ E[G] / E[Q]),
    Q*^2 = eta G / (lam (2 - eta lam))       (the continuum's |theta|^4 = eta G / (2 lam), exactly discrete here),
and the effective learning rate on the sphere settles at
    eta / Q* = sqrt(eta lam (2 - eta lam) / G):
the step the direction u takes is eta |g~| / Q, which settles at sqrt(eta lam (2 - eta lam)) per step whatever
the loss: normalisation plus weight decay act as an adaptive step size.

Heavy ball (momentum beta): the exact quadratic law of ``small_tasks/toolkit/noether.py`` summed at
stationarity gives the kinetic balance K = |v|^2 = 2 eta lam Q / (1 + beta) (``noether.spherical_equilibrium``).
At stationarity 2 <theta, v> = -K, so the radial part of the step is |v_rad|^2 = K^2 / (4 Q), the tangential
one |v_tan|^2 = K - K^2 / (4 Q). The tangential step sums the kicks, v_tan ~ -eta sum_j beta^j g_{n-j}; for
gradients uncorrelated from step to step (mini-batch noise dominating the drift on the sphere) its mean
square is eta^2 (G / Q) m / (1 - beta^2), with m = 1 + 2 sum_k beta^k rho_k = 1 (rho_k: the gradients'
correlation at lag k; m = (1 + beta) / (1 - beta) for a gradient that never changes). Solving,
    Q*^2 = eta G m (1 + beta)^2 / ((1 - beta^2) lam (2 (1 + beta) - eta lam)),
which is the plain-SGD value at beta = 0 and the continuum's eta G / (2 lam (1 - beta)) for m = 1.

Approach: far above Q* the kicks are negligible and weight decay alone shrinks theta by the linear law
(``noether.decay_factor(lrs, lam, beta)``), Q^2 by its fourth power. Near Q*, the kick
eta^2 G / Q falls as Q rises, doubling the restoring force of weight decay: the linearised law is the
quadratic law's homogeneous part with stiffness 4 lam instead of 2 lam,
``noether.decay_factor(lrs, 4 lam, beta)`` (for beta = 0: 1 - 4 eta lam per step, i.e. 1 / (4 eta lam) steps per
e-fold). In the continuum without momentum it is exact far from Q* too: P = Q^2 obeys P' = -4 lam (P - P*),
so P relaxes exponentially from above (weight decay) and from below (the kicks) alike, over the same
1 / (4 eta lam) steps; with momentum in its overdamped regime (4 eta lam << (1 - beta)^2), (1 - beta) / (4 eta lam).
"""

from __future__ import annotations

import numpy as np

from small_tasks.toolkit import noether


def equilibrium_norm_sq(lr: float, wd: float, momentum: float, unit_grad_sq: float, memory: float = 1.0) -> float:
    """Q* = |theta|^2 at equilibrium, from the lr, the weight decay, the momentum and the mean squared gradient
    at unit norm G (``memory``: m above, 1 for gradients uncorrelated across steps). Infinite for wd = 0:
    without weight decay there is no equilibrium and |theta|^2 grows for ever."""
    if wd <= 0:
        return float("inf")
    beta = momentum
    num = lr * unit_grad_sq * memory * (1.0 + beta) ** 2
    den = (1.0 - beta**2) * wd * (2.0 * (1.0 + beta) - lr * wd)
    return float(np.sqrt(num / den))


def relaxation(n_steps: int, lr: float, wd: float, momentum: float) -> np.ndarray:
    """h_0..h_n: the fraction of an initial gap P_0 - P* left after n steps (the linearised law, stiffness 4 wd)."""
    return noether.decay_factor(np.full(n_steps, lr), 4.0 * wd, momentum)


def relaxation_steps(lr: float, wd: float, momentum: float, efolds: float = 1.0) -> float:
    """Steps for the gap to fall by ``efolds`` e-folds: the first n with h_n <= exp(-efolds), interpolated
    (inf for wd = 0). ~ efolds (1 - momentum) / (4 lr wd) while that is << 1 / (1 - momentum)."""
    if wd <= 0:
        return float("inf")
    rate = 4.0 * lr * wd / (1.0 - momentum)
    n = int(np.ceil(4.0 * efolds / rate)) + 10
    log_h = np.log(np.maximum(np.abs(relaxation(n, lr, wd, momentum)), 1e-300))
    return crossing(log_h, -efolds)


def shrink_steps(lr: float, wd: float, momentum: float, efolds: float = 1.0) -> float:
    """Steps for |theta|^4 to fall by ``efolds`` e-folds far above the equilibrium, where the kicks are negligible
    and weight decay alone acts: theta itself then follows the linear law h_n(wd) (``noether.decay_factor``
    with stiffness wd), so |theta|^4 = h_n^4 |theta_0|^4 (inf for wd = 0). The same 1 / (4 lr wd) as
    ``relaxation_steps`` to first order; with momentum from rest they differ (14% at lr 0.02, wd 0.05,
    momentum 0.9: the radial step's own square, dropped by the linearised law, is (1 - momentum)^-2 larger)."""
    if wd <= 0:
        return float("inf")
    rate = 4.0 * lr * wd / (1.0 - momentum)
    n = int(np.ceil(4.0 * efolds / rate)) + 10
    h = noether.decay_factor(np.full(n, lr), wd, momentum)
    return crossing(4.0 * np.log(np.maximum(np.abs(h), 1e-300)), -efolds)


def crossing(values: np.ndarray, level: float) -> float:
    """The first (fractional) index where a series falls to ``level`` or below, linearly interpolated; inf if never."""
    below = np.flatnonzero(values <= level)
    if len(below) == 0:
        return float("inf")
    i = int(below[0])
    if i == 0:
        return 0.0
    a, b = values[i - 1], values[i]
    return float(i - 1 + (a - level) / (a - b))
