"""Margins of linear classifiers sign(beta . x) on labelled data (y = +-1), and the L2 max-margin direction.

The L2 max-margin problem without bias, min ||beta||^2 subject to y_i beta . x_i >= 1, is a small convex
QP. Its solution lies in the cone of its support vectors z_i = y_i x_i, and by Caratheodory d of them
suffice, so it is the minimum-norm solution of z_i . beta = 1 on some support S with |S| <= d and
non-negative multipliers; ``max_margin`` enumerates those supports and keeps the feasible one of
smallest norm. Exact, and fast for the few dimensions and points of the toy problems here.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

FEASIBLE = 1e-9  # slack allowed on the margin constraints, relative to 1


def l2_margin(beta: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """min_i y_i beta . x_i / ||beta||: the distance of the closest point to the boundary (negative if any
    point is misclassified); for a linear classifier, the smallest L2 perturbation that flips a label."""
    return float(np.min(y * (x @ beta)) / np.linalg.norm(beta))


def max_margin(x: np.ndarray, y: np.ndarray, max_subsets: int = 2_000_000) -> np.ndarray:
    """beta with min_i y_i beta . x_i = 1 and the least norm; its direction is the L2 max-margin one and
    1 / ||beta|| the margin. Raises ValueError if no linear classifier through the origin separates the data."""
    z = y[:, None] * x
    n, d = z.shape
    sizes = range(1, min(d, n) + 1)
    count = sum(math.comb(n, k) for k in sizes)
    if count > max_subsets:
        raise ValueError(f"{n} points in {d} dimensions need {count} supports; use fewer points")
    best, best_norm = None, np.inf
    for k in sizes:
        for support in itertools.combinations(range(n), k):
            zs = z[list(support)]
            gram = zs @ zs.T
            try:
                alpha = np.linalg.solve(gram, np.ones(k))
            except np.linalg.LinAlgError:
                continue
            if np.any(alpha < 0):
                continue
            beta = zs.T @ alpha
            norm = float(np.linalg.norm(beta))
            if norm < best_norm and np.min(z @ beta) >= 1 - FEASIBLE:
                best, best_norm = beta, norm
    if best is None:
        raise ValueError("the data are not linearly separable through the origin")
    return best
