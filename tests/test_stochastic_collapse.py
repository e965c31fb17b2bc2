"""Stochastic collapse theory (small_tasks/collapse.py) against closed forms and plain numpy simulations."""

import math

import numpy as np
import pytest
import torch

from small_tasks import collapse


@pytest.fixture(autouse=True)
def one_thread():
    """Many tiny ops: on a shared machine one thread is far faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_expected_log_abs_normal_against_closed_form_and_monte_carlo():
    # E log|Z| = -(gamma_E + log 2) / 2
    exact = -(collapse.EULER_GAMMA + math.log(2)) / 2
    assert collapse.expected_log_abs_normal(0.0, 1.0) == pytest.approx(exact, abs=1e-7)
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
