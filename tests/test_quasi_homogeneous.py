"""The L2 max-margin QP against two independent solvers, and the max-margin claims in plain numpy:
normalised gradient descent on the exponential loss of u x1 + v x2 (homogeneous) and u x1 + v^2 x2;
then the task through the trainer: a fast run, held-out data, and a failing run for every check."""

import numpy as np
import pytest
import torch
from test_lazy_rich import failed

from configs import UserError
from runtime import Context
from small_tasks.linear.margins import l2_margin, max_margin
from small_tasks.linear.quasi_homogeneous import NETWORKS, QuasiHomogeneousTask

from helpers import run_config, train_config

CONFIG = "small_tasks/quasi_homogeneous.toml"
FAST = ["--train.max_steps=1000", "--optim.lr=0.3"]  # three decades, arc length 300 (reference: 1e4 steps of 0.1)


def separable(seed, n=20, d=2):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(d)
    x = rng.standard_normal((n, d))
    y = np.sign(x @ w)
    x += 0.3 * y[:, None] * w / np.linalg.norm(w)  # a gap around the plane w . x = 0
    return x, y


def dual_ascent(x, y, sweeps=20000):
    """Hildreth's method on the dual max sum(alpha) - 1/2 ||sum alpha_i y_i x_i||^2, alpha >= 0: exact
    coordinate maximisation, a different algorithm from the support enumeration under test."""
    z = y[:, None] * x
    alpha, beta = np.zeros(len(y)), np.zeros(x.shape[1])
    for _ in range(sweeps):
        for i in range(len(y)):
            new = max(0.0, alpha[i] + (1 - z[i] @ beta) / (z[i] @ z[i]))
            beta += (new - alpha[i]) * z[i]
            alpha[i] = new
    return beta


@pytest.mark.parametrize(("seed", "d"), [(0, 2), (1, 2), (2, 3), (3, 3)])
def test_max_margin_matches_dual_coordinate_ascent(seed, d):
    x, y = separable(seed, n=12, d=d)
    beta = max_margin(x, y)
    assert np.min(y * (x @ beta)) == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(beta, dual_ascent(x, y, sweeps=3000), atol=1e-7)


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_max_margin_matches_scipy_slsqp(seed):
    optimize = pytest.importorskip("scipy.optimize")
    x, y = separable(seed)
    z = y[:, None] * x
    res = optimize.minimize(
        lambda b: 0.5 * b @ b,
        x0=np.linalg.lstsq(z, np.ones(len(y)), rcond=None)[0] * 3,
        jac=lambda b: b,
        constraints=[{"type": "ineq", "fun": lambda b: z @ b - 1, "jac": lambda b: z}],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    np.testing.assert_allclose(max_margin(x, y), res.x, atol=1e-6)


def test_no_better_direction_exists():
    x, y = separable(7)
    beta = max_margin(x, y)
    angles = np.linspace(0, 2 * np.pi, 20001)
    margins = [l2_margin(np.array([np.cos(a), np.sin(a)]), x, y) for a in angles]
    assert max(margins) <= 1 / np.linalg.norm(beta) + 1e-12
    assert max(margins) == pytest.approx(1 / np.linalg.norm(beta), rel=1e-4)  # the grid's resolution


def test_inseparable_data_is_an_error():
    x = np.array([[1.0, 0.0], [2.0, 0.0]])
    with pytest.raises(ValueError, match="not linearly separable"):
        max_margin(x, np.array([1.0, -1.0]))


def normalised_descent(x, y, power, steps, lr=0.1, theta=(0.1, 0.1)):
    """theta <- theta - lr grad L / ||grad L|| on L = mean exp(-y (u x1 + v^power x2))."""
    u, v = theta
    out = []
    for k in range(1, steps + 1):
        f = u * x[:, 0] + v**power * x[:, 1]
        p = np.exp(-y * f - np.max(-y * f))  # the loss up to a positive factor, which the step ignores
        gu = -(p * y * x[:, 0]).sum()
        gv = -(p * y * x[:, 1]).sum() * power * v ** (power - 1)
        norm = np.hypot(gu, gv)
        u, v = u - lr * gu / norm, v - lr * gv / norm
        if k & (k - 1) == 0:  # powers of two
            out.append((k, u, v))
    return out


def test_homogeneous_direction_goes_to_the_l2_max_margin_and_quasi_homogeneous_drops_u():
    rng = np.random.default_rng(0)
    y = np.where(rng.random(20) < 0.5, 1.0, -1.0)
    x = np.stack([rng.standard_normal(20), y * rng.uniform(0.5, 1.5, 20)], 1)  # x2 alone separates
    target = max_margin(x, y)
    angle = [
        np.arccos(np.clip(np.array([u, v]) @ target / np.hypot(u, v) / np.linalg.norm(target), -1, 1))
        for _, u, v in normalised_descent(x, y, 1, 4096)
    ]
    # the direction overshoots once (near step 64 here), then closes in as ~1/steps: halving per doubling
    assert all(a > b for a, b in zip(angle[-5:], angle[-4:])) and angle[-1] < angle[-5] / 8 and angle[-1] < 2e-3
    ratio = [abs(u) / (abs(u) + v * v) for _, u, v in normalised_descent(x, y, 2, 4096)]
    assert all(a > b for a, b in zip(ratio, ratio[1:])) and ratio[-1] < 1e-3


def test_fast_run_passes_every_check(tmp_path):
    s = run_config(tmp_path, CONFIG, *FAST)
    assert failed(s) == []
    robust = s["checks"]["quasi_homogeneous_less_robust"]
    assert robust["robustness_ratio"] < 0.2  # x2's margin 0.1 against the max margin ~1
    assert (tmp_path / "t" / "quasi_homogeneous.png").exists() and (tmp_path / "t" / "robustness.png").exists()


def test_held_out_data_passes(tmp_path):
    held_out = ["--task.data_seed=5", "--task.robust_x1=0.5", "--task.robust_x2=0.3", "--run.seed=2", "--task.n=30"]
    assert failed(run_config(tmp_path, CONFIG, *FAST, *held_out)) == []


@pytest.mark.parametrize(
    ("overrides", "failing"),
    [
        # x2 alone no longer separates the toy data: the quasi-homogeneous model must keep x1
        (["--task.x2_margin=-0.3", "--task.x1_shift=3"], ["quasi_homogeneous_ratio_falls"]),
        # under two decades of steps, and the quasi-homogeneous classifier has not dropped x1 yet
        (
            ["--train.max_steps=50"],
            ["homogeneous_to_l2_max_margin", "quasi_homogeneous_less_robust", "quasi_homogeneous_ratio_falls"],
        ),
        # weight decay on every parameter: a finite optimum, where the margins settle short of their limits
        (
            ["--optim.sgdm.weight_decay=0.5", "--optim.decay=all"],
            ["homogeneous_to_l2_max_margin", "normalized_margin_converges"],
        ),
    ],
)
def test_each_check_rejects_a_run_outside_the_theory(tmp_path, overrides, failing):
    s = run_config(tmp_path, CONFIG, *FAST, *overrides)
    assert set(failing) <= set(failed(s)), s["checks"]


def test_the_step_is_the_unit_vector_along_minus_the_gradient(tmp_path):
    """Per network, the objective's gradient is grad L / ||grad L||, so lr is the length of every step."""
    cfg = train_config(CONFIG, [f"--run.dir={tmp_path}", "--train.max_steps=10"])
    task = QuasiHomogeneousTask(cfg, Context(device=torch.device("cpu"), run_dir=tmp_path))
    model = task.build_model()
    grads = lambda: torch.stack([model.u.grad, model.v.grad], 1)
    task.log_losses(model).sum().backward()  # grad log L = grad L / L: the same direction as grad L
    unit = grads() / grads().norm(dim=1, keepdim=True)
    model.zero_grad()
    task.loss(model, task.batch(0), 0).backward()
    torch.testing.assert_close(grads(), unit)
    assert len(unit) == len(NETWORKS)


def test_inseparable_settings_are_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not linearly separable"):
        run_config(tmp_path, CONFIG, "--task.x2_margin=-0.5", "--train.max_steps=2")
