"""Limiting dynamics theory (small_tasks/sgd_diffusion.py) against its own moment recursion and a numpy
simulation of torch SGD's update on online Gaussian regression."""

import numpy as np
import pytest
import torch

from small_tasks import sgd_diffusion as sd

CASES = [  # lr, wd, momentum, batch, sigma
    (0.5, 0.0, 0.0, 4, 0.5),
    (0.5, 0.05, 0.0, 2, 0.5),
    (0.05, 0.02, 0.9, 1, 1.0),
]


@pytest.fixture(autouse=True)
def one_thread():
    """Many tiny ops: on a shared machine one thread is far faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    means, seconds = sd.moments(h, theta_star, np.zeros(6), lr, wd, momentum, batch, sigma, 12000)
    assert np.abs(seconds[-1] - stat.z).max() < 1e-12 * np.abs(stat.z).max()
    assert np.abs(means[-1]).max() < 1e-12
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
    from small_tasks import noether

    np.testing.assert_allclose(mean, noether.second_order(1.0, np.full(400, lr), 0.5, momentum), rtol=0, atol=1e-14)
    assert noether.frequency(lr, 0.5, momentum) > noether.damping(lr, momentum)
    assert np.sum(np.diff(np.sign(mean)) != 0) >= 3


def test_unstable_learning_rate_has_no_stationary_state():
    with pytest.raises(ValueError, match="no stationary distribution"):
        sd.stationary(np.array([1.0, 0.1]), np.zeros(2), 1.9, 0.0, 0.0, 1, 1.0)
