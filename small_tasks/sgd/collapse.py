"""Stochastic collapse: when SGD's noise makes an invariant set (theta = 0, a dead neuron) attracting.

Both setups are linear near the invariant set with a random gain per step, x_{n+1} = (1 + c_n) x_n with
c_n ~ N(m, s^2) independent across steps, so the set attracts exactly when the Lyapunov exponent
E log|1 + c| is negative (derived here for the discrete update; the papers state the continuous limit).

- Quartic well, theta <- theta + lr (mu theta - theta^3) + sqrt(lr) zeta theta xi (plain SGD on
  -mu theta^2/2 + theta^4/4 with gradient noise -(zeta / sqrt(lr)) theta xi; coupled weight decay wd
  turns mu into mu - wd): c ~ N(lr (mu - wd), lr zeta^2). As lr -> 0 the exponent is
  lr ((mu - wd) - zeta^2 / 2), so the continuous threshold is zeta* = sqrt(2 (mu - wd)) (the paper's);
  below it the stationary density of the SDE d theta = (mu theta - theta^3) dt + zeta theta dW is
  p(theta) ~ |theta|^(2 mu / zeta^2 - 2) exp(-theta^2 / zeta^2), i.e. theta^2 / zeta^2 ~ Gamma(mu / zeta^2 - 1/2).
- Single neuron f = w2 tanh(w1 x) on data (x_i, y_i), i < m, loss (1/2m) sum (f_i - y_i - sqrt(m) zeta xi_i)^2
  with fresh label noise xi each step (gradient noise of covariance zeta^2 times the mean per-example
  Jacobian Gram matrix, the reference SDE's diffusion). Near the origin w1 and w2 drive each other:
  u+- = w1 +- w2 obey u+- <- (1 +- lr c) u+-, with c ~ N(a, b^2), a = sum x y / m, b^2 = zeta^2 sum x^2 / m
  (tanh'(0) = 1). The origin attracts iff both exponents E log|1 +- lr c| < 0; to second order in lr
  that is lr (a^2 + b^2) / 2 > a, the paper's lr zeta^2 sigma'(0) / 2 > sum xy / sum xx plus the
  discrete step's own a^2 term.
"""

from __future__ import annotations

import math

import numpy as np
import torch

EULER_GAMMA = 0.5772156649015329


def expected_log_abs_normal(mean: np.ndarray | float, std: np.ndarray | float) -> np.ndarray:
    """E log|X| for X ~ N(mean, std^2), by quadrature (accurate to ~1e-12, see the tests).

    With r = |mean| / std, E log|X| = log std + E log|Z + r|. For r <= 10 the log singularity is in
    reach: E log|Z + r| = int_0^inf log(u) [phi(u - r) + phi(u + r)] du, and u = t^4 makes the integrand
    16 t^3 log t [...] smooth enough for the trapezoid rule; for r > 10, log(z + r) is smooth where the
    Gaussian has mass."""
    mean, std = np.broadcast_arrays(np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64))
    r = np.abs(mean / std)[..., None]
    near = r <= 10.0
    s = np.linspace(0.0, 1.0, 2001)
    t = s * (np.where(near, r, 0.0) + 12.0) ** 0.25
    phi = (np.exp(-0.5 * (t**4 - r) ** 2) + np.exp(-0.5 * (t**4 + r) ** 2)) / math.sqrt(2 * math.pi)
    f_near = 16.0 * t**3 * np.log(np.maximum(t, 1e-300)) * phi
    z = -12.0 + 24.0 * s
    f_far = np.log(np.maximum(z + r, 1e-300)) * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    f = np.where(near, f_near, f_far)
    step = np.where(near, t[..., 1:2] - t[..., 0:1], 24.0 / (len(s) - 1))[..., 0]
    return np.log(std) + step * (f.sum(-1) - 0.5 * (f[..., 0] + f[..., -1]))


def lyapunov(mean: float, std: float) -> float:
    """E log|1 + c| for c ~ N(mean, std^2): the growth rate of log|x| per step near the invariant set."""
    return float(expected_log_abs_normal(1.0 + mean, std))


def first_root(f, grid: np.ndarray) -> float:
    """Where f first turns from positive to negative along ``grid`` (the exponent can turn positive
    again at much larger noise or learning rate, where the step overshoots)."""
    values = np.array([f(v) for v in grid])
    neg = np.nonzero(values < 0)[0]
    if len(neg) == 0 or neg[0] == 0:
        raise ValueError(f"the exponent does not turn negative on [{grid[0]:g}, {grid[-1]:g}]")
    return bisect(f, grid[neg[0] - 1], grid[neg[0]])


def bisect(f, lo: float, hi: float, tol: float = 1e-10) -> float:
    """The root of a function that changes sign once on [lo, hi]."""
    flo = f(lo)
    if flo * f(hi) > 0:
        raise ValueError(f"no sign change on [{lo}, {hi}]")
    while hi - lo > tol * max(1.0, abs(hi)):
        mid = 0.5 * (lo + hi)
        if (f(mid) > 0) == (flo > 0):
            lo, flo = mid, f(mid)
        else:
            hi = mid
    return 0.5 * (lo + hi)


# ---- quartic well ----


def quartic_lyapunov(lr: float, mu: float, zeta: float, wd: float = 0.0) -> float:
    return lyapunov(lr * (mu - wd), math.sqrt(lr) * zeta)


def quartic_threshold(lr: float, mu: float, wd: float = 0.0) -> float:
    """The noise zeta* above which the discrete update collapses to 0 (exponent zero)."""
    if mu - wd <= 0:
        return 0.0  # the origin attracts without noise
    return first_root(lambda z: quartic_lyapunov(lr, mu, z, wd), np.geomspace(1e-3, 50.0, 200))


def quartic_threshold_continuous(mu: float, wd: float = 0.0) -> float:
    return math.sqrt(max(0.0, 2.0 * (mu - wd)))


def quartic_shape(mu: float, zeta: float, wd: float = 0.0) -> float:
    """a in theta^2 / zeta^2 ~ Gamma(a): (mu - wd) / zeta^2 - 1/2; a <= 0 means no stationary density."""
    return (mu - wd) / zeta**2 - 0.5


def quartic_cdf(theta: np.ndarray, mu: float, zeta: float, wd: float = 0.0) -> np.ndarray:
    """P(|theta| <= x) under the stationary density |theta|^(2 mu / zeta^2 - 2) exp(-theta^2 / zeta^2)."""
    a = quartic_shape(mu, zeta, wd)
    u = torch.as_tensor(np.asarray(theta, dtype=np.float64) ** 2 / zeta**2)
    return torch.special.gammainc(torch.tensor(a, dtype=torch.float64), u).numpy()


def quartic_density(theta: np.ndarray, mu: float, zeta: float, wd: float = 0.0) -> np.ndarray:
    """The stationary density of |theta| (normalised on theta >= 0)."""
    a = quartic_shape(mu, zeta, wd)
    theta = np.asarray(theta, dtype=np.float64)
    u = theta**2 / zeta**2
    with np.errstate(divide="ignore"):
        log_p = math.log(2.0) - 2 * a * math.log(zeta) + (2 * a - 1) * np.log(theta) - u - math.lgamma(a)
    return np.exp(log_p)


# ---- goodness of fit ----


def ks_statistic(samples: np.ndarray, cdf) -> float:
    """Kolmogorov-Smirnov distance between the samples' empirical CDF and ``cdf``."""
    x = np.sort(np.asarray(samples, dtype=np.float64))
    n = len(x)
    f = cdf(x)
    return float(max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(n) / n)))


def ks_critical(n: int, alpha: float) -> float:
    """The asymptotic KS critical distance at level ``alpha`` for ``n`` independent samples."""
    return math.sqrt(-0.5 * math.log(alpha / 2.0)) / math.sqrt(n)


# ---- single neuron ----


def neuron_gain(x: np.ndarray, y: np.ndarray, zeta: float) -> tuple[float, float]:
    """(a, b): the per-step gain near the origin is c ~ N(a, b^2)."""
    m = len(x)
    return float(np.dot(x, y) / m), float(zeta * math.sqrt(np.dot(x, x) / m))


def neuron_lyapunov(lr: float, a: float, b: float, wd: float = 0.0) -> float:
    """The larger of the exponents of u+ = w1 + w2 (gain lr (c - wd)) and u- = w1 - w2 (gain lr (-c - wd));
    coupled weight decay wd adds -lr wd to both gains."""
    return max(lyapunov(lr * (a - wd), lr * b), lyapunov(-lr * (a + wd), lr * b))


def neuron_threshold_lr(a: float, b: float, wd: float = 0.0, hi: float = 100.0) -> float:
    """The smallest learning rate at which the origin attracts (exponent crosses zero from above)."""
    return first_root(lambda lr: neuron_lyapunov(lr, a, b, wd), np.geomspace(1e-4, hi, 200))


def neuron_threshold_zeta(lr: float, x: np.ndarray, y: np.ndarray, wd: float = 0.0, hi: float = 100.0) -> float:
    """The label-noise level zeta above which the origin attracts at learning rate ``lr``."""
    return first_root(lambda z: neuron_lyapunov(lr, *neuron_gain(x, y, z), wd), np.geomspace(1e-3, hi, 200))
