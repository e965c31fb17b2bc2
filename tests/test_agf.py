"""AGF predictions: closed forms, the diagonal-network solver against exact cases and against gradient descent."""

import numpy as np
import pytest
import torch

from small_tasks.composition import agf, agf_power, groups
from small_tasks.toolkit import staircase

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: a second thread only waits


def composition_data(group, template, k):
    seqs = groups.sequences(group, k)
    x = np.concatenate([groups.shift(group, template, seqs[:, j]) for j in range(k)], axis=1)
    y = groups.shift(group, template, groups.compose(group, seqs))
    return torch.tensor(x), torch.tensor(y)


def numerical_max_utility(x, y, k, subspace=None, restarts=4, iters=600, lr=0.1, seed=0):
    """The reference: projected gradient ascent of U = (2/(N n)) sum (u.x)^k <w, y> on the unit sphere."""
    n_in, c = x.shape[1], 2 / y.numel()
    gen = torch.Generator().manual_seed(seed)
    project = (lambda t: t @ subspace) if subspace is not None else (lambda t: t)
    th = project(torch.randn(restarts, n_in + y.shape[1], dtype=torch.float64, generator=gen))
    th = th / th.norm(dim=1, keepdim=True)
    for _ in range(iters):
        s, yw = x @ th[:, :n_in].T, y @ th[:, n_in:].T
        grad = c * torch.cat([(k * s ** (k - 1) * yw).T @ x, (s**k).T @ y], dim=1)
        th = project(th + lr * grad)
        th = th / th.norm(dim=1, keepdim=True)
    return float((c * (x @ th[:, :n_in].T) ** k * (y @ th[:, n_in:].T)).sum(0).max())


@pytest.mark.parametrize(
    ("name", "powers", "k"),
    [("C5", None, 2), ("D5", [0, 5, 10, 2.5], 2), ("C2xC3", None, 2), ("S3", None, 3)],
)
def test_max_utility_closed_form_matches_numerical_maximisation(name, powers, k):
    """U*_c per class against gradient ascent restricted to the class's subspace, and the overall maximum
    against unrestricted ascent: the best neuron lives in one class."""
    g = groups.parse_group(name)
    template = groups.template_from_powers(g, powers or groups.default_powers(g), seed=1)
    x, y = composition_data(g, template, k)
    closed = agf.class_max_utility(g, template, k)
    q = g.projectors()
    for c, cls in enumerate(g.classes()):
        if closed[c] < 1e-12:
            continue
        subspace = torch.tensor(np.kron(np.eye(k + 1), q[cls].sum(axis=0)))
        assert numerical_max_utility(x, y, k, subspace) == pytest.approx(closed[c], rel=1e-5), g.irreps[cls[0]].name
    assert numerical_max_utility(x, y, k) == pytest.approx(closed.max(), rel=1e-5)


@pytest.mark.parametrize("norm_power", [0.0, -1.0])  # plain gradient descent, per-neuron SGD
def test_dormant_flow_of_an_aligned_neuron_escapes_at_the_closed_form_time(norm_power):
    """One neuron started on the best direction of C5's strongest class: its direction stays put and its
    norm reaches 1 at agf.escape_time, to the integrator's precision."""
    g = groups.cyclic(5)
    template = groups.template_from_powers(g, groups.default_powers(g), seed=1)
    x, y = composition_data(g, template, 2)
    best = best_direction(x, y, 2)
    u_star = agf.class_max_utility(g, template, 2).max()
    theta0 = 1e-4
    w_in, w_out = theta0 * best[None, :10], theta0 * best[None, 10:].T
    flow = agf_power.DormantFlow(w_in, w_out, 2, norm_power, threshold=1.0)
    t, joined = flow.run(x, y, 0.0, 1e9, step_tol=0.01)
    assert joined.tolist() == [0]
    assert t == pytest.approx(agf.escape_time(u_star, theta0, 2, norm_power), rel=1e-6)


def best_direction(x, y, k, iters=3000, lr=0.1):
    th = torch.randn(x.shape[1] + y.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    th = (th / th.norm()).requires_grad_(True)
    for _ in range(iters):
        util = 2 / y.numel() * (((x @ th[: x.shape[1]]) ** k) * (y @ th[x.shape[1] :])).sum()
        (g,) = torch.autograd.grad(util, th)
        with torch.no_grad():
            th += lr * g
            th /= th.norm()
    return th.detach()


def test_order_follows_utility_not_power_across_dimensions():
    """D5 with sign 5 (1-dim) and rot1 10 (2-dim): sigma = sqrt(50) against sqrt(100)/2, so sign comes first."""
    g = groups.dihedral(5)
    u = agf.class_max_utility(g, groups.template_from_powers(g, [0, 5, 10, 2.5]), 2)
    assert agf.predicted_order(u) == [[1], [2], [3]]
    assert agf.predicted_order(np.array([0.0, 2.0, 2.0, 1.0])) == [[1, 2], [3]]  # equal utilities drop together


def test_modular_addition_escape_steps_are_the_papers_closed_form():
    """tau_k = (1/theta0 - 1)/(3 u_k), u_k = sqrt(2p/27)|x_k|^3/p^2, in steps tau/((2/p) lr/(1-beta)):
    764, 6109, 48873 for the reference, 8x apart, from U*_c and the gradient-descent escape time."""
    p, amps = 20, {1: 10.0, 3: 5.0, 5: 2.5}
    g = groups.cyclic(p)
    powers = [0.0] * p
    for f, a in amps.items():
        powers[f] = powers[p - f] = a**2 / p
    u = agf.class_max_utility(g, groups.template_from_powers(g, powers), 2)
    steps = [agf.escape_time(u[f], np.sqrt(2) * 1e-2, 2, 0.0) / (0.01 / (1 - 0.9)) for f in amps]
    assert [round(s) for s in steps] == [764, 6109, 48873]
    assert steps[1] / steps[0] == pytest.approx(8.0, rel=1e-6)


def test_escape_time_forms():
    assert agf.escape_time(2.0, 1e-5, 2, -1.0) == pytest.approx(np.log(1e5) / 6)  # per-neuron SGD: log
    assert agf.escape_time(2.0, 1e-2, 2, 0.0) == pytest.approx((1e2 - 1) / 6)  # gradient descent: 1/theta0


def test_staircase_levels_follow_the_given_order():
    powers = [0, 25, 20, 15, 10, 5]  # classes of C11: conjugate pairs summed
    levels = agf.staircase_levels(powers, 11, [[1], [2], [3], [4], [5]])
    assert levels == pytest.approx([75 / 11, 50 / 11, 30 / 11, 15 / 11, 5 / 11, 0])
    assert agf.staircase_levels([0, 4, 4, 1], 2, [[1, 2], [3]]) == pytest.approx([4.5, 0.5, 0])
    assert agf.staircase_levels(powers, 11, [[5], [1]])[1:] == pytest.approx([70 / 11, 45 / 11])


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
