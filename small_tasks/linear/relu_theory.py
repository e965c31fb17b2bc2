"""The lazy (linearised) prediction for two-layer ReLU networks f(x) = sum_i a_i relu(w_i . x), and the
quantities the phase diagram and the grokking task compare with it.

A network stays lazy when training it moves its parameters so little that its NTK stays put; then it
trains like its linearisation at initialisation, f_lin(theta) = f(theta0) + J (theta - theta0), whose
gradient descent is solved exactly. With the Gram matrix K = J J^T (the NTK on the n training inputs,
``relu_ntk``) = V diag(lambda) V^T, step size lr on 1/2 mean (f - y)^2 and f(theta0) = 0, the residual after
t steps is r_t = (I - lr K / n)^t y, and the parameters have moved by
    theta_T - theta0 = J^T c,  c = sum_{t<T} (lr / n) r_t = V diag((1 - (1 - lr lambda / n)^T) / lambda) V^T y
(T lr / n where lambda = 0). Its first-layer block is Delta w_i = a_i sum_j c_j 1[w_i . x_j > 0] x_j, its readout block
Delta a_i = sum_j c_j relu(w_i . x_j).
``lazy_prediction`` returns ||Delta W|| / ||W0||: the relative motion the lazy theory predicts for the
first layer, from the data, the initialisation and the optimizer's settings alone (and ||Delta a|| / ||a0||
for the readout). Where both are small the prediction is self-consistent (the gates barely change, so the
kernel barely changes: the network is lazy);
where it reaches 1 the linearisation would move the first layer by its own norm, rotating every neuron by
about 45 degrees, so the kernel must change: the network is rich. The crossover's position in the
(scale, imbalance) plane is the prediction of the phase diagram's boundary.

Why the imbalance moves the boundary (derived here): per neuron, with ||w_i|| = tau alpha and
|a_i| = tau / alpha, the first layer's share of the NTK is a_i^2 E[g] / (a_i^2 E[g] + ||w_i||^2 E[relu(u.x)^2])
= 1 / (1 + alpha^4 / d) for inputs on the unit sphere in d dimensions (E[relu(u.x)^2] = 1 / (2d) for a unit u,
E[g] = 1/2), and the first layer's relative motion is that share over tau^2 (times a factor set by the data).
So the first layer carries the fit and moves by ~1/tau^2 whenever alpha^4 << d (balanced and upstream alike),
and downstream (alpha^4 >> d) it moves d / alpha^4 times less: a downstream network goes lazy at a scale
smaller by (alpha^4 / d)^(1/2).
"""

from __future__ import annotations

import numpy as np
import torch


def relu_ntk(x: torch.Tensor, w: torch.Tensor, a: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
    """The NTK between inputs x ((n, d), or (K, n, d) one set per network) and x2 (default x) of K networks
    w (K, m, d), a (K, m): relu(XW^T) relu(X2W^T)^T + (X X2^T) * (G diag(a^2) G2^T), G = 1[XW^T > 0].
    Returns (K, n, n2)."""
    x2 = x if x2 is None else x2
    pre, pre2 = x @ w.transpose(1, 2), x2 @ w.transpose(1, 2)
    gate, gate2 = (pre > 0).to(w.dtype), (pre2 > 0).to(w.dtype)
    gates = (gate * a[:, None, :] ** 2) @ gate2.transpose(1, 2)
    return torch.relu(pre) @ torch.relu(pre2).transpose(1, 2) + (x @ x2.transpose(-1, -2)) * gates


def kernel_distance(k0: torch.Tensor, k1: torch.Tensor) -> torch.Tensor:
    """1 - cos between kernels (last two dimensions), per network: 0 when the NTK keeps its shape."""
    inner = lambda p, q: (p * q).sum((-2, -1))
    return 1 - inner(k0, k1) / torch.sqrt(inner(k0, k0) * inner(k1, k1))


def lazy_prediction(
    x: torch.Tensor,
    y: torch.Tensor,
    w0: torch.Tensor,
    a0: torch.Tensor,
    lrs: torch.Tensor,
    steps: int,
    x_test: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the linearisation at (w0, a0) predicts after ``steps`` steps of gradient descent (step lrs[k] on
    network k's 1/2 mean squared error; the networks start at f = 0): ||Delta W|| / ||W0|| and
    ||Delta a|| / ||a0|| per network, and its function on ``x_test``, J_test J^T c. Diverging steps
    (lr lambda / n > 2) give a huge motion, as the
    real network would."""
    n = x.shape[-2]
    gram = relu_ntk(x, w0, a0)
    lam, vec = torch.linalg.eigh(gram)
    lam = lam.clamp(min=0)
    rate = lrs[:, None] * lam / n
    resolved = lam > 1e-12 * lam[:, -1:]
    geometric = (1 - (1 - rate) ** steps) / torch.where(resolved, lam, torch.ones_like(lam))
    coef = torch.where(resolved, geometric, steps * lrs[:, None] / n * torch.ones_like(lam))
    yb = y.expand(w0.shape[0], n) if y.dim() == 1 else y
    c = (vec @ (coef * (vec.transpose(1, 2) @ yb[..., None])[..., 0])[..., None])[..., 0]  # (K, n)
    gate = ((x @ w0.transpose(1, 2)) > 0).to(w0.dtype)  # (K, n, m)
    delta_w = a0[:, :, None] * ((gate * c[:, :, None]).transpose(1, 2) @ x)  # (K, m, d)
    delta_a = (torch.relu(x @ w0.transpose(1, 2)) * c[:, :, None]).sum(1)  # (K, m)
    f_test = (relu_ntk(x_test, w0, a0, x) @ c[..., None])[..., 0]
    return delta_w.norm(dim=(1, 2)) / w0.norm(dim=(1, 2)), delta_a.norm(dim=1) / a0.norm(dim=1), f_test


def crossing_scale(scales: np.ndarray, motion: np.ndarray, level: float) -> np.ndarray:
    """Per column of ``motion`` (scales along the rows, increasing), the scale at which the motion falls
    through ``level``, interpolated in log-log between the last row above it and the next; NaN where the
    column never crosses it inside the grid (all above or all below)."""
    out = np.full(motion.shape[1], np.nan)
    logs = np.log(scales)
    for j in range(motion.shape[1]):
        col = np.log(np.maximum(motion[:, j], 1e-300))
        above = np.nonzero(col >= np.log(level))[0]
        if len(above) == 0 or above[-1] == len(scales) - 1:
            continue
        i = above[-1]
        frac = (col[i] - np.log(level)) / (col[i] - col[i + 1])
        out[j] = float(np.exp(logs[i] + frac * (logs[i + 1] - logs[i])))
    return out
