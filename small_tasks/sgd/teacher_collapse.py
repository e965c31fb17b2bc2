"""When SGD's noise makes a student's extra neurons collapse onto the teacher's subnetwork (derived here).

Student: the diagonal two-layer linear network f(x) = sum_j u_j v_j x_j (hidden neuron j reads input j
with weight u_j and writes with weight v_j), d neurons; teacher: beta* with k < d nonzero coordinates,
y = beta* . x + label_noise * N(0, 1) on n fixed examples. Plain SGD on (1/2) mean_batch (f - y)^2 with
batches of B examples drawn with replacement (B >= n: the full batch, no noise).

Neuron j is on an invariant set when u_j = v_j = 0 (it stays dead under every batch). Near it,
u+- = u_j +- v_j obey exactly u+- <- (1 -+ lr c) u+-, c = mean_batch r_i x_ij, r = f - y: the single
neuron's random gain (small_tasks/sgd/collapse.py) with the residual of the other neurons. The set of
the teacher's subnetwork (every neuron off the support S dead) therefore attracts iff for each j off S
both E log|1 +- lr c_j| < 0, evaluated with the other neurons at their fit on S:
- the fit: beta_S = least squares on S, residual r_i; per example the gain is G_ij = r_i x_ij, with mean
  a_j = sum_i r_i x_ij / n (Sxy / Sxx-type: the correlation the dead neuron could still use) and spread
  b_j^2 = var_i(G_ij) / B (the SGD noise); to second order in lr the set attracts iff
  lr (a_j^2 + b_j^2) / 2 > |a_j|, the single neuron's condition;
- the fit fluctuates under the same noise: beta_S = beta_S^ls + delta, and delta adds
  -(x_S . delta) x_j to the gain, a Gaussian of variance x_S' C x_S for the stationary covariance C of
  delta (linear SGD on S in function space: delta <- (I - lr P x x') delta + lr P r x, P = diag(2 |beta_j|)
  for balanced neurons, u_j^2 + v_j^2 = 2 |beta_j|). Without it the exponents are about 1e-3 too high at
  lr 0.06 in the reference setting (the measured exponents sit between the two).
The exponent is the exact average over the examples (B = 1), over 4,096 sampled batches (1 < B < n), or
log|1 +- lr a_j| without noise (full batch: one of the two is positive, so nothing collapses).
A neuron of the support j in S is judged the same way, with the others fitted on S minus j.

Generalization: with E[x x'] = I the excess test error of beta is |beta - beta*|^2, so the fit on S (or
on S plus the neurons that do not collapse) against the least squares fit on all d neurons gives the
test error that collapse saves: about label_noise^2 (d - k) / n.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from small_tasks.sgd import collapse

GAIN_DRAWS = 4096  # sampled batches for 1 < B < n
SMOOTH_RATIO = 8.0  # E log|m + s Z| by Gauss-Hermite where |m| / s >= SMOOTH_RATIO (the log is smooth there)
# 16 nodes: at |m| / s >= 8 the rule is exact to ~1e-12 for the Taylor series of log(1 + s Z / m)
NODES, WEIGHTS = np.polynomial.hermite_e.hermegauss(16)


@dataclass
class Data:
    """The teacher-student instance: inputs x (n, d) with +-1 entries (E[x x'] = I exactly, and every
    x_ij^2 = 1), the teacher beta* and the labels."""

    x: np.ndarray
    y: np.ndarray
    teacher: np.ndarray
    support: np.ndarray  # indices of the teacher's nonzero coordinates


def make_data(d: int, k: int, n: int, teacher: float, label_noise: float, seed: int) -> Data:
    """beta*_j = teacher * (+1, -1, +1, ...) on the first k coordinates, zero elsewhere."""
    rng = np.random.default_rng(seed)
    x = rng.choice([-1.0, 1.0], size=(n, d))
    beta = np.zeros(d)
    beta[:k] = teacher * (-1.0) ** np.arange(k)
    y = x @ beta + label_noise * rng.standard_normal(n)
    return Data(x, y, beta, np.arange(k))


def least_squares(data: Data, active: np.ndarray) -> np.ndarray:
    """The least squares fit on the ``active`` coordinates (zero elsewhere)."""
    beta = np.zeros(data.x.shape[1])
    active = np.asarray(active, dtype=int)
    if len(active):
        beta[active] = np.linalg.lstsq(data.x[:, active], data.y, rcond=None)[0]
    return beta


def excess_error(beta: np.ndarray, teacher: np.ndarray) -> np.ndarray:
    """Expected test error minus the label noise, E[(beta . x - beta* . x)^2] = |beta - beta*|^2 (E[xx'] = I)."""
    return np.square(np.asarray(beta) - teacher).sum(-1)


def support_covariance(xs: np.ndarray, r: np.ndarray, beta_s: np.ndarray, lr: float, batch: int) -> np.ndarray:
    """Stationary covariance of the fit's fluctuation delta on the active coordinates (xs: their columns)
    under delta <- (I - lr P M_b) delta + lr P g_b, M_b, g_b the batch means of x x' and r x, P = diag(2|beta|):
    C = C - lr (P M C + C M P) + lr^2 P E[M_b C M_b] P + lr^2 P N P / B, solved as a linear system;
    zero for the full batch (no noise) and where the linear recursion is unstable (then nothing is stationary)."""
    n, k = xs.shape
    if k == 0 or batch >= n:
        return np.zeros((k, k))
    p = np.diag(2.0 * np.abs(beta_s))
    m = xs.T @ xs / n
    fourth = np.einsum("ia,ib,ic,id->abcd", xs, xs, xs, xs) / n  # E[x_a x_b x_c x_d]
    noise = (xs * (r**2)[:, None]).T @ xs / n
    eye = np.eye(k)
    # the map C -> lr (P M C + C M P) - lr^2 P E[M_b C M_b] P as a k^2 x k^2 matrix (row-major vec)
    pm = p @ m
    e_mcm = (1 - 1 / batch) * np.kron(m, m) + (1 / batch) * fourth.transpose(0, 3, 1, 2).reshape(k * k, k * k)
    op = lr * (np.kron(pm, eye) + np.kron(eye, pm)) - lr**2 * np.kron(p, p) @ e_mcm
    rhs = (lr**2 * p @ noise @ p / batch).reshape(-1)
    try:
        c = np.linalg.solve(op, rhs).reshape(k, k)
    except np.linalg.LinAlgError:
        return np.full((k, k), np.nan)
    return 0.5 * (c + c.T)


def smoothed_log(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """E log|mean + std Z|, Z ~ N(0, 1), elementwise: Gauss-Hermite where the log is smooth over the
    Gaussian's mass, ``collapse.expected_log_abs_normal`` (quadrature through the singularity) elsewhere."""
    mean, std = np.broadcast_arrays(np.asarray(mean, dtype=np.float64), np.maximum(np.asarray(std, float), 1e-300))
    out = np.empty(mean.shape)
    smooth = np.abs(mean) >= SMOOTH_RATIO * std
    m, s = mean[smooth][:, None], std[smooth][:, None]
    out[smooth] = (np.log(np.abs(m + s * NODES)) * WEIGHTS).sum(-1) / math.sqrt(2 * math.pi)
    if np.any(~smooth):
        out[~smooth] = collapse.expected_log_abs_normal(mean[~smooth], std[~smooth])
    return out


@dataclass
class Gains:
    """The per-step gain of the dead neurons, c = g + N(0, s^2), one equally weighted row per example
    (B = 1) or sampled batch; the exponents are averages over the rows."""

    g: np.ndarray  # (rows, d)
    s: np.ndarray  # (rows, d)


def gains(data: Data, active: np.ndarray, lr: float, batch: int, fluctuation: bool = True) -> Gains:
    """The gain of every neuron while the ``active`` ones sit at their fit (and fluctuate around it)."""
    n = len(data.y)
    beta = least_squares(data, active)
    r = data.x @ beta - data.y
    per_example = r[:, None] * data.x
    xs = data.x[:, np.asarray(active, dtype=int)]
    cov = support_covariance(xs, r, beta[np.asarray(active, dtype=int)], lr, batch) if fluctuation else None
    if batch >= n:  # the full batch: the mean gain, no noise
        return Gains(per_example.mean(0, keepdims=True), np.zeros((1, data.x.shape[1])))
    if batch == 1:
        g, w = per_example, data.x[:, :, None] * xs[:, None, :]  # w_ij = x_ij x_iS: delta enters as -w . delta
    else:
        idx = np.random.default_rng(0).integers(0, n, size=(GAIN_DRAWS, batch))
        g = per_example[idx].mean(1)
        w = (data.x[idx][:, :, :, None] * xs[idx][:, :, None, :]).mean(1)
    if cov is None or cov.size == 0:
        return Gains(g, np.zeros_like(g))
    s = np.sqrt(np.maximum(np.einsum("rja,ab,rjb->rj", w, cov, w), 0.0))
    return Gains(g, s)


def exponents(data: Data, lr: float, batch: int, fluctuation: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(lambda+, lambda-) per neuron: E log|1 - lr c| for u+ and E log|1 + lr c| for u-, each neuron with the
    others at the teacher's fit (off the support: the fit on S; on it: the fit on S minus j). The
    neuron collapses iff both are negative: ``np.maximum(plus, minus) < 0``."""
    d = data.x.shape[1]
    plus, minus = np.zeros(d), np.zeros(d)
    support = set(data.support.tolist())
    groups = [(np.array(sorted(support)), [j for j in range(d) if j not in support])]
    groups += [(np.array(sorted(support - {j})), [j]) for j in sorted(support)]
    for active, cols in groups:
        gn = gains(data, active, lr, batch, fluctuation)
        g, s = gn.g[:, cols], gn.s[:, cols]
        plus[cols] = smoothed_log(1.0 - lr * g, lr * s).mean(0)
        minus[cols] = smoothed_log(1.0 + lr * g, lr * s).mean(0)
    return plus, minus


def step_spread(data: Data, lr: float, batch: int) -> np.ndarray:
    """About the per-step std of log|1 +- lr c| per neuron (lr times the gain's std, fluctuation included):
    the diffusion of log|u+-| that the drift must beat for an outcome to be decided."""
    d = data.x.shape[1]
    out = np.zeros(d)
    support = set(data.support.tolist())
    groups = [(np.array(sorted(support)), [j for j in range(d) if j not in support])]
    groups += [(np.array(sorted(support - {j})), [j]) for j in sorted(support)]
    for active, cols in groups:
        gn = gains(data, active, lr, batch)
        out[cols] = lr * np.sqrt(gn.g[:, cols].var(0) + np.square(gn.s[:, cols]).mean(0))
    return out


def thresholds(data: Data, batch: int, grid: np.ndarray) -> np.ndarray:
    """Per neuron, the learning rate at which its exponent max(lambda+, lambda-) first turns negative along
    ``grid``, by linear interpolation between the bracketing grid points; NaN where it never does."""
    values = np.array([np.maximum(*exponents(data, lr, batch)) for lr in grid])  # (grid, d)
    out = np.full(values.shape[1], np.nan)
    for j in range(values.shape[1]):
        neg = np.nonzero(values[:, j] < 0)[0]
        if len(neg) == 0 or neg[0] == 0:
            continue
        i = neg[0]
        lo, hi, f_lo, f_hi = grid[i - 1], grid[i], values[i - 1, j], values[i, j]
        out[j] = lo + (hi - lo) * f_lo / (f_lo - f_hi)
    return out
