"""lambda-balanced linear networks: the Riccati closed form, the per-mode ODE and the NTK formulas
against direct numerical integration, plain gradient descent and an explicit Jacobian; then the task
through the trainer: a fast reference run, held-out settings, and a failing run for every check."""

import numpy as np
import pytest
import torch

from configs import UserError
from small_tasks.linear import theory as lt

from helpers import run_config

CONFIG = "small_tasks/lazy_rich.toml"
# two modes, learned by t = 3: lr 2e-3 for 1,500 steps (the reference: four modes, lr 1e-3, t = 12)
FAST = ["--task.singular_values=[3,2]", "--optim.lr=2e-3", "--train.max_steps=1500", "--task.sweep=[0,1,-1,4,-4]"]
CHECKS = [
    "product_matches_closed_form",
    "lambda_conserved",
    "half_learn_times",
    "kernel_distance_matches_closed_form",
    "kernel_distance_falls_with_abs_lambda",
]


def failed(summary):
    return sorted(name for name, c in summary["checks"].items() if not c["passed"])


def rk4(f, y, t_end, n):
    """Classical Runge-Kutta; returns the state at n + 1 equally spaced times."""
    h, out = t_end / n, [y]
    for _ in range(n):
        k1 = f(y)
        k2 = f(y + h / 2 * k1)
        k3 = f(y + h / 2 * k2)
        k4 = f(y + h * k3)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        out.append(y)
    return np.array(out)


def setup(d_in, d_out, h, lam, svals, scale, seed=0):
    rng = np.random.default_rng(seed)
    r = len(svals)
    teacher = lt.random_orthonormal(rng, d_out, r) @ np.diag(svals) @ lt.random_orthonormal(rng, d_in, r).T
    u0, v0, rot = (lt.random_orthonormal(rng, n, h) for n in (d_out, d_in, h))
    w1, w2 = lt.balanced_init(lam, np.full(h, scale), u0, v0, rot)
    return teacher, w1, w2, (u0, v0)


def flow(teacher, h, d_in, d_out):
    def f(y):
        w1, w2 = y[: h * d_in].reshape(h, d_in), y[h * d_in :].reshape(d_out, h)
        res = teacher - w2 @ w1
        return np.concatenate([(w2.T @ res).ravel(), (res @ w1.T).ravel()])

    return f


def test_balanced_init_is_lambda_balanced_with_the_given_product():
    teacher, w1, w2, (u0, v0) = setup(5, 4, 3, -2.5, [3.0, 1.0], 0.1)
    np.testing.assert_allclose(w2.T @ w2 - w1 @ w1.T, -2.5 * np.eye(3), atol=1e-13)
    np.testing.assert_allclose(w2 @ w1, 0.1 * u0 @ v0.T, atol=1e-14)


@pytest.mark.parametrize("lam", [0.0, 2.5, -3.0])
@pytest.mark.parametrize(("d_in", "d_out", "h", "svals"), [(5, 4, 3, [3.0, 2.0, 1.0]), (4, 4, 4, [2.0, 0.5])])
def test_riccati_matches_direct_integration(lam, d_in, d_out, h, svals):
    """Unequal sizes and a rank-deficient teacher included (F is then singular at lambda = 0)."""
    teacher, w1, w2, _ = setup(d_in, d_out, h, lam, svals, 0.05)
    ys = rk4(flow(teacher, h, d_in, d_out), np.concatenate([w1.ravel(), w2.ravel()]), 6.0, 6000)[::500]
    qqt = lt.riccati_qqt(w1, w2, teacher, lam, np.linspace(0, 6.0, len(ys)))
    for y, p in zip(ys, qqt):
        a, b = y[: h * d_in].reshape(h, d_in), y[h * d_in :].reshape(d_out, h)
        q = np.concatenate([a.T, b])
        np.testing.assert_allclose(p, q @ q.T, atol=1e-9)


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_riccati_stays_accurate_at_late_times(lam):
    """At t = 12, e^{2Ft} reaches e^{120}: the directions that grow slowly (the teacher's null space) must
    not drown in the fast ones' round-off. A rank-2 teacher in a 4-4-4 network, against integration."""
    teacher, w1, w2, _ = setup(4, 4, 4, lam, [5.0, 1.5], 1e-3)
    y = rk4(flow(teacher, 4, 4, 4), np.concatenate([w1.ravel(), w2.ravel()]), 12.0, 24000)[-1]
    q = np.concatenate([y[:16].reshape(4, 4).T, y[16:].reshape(4, 4)])
    np.testing.assert_allclose(lt.riccati_qqt(w1, w2, teacher, lam, np.array([12.0]))[0], q @ q.T, atol=1e-10)


def test_gradient_descent_approaches_the_flow_linearly_in_the_step():
    """The error of plain GD against the closed form halves with the learning rate: it is the Euler
    discretisation error, which is what the task's tolerance is sized against."""
    teacher, w1, w2, _ = setup(3, 3, 3, 1.0, [2.0, 1.0, 0.5], 0.01)
    errors = []
    for lr in (4e-3, 2e-3, 1e-3):
        steps = int(round(6.0 / lr))
        target = lt.blocks(lt.riccati_qqt(w1, w2, teacher, 1.0, np.array([steps * lr])), 3)[0][0]
        a, b = w1.copy(), w2.copy()
        for _ in range(steps):
            res = b @ a - teacher
            a, b = a - lr * b.T @ res, b - lr * res @ a.T
        errors.append(np.linalg.norm(b @ a - target))
    assert errors[0] / errors[1] == pytest.approx(2.0, rel=0.05)
    assert errors[1] / errors[2] == pytest.approx(2.0, rel=0.05)


@pytest.mark.parametrize(("lam", "s0"), [(0.0, 1e-3), (1.0, 1e-3), (-4.0, 1e-3), (16.0, 1e-3), (1.0, 5.0)])
def test_mode_ode_closed_form(lam, s0):
    """From below (small init) and from above (s0 > S: the mode decays to its target)."""
    target = 2.0
    f = lambda s: np.sqrt(lam**2 + 4 * s**2) * (target - s)
    ys = rk4(f, np.array(s0), 4.0, 40000)[::4000]
    times = np.linspace(0, 4.0, len(ys))
    np.testing.assert_allclose(lt.mode_trajectory(times, s0, target, lam), ys, rtol=1e-9, atol=1e-12)
    resolved = np.abs(target - ys) / target > 1e-6  # closer to the target, s no longer resolves the time
    np.testing.assert_allclose(lt.mode_time(ys[resolved], s0, target, lam), times[resolved], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("lam", [0.0, 2.0])
def test_a_mode_with_target_zero_decays(lam):
    """A mode the teacher lacks (hidden > rank): ds/dt = -sqrt(lambda^2 + 4 s^2) s, algebraic at lambda = 0."""
    f = lambda s: -np.sqrt(lam**2 + 4 * s**2) * s
    ys = rk4(f, np.array(0.5), 3.0, 30000)[::3000]
    np.testing.assert_allclose(lt.mode_trajectory(np.linspace(0, 3.0, len(ys)), 0.5, 0.0, lam), ys, rtol=1e-9)


def test_mode_time_at_lambda_zero_is_the_logistic():
    s0, target, s = 1e-3, 3.0, 1.5
    expected = np.log(s * (target - s0) / (s0 * (target - s))) / (2 * target)
    assert lt.mode_time(s, s0, target, 0.0) == pytest.approx(expected, rel=1e-12)


def test_aligned_modes_follow_the_mode_ode():
    """Aligned with the teacher's singular vectors, each singular value of W2 W1 is one mode."""
    rng = np.random.default_rng(3)
    svals = np.array([3.0, 1.0, 0.5])
    u, v = lt.random_orthonormal(rng, 3, 3), lt.random_orthonormal(rng, 3, 3)
    teacher = u @ np.diag(svals) @ v.T
    w1, w2 = lt.balanced_init(-2.0, np.full(3, 1e-2), u, v, lt.random_orthonormal(rng, 3, 3))
    times = np.linspace(0, 5, 11)
    prod = lt.blocks(lt.riccati_qqt(w1, w2, teacher, -2.0, times), 3)[0]
    modes = np.einsum("ji,tjk,ki->ti", u, prod, v)
    for i, target in enumerate(svals):
        np.testing.assert_allclose(modes[:, i], lt.mode_trajectory(times, 1e-2, target, -2.0), atol=1e-10)


def test_ntk_inner_matches_the_explicit_kernel():
    """K from the Jacobian of vec(W2 W1 X) against the trace formula for whitened X."""
    rng = np.random.default_rng(1)
    d_in, d_out, h, n = 4, 3, 3, 6
    x = np.sqrt(n) * lt.random_orthonormal(rng, n, d_in).T  # d_in x n, X X^T = n I
    kernels, blocks = [], []
    for _ in range(2):
        w1, w2 = rng.standard_normal((h, d_in)), rng.standard_normal((d_out, h))
        params = (torch.tensor(w1, requires_grad=True), torch.tensor(w2, requires_grad=True))
        jac = torch.autograd.functional.jacobian(lambda a, b: (b @ a @ torch.tensor(x)).T.reshape(-1), params)
        j = torch.cat([jac[0].reshape(n * d_out, -1), jac[1].reshape(n * d_out, -1)], 1).numpy()
        kernels.append(j @ j.T)
        blocks.append((w1.T @ w1, w2 @ w2.T))
    explicit = np.kron(x.T @ blocks[0][0] @ x, np.eye(d_out)) + np.kron(x.T @ x, blocks[0][1])
    np.testing.assert_allclose(kernels[0], explicit, atol=1e-10)  # I (x) X^T A X + M (x) X^T X, sample-major
    inner = lambda k1, k2: np.sum(k1 * k2) / n**2
    for p, q in [(0, 0), (0, 1), (1, 1)]:
        expected = inner(kernels[p], kernels[q])
        assert lt.ntk_inner(*blocks[p], *blocks[q]) == pytest.approx(expected, rel=1e-10)
    cos = inner(kernels[0], kernels[1]) / np.sqrt(inner(kernels[0], kernels[0]) * inner(kernels[1], kernels[1]))
    assert lt.ntk_distance(*blocks[0], *blocks[1]) == pytest.approx(1 - cos, rel=1e-10)


def test_kernel_distance_falls_with_abs_lambda_for_square_networks():
    """The claim the task checks, in the closed form: square networks move their NTK less as |lambda| grows."""
    teacher, *_ = setup(4, 4, 4, 0.0, [3.0, 2.0, 1.0, 0.5], 1e-3)
    rng = np.random.default_rng(5)
    u0, v0, rot = (lt.random_orthonormal(rng, 4, 4) for _ in range(3))
    dist = {}
    for lam in (0.0, 1.0, -1.0, 4.0, -4.0, 16.0, -16.0):
        w1, w2 = lt.balanced_init(lam, np.full(4, 1e-3), u0, v0, rot)
        _, a, m = lt.blocks(lt.riccati_qqt(w1, w2, teacher, lam, np.array([0.0, 12.0])), 4)
        dist[lam] = lt.ntk_distance(a[0], m[0], a[1], m[1])
    for sign in (1, -1):
        series = [dist[sign * abs(lam)] for lam in (0.0, 1.0, 4.0, 16.0)]
        assert all(x > y for x, y in zip(series, series[1:])), series


def test_fast_reference_passes_every_check(tmp_path):
    s = run_config(tmp_path, CONFIG, *FAST)
    assert failed(s) == []
    assert set(s["checks"]) == set(CHECKS)
    assert s["checks"]["half_learn_times"]["expected"] == pytest.approx([667.17, 950.05], abs=0.01)
    assert (tmp_path / "t" / "lazy_rich.png").stat().st_size > 0 and (tmp_path / "t" / "kernel_distance.png").exists()


@pytest.mark.parametrize(
    "held_out",
    [
        ["--task.lambda=-3", "--task.singular_values=[2.5,1.2]", "--run.seed=3", "--task.data_seed=7"],
        # the flow time is the sum of the step sizes, so a warmup and a cosine decay are the same flow
        ["--optim.lr=3e-3", "--optim.schedule=cosine", "--optim.warmup_steps=100"],
    ],
    ids=["lambda, spectrum, seeds", "a schedule"],
)
def test_held_out_settings_pass(tmp_path, held_out):
    assert failed(run_config(tmp_path, CONFIG, *FAST, *held_out)) == []


@pytest.mark.parametrize(
    ("overrides", "failing"),
    [
        # 5x the learning rate over the same flow time: GD leaves the flow
        (["--optim.lr=1e-2", "--train.max_steps=300"], ["lambda_conserved", "product_matches_closed_form"]),
        # weight decay breaks the conservation law, and with it the kernel's closed form
        (["--optim.sgdm.weight_decay=0.01"], ["kernel_distance_matches_closed_form", "lambda_conserved"]),
        # t = 1 ends before any mode is half learned
        (["--train.max_steps=500"], ["half_learn_times"]),
        # a large init: no mode starts below half its target
        (["--task.init_scale=2"], ["half_learn_times"]),
        # Adam: every kernel moves alike, without the closed form's gaps in |lambda|
        (["--optim.name=adamw", "--optim.adamw.weight_decay=0"], ["kernel_distance_falls_with_abs_lambda"]),
    ],
)
def test_each_check_rejects_a_run_outside_the_theory(tmp_path, overrides, failing):
    s = run_config(tmp_path, CONFIG, *FAST, *overrides)
    assert set(failing) <= set(failed(s)), s["checks"]


def test_non_square_networks_are_predicted_not_to_fall():
    """The closed form predicts a rise for lambda < 0 when d_in > hidden, which the ordering check then tests."""
    teacher, *_ = setup(6, 3, 3, 0.0, [3.0, 2.0], 1e-3)
    rng = np.random.default_rng(0)
    u0, v0, rot = lt.random_orthonormal(rng, 3, 3), lt.random_orthonormal(rng, 6, 3), lt.random_orthonormal(rng, 3, 3)
    dist = []
    for lam in (0.0, -1.0, -4.0):
        w1, w2 = lt.balanced_init(lam, np.full(3, 1e-3), u0, v0, rot)
        _, a, m = lt.blocks(lt.riccati_qqt(w1, w2, teacher, lam, np.array([0.0, 3.0])), 6)
        dist.append(lt.ntk_distance(a[0], m[0], a[1], m[1]))
    assert dist[1] > dist[0]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--task.lambd=1", "did you mean 'task.lambda'"),
        ("--task.lambda_=1", "task.lambda"),
        ("--task.hidden=5", "hidden <= min"),
        ("--task.n=2", "task.n >= task.d_in"),
        ("--task.singular_values=[1,-1]", "must be > 0"),
    ],
)
def test_config_errors_name_the_fix(tmp_path, override, message):
    with pytest.raises(UserError, match=message):
        run_config(tmp_path, CONFIG, override, "--train.max_steps=2")


def test_a_run_resumed_to_train_longer_keeps_its_first_records(tmp_path):
    """The per-step mode trace and the sampled states travel in the checkpoint: a run of 750 steps
    resumed to 1,500 finds the half-learn times of the uninterrupted run and passes the same checks."""
    whole = run_config(tmp_path / "whole", CONFIG, *FAST)
    run_config(tmp_path / "cut", CONFIG, *FAST, "--train.max_steps=750")
    s = run_config(tmp_path / "cut", CONFIG, *FAST, "--run.resume=true")
    assert s["checks"]["half_learn_times"]["observed"] == whole["checks"]["half_learn_times"]["observed"]
    assert failed(s) == failed(whole) == []
