"""The checks of stochastic collapse and of the limiting dynamics of SGD against runs that must fail them:
the continuous exponent where the discrete one has the other sign, momentum, too short runs, Nesterov,
a transient compared with a stationary state."""

import numpy as np
import pytest

from configs import load_config
from small_tasks.sgd import collapse
from small_tasks.sgd.stochastic_collapse import MIN_GAIN_SAMPLES, decisive, exponent_check, sweep_check
from trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: one thread is far faster

# lr 0.03: the discrete threshold is 1.658, the continuous one sqrt(3) = 1.732, so at zeta = 1.7 the discrete
# exponent is -0.0028 and the continuous lr (mu - zeta^2 / 2) = +0.0017; 400 replicas x 1500 steps measure
# it to 7e-4. zeta = 1.5 is measurable on the positive side (its stationary density has mass near 0)
QUARTIC_GAP = [
    "--optim.lr=0.03",
    "--task.replicas=400",
    "--train.max_steps=1500",
    "--task.sweep=[1.0,1.5,1.7,2.0]",
    "--task.collapse_eps=1e-6",
]


def run_task(tmp_path, config, *overrides, name="t"):
    args = [f"--run.dir={tmp_path}", f"--run.name={name}", "--train.progress=false", "--run.threads=1", *overrides]
    trainer = Trainer(load_config(f"configs/small_tasks/{config}", args))
    return trainer.run(), trainer


@pytest.fixture(scope="module")
def quartic_gap(tmp_path_factory, one_thread):
    return run_task(tmp_path_factory.mktemp("gap"), "stochastic_collapse.toml", *QUARTIC_GAP)


def test_discrete_exponent_is_measured_and_the_continuous_one_is_rejected(quartic_gap):
    s, trainer = quartic_gap
    c = s["checks"]["collapse_exponent"]
    assert c["passed"] and c["kind"] == "prediction" and c["both_signs"], c
    assert 1.7 in c["values"]  # the point between the thresholds was measured, with the discrete sign
    assert collapse.quartic_threshold(0.03, 1.5) < 1.7 < collapse.quartic_threshold_continuous(1.5)
    measured, se, samples = trainer.task.measured_exponents()
    k = len(trainer.task.tc.sweep)
    continuous = [0.03 * (1.5 - z * z / 2) for z in trainer.task.tc.sweep]
    wrong = exponent_check(trainer.task.tc.sweep, continuous, measured[:k], se[:k], samples[:k])
    assert not wrong["passed"] and wrong["max_z"] > wrong["expected"]["z_max"]
    # the fraction check leaves the points that step T cannot decide to the exponent
    assert 1.7 in s["checks"]["collapse_threshold"]["undecided_by_the_last_step"]


def test_exponent_check_fails_momentum_short_runs_and_unresolved_signs(tmp_path):
    s, _ = run_task(tmp_path, "stochastic_collapse.toml", *QUARTIC_GAP, "--optim.sgdm.momentum=0.2", name="mom")
    assert not s["checks"]["collapse_exponent"]["passed"]
    s, _ = run_task(tmp_path, "stochastic_collapse.toml", *QUARTIC_GAP, "--train.max_steps=30", name="short")
    assert not s["checks"]["collapse_exponent"]["passed"] and s["checks"]["collapse_exponent"]["unmeasured"]
    # right values but too few samples to tell the sign from zero, or no point on the positive side
    n = np.full(2, 10 * MIN_GAIN_SAMPLES)
    assert exponent_check([1.0, 2.0], [0.01, -0.01], np.array([0.01, -0.01]), np.full(2, 1e-3), n)["passed"]
    assert not exponent_check([1.0, 2.0], [0.01, -0.01], np.array([0.002, -0.01]), np.full(2, 1e-3), n)["passed"]
    assert not exponent_check([1.0, 2.0], [1e-4, -1e-4], np.array([1e-4, -1e-4]), np.full(2, 1e-3), n)["passed"]
    assert not exponent_check([2.0, 2.2], [-0.01, -0.02], np.array([-0.01, -0.02]), np.full(2, 1e-3), n)["passed"]
    few = np.array([MIN_GAIN_SAMPLES - 1, 10 * MIN_GAIN_SAMPLES])
    assert not exponent_check([1.0, 2.0], [0.01, -0.01], np.array([0.01, -0.01]), np.full(2, 1e-3), few)["passed"]


def test_fraction_check_only_judges_points_that_step_t_decides():
    # drift 3 over 10,000 steps against a spread of 17: undecided; drift 70 against 18.5: decided
    assert not decisive(-3e-4, 0.1728, 10_000) and decisive(-7e-3, 0.185, 10_000)
    fractions = np.array([0.0, 0.3, 0.99])  # the middle point is still on its way
    exponents = [0.01, -3e-4, -0.007]
    assert not sweep_check([1.0, 1.73, 1.85], fractions, exponents, 2000)["passed"]
    passed = sweep_check([1.0, 1.73, 1.85], fractions, exponents, 2000, [True, False, True])
    assert passed["passed"] and passed["undecided_by_the_last_step"] == [1.73]
    # leaving out every point of one side cannot pass
    assert not sweep_check([1.0, 1.73, 1.85], fractions, exponents, 2000, [True, False, False])["passed"]


# ---- limiting dynamics ----

# plain SGD at lr 0.1 on six directions h = 1 .. 0.01, measured from step 200: the slowest direction's second
# moment relaxes over ~1 / (2 lr h_min) = 500 steps, so the window holds a transient, not the stationary state
TRANSIENT = [
    "--optim.lr=0.1",
    "--optim.sgdm.momentum=0",
    "--task.d=6",
    "--task.h_min=0.01",
    "--task.replicas=300",
    "--task.measure_from=200",
    "--train.max_steps=1200",
    "--task.lags=12",
]


def run_limiting(tmp_path, *overrides, name="t"):
    return run_task(tmp_path, "limiting_dynamics.toml", *overrides, name=name)


def failed(summary):
    return sorted(k for k, v in summary["checks"].items() if not v["passed"])


@pytest.fixture(scope="module")
def transient_run(tmp_path_factory, one_thread):
    return run_limiting(tmp_path_factory.mktemp("transient"), *TRANSIENT)


def test_a_transient_window_passes_against_the_exact_recursion_not_the_stationary_state(transient_run):
    s, trainer = transient_run
    assert failed(s) == [], {k: s["checks"][k] for k in failed(s)}
    # the run is far from stationary where measuring starts: comparing it with the stationary limit fails
    assert s["checks"]["second_moments"]["transient_left_at_measure_from"] > 0.1
    assert s["checks"]["displacement"]["stationary_limit_error"] > 0.1
    assert s["checks"]["second_moments"]["kind"] == "prediction"
    # the wrong learning rate (the recursion of another run) fails the moments and the displacement
    wrong = trainer.task.analyse(0.13, 0.0)["checks"]
    assert not wrong["second_moments"]["passed"] and not wrong["displacement"]["passed"]


def test_velocity_and_cross_blocks_are_checked(transient_run):
    _, trainer = transient_run
    second, d = trainer.task.model.second, trainer.task.d
    kept = second.clone()
    try:
        second[d:, d:] *= 1.3  # a run whose steps are 14% too large in spread, positions unchanged
        c = trainer.task.analyse(0.1, 0.0)["checks"]["second_moments"]
        assert not c["passed"] and c["observed"]["velocity"] > 0.2 and c["observed"]["position"] < 0.1
        second.copy_(kept)
        second[:d, d:] *= -1.0  # the (position, step) correlation of the wrong sign: no rotation back
        second[d:, :d] *= -1.0
        c = trainer.task.analyse(0.1, 0.0)["checks"]["second_moments"]
        assert not c["passed"] and c["observed"]["cross"] > 0.2 and c["observed"]["velocity"] < 0.1
    finally:
        second.copy_(kept)


def test_nesterov_fails_every_heavy_ball_check(tmp_path):
    s, _ = run_limiting(tmp_path, *TRANSIENT, "--optim.sgdm.momentum=0.5", "--optim.sgdm.nesterov=true")
    assert failed(s) == sorted(s["checks"]) and "heavy-ball" in " ".join(s["checks"]["displacement"]["notes"])
    # and the data alone reject it where they resolve lr-order differences: the second moments
    assert not s["checks"]["second_moments"]["resolved_by_the_data"]


def test_exponent_window_spans_the_relaxing_directions():
    from small_tasks.sgd import sgd_diffusion
    from small_tasks.sgd.limiting_dynamics import exponent_check, fit_window

    # the shipped setting: lr_eff 0.5, k = 1 .. 1.1e-3: from the ballistic 45 steps to 1 / (lr_eff k_min)
    lo, hi = fit_window(0.05, 0.9, 1.1e-3, 1.0001, 3000.0)
    assert lo == pytest.approx(45.0) and hi == pytest.approx(1.0 / (0.5 * 1.1e-3)) and hi / lo > 10
    # a window under a decade cannot support an anomalous claim (the old 45 .. 182), nor one past the data
    h = np.geomspace(1.0, 1e-3, 12)
    taus = np.unique(np.geomspace(1, 3000, 40).round().astype(int))
    stat = sgd_diffusion.stationary(h, np.zeros(12), 0.05, 0.0, 0.0, 4, 1.0)
    msd = sgd_diffusion.displacement(stat, h, 0.05, 0.0, 0.0, taus)
    assert exponent_check(taus, msd, msd, fit_window(0.05, 0.0, 1e-3, 1.0, 3000.0))["passed"]
    assert not exponent_check(taus, msd, msd, (45.0, 182.0))["passed"]
    # a flat spectrum fitted as a spread one's window: normal diffusion is not anomalous
    flat = np.full(12, 1e-3)
    stat = sgd_diffusion.stationary(flat, np.zeros(12), 0.05, 0.0, 0.0, 4, 1.0)
    msd = sgd_diffusion.displacement(stat, flat, 0.05, 0.0, 0.0, taus)
    assert not exponent_check(taus, msd, msd, fit_window(0.05, 0.0, 1e-3, 1e-3, 3000.0), "anomalous")["passed"]
