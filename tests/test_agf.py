"""AGF predictions: closed forms, the diagonal-network solver against exact cases and against gradient descent."""

import numpy as np
import pytest

from small_tasks import agf, staircase


def test_modular_addition_closed_form_lower_bounds():
    drops = agf.modular_addition_drops(20, {1: 10.0, 3: 5.0, 5: 2.5}, 1e-2, 0.01, 0.9)
    assert [d["frequency"] for d in drops] == [1, 3, 5]
    assert [round(d["step"]) for d in drops] == [764, 6109, 48873]
    assert drops[1]["step"] / drops[0]["step"] == pytest.approx(8.0, rel=1e-3)


def test_staircase_levels_c11_and_ties():
    powers = [0, 25, 20, 15, 10, 5]  # classes of C11: conjugate pairs summed
    levels, order = agf.staircase_levels(powers, 11)
    assert levels == pytest.approx([75 / 11, 50 / 11, 30 / 11, 15 / 11, 5 / 11, 0])
    assert order == [[1], [2], [3], [4], [5]]
    levels, order = agf.staircase_levels([0, 4, 4, 1], 2)
    assert levels == pytest.approx([4.5, 0.5, 0]) and order == [[1, 2], [3]]


def test_sign_constrained_lsq_matches_brute_force():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((8, 5))
    h, b = a.T @ a, rng.standard_normal(5)
    signs = np.array([1.0, -1.0, 0.0, 1.0, -1.0])
    got = agf._sign_constrained_lsq(h, b, signs)
    # reference: projected gradient descent on the same QP, run to convergence
    beta = np.zeros(5)
    step = 1 / np.linalg.eigvalsh(h).max()
    for _ in range(20000):
        beta = beta - step * (h @ beta - b)
        beta = np.where(signs == 0, 0, np.where(signs * beta < 0, 0, beta))
    np.testing.assert_allclose(got, beta, atol=1e-6)


def test_diagonal_agf_on_an_orthogonal_design_is_exact():
    """With X^T X / n = I the coordinates decouple: coordinate i jumps at xi*/|b_i|, the loss falls by b_i^2/2."""
    beta_star = np.array([3.0, -1.0, 0.5, 2.0])
    x = np.sqrt(4.0) * np.eye(4)
    pred = agf.diagonal_linear(x, x @ beta_star, alpha=1e-6)
    thr = 0.5 * np.arccosh(1 / (2 * 1e-12))
    order = np.argsort(-np.abs(beta_star))
    np.testing.assert_allclose(pred.times, thr / np.abs(beta_star[order]))
    remaining = 0.5 * np.sum(beta_star**2) - np.cumsum(np.r_[0, beta_star[order] ** 2 / 2])
    np.testing.assert_allclose(pred.levels, remaining, atol=1e-12)
    assert pred.active[-1] == [0, 1, 2, 3]


def gd_diagonal(x, y, alpha, lr, steps):
    """Plain gradient descent on (u, v), the reference the prediction is compared with."""
    n, d = x.shape
    u, v = np.full(d, np.sqrt(2) * alpha), np.zeros(d)
    h, c = x.T @ x / n, x.T @ y / n
    loss = np.empty(steps)
    for s in range(steps):
        beta = u * v
        g = h @ beta - c
        loss[s] = 0.5 * np.mean((x @ beta - y) ** 2)
        u, v = u - lr * g * v, v - lr * g * u
    return loss


def reference_problem():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 5)) / np.sqrt(np.arange(1, 6))
    beta = 10 * rng.standard_normal(5)
    return x, x @ beta


def test_diagonal_agf_against_gradient_descent_small_alpha():
    """At alpha = 1e-30 the plateaus AGF predicts are visible and land on its levels; jumps within 25%.

    lr 1e-2 instead of 1e-3: AGF's prediction is in gradient-flow time (steps * lr), which a smaller
    step count at a larger, still stable, rate keeps."""
    x, y = reference_problem()
    alpha, lr = 1e-30, 1e-2
    pred = agf.diagonal_linear(x, y, alpha)
    steps = int(pred.times[-1] / lr * 1.3)
    loss = gd_diagonal(x, y, alpha, lr, steps)
    t = np.arange(steps)
    plateaus = staircase.find_plateaus(t, loss)
    assert staircase.match_plateaus(plateaus, pred.levels, 0.02)["passed"]
    seen = staircase.match_levels(pred.levels, plateaus, 0.02)
    # every level but the one between two jumps 4% apart is resolved as a plateau
    assert sum(o is not None and abs(o - e) <= 0.02 * e for o, e in zip(seen["observed"], seen["expected"])) == 4
    observed = staircase.drop_steps(t, loss, pred.levels)
    for o, p in zip(observed, [tt / lr for tt in pred.times]):
        assert o is not None and abs(o - p) <= 0.25 * p


def test_find_plateaus_on_a_synthetic_staircase():
    t = np.arange(1, 20001, dtype=float)
    loss = 1 + 2 / (1 + np.exp((t - 1000) / 30)) + 4 / (1 + np.exp((t - 8000) / 200))
    levels = [p["level"] for p in staircase.find_plateaus(t, loss)]
    assert levels == pytest.approx([7, 5, 1], rel=1e-3)
    assert staircase.drop_steps(t, loss, [7, 5, 1]) == pytest.approx([1000, 8000], abs=2)
