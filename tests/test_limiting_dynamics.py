"""Limiting dynamics theory (small_tasks/sgd/sgd_diffusion.py) against its own moment recursion and a numpy
simulation of torch SGD's update on online Gaussian regression."""


import numpy as np
import pytest

from configs import UserError, load_config
from small_tasks.sgd import sgd_diffusion as sd
from small_tasks.sgd.limiting_dynamics import exponent_check, fit_window
from trainer import Trainer

from helpers import StopAt

CASES = [  # lr, wd, momentum, batch, sigma
    (0.5, 0.0, 0.0, 4, 0.5),
    (0.5, 0.05, 0.0, 2, 0.5),
    (0.05, 0.02, 0.9, 1, 1.0),
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: one thread is far faster


def simulate(h, theta_star, lr, wd, momentum, batch, sigma, replicas, steps, seed=0, lags=()):
    """The SGD update written out: buf = momentum buf + g + wd theta, theta -= lr buf; fresh data per step."""
    rng = np.random.default_rng(seed)
    d = len(h)
    theta = np.zeros((replicas, d))
    buf = np.zeros((replicas, d))
    origin, msd = None, {}
    for n in range(steps):
        x = rng.standard_normal((replicas, batch, d)) * np.sqrt(h)
        y = x @ theta_star + sigma * rng.standard_normal((replicas, batch))
        g = np.einsum("rs,rsd->rd", np.einsum("rsd,rd->rs", x, theta) - y, x) / batch
        buf = momentum * buf + g + wd * theta
        theta = theta - lr * buf
        if lags and n + 1 == steps - max(lags):
            origin = theta.copy()
        if origin is not None and (n + 1) - (steps - max(lags)) in lags:
            msd[(n + 1) - (steps - max(lags))] = float(np.mean(np.sum((theta - origin) ** 2, axis=1)))
    return theta, msd


@pytest.mark.parametrize(("lr", "wd", "momentum", "batch", "sigma"), CASES)
def test_stationary_solver_is_the_fixed_point_of_the_moment_recursion(lr, wd, momentum, batch, sigma):
    h = np.geomspace(1.0, 1e-2, 6)
    theta_star = np.random.default_rng(0).standard_normal(6)
    stat = sd.stationary(h, theta_star, lr, wd, momentum, batch, sigma)
    mom = sd.moments(h, theta_star, np.zeros(6), lr, wd, momentum, batch, sigma, 12000)
    assert np.abs(mom.last - stat.z).max() < 1e-12 * np.abs(stat.z).max()
    assert np.abs(mom.means[-1]).max() < 1e-12
    np.testing.assert_allclose(mom.blocks[-1], np.einsum("iiab->iab", stat.z), rtol=1e-12)
    # momentum 0: the delta block is the plain discrete Lyapunov equation with Sigma at stationarity
    if momentum == 0.0:
        k = h + wd
        b = sd.offset(h, theta_star, wd)
        ee = stat.cov + np.outer(b, b)
        sigma_mat = np.outer(h, h) * ee + np.diag(h * (np.sum(h * np.diag(ee)) + sigma**2))
        rhs = (1 - lr * k)[:, None] * stat.cov * (1 - lr * k)[None, :] + lr**2 * sigma_mat / batch
        assert np.abs(rhs - stat.cov).max() < 1e-14


@pytest.mark.parametrize(("lr", "wd", "momentum", "batch", "sigma"), CASES)
def test_stationary_covariance_matches_a_simulation(lr, wd, momentum, batch, sigma):
    h = np.geomspace(1.0, 1e-1, 4)
    theta_star = np.random.default_rng(1).standard_normal(4)
    stat = sd.stationary(h, theta_star, lr, wd, momentum, batch, sigma)
    theta, _ = simulate(h, theta_star, lr, wd, momentum, batch, sigma, replicas=8000, steps=800)
    delta = theta - sd.minimum(h, theta_star, wd)
    measured = delta.T @ delta / len(delta)
    scale = np.sqrt(np.outer(np.diag(stat.cov), np.diag(stat.cov)))
    assert np.max(np.abs(measured - stat.cov) / scale) < 0.06  # sampling error ~ sqrt(2 / 8000) = 0.016


def test_displacement_formula_matches_a_simulation_and_the_plain_sgd_closed_form():
    h = np.geomspace(1.0, 1e-2, 5)
    theta_star = np.random.default_rng(2).standard_normal(5)
    lr, batch, sigma = 0.5, 2, 1.0
    stat = sd.stationary(h, theta_star, lr, 0.0, 0.0, batch, sigma)
    lags = (1, 4, 16, 64, 256)
    predicted = sd.displacement(stat, h, lr, 0.0, 0.0, lags)
    closed = [2 * np.trace((np.eye(5) - np.diag((1 - lr * h) ** t)) @ stat.cov) for t in lags]
    np.testing.assert_allclose(predicted, closed, rtol=1e-12)
    _, msd = simulate(h, theta_star, lr, 0.0, 0.0, batch, sigma, replicas=4000, steps=2500, lags=lags)
    np.testing.assert_allclose([msd[t] for t in lags], predicted, rtol=0.06)


def test_momentum_displacement_matches_a_simulation():
    h = np.geomspace(1.0, 1e-2, 4)
    theta_star = np.random.default_rng(3).standard_normal(4)
    lr, momentum, batch, sigma = 0.05, 0.9, 2, 1.0
    stat = sd.stationary(h, theta_star, lr, 0.0, momentum, batch, sigma)
    lags = (1, 3, 10, 30, 100)
    predicted = sd.displacement(stat, h, lr, 0.0, momentum, lags)
    _, msd = simulate(h, theta_star, lr, 0.0, momentum, batch, sigma, replicas=4000, steps=2500, lags=lags)
    np.testing.assert_allclose([msd[t] for t in lags], predicted, rtol=0.06)


def test_spread_spectrum_diffuses_anomalously_and_a_flat_one_does_not():
    lr, theta_star = 0.5, np.zeros(12)
    taus = np.unique(np.geomspace(2, 200, 20).astype(int))
    spread = np.geomspace(1.0, 1e-3, 12)
    flat = np.full(12, 1e-3)
    slopes = []
    for h in (spread, flat):
        stat = sd.stationary(h, theta_star, lr, 0.0, 0.0, 4, 1.0)
        slopes.append(sd.exponent(taus, sd.displacement(stat, h, lr, 0.0, 0.0, taus)))
    assert slopes[0] < 0.5 and slopes[1] == pytest.approx(1.0, abs=0.05)


def test_mean_is_the_damped_oscillator():
    h, lr, momentum = np.array([0.5]), 0.05, 0.9
    mean = sd.mean_trajectory(h, np.array([1.0]), lr, 0.0, momentum, 400)[:, 0, 0]
    from small_tasks.toolkit import noether

    np.testing.assert_allclose(mean, noether.second_order(1.0, np.full(400, lr), 0.5, momentum), rtol=0, atol=1e-14)
    assert noether.frequency(lr, 0.5, momentum) > noether.damping(lr, momentum)
    assert np.sum(np.diff(np.sign(mean)) != 0) >= 3


def test_unstable_learning_rate_has_no_stationary_state():
    with pytest.raises(ValueError, match="no stationary distribution"):
        sd.stationary(np.array([1.0, 0.1]), np.zeros(2), 1.9, 0.0, 0.0, 1, 1.0)


# ---- the Task, through the trainer ----


# heavy ball 0.5 at lr 0.1 (lr_eff 0.2) on six directions h = 1 .. 0.01: stationary by step 2000
# (the slowest second moment relaxes in ~250 steps), lags up to 500; lr omega <= 0.37
FAST = [
    "--optim.lr=0.1",
    "--optim.sgdm.momentum=0.5",
    "--task.d=6",
    "--task.h_min=0.01",
    "--task.replicas=300",
    "--task.measure_from=2000",
    "--train.max_steps=3000",
    "--task.lags=12",
]
ALL = ["second_moments", "mean_oscillator", "mean_continuous_oscillator", "displacement", "diffusion_exponent"]


def run_task(tmp_path, *overrides, name="t", hooks=()):
    args = [f"--run.dir={tmp_path}", f"--run.name={name}", "--train.progress=false", "--run.threads=1", *overrides]
    trainer = Trainer(load_config("configs/small_tasks/limiting_dynamics.toml", args), hooks=hooks)
    return trainer.run(), trainer


def failed(summary):
    return sorted(k for k, v in summary["checks"].items() if not v["passed"])


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory, one_thread):
    """The FAST run, shared: its checks, the wrong theory's against its records, and the resume."""
    return run_task(tmp_path_factory.mktemp("fast"), *FAST)


def test_fast_run_passes_every_check(fast_run, tmp_path):
    s, trainer = fast_run
    assert failed(s) == [] and set(ALL) <= set(s["checks"])
    assert s["checks"]["diffusion_exponent"]["expected"]["claim"] == "anomalous diffusion"
    assert (trainer.ctx.run_dir / "limiting_dynamics.png").stat().st_size > 0


@pytest.mark.parametrize(
    "held_out",
    [
        ["--optim.sgdm.momentum=0", "--optim.lr=0.5"],  # plain SGD: its stiff directions are no oscillator
        ["--optim.sgdm.weight_decay=0.01", "--task.batch_size=1", "--run.seed=3", "--task.data_seed=5"],
    ],
)
def test_held_out_settings_pass(tmp_path, held_out):
    s, _ = run_task(tmp_path, *FAST, *held_out)
    assert failed(s) == [], {k: s["checks"][k] for k in failed(s)}


def test_flat_spectrum_diffuses_normally_and_fails_an_anomalous_claim(tmp_path):
    s, _ = run_task(tmp_path, *FAST, "--task.spectrum=flat")
    assert failed(s) == [] and s["checks"]["diffusion_exponent"]["expected"]["claim"] == "normal diffusion"
    taus = np.array(s["prediction"]["taus"])
    window = fit_window(0.1, 0.5, 0.0101, 0.0101, float(taus[-1]))
    msd, theory = np.array(s["observed"]["msd"]), np.array(s["prediction"]["msd"])
    assert exponent_check(taus, msd, theory, window)["passed"]
    assert not exponent_check(taus, msd, theory, window, "anomalous")["passed"]


def test_wrong_theory_and_too_small_ensemble_fail_and_an_early_window_is_predicted(fast_run, tmp_path):
    plain = fast_run[1].task.analyse(0.1, 0.0)["checks"]  # the plain-SGD theory against a momentum run
    assert not any(plain[k]["passed"] for k in ("second_moments", "mean_oscillator", "displacement"))
    s, _ = run_task(tmp_path, *FAST, "--task.replicas=4", "--train.max_steps=2300", name="small")
    assert "second_moments" in failed(s)
    # a window that opens before stationarity is compared with the exact transient, not the stationary limit
    s, _ = run_task(tmp_path, *FAST, "--task.measure_from=100", "--train.max_steps=500", name="early")
    assert "second_moments" not in failed(s)
    assert s["checks"]["second_moments"]["transient_left_at_measure_from"] > 0.1


def test_resume_is_exact_and_keeps_the_measurements(fast_run, tmp_path):
    whole, _ = fast_run
    run_task(tmp_path, *FAST, "--train.sync_interval=100", name="split", hooks=[StopAt(2200)])
    resumed, _ = run_task(tmp_path, *FAST, "--train.sync_interval=100", "--run.resume=true", name="split")
    assert resumed["observed"] == whole["observed"] and failed(resumed) == failed(whole)
    with pytest.raises(Exception, match="measurement plan differs"):
        run_task(tmp_path, *FAST, "--run.resume=true", "--train.max_steps=3500", name="split")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--task.spectrum=powerlaw", "unknown task.spectrum 'powerlaw'"),
        ("--task.measure_from=20000", "task.measure_from must be below"),
        ("--task.eigenvalues=[1,0]", "task.eigenvalues must be a positive"),
    ],
)
def test_bad_task_values_are_one_line_errors(tmp_path, override, message):
    with pytest.raises(UserError, match=message):
        run_task(tmp_path, override)
