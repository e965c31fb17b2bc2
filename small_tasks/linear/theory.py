"""Closed-form learning dynamics of two-layer linear networks on whitened inputs (Sigma_xx = I).

lambda-balanced networks W2 W1 (``riccati_qqt``, ``mode_time``, ``ntk_distance``): gradient flow on
L = 1/2 ||W2 W1 - Sigma_yx||_F^2 with learning rate 1/tau conserves W2^T W2 - W1 W1^T; from an
initialisation where that equals lambda * I, Q = [W1^T; W2] obeys tau dQ/dt = F Q - 1/2 Q Q^T Q and
Q Q^T a matrix Riccati equation, solved by
    Q Q^T(t) = e^{Ft/tau} Q0 [I + 1/2 Q0^T F^-1 (e^{2Ft/tau} - I) Q0]^-1 Q0^T e^{Ft/tau},
    F = [[-lambda/2 I, Sigma_yx^T], [Sigma_yx, lambda/2 I]].
A mode aligned with a singular pair of Sigma_yx (value S) has ds/dt = sqrt(lambda^2 + 4 s^2) (S - s) / tau.

The minimal model f(x) = a w^T x with layer learning rates eta_a, eta_w (``MinimalModel``): on
L = 1/2 ||a w - beta*||^2 it conserves delta = eta_w a^2 - eta_a ||w||^2, and nu = w.beta*/a obeys
d nu/dt = eta_w s^2 - delta nu - eta_a nu^2 (s = ||beta*||). The full trajectory (a, w) is closed form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def random_orthonormal(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """An n x k matrix with orthonormal columns, Haar-distributed."""
    q, r = np.linalg.qr(rng.standard_normal((n, k)))
    return q * np.sign(np.diag(r))


def balanced_init(
    lam: float, scale: np.ndarray, u0: np.ndarray, v0: np.ndarray, r: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """W1 = R diag(b) V0^T, W2 = U0 diag(a) R^T with a^2 - b^2 = lambda and a*b = scale (per mode).

    Then W2^T W2 - W1 W1^T = R (a^2 - b^2) R^T = lambda I and W2 W1 = U0 diag(scale) V0^T: the initial
    function is the same for every lambda, only the split of the scale across the layers moves.
    """
    root = np.sqrt(lam**2 + 4.0 * scale**2)
    a, b = np.sqrt((root + lam) / 2.0), np.sqrt((root - lam) / 2.0)
    return r @ np.diag(b) @ v0.T, u0 @ np.diag(a) @ r.T


def coupling_matrix(sigma_yx: np.ndarray, lam: float) -> np.ndarray:
    d_out, d_in = sigma_yx.shape
    return np.block([[-lam / 2 * np.eye(d_in), sigma_yx.T], [sigma_yx, lam / 2 * np.eye(d_out)]])


def riccati_qqt(w1: np.ndarray, w2: np.ndarray, sigma_yx: np.ndarray, lam: float, times: np.ndarray) -> np.ndarray:
    """Q Q^T(t) for Q = [W1^T; W2] from (W1, W2) at t = 0, at each time (in units of tau): (T, m, m).

    F = V diag(f) V^T is symmetric, so every matrix function goes through its eigendecomposition; with
    z = V^T Q0 and Phi = (e^{2ft} - 1)/f (finite, 2t, where f = 0: F need not be invertible),
        Q Q^T = V Y M^-1 Y^T V^T,  Y = diag(e^{ft}) z,  M = I + 1/2 z^T diag(Phi) z,
    so Q(t) = V Y M^(-1/2) is a factor. The flow is autonomous, so the same form carries Q(s) to
    Q(s + dt); it is applied in pieces with max|f| dt <= 1. In one piece spanning a long time the rows of
    M would range over e^{2 max|f| t} and the slowly growing directions would drown in round-off.
    """
    evals, evecs = np.linalg.eigh(coupling_matrix(sigma_yx, lam))
    piece = 1.0 / max(float(np.abs(evals).max()), 1e-12)
    q = np.concatenate([w1.T, w2], axis=0)
    now = 0.0
    times = np.asarray(times, dtype=float)
    out = np.empty((len(times), len(evals), len(evals)))
    for i in np.argsort(times, kind="stable"):
        while now < times[i]:
            dt = min(piece, times[i] - now)
            z = evecs.T @ q
            phi = 2.0 * dt * _expm1_ratio(2.0 * evals * dt)
            m_evals, m_evecs = np.linalg.eigh(np.eye(z.shape[1]) + 0.5 * z.T @ (phi[:, None] * z))
            q = evecs @ (np.exp(evals * dt)[:, None] * z) @ (m_evecs / np.sqrt(m_evals))
            now = now + dt if dt == piece else times[i]
        out[i] = q @ q.T
    return out


def _expm1_ratio(x: np.ndarray) -> np.ndarray:
    """(e^x - 1) / x, 1 at x = 0."""
    x = np.asarray(x, dtype=float)
    small = np.abs(x) < 1e-8
    safe = np.where(small, 1.0, x)
    return np.where(small, 1.0 + x / 2, np.expm1(safe) / safe)


def blocks(qqt: np.ndarray, d_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(W2 W1, W1^T W1, W2 W2^T) from Q Q^T = [[W1^T W1, W1^T W2^T], [W2 W1, W2 W2^T]]."""
    return qqt[..., d_in:, :d_in], qqt[..., :d_in, :d_in], qqt[..., d_in:, d_in:]


def mode_time(s: np.ndarray, s0: float, target: float, lam: float) -> np.ndarray:
    """Time (units of tau) for an aligned mode to go from s0 > 0 to s under ds/dt = sqrt(lambda^2 + 4 s^2)(target - s),
    with s between s0 and target (it grows towards the target from below, or decays to it from above).

    With k = |lambda|/2 and r = sqrt(target^2 + k^2), an antiderivative of 1/(2 sqrt(s^2 + k^2)(target - s))
    is G(s) = ln((r sqrt(s^2 + k^2) + target s + k^2) / |target - s|) / (2 r); t = G(s) - G(s0).
    At lambda = 0 this is the logistic t = ln(s (target - s0) / (s0 (target - s))) / (2 target).
    """
    k = abs(lam) / 2.0
    r = math.hypot(target, k)

    def g(x: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):  # s = target is reached at t = infinity
            return np.log((r * np.sqrt(x**2 + k**2) + target * x + k**2) / np.abs(target - x)) / (2.0 * r)

    return g(np.asarray(s, dtype=float)) - g(np.asarray(s0, dtype=float))


def mode_trajectory(times: np.ndarray, s0: float, target: float, lam: float) -> np.ndarray:
    """s(t) of an aligned mode, by inverting the monotone ``mode_time`` with bisection."""
    if s0 == target:  # a fixed point
        return np.full(len(times), float(target))
    if target == 0 and lam == 0:  # ds/dt = -2 s^2, where mode_time's r vanishes
        return s0 / (1 + 2 * s0 * np.asarray(times, dtype=float))
    lo = np.full(len(times), float(s0))
    hi = np.full(len(times), float(target))
    for _ in range(200):  # each halves the bracket: far below float resolution
        mid = 0.5 * (lo + hi)
        early = mode_time(mid, s0, target, lam) < times
        lo, hi = np.where(early, mid, lo), np.where(early, hi, mid)
    return 0.5 * (lo + hi)


def ntk_inner(a1: np.ndarray, m1: np.ndarray, a2: np.ndarray, m2: np.ndarray) -> np.ndarray:
    """<K, K'>_F / n^2 for K = I (x) X^T A X + M (x) X^T X with X X^T = n I (whitened, n samples).

    A = W1^T W1 (d_in x d_in), M = W2 W2^T (d_out x d_out); with <P (x) G, P' (x) G'> = tr(P P') tr(G G')
    every term reduces to traces of A and M: d_out tr(A A') + tr(M') tr(A) + tr(M) tr(A') + d_in tr(M M').
    """
    d_in, d_out = a1.shape[-1], m1.shape[-1]
    tr = lambda x: np.trace(x, axis1=-2, axis2=-1)
    return d_out * tr(a1 @ a2) + tr(m2) * tr(a1) + tr(m1) * tr(a2) + d_in * tr(m1 @ m2)


def ntk_distance(a0: np.ndarray, m0: np.ndarray, a: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Kernel distance 1 - <K0, K> / (||K0|| ||K||) between the NTK at (A0, M0) and at (A, M)."""
    cross = ntk_inner(a0, m0, a, m)
    return 1.0 - cross / np.sqrt(ntk_inner(a0, m0, a0, m0) * ntk_inner(a, m, a, m))


@dataclass
class MinimalModel:
    """Exact gradient flow of f(x) = a w^T x on L = 1/2 ||a w - beta*||^2 with layer rates eta_a, eta_w.

    With mu = eta_a nu and u = delta + 2 mu, du/dt = (D^2 - u^2)/2, D = sqrt(delta^2 + 4 eta_a eta_w s^2), so
        u(t) = D (u0 + D tanh(Dt/2)) / (D + u0 tanh(Dt/2)) = 2 g'(t) / g(t),
        g(t) = cosh(Dt/2) + (u0/D) sinh(Dt/2).
    (At eta_a = eta_w = 1 this is nu = 1/2 (-delta + D tanh(tD/2 + artanh((delta + 2 nu0)/D))); the form
    above also covers |u0| > D, where a passes through zero and nu through infinity.)
    a^2 obeys a Bernoulli equation, d(a^2)/dt = 2 a^2 (mu + delta - eta_w a^2), whose solution is
        a(t) = a0 e^{delta t/2} g(t) / sqrt(N(t)),  N(t) = 1 + 2 eta_w a0^2 int_0^t e^{delta t'} g(t')^2 dt';
    the component of w orthogonal to beta* shrinks as dw_perp/dt = -eta_w a^2 w_perp, and since
    dN/dt = 2 eta_w a0^2 e^{delta t} g^2 = 2 eta_w N a^2, w_perp(t) = w_perp(0) / sqrt(N(t)); along beta*,
    w.beta*/s = mu a / (eta_a s). Everything is evaluated scaled by e^{-(delta + D) t/2}, so that no
    factor exceeds 1 and the form holds at any t.
    """

    a0: float
    w0: np.ndarray
    beta_star: np.ndarray
    eta_a: float = 1.0
    eta_w: float = 1.0

    def __post_init__(self) -> None:
        self.s = float(np.linalg.norm(self.beta_star))
        if self.s == 0 or self.a0 == 0:
            raise ValueError("the closed form needs a nonzero target and a0 != 0")
        self.direction = self.beta_star / self.s
        self.delta = self.eta_w * self.a0**2 - self.eta_a * float(self.w0 @ self.w0)
        self.D = math.sqrt(self.delta**2 + 4 * self.eta_a * self.eta_w * self.s**2)
        self.nu0 = float(self.w0 @ self.beta_star) / self.a0
        self.u0 = self.delta + 2 * self.eta_a * self.nu0
        self.w_perp0 = self.w0 - (self.w0 @ self.direction) * self.direction

    def _scaled(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(g, g', N) times e^{-(delta + D) t/2}, e^{-(delta + D) t/2}, e^{-(delta + D) t}."""
        t = np.asarray(t, dtype=float)
        dl, d, rho = self.delta, self.D, self.u0 / self.D
        c = dl + d  # > 0: the growth rate of N
        em = np.exp(-d * t)
        # e^{delta t/2} g = e^{ct/2} [(1 + rho) + (1 - rho) e^{-Dt}] / 2, and its derivative's D/2 (..) form
        g = 0.5 * ((1 + rho) + (1 - rho) * em)
        gp = 0.25 * d * ((1 + rho) - (1 - rho) * em)
        # int_0^t e^{delta t'} g^2 = 1/2 [(1 - rho^2) E(delta) + (1 + rho)^2 E(c)/2 + (1 - rho)^2 E(delta - D)/2],
        # E(k) = (e^{kt} - 1)/k; each term times e^{-ct}:
        # e^{-ct} E(delta) = e^{-Dt} (1 - e^{-delta t}) / delta, written so that no factor exceeds 1
        e_delta = t * (em * _expm1_ratio(-dl * t) if dl >= 0 else np.exp(-c * t) * _expm1_ratio(dl * t))
        e_c = t * _expm1_ratio(-c * t)  # e^{-ct} E(c) = (1 - e^{-ct}) / c
        e_minus = np.exp(-c * t) * t * _expm1_ratio((dl - d) * t)
        integral = 0.5 * ((1 - rho**2) * e_delta + 0.5 * (1 + rho) ** 2 * e_c + 0.5 * (1 - rho) ** 2 * e_minus)
        n = np.exp(-c * t) + 2 * self.eta_w * self.a0**2 * integral
        return g, gp, n

    def state(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(a(t), w(t)) at each time: shapes (T,) and (T, d)."""
        g, gp, n = self._scaled(t)
        root = np.sqrt(n)
        a = self.a0 * g / root
        along = self.a0 * (2 * gp - self.delta * g) / (2 * self.eta_a * self.s * root)  # = mu a / (eta_a s)
        # w_perp / sqrt(N): sqrt(N) = e^{ct/2} sqrt(n)
        perp = np.exp(-0.5 * (self.delta + self.D) * np.asarray(t, dtype=float)) / root
        w = along[:, None] * self.direction + perp[:, None] * self.w_perp0
        return a, w

    def nu(self, t: np.ndarray) -> np.ndarray:
        """nu(t) = w.beta*/a (infinite where a crosses zero)."""
        g, gp, _ = self._scaled(t)
        return (2 * gp / g - self.delta) / (2 * self.eta_a)

    def beta(self, t: np.ndarray) -> np.ndarray:
        a, w = self.state(t)
        return a[:, None] * w

    def kernel(self, a: np.ndarray, w: np.ndarray) -> np.ndarray:
        """The NTK of f on whitened inputs, as a d x d form: eta_a w w^T + eta_w a^2 I."""
        d = w.shape[-1]
        return self.eta_a * w[..., :, None] * w[..., None, :] + self.eta_w * (a**2)[..., None, None] * np.eye(d)


def kernel_distance(k0: np.ndarray, k: np.ndarray) -> np.ndarray:
    """1 - <K0, K>_F / (||K0||_F ||K||_F), over the last two axes."""
    inner = lambda x, y: np.sum(x * y, axis=(-2, -1))
    return 1.0 - inner(k0, k) / np.sqrt(inner(k0, k0) * inner(k, k))


def chordal_distance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """|x - y| / sqrt((1 + x^2)(1 + y^2)): a distance on the projective line, finite where x or y is +-inf."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    with np.errstate(invalid="ignore"):
        out = np.abs(x - y) / np.sqrt((1 + x**2) * (1 + y**2))
    inf_x, inf_y = ~np.isfinite(x), ~np.isfinite(y)
    out = np.where(inf_x & ~inf_y, 1 / np.sqrt(1 + np.where(inf_y, 0, y) ** 2), out)
    out = np.where(inf_y & ~inf_x, 1 / np.sqrt(1 + np.where(inf_x, 0, x) ** 2), out)
    return np.where(inf_x & inf_y, 0.0, out)
