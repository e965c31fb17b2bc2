"""The equilibrium of scale-invariant weights (small_tasks/sgd/spherical.py, small_tasks/sgd/normalised_equilibrium.py):
the formulas against the law they solve, the checks against records that obey the theory and records that must
fail (no weight decay, a wrong weight decay, no scale invariance, no dependence on lr / wd, too few steps), and
two short runs of the task itself."""

import numpy as np
import pytest

from configs import UserError, load_config
from small_tasks.sgd import spherical
from small_tasks.sgd.normalised_equilibrium import Setup, analyse
from trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

LR, WD = 0.2, 0.05
LR_F = np.array([1.0, 1.0, 4.0, 0.25, 1.0])
WD_F = np.array([1.0, 1.0, 0.25, 4.0, 4.0])
SCALES = np.array([4.0, 0.1, 1.0, 1.0, 1.0])
G_UNIT = np.array([7.5, 1.0])  # mean squared gradient at unit norm of each group


def setup(wd: float = WD, wd_f: np.ndarray = WD_F) -> Setup:
    return Setup(LR * LR_F, wd * wd_f, 0.0, SCALES, wd_f)


def simulate(n: int, wd: float = WD, g_unit=None, pull: float = 0.0, seed: int = 0) -> dict[str, np.ndarray]:
    """Records of the plain-SGD law of a group, Q_{n+1} = (1 - lr wd)^2 Q_n + lr^2 G_n / Q_n - 2 lr <g, theta>_n,
    with G_n drawn (mean ``g_unit`` per replica and group, gamma noise) and <g, theta> = pull (Q_n - 1):
    pull = 0 is a scale-invariant group, pull > 0 a loss that also acts on the norm."""
    rng = np.random.default_rng(seed)
    g_unit = np.broadcast_to(G_UNIT if g_unit is None else g_unit, (5, 2))
    lrs, wds = (LR * LR_F)[:, None], (wd * WD_F)[:, None]
    Q = np.empty((n + 1, 5, 2))
    Q[0] = 16.6 * SCALES[:, None] ** 2
    G = g_unit * rng.gamma(4.0, 0.25, size=(n, 5, 2))
    dot = np.empty((n, 5, 2))
    for i in range(n):
        dot[i] = pull * (Q[i] - 1.0)
        Q[i + 1] = (
            (1 - lrs * wds) ** 2 * Q[i] + lrs**2 * (G[i] / Q[i] + pull**2 * (Q[i] - 1.0) ** 2 / Q[i]) - 2 * lrs * dot[i]
        )
    grad_sq = G / Q[:n] + (dot**2) / Q[:n]
    return {"norm_sq": Q, "grad_sq": grad_sq, "grad_cos": dot / np.sqrt(grad_sq * Q[:n])}


def passed(out):
    return {k: v["passed"] for k, v in out["checks"].items()}


# ---- the formulas ----


def test_equilibrium_is_the_fixed_point_of_the_plain_law():
    lr, wd, g = 0.3, 0.1, 5.0
    q = 50.0
    for _ in range(5000):
        q = (1 - lr * wd) ** 2 * q + lr**2 * g / q
    assert spherical.equilibrium_norm_sq(lr, wd, 0.0, g) == pytest.approx(q, rel=1e-9)
    # the continuum's |theta|^4 = lr G / (2 wd) is the small-lr limit, and momentum with uncorrelated kicks
    # gives lr G / (2 wd (1 - momentum)) there
    assert spherical.equilibrium_norm_sq(1e-4, 1e-3, 0.0, g) == pytest.approx(np.sqrt(1e-4 * g / 2e-3), rel=1e-6)
    small = spherical.equilibrium_norm_sq(1e-4, 1e-3, 0.9, g)
    assert small == pytest.approx(np.sqrt(1e-4 * g / (2e-3 * 0.1)), rel=1e-4)
    assert spherical.equilibrium_norm_sq(lr, 0.0, 0.0, g) == np.inf


def test_relaxation_is_four_lr_wd_per_step():
    """The linearised law relaxes |theta|^2 by 4 lr wd a step: 1 / (4 lr wd) steps per e-fold (more with momentum)."""
    assert spherical.relaxation_steps(0.01, 0.05, 0.0) == pytest.approx(1 / (4 * 0.01 * 0.05), rel=0.01)
    assert spherical.relaxation_steps(0.001, 0.05, 0.9) == pytest.approx(0.1 / (4 * 0.001 * 0.05), rel=0.05)
    # far above, weight decay alone: heavy ball from rest shrinks |theta|^4 as the squared homogeneous law
    lr, wd, beta = 0.02, 0.05, 0.9
    q, v = [1.0], 0.0
    for _ in range(100):
        v = beta * v - lr * wd * q[-1] ** 0.5  # |theta| of a group whose gradient is negligible
        q.append((q[-1] ** 0.5 + v) ** 2)
    steps = spherical.crossing(np.log(np.array(q) ** 2), -1.0)
    assert spherical.shrink_steps(lr, wd, beta) == pytest.approx(steps, rel=1e-9)
    assert spherical.shrink_steps(lr, wd, beta) > 1.05 * spherical.relaxation_steps(lr, wd, beta)
    # the plain law near its fixed point, kicked off it, closes 1 - 1/e of the gap in |theta|^4 in that time
    lr, wd, g = 0.05, 0.1, 5.0
    star = spherical.equilibrium_norm_sq(lr, wd, 0.0, g)
    q = [1.3 * star]
    for _ in range(400):
        q.append((1 - lr * wd) ** 2 * q[-1] + lr**2 * g / q[-1])
    gap = (np.array(q) ** 2 - star**2) / (q[0] ** 2 - star**2)
    assert spherical.crossing(gap, np.exp(-1)) == pytest.approx(spherical.relaxation_steps(lr, wd, 0.0), rel=0.03)


# ---- the checks on records of the law ----


def test_law_records_pass_every_check():
    out = analyse(simulate(2000), setup())
    assert all(passed(out).values()), out["checks"]
    assert set(passed(out)) == {
        "equilibrium_norm",
        "same_equilibrium",
        "approach_time",
        "eta_over_wd_scaling",
        "gradient_orthogonal",
    }


def test_no_weight_decay_has_no_equilibrium():
    """wd = 0: |theta|^2 grows for ever; every prediction fails, only the orthogonality (code) holds."""
    out = analyse(simulate(2000, wd=0.0), setup(wd=0.0))
    assert passed(out) == {
        "equilibrium_norm": False,
        "same_equilibrium": False,
        "approach_time": False,
        "eta_over_wd_scaling": False,
        "gradient_orthogonal": True,
    }


def test_wrong_weight_decay_is_rejected():
    """The analysis told twice the run's weight decay: the equilibrium is off by sqrt(2), the approach by 2."""
    out = analyse(simulate(2000), setup(wd=2 * WD))
    assert not out["checks"]["equilibrium_norm"]["passed"] and not out["checks"]["approach_time"]["passed"]


def test_a_group_that_is_not_scale_invariant_is_rejected():
    """A loss pulling on the norm (<g, theta> != 0) sets another equilibrium than the kicks' balance."""
    out = analyse(simulate(2000, pull=0.02), setup())
    assert not out["checks"]["equilibrium_norm"]["passed"]
    assert not out["checks"]["gradient_orthogonal"]["passed"]


def test_equilibria_that_ignore_lr_over_wd_are_rejected():
    """G chosen so that every replica's equilibrium is the same: the measured-G prediction still holds, the
    G-free sqrt(lr / wd) law does not."""
    g_unit = (WD_F / LR_F)[:, None] * G_UNIT * np.ones((5, 2))
    out = analyse(simulate(2000, g_unit=g_unit), setup())
    assert out["checks"]["equilibrium_norm"]["passed"]
    assert not out["checks"]["eta_over_wd_scaling"]["passed"]


def test_too_few_steps_fail_with_the_reason():
    out = analyse(simulate(60), setup())
    check = out["checks"]["equilibrium_norm"]
    assert not check["passed"] and any("train longer" in note for note in check["notes"])


# ---- the task ----


def run_task(tmp_path, *overrides):
    """Two replicas (lr x 4, wd / 4) of a width-8 network at lr wd = 0.04: 1,000 steps, a window of 500 (100
    relaxations); batches of 32 halve G's noise, so each half-window's mean sits ~3% from the law (10% allowed)."""
    args = [
        f"--run.dir={tmp_path}",
        "--run.name=t",
        "--train.progress=false",
        "--run.threads=1",
        "--train.max_steps=1000",
        "--task.lr_factors=[1.0, 4.0]",
        "--task.wd_factors=[1.0, 0.25]",
        "--task.init_scales=[1.0, 1.0]",
        "--optim.sgdm.weight_decay=0.2",
        "--task.width=8",
        "--task.batch_size=32",
        *overrides,
    ]
    return Trainer(load_config("configs/small_tasks/normalised_equilibrium.toml", args)).run()


def test_the_task_reaches_the_equilibrium_and_rejects_unnormalised_weights(tmp_path):
    good = run_task(tmp_path / "a")["checks"]
    assert good["equilibrium_norm"]["passed"] and good["gradient_orthogonal"]["passed"], good
    bad = run_task(tmp_path / "b", "--task.normalise=false", "--train.max_steps=300")["checks"]
    assert not bad["equilibrium_norm"]["passed"] and not bad["gradient_orthogonal"]["passed"]


def test_replica_lists_of_different_lengths_are_a_user_error(tmp_path):
    with pytest.raises(UserError, match="one length"):
        run_task(tmp_path, "--task.lr_factors=[1.0]")
