"""The nonlinear get-rich-quick tasks against the runs they must reject: the phase diagram's lazy theory (each
cell's own linearisation) on grids that never reach a regime, on grids whose cells all behave alike, and on
runs outside plain gradient descent; each beside a run that passes."""

import numpy as np
import pytest
import torch
from test_lazy_rich import failed

from configs import UserError
from small_tasks.linear.grokking import UpstreamGrokkingConfig, grokking_steps, speedup_check
from small_tasks.linear.relu_phase import EPS_BOUNDARY, KD_RICH, ReLUPhaseConfig, phase_checks
from small_tasks.linear.relu_theory import crossing_scale, lazy_prediction, relu_ntk

from helpers import run_config

PHASE = "small_tasks/get_rich_quick_phase.toml"
GROK = "small_tasks/grokking_upstream.toml"
# 3 scales x 2 relative scales of a 16-neuron student in d = 10: one row rich, one lazy, 400 steps
TINY_PHASE = [
    "--task.d=10",
    "--task.n=60",
    "--task.width=16",
    "--task.n_test=200",
    "--task.scales=[0.05,0.2,0.8,3.2]",
    "--task.relative_scales=[0.5,4]",
    "--train.max_steps=400",
]
PHASE_CHECKS = [
    "boundary_moves_with_imbalance",
    "lazy_cells_follow_linearisation",
    "rich_cells_generalise_better",
    "rich_cells_move_their_kernel",
]


def test_linearised_motion_is_the_linear_model_trained_by_gradient_descent():
    """The closed form of ``lazy_prediction`` against gradient descent run on the linearised model itself."""
    gen = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(12, 4, generator=gen, dtype=torch.float64), dim=1)
    y = torch.randn(12, generator=gen, dtype=torch.float64)
    w0 = torch.randn(2, 6, 4, generator=gen, dtype=torch.float64)
    a0 = torch.randn(2, 6, generator=gen, dtype=torch.float64)
    lrs, steps = torch.tensor([0.05, 0.2], dtype=torch.float64), 30
    motion, readout, f_test = lazy_prediction(x, y, w0, a0, lrs, steps, x[:5])
    pre = x @ w0.transpose(1, 2)
    jac_w = ((pre > 0).double() * a0[:, None, :])[..., None] * x[None, :, None, :]  # (K, n, m, d)
    jac = torch.cat([torch.relu(pre), jac_w.flatten(2)], dim=2)
    theta = torch.zeros(2, jac.shape[2], dtype=torch.float64)
    for _ in range(steps):
        residual = y - (jac @ theta[..., None])[..., 0]
        theta += lrs[:, None] / len(y) * (jac.transpose(1, 2) @ residual[..., None])[..., 0]
    dw, da = theta[:, 6:], theta[:, :6]
    torch.testing.assert_close(motion, dw.norm(dim=1) / w0.norm(dim=(1, 2)))
    torch.testing.assert_close(readout, da.norm(dim=1) / a0.norm(dim=1))
    torch.testing.assert_close(f_test, (jac[:, :5] @ theta[..., None])[..., 0])
    # the kernel is J J^T
    torch.testing.assert_close(relu_ntk(x, w0, a0), jac @ jac.transpose(1, 2))


def test_crossing_scale_interpolates_and_misses_outside_the_grid():
    scales = np.array([0.1, 0.2, 0.4])
    motion = np.array([[4.0, 0.4, 9.0], [1.0, 0.2, 8.0], [0.25, 0.1, 7.0]])
    got = crossing_scale(scales, motion, 0.5)
    assert got[0] == pytest.approx(0.2 * 2**0.5)  # 1 -> 0.25 over one octave: 0.5 halfway in log
    assert np.isnan(got[1]) and np.isnan(got[2])  # below everywhere, above everywhere


def grids(shift: float = 2.0):
    """A synthetic 4 x 2 grid that passes: motion ~ share / tau^2 with the downstream column's share 4^-shift,
    so that its boundary sits ``shift`` octaves lower; rich cells move less than their linearisation, turn
    their kernel and generalise better."""
    scales, alphas = np.array([0.05, 0.2, 0.8, 3.2]), np.array([0.5, 4.0])
    share = np.array([1.0, 4.0 ** (-shift)])
    motion_lazy = 0.03 * share[None, :] / scales[:, None] ** 2
    readout_lazy = motion_lazy / 4
    motion = np.where(motion_lazy > 1, motion_lazy / 2, motion_lazy * (1 + motion_lazy / 4))
    kernel = np.where(motion_lazy >= 1, 0.2, motion_lazy / 10)
    test_lazy = np.full_like(motion, 0.05)
    test = np.where(motion_lazy >= 1, 0.01, 0.045)
    return scales, alphas, motion, motion_lazy, readout_lazy, kernel, test, test_lazy


def test_phase_checks_pass_on_a_grid_with_both_regimes_and_a_moving_boundary():
    checks = phase_checks(*grids())
    assert [name for name, c in checks.items() if not c["passed"]] == []
    assert all(c["kind"] == "prediction" for c in checks.values())


def test_phase_checks_reject_a_grid_that_is_lazy_everywhere_or_rich_everywhere():
    scales, alphas, motion, motion_lazy, readout_lazy, kernel, test, test_lazy = grids()
    lazy = phase_checks(
        scales[2:], alphas, motion[2:], motion_lazy[2:], readout_lazy[2:], kernel[2:], test[2:], test_lazy[2:]
    )
    assert not lazy["rich_cells_move_their_kernel"]["passed"] and not lazy["rich_cells_generalise_better"]["passed"]
    assert not lazy["boundary_moves_with_imbalance"]["passed"]  # no crossing inside the grid
    rich = phase_checks(
        scales[:1], alphas, motion[:1], motion_lazy[:1], readout_lazy[:1], kernel[:1], test[:1], test_lazy[:1]
    )
    assert not rich["lazy_cells_follow_linearisation"]["passed"]


def test_phase_checks_reject_cells_off_the_theory():
    scales, alphas, motion, motion_lazy, readout_lazy, kernel, test, test_lazy = grids()
    # a lazy cell whose first layer moved twice what its linearisation predicts
    moved = motion.copy()
    moved[3, 0] *= 2
    assert not phase_checks(scales, alphas, moved, motion_lazy, readout_lazy, kernel, test, test_lazy)[
        "lazy_cells_follow_linearisation"
    ]["passed"]
    # a rich cell whose kernel stayed put (just under the floor)
    still = kernel.copy()
    still[0, 0] = KD_RICH * 0.99
    assert not phase_checks(scales, alphas, motion, motion_lazy, readout_lazy, still, test, test_lazy)[
        "rich_cells_move_their_kernel"
    ]["passed"]
    # rich cells no better than their kernel
    assert not phase_checks(scales, alphas, motion, motion_lazy, readout_lazy, kernel, test_lazy * 0.9, test_lazy)[
        "rich_cells_generalise_better"
    ]["passed"]


def test_boundary_check_needs_a_predicted_shift_and_half_of_it_observed():
    # every column alike (no imbalance effect predicted): a tie fails
    scales, alphas, motion, motion_lazy, readout_lazy, kernel, test, test_lazy = grids(shift=0.0)
    assert not phase_checks(scales, alphas, motion, motion_lazy, readout_lazy, kernel, test, test_lazy)[
        "boundary_moves_with_imbalance"
    ]["passed"]
    # predicted 2 octaves, observed columns that do not separate: fails
    scales, alphas, motion, motion_lazy, readout_lazy, kernel, test, test_lazy = grids(shift=2.0)
    same = np.repeat(motion[:, :1], 2, axis=1)
    out = phase_checks(scales, alphas, same, motion_lazy, readout_lazy, kernel, test, test_lazy)
    assert not out["boundary_moves_with_imbalance"]["passed"]
    assert out["boundary_moves_with_imbalance"]["observed"]["shift_octaves"] == pytest.approx(0.0)
    assert EPS_BOUNDARY < 1


def test_phase_run_passes_and_runs_outside_the_theory_fail(tmp_path):
    s = run_config(tmp_path / "right", PHASE, *TINY_PHASE)
    assert failed(s) == []
    # only the large scales: every cell lazy, nothing rich to check and no boundary inside the grid
    lazy = run_config(tmp_path / "lazy", PHASE, *TINY_PHASE, "--task.scales=[0.8,3.2]")
    assert "rich_cells_move_their_kernel" in failed(lazy) and "boundary_moves_with_imbalance" in failed(lazy)
    # heavy-ball momentum: the lazy cells move ten times further than plain gradient descent's linearisation
    fast = run_config(tmp_path / "momentum", PHASE, *TINY_PHASE, "--task.scales=[0.8,3.2]", "--optim.sgdm.momentum=0.9")
    assert "lazy_cells_follow_linearisation" in failed(fast)
    assert "notes" in fast["checks"]["lazy_cells_follow_linearisation"]


def test_grokking_step_is_the_first_step_at_the_threshold_and_needs_a_complete_record():
    acc = np.array([[0.0, 0.0], [0.5, 0.96], [0.97, 0.2], [0.99, 0.99]])
    np.testing.assert_array_equal(grokking_steps(acc, 0.95), [2, 1])
    acc[0, 0] = np.nan  # a resumed run's missing steps: the crossing cannot be dated
    assert np.isnan(grokking_steps(acc, 0.95)[0])
    assert np.isnan(grokking_steps(np.zeros((5, 1)), 0.95)[0])


def test_speedup_check_needs_the_square_root_of_the_layer_ratio():
    alphas = np.array([0.5, 1.0])
    # upstream twice as fast in both instances: (1/0.5^2)^0.5 = 2 is the minimum
    assert speedup_check(np.array([[500.0, 1000.0], [600.0, 1200.0]]), alphas, 0.95)["passed"]
    # faster, but only by 1.5 in one instance: fails
    assert not speedup_check(np.array([[500.0, 1000.0], [800.0, 1200.0]]), alphas, 0.95)["passed"]
    # a tie (two balanced networks) and a downstream-only comparison have no upstream network: fail
    assert not speedup_check(np.array([[1000.0, 1000.0]]), np.array([1.0, 1.0]), 0.95)["passed"]
    assert not speedup_check(np.array([[400.0, 1000.0]]), np.array([2.0, 1.0]), 0.95)["passed"]
    # a balanced network that never groks, or an upstream one that never does: fail
    assert not speedup_check(np.array([[500.0, np.nan]]), alphas, 0.95)["passed"]
    assert not speedup_check(np.array([[np.nan, 1000.0]]), alphas, 0.95)["passed"]


def test_grokking_run_too_short_to_generalise_fails(tmp_path):
    """p = 11 for 100 steps: the networks have not generalised yet, no grokking step to compare, a failure."""
    s = run_config(
        tmp_path / "g", GROK, "--task.p=11", "--task.width=16", "--task.instances=1", "--train.max_steps=100"
    )
    assert failed(s) == ["upstream_groks_sooner"]
    assert s["observed"]["grokking_step"]["alpha=1"] == {"reached": "0/1"}


@pytest.mark.parametrize(
    "config, message",
    [
        (ReLUPhaseConfig(relative_scales=[2.0, 1.0]), "increasing"),
        (ReLUPhaseConfig(width=7), "even"),
        (UpstreamGrokkingConfig(relative_scales=[0.5, 2.0]), "balanced network, 1.0"),
        (UpstreamGrokkingConfig(train_fraction=1.0), "train_fraction"),
    ],
)
def test_config_errors_say_what_to_set(config, message):
    with pytest.raises(UserError, match=message):
        config.check()
