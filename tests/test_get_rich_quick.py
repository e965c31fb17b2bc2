"""The minimal model f = a w^T x with layer learning rates: the closed-form trajectory against direct
integration, the paper's tanh form of nu(t), and the conservation of delta; then both tasks through the
trainer: fast reference runs, held-out settings of either sign of delta, and a failing run per check."""

import math

import numpy as np
import pytest
from test_lazy_rich import failed, rk4

from configs import UserError
from small_tasks.linear import theory as lt

from helpers import run_config

MINIMAL, RELU = "small_tasks/get_rich_quick.toml", "small_tasks/get_rich_quick_relu.toml"
FAST = ["--optim.lr=4e-3", "--train.max_steps=2000", "--task.sweep=[-1,0,1]"]  # t = 8, as the reference's 20
FAST_RELU = ["--task.instances=3", "--task.width=20", "--task.n=100", "--task.n_test=200", "--train.max_steps=400"]

CASES = [  # (a0, w0 scale, eta_a, eta_w, seed): both signs of delta, unequal rates, a crossing zero
    (0.3, 0.7, 1.0, 1.0, 0),
    (2.0, 0.3, 0.5, 3.0, 1),
    (0.05, 1.0, 1.0, 1.0, 2),
    (0.5, 0.8, 2.0, 1.0, 3),
    (1e-3, 1e-3, 1.0, 1.0, 4),
]


def model(a0, w_scale, eta_a, eta_w, seed, d=4):
    rng = np.random.default_rng(seed)
    return lt.MinimalModel(a0, w_scale * rng.standard_normal(d), rng.standard_normal(d), eta_a, eta_w)


def integrate(m, t_end, n):
    def f(y):
        a, w = y[0], y[1:]
        res = a * w - m.beta_star
        return np.concatenate([[-m.eta_a * w @ res], -m.eta_w * a * res])

    return rk4(f, np.concatenate([[m.a0], m.w0]), t_end, n)


@pytest.mark.parametrize("case", CASES)
def test_closed_form_matches_direct_integration(case):
    m = model(*case)
    ys = integrate(m, 8.0, 8000)
    times = np.linspace(0, 8.0, len(ys))
    a, w = m.state(times)
    np.testing.assert_allclose(a, ys[:, 0], atol=1e-9)
    np.testing.assert_allclose(w, ys[:, 1:], atol=1e-9)
    np.testing.assert_allclose(m.beta(times), ys[:, :1] * ys[:, 1:], atol=1e-9)
    nu = ys[:, 1:] @ m.beta_star / ys[:, 0]
    u = lambda v: (m.delta + 2 * m.eta_a * v) / m.D
    assert lt.chordal_distance(u(nu), u(m.nu(times))).max() < 1e-9


def test_a_crossing_zero_is_covered():
    """|u0| > D with u0 < 0: a changes sign and nu passes through infinity; the form stays exact."""
    m = model(*CASES[2])
    assert m.u0 < -m.D
    a, _ = m.state(np.linspace(0, 8, 801))
    assert a[0] > 0 > a[-1]


@pytest.mark.parametrize("case", CASES)
def test_delta_is_conserved_by_the_closed_form(case):
    m = model(*case)
    a, w = m.state(np.linspace(0, 50, 101))
    np.testing.assert_allclose(m.eta_w * a**2 - m.eta_a * (w**2).sum(1), m.delta, atol=1e-9 * (1 + abs(m.delta)))


def test_nu_is_the_tanh_formula_at_unit_rates():
    """nu(t) = 1/2 (-delta + D tanh(tD/2 + artanh((delta + 2 nu0)/D))), D = sqrt(delta^2 + 4 s^2)."""
    beta = np.random.default_rng(0).standard_normal(4)
    m = lt.MinimalModel(1.0, 0.1 * beta / np.linalg.norm(beta), beta)
    assert abs(m.u0) < m.D  # the range of artanh
    t = np.linspace(0, 5, 51)
    d = math.sqrt(m.delta**2 + 4 * m.s**2)
    tanh_form = 0.5 * (-m.delta + d * np.tanh(t * d / 2 + np.arctanh((m.delta + 2 * m.nu0) / d)))
    np.testing.assert_allclose(m.nu(t), tanh_form, rtol=1e-12)


def test_late_times_reach_the_target():
    m = model(*CASES[1])
    np.testing.assert_allclose(m.beta(np.array([1e4]))[0], m.beta_star, atol=1e-12)


def test_kernel_distance_is_the_normalised_frobenius_form():
    rng = np.random.default_rng(0)
    k0, k1 = rng.standard_normal((2, 3, 3))
    expected = 1 - np.sum(k0 * k1) / (np.linalg.norm(k0) * np.linalg.norm(k1))
    assert lt.kernel_distance(k0, k1) == pytest.approx(expected)
    assert lt.kernel_distance(k0, 2 * k0) == pytest.approx(0.0, abs=1e-15)


def test_chordal_distance_handles_infinity():
    assert lt.chordal_distance(np.inf, 1e12) == pytest.approx(0.0, abs=1e-11)
    assert lt.chordal_distance(np.inf, 0.0) == pytest.approx(1.0)
    assert lt.chordal_distance(0.0, 1.0) == pytest.approx(1 / math.sqrt(2))


def test_fast_minimal_model_passes_every_check(tmp_path):
    s = run_config(tmp_path, MINIMAL, *FAST)
    assert failed(s) == []
    kernel = s["checks"]["kernel_distance_vs_delta"]["observed"]
    assert kernel["-1"] > kernel["0"] > kernel["1"]  # lazy as delta grows
    assert (tmp_path / "t" / "get_rich_quick.png").exists() and (tmp_path / "t" / "delta_sweep.png").exists()


@pytest.mark.parametrize(
    ("rates", "sign"),
    [(["--task.eta_a=4", "--task.eta_w=1"], -1), (["--task.eta_a=0.5", "--task.eta_w=3"], 1)],
)
def test_held_out_layer_rates_of_either_sign_pass(tmp_path, rates, sign):
    held_out = ["--task.a0=0.5", "--task.w0_scale=0.5", "--task.d=6", "--task.teacher_norm=1.5", "--run.seed=2"]
    s = run_config(tmp_path, MINIMAL, *FAST, *rates, *held_out)
    assert np.sign(s["prediction"]["delta"][0]) == sign
    assert failed(s) == []


@pytest.mark.parametrize(
    ("overrides", "failing"),
    [
        # 7.5x the learning rate over the same flow time
        (["--optim.lr=3e-2", "--train.max_steps=267"], ["function_matches_closed_form"]),
        # momentum: another flow (heavy ball), whose nu leaves the closed form
        (["--optim.sgdm.momentum=0.5"], ["function_matches_closed_form", "nu_matches_closed_form"]),
        # weight decay on w (a matrix) breaks the conservation of delta
        (["--optim.sgdm.weight_decay=0.01"], ["delta_conserved"]),
        # t = 0.8: the downstream network has not moved its kernel, nor any loss halved
        (["--train.max_steps=200"], ["kernel_distance_vs_delta", "w_turns_first_when_upstream"]),
    ],
)
def test_each_minimal_model_check_rejects_a_run_outside_the_theory(tmp_path, overrides, failing):
    s = run_config(tmp_path, MINIMAL, *FAST, *overrides)
    assert set(failing) <= set(failed(s)), s["checks"]


def test_fast_relu_experiment_passes(tmp_path):
    s = run_config(tmp_path, RELU, *FAST_RELU)
    assert failed(s) == []
    speed = s["checks"]["upstream_faster_than_layer_ratio"]["speedup"]
    assert "reached" not in speed and speed["mean"] > 2  # every instance reached the threshold
    assert (tmp_path / "t" / "alignment.png").exists()


@pytest.mark.parametrize(
    "overrides",
    [["--task.delta=0"], ["--task.delta=-1"]],
    ids=["balanced: no faster layer, a tie", "the labels swapped: downstream"],
)
def test_relu_checks_reject_runs_without_an_upstream_layer(tmp_path, overrides):
    s = run_config(tmp_path, RELU, *FAST_RELU, *overrides)
    assert {"alignment_ordered_by_delta", "upstream_faster_than_layer_ratio"} <= set(failed(s))


@pytest.mark.parametrize(
    ("config", "override", "message"),
    [
        (MINIMAL, "--task.n=3", "task.n >= task.d"),
        (MINIMAL, "--task.a0=0", "task.a0 != 0"),
        (MINIMAL, "--task.eta=2", "did you mean 'task.eta_"),
        (MINIMAL, "--task.sweep=[0,1,2]", "a delta < 0"),
        (RELU, "--task.width=7", "must be even"),
    ],
)
def test_config_errors_name_the_fix(tmp_path, config, override, message):
    with pytest.raises(UserError, match=message):
        run_config(tmp_path, config, override, "--train.max_steps=2")
