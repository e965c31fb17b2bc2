"""Stochastic collapse theory (small_tasks/sgd/collapse.py) against closed forms and plain numpy simulations."""

import math

import numpy as np
import pytest

from configs import UserError, load_config
from small_tasks.sgd import collapse
from small_tasks.sgd.stochastic_collapse import sweep_check
from trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: one thread is far faster


def test_expected_log_abs_normal_against_closed_form_and_monte_carlo():
    # E log|Z| = -(gamma_E + log 2) / 2
    exact = -(collapse.EULER_GAMMA + math.log(2)) / 2
    assert collapse.expected_log_abs_normal(0.0, 1.0) == pytest.approx(exact, abs=1e-11)
    z = np.random.default_rng(0).standard_normal(2_000_000)
    for mean, std in [(0.3, 1.0), (1.0, 0.5), (-2.0, 1.5), (25.0, 1.0)]:
        mc = np.log(np.abs(mean + std * z)).mean()
        assert collapse.expected_log_abs_normal(mean, std) == pytest.approx(mc, abs=4e-3)
    # far from zero: log|mean| - std^2 / (2 mean^2) to leading order
    assert collapse.expected_log_abs_normal(1e4, 1.0) == pytest.approx(math.log(1e4) - 0.5e-8, abs=1e-9)


def test_quartic_threshold_tends_to_the_continuous_one():
    assert collapse.quartic_threshold(1e-4, 1.5) == pytest.approx(math.sqrt(3.0), rel=1e-3)
    assert collapse.quartic_threshold(1e-4, 1.5, wd=0.5) == pytest.approx(math.sqrt(2.0), rel=1e-3)
    # the discrete step lowers it: to second order lr * (mu - zeta^2/2) + lr^2 (-mu^2/2 + mu zeta^2 - 3 zeta^4/4)
    lr = 0.01
    expansion = math.sqrt(3.0 - 2 * lr * (1.125 - 4.5 + 6.75))
    assert collapse.quartic_threshold(lr, 1.5) == pytest.approx(expansion, abs=5e-3)
    assert collapse.quartic_threshold(lr, 1.5) < math.sqrt(3.0)


def test_quartic_density_is_normalised_and_matches_its_cdf():
    for zeta in (0.8, 1.3, 1.7):  # near the threshold the density piles up at 0: integrate in log theta
        log_theta = np.linspace(math.log(1e-150), math.log(8.0), 400001)
        theta = np.exp(log_theta)
        f = collapse.quartic_density(theta, 1.5, zeta) * theta
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (f[1:] + f[:-1]) * np.diff(log_theta))])
        ref = collapse.quartic_cdf(theta, 1.5, zeta)
        assert np.max(np.abs(cdf + ref[0] - ref)) < 1e-6
        assert ref[-1] == pytest.approx(1.0, abs=1e-9)


def simulate_quartic(lr, zetas, replicas, steps, mu=1.5, seed=0):
    rng = np.random.default_rng(seed)
    theta = np.ones((len(zetas), replicas))
    z = np.asarray(zetas)[:, None]
    for _ in range(steps):
        theta = theta + lr * (mu * theta - theta**3) + math.sqrt(lr) * z * theta * rng.standard_normal(theta.shape)
    return theta


def test_quartic_simulation_matches_density_below_and_collapses_above():
    lr = 0.01
    theta = simulate_quartic(lr, [1.0, 2.3], 2000, 2500)
    below, above = np.abs(theta)
    d = collapse.ks_statistic(below, lambda x: collapse.quartic_cdf(x, 1.5, 1.0))
    assert d < collapse.ks_critical(len(below), 0.01)
    wrong = collapse.ks_statistic(below, lambda x: collapse.quartic_cdf(x, 1.5, 1.2))
    assert wrong > collapse.ks_critical(len(below), 0.01)
    assert np.mean(above < 1e-6) > 0.95


def test_neuron_exponent_is_the_growth_rate_of_the_linearised_product():
    """u+ <- (1 + lr c) u+ with c ~ N(a, b^2): the mean of log|1 + lr c| is the exponent."""
    a, b, lr = 0.65, 4.0, 0.1
    c = np.random.default_rng(1).normal(a, b, 2_000_000)
    assert collapse.lyapunov(lr * a, lr * b) == pytest.approx(np.log(np.abs(1 + lr * c)).mean(), abs=2e-3)


def test_neuron_threshold_and_its_small_lr_expansion():
    # (a, b, lr) -> (a/s, b/s, s lr) leaves the dynamics unchanged
    assert collapse.neuron_threshold_lr(0.2, 1.0) == pytest.approx(5 * collapse.neuron_threshold_lr(1.0, 5.0), rel=1e-6)
    for ratio in (10.0, 30.0):
        eta = collapse.neuron_threshold_lr(1.0, ratio)
        assert eta == pytest.approx(2.0 / (1.0 + ratio**2), rel=0.1)
    with pytest.raises(ValueError, match="does not turn negative"):
        collapse.neuron_threshold_lr(1.0, 1.0)  # too little noise: the dead neuron never attracts
    rng = np.random.default_rng(0)
    x = rng.standard_normal(32)
    y = x + 0.1 * rng.standard_normal(32)
    zeta = collapse.neuron_threshold_zeta(0.1, x, y)
    a, b = collapse.neuron_gain(x, y, zeta)
    assert collapse.neuron_lyapunov(0.1, a, b) == pytest.approx(0.0, abs=1e-8)


# ---- the Tasks, through the trainer ----


# lr 0.02 reaches in 2000 steps what the reference (lr 0.01) does in 4000; |theta| < 1e-6 counts as
# collapsed (at zeta 1.4 the stationary mass there is 5e-4), so that zeta = 2 gets there in time
QUARTIC_FAST = [
    "--optim.lr=0.02",
    "--task.replicas=300",
    "--train.max_steps=2000",
    "--task.sweep=[1.0,1.4,2.0,2.5]",
    "--task.collapse_eps=1e-6",
]
NEURON_FAST = [
    "--task.replicas=100",
    "--train.max_steps=1500",
    "--task.sweep=[3.0,6.0]",
    "--task.lr_sweep=[0.035,0.13]",
]


def run_task(tmp_path, config, *overrides, name="t"):
    args = [f"--run.dir={tmp_path}", f"--run.name={name}", "--train.progress=false", "--run.threads=1", *overrides]
    return Trainer(load_config(f"configs/small_tasks/{config}", args)).run()


def test_quartic_sweep_switches_at_the_threshold_and_fits_the_density(tmp_path):
    s = run_task(tmp_path, "stochastic_collapse.toml", *QUARTIC_FAST)
    assert s["checks"]["collapse_threshold"]["passed"], s["checks"]["collapse_threshold"]
    assert s["checks"]["stationary_density"]["passed"], s["checks"]["stationary_density"]
    assert s["prediction"]["threshold"] == pytest.approx(collapse.quartic_threshold(0.02, 1.5))
    assert (tmp_path / "t" / "collapse.png").stat().st_size > 0


def test_quartic_held_out_noise_above_the_threshold_collapses(tmp_path):
    s = run_task(tmp_path, "stochastic_collapse.toml", *QUARTIC_FAST, "--task.zeta=2.2", "--task.sweep=[1.2,2.2]")
    assert "stationary_density" not in s["checks"]
    assert s["checks"]["collapses_at_zeta"]["passed"] and s["checks"]["collapse_threshold"]["passed"]


def test_quartic_checks_fail_on_runs_that_should_fail(tmp_path):
    # too short: nothing has collapsed yet, and the ensemble still sits near its start
    s = run_task(tmp_path, "stochastic_collapse.toml", *QUARTIC_FAST, "--train.max_steps=20", name="short")
    assert not s["checks"]["collapse_threshold"]["passed"] and not s["checks"]["stationary_density"]["passed"]
    # a sweep on one side of the threshold cannot show the switch
    s = run_task(tmp_path, "stochastic_collapse.toml", *QUARTIC_FAST, "--task.sweep=[1.0,1.4]", name="one_side")
    assert not s["checks"]["collapse_threshold"]["passed"]
    assert s["checks"]["collapse_threshold"]["brackets_threshold"] is False
    # momentum accumulates the noise: the plain-SGD exponents no longer describe the run
    s = run_task(tmp_path, "stochastic_collapse.toml", *QUARTIC_FAST, "--optim.sgdm.momentum=0.5", name="momentum")
    assert not all(c["passed"] for c in s["checks"].values()) and s["checks"]["collapse_threshold"]["notes"]


def test_sweep_check_rejects_the_wrong_side_and_unclear_fractions():
    exponents = [0.02, 0.01, -0.01, -0.03]
    assert sweep_check([1, 2, 3, 4], np.array([0.0, 0.01, 0.99, 1.0]), exponents, 2000)["passed"]
    flipped = [-e for e in exponents]  # a threshold on the wrong side of the sweep
    assert not sweep_check([1, 2, 3, 4], np.array([0.0, 0.01, 0.99, 1.0]), flipped, 2000)["passed"]
    # 0.45 is on the right side but within 3 standard errors of 1/2 for 400 replicas
    assert not sweep_check([1, 2, 3, 4], np.array([0.0, 0.45, 0.99, 1.0]), exponents, 400)["passed"]


def test_neuron_dies_above_the_predicted_noise_and_learning_rate(tmp_path):
    s = run_task(tmp_path, "stochastic_collapse_neuron.toml", *NEURON_FAST)
    assert s["checks"]["collapse_threshold_zeta"]["passed"] and s["checks"]["collapse_threshold_lr"]["passed"]
    assert s["prediction"]["threshold_lr_at_zeta"] == pytest.approx(0.0719, abs=1e-3)
    # too little noise for the dead neuron to ever attract: the whole lr sweep survives, and the check says
    # it cannot show a switch
    s = run_task(tmp_path, "stochastic_collapse_neuron.toml", *NEURON_FAST, "--task.zeta=1.0", name="quiet")
    assert s["prediction"]["threshold_lr_at_zeta"] is None
    assert not s["checks"]["collapse_threshold_lr"]["passed"]


@pytest.mark.parametrize(
    ("config", "override", "message"),
    [
        ("stochastic_collapse.toml", "--task.sweep=[]", "task.sweep is empty"),
        ("stochastic_collapse.toml", "--task.zeta=-1", "task.zeta must be >= 0"),
        ("stochastic_collapse_neuron.toml", "--task.lr_sweep=[0.1,-1]", "task.lr_sweep must be a positive"),
    ],
)
def test_bad_task_values_are_one_line_errors(tmp_path, config, override, message):
    with pytest.raises(UserError, match=message):
        run_task(tmp_path, config, override)
