"""Get rich quick, the phase diagram: a two-layer ReLU student over initialisation scale x layer imbalance.

    python train.py configs/small_tasks/get_rich_quick_phase.toml

The student-teacher setup of ``UnbalancedReLUTask`` (inputs on the unit sphere, a narrow ReLU teacher), one
data instance, and a grid of students that share their neuron directions and readout signs: per neuron
||w_i|| = tau alpha and |a_i| = tau / alpha for every scale tau in task.scales and relative scale alpha in
task.relative_scales, so that a_i^2 - ||w_i||^2 = delta = tau^2 (1/alpha^2 - alpha^2) (conserved by gradient
flow): alpha < 1 is upstream (delta > 0, the first layer moves fastest), alpha > 1 downstream. Every cell
trains with step lr / tau^2 (as the paper's grid does, so that every scale runs the same number of kernel
time constants): the loss of cell k is divided by tau_k^2, which for SGD is the same update.

Per cell the run measures the NTK's distance from its start, the first layer's relative motion and the test
loss, and compares them with the lazy theory (``relu_theory.lazy_prediction``): the motion and the test
function of the network's own linearisation after the same steps, computed from the data and the
initialisation alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from configs import Config, UserError
from runtime import Context
from small_tasks.linear.get_rich_quick import DATA, INIT, ReLUNetworks, unit_rows
from small_tasks.linear.relu_theory import crossing_scale, kernel_distance, lazy_prediction, relu_ntk
from small_tasks.toolkit.base import EnsembleTask, check
from small_tasks.toolkit.plots import finish, plt
from small_tasks.toolkit.records import Recorder, record_steps

# A cell is predicted lazy where its linearisation moves each layer by at most EPS_LAZY of its norm
# (neurons turn by <= 0.2 rad, so at most 0.2/pi of the gates flip), and rich where it would move the first
# layer by its own norm (EPS_RICH: neurons turned by ~45 degrees, a quarter of the gates flipped).
EPS_LAZY, EPS_RICH = 0.2, 1.0
# A lazy cell's first-layer motion must match the linearisation within the larger relative motion of the two
# layers (eps = max(eps_w, eps_a)): the Jacobian changes at first order in the motion, so the trajectory is
# off by O(eps) relative (half of it for a smooth change of the Jacobian along the path; the gates that flip,
# discrete on n inputs, add to it: measured 0.3-0.6 eps). Downstream, the small readout moves most.
MOTION_TOL = 1.0
# A lazy cell's kernel distance is bounded by the share of gates that flip, eps_w / pi (a flipped gate
# changes its entries by O(1)), plus the readout's reweighting of the gate term, which enters 1 - cos at
# second order: (2 eps_a)^2 / 2.
GATE_SHARE = 1 / math.pi
# A rich cell's NTK must turn by at least 18 degrees (1 - cos = 0.05): half of what a quarter of flipped
# gates (EPS_RICH) gives in the same estimate, and 10 times what the lazy cells reach.
KD_RICH = 0.05
# The boundary: the scale at which the first layer's relative motion falls through EPS_BOUNDARY. Its
# predicted shift from the most upstream to the most downstream column must be at least MIN_SHIFT octaves
# (a quarter of the grid's octave spacing would be a tie), and the run must show at least half of it.
EPS_BOUNDARY, MIN_SHIFT = 0.5, 0.5
# Rich cells must generalise better than the kernel they start from: test loss at most this share of their
# own linearisation's (the lazy cells stay within MOTION_TOL-sized corrections of theirs).
RICH_TEST_RATIO = 0.5


@dataclass
class ReLUPhaseConfig:
    name: str = "get_rich_quick_phase"
    d: int = 20
    n: int = 200
    n_test: int = 2000
    width: int = 50  # even: neurons in pairs with opposite readouts, f = 0 at the start
    teacher_width: int = 3
    scales: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.4, 0.8])  # tau
    relative_scales: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0])  # alpha
    data_seed: int = 0

    def check(self) -> None:
        if self.width < 2 or self.width % 2:
            raise UserError(f"task.width must be even and >= 2 (pairs of neurons), got {self.width}")
        if min(self.d, self.n, self.n_test, self.teacher_width) < 1 or self.teacher_width > self.d:
            raise UserError("task.d, task.n, task.n_test must be >= 1 and 1 <= task.teacher_width <= task.d")
        for key in ("scales", "relative_scales"):
            values = getattr(self, key)
            if len(values) < 2 or min(values) <= 0 or list(values) != sorted(set(values)):
                raise UserError(f"task.{key} must list at least two increasing values > 0, got {values}")


def phase_checks(
    scales: np.ndarray,
    alphas: np.ndarray,
    motion: np.ndarray,
    motion_lazy: np.ndarray,
    readout_lazy: np.ndarray,
    kernel: np.ndarray,
    test: np.ndarray,
    test_lazy: np.ndarray,
) -> dict[str, Any]:
    """The phase diagram's checks from (scale, alpha) grids: the first layer's relative motion observed
    (``motion``) and predicted by the linearisation (``motion_lazy``; the readout's, ``readout_lazy``), the
    NTK distance from the start (``kernel``), the test loss observed and the linearisation's (``test_lazy``).
    A check with no cell to test (a grid that never reaches the lazy or the rich regime, or predicts no
    shift) fails."""
    cell = lambda i, j: f"tau={scales[i]:g},alpha={alphas[j]:g}"
    eps = np.maximum(motion_lazy, readout_lazy)
    lazy, rich = eps <= EPS_LAZY, motion_lazy >= EPS_RICH
    finite = bool(np.isfinite(motion).all() and np.isfinite(kernel).all() and np.isfinite(test).all())
    # (1) where the lazy theory is self-consistent, the network is its linearisation
    rel_err = np.abs(motion / motion_lazy - 1)
    kernel_bound = GATE_SHARE * motion_lazy + 2 * readout_lazy**2
    follows = lazy & (rel_err <= MOTION_TOL * eps) & (kernel <= kernel_bound)
    off = [cell(i, j) for i, j in zip(*np.nonzero(lazy & ~follows))]
    # (2) where it is not, the kernel turns
    turned = rich & (kernel >= KD_RICH)
    still = [cell(i, j) for i, j in zip(*np.nonzero(rich & ~turned))]
    # (3) the boundary moves with the imbalance
    b_obs, b_th = crossing_scale(scales, motion, EPS_BOUNDARY), crossing_scale(scales, motion_lazy, EPS_BOUNDARY)
    shift_th = float(np.log2(b_th[0] / b_th[-1]))
    shift_obs = float(np.log2(b_obs[0] / b_obs[-1]))
    moves = bool(finite and np.isfinite([shift_th, shift_obs]).all() and shift_th >= MIN_SHIFT)
    moves &= bool(shift_obs >= shift_th / 2)
    # (4) rich cells generalise better than their own kernel
    better = rich & (test <= RICH_TEST_RATIO * test_lazy)
    worse = [cell(i, j) for i, j in zip(*np.nonzero(rich & ~better))]
    octaves = lambda b: dict(zip([f"alpha={a:g}" for a in alphas], np.round(b, 4).tolist()))
    return {
        "lazy_cells_follow_linearisation": check(
            finite and lazy.any() and not off,
            f"every cell whose linearisation moves each layer by <= {EPS_LAZY} of its norm (eps = the larger): "
            "the first layer's observed motion within eps (relative) of the linearisation's, and NTK distance "
            "<= eps_w/pi + 2 eps_a^2",
            {"cells": int(lazy.sum()), "off": off, "max_rel_err": round(float(rel_err[lazy].max(initial=0)), 4)},
        ),
        "rich_cells_move_their_kernel": check(
            finite and rich.any() and not still,
            f"every cell whose linearisation moves the first layer by >= {EPS_RICH} of its norm: NTK distance "
            f">= {KD_RICH}",
            {
                "cells": int(rich.sum()),
                "below": still,
                "min": round(float(kernel[rich].min()), 4) if rich.any() else None,
            },
        ),
        "boundary_moves_with_imbalance": check(
            moves,
            f"the scale where the first layer's motion falls through {EPS_BOUNDARY} moves down by >= "
            f"{MIN_SHIFT} octaves from alpha={alphas[0]:g} to alpha={alphas[-1]:g} (predicted "
            f"{shift_th:.3g}); observed shift >= half of it",
            {"shift_octaves": round(shift_obs, 4), "boundary": octaves(b_obs)},
            predicted_boundary=octaves(b_th),
        ),
        "rich_cells_generalise_better": check(
            finite and rich.any() and not worse,
            f"every rich cell: test loss <= {RICH_TEST_RATIO} x its linearisation's",
            {"cells": int(rich.sum()), "not_better": worse},
        ),
    }


class ReLUPhaseTask(EnsembleTask):
    config_class = ReLUPhaseConfig
    data_seed_key = "data_seed"
    recorded = ("trace", "recorder")

    def __init__(self, cfg: Config, ctx: Context):
        super().__init__(cfg, ctx)
        tc = self.tc
        rng = np.random.default_rng([tc.data_seed, DATA])
        teacher = unit_rows(rng, tc.teacher_width, tc.d)
        readout = np.where(rng.random(tc.teacher_width) < 0.5, -1.0, 1.0)
        x, x_test = unit_rows(rng, tc.n, tc.d), unit_rows(rng, tc.n_test, tc.d)
        init = np.random.default_rng([cfg.run.seed, INIT])
        half = unit_rows(init, tc.width // 2, tc.d)
        signs = np.where(init.random(tc.width // 2) < 0.5, -1.0, 1.0)
        taus, alphas = np.meshgrid(tc.scales, tc.relative_scales, indexing="ij")
        self.taus, self.alphas = taus.ravel(), alphas.ravel()
        self.w0 = np.stack([np.concatenate([half, half]) * t * a for t, a in zip(self.taus, self.alphas)])
        self.a0 = np.stack([np.concatenate([signs, -signs]) * t / a for t, a in zip(self.taus, self.alphas)])
        tensor = lambda v: torch.tensor(v, device=ctx.device)
        self.x, self.x_test = tensor(x), tensor(x_test)
        self.y, self.y_test = (
            tensor(np.maximum(x @ teacher.T, 0) @ readout),
            tensor(np.maximum(x_test @ teacher.T, 0) @ readout),
        )
        self.inv_tau2 = tensor(1 / self.taus**2)
        self.recorder = Recorder(record_steps(cfg.train.max_steps, 40), ctx.device)

    def motion(self, w: torch.Tensor) -> torch.Tensor:
        w0 = torch.tensor(self.w0, device=w.device)
        return (w - w0).norm(dim=(1, 2)) / w0.norm(dim=(1, 2))

    def build_model(self) -> nn.Module:
        model = ReLUNetworks(self.w0, self.a0)
        self.recorder.record(0, motion=self.motion(model.w.detach()))
        return model

    def losses(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cell k's 1/2 mean squared error over tau_k^2: gradient descent then steps lr / tau_k^2 on it."""
        return 0.5 * (model(x) - y).square().mean(-1) * self.inv_tau2

    def test_losses(self, model: nn.Module) -> torch.Tensor:
        return 0.5 * (model(self.x_test) - self.y_test).square().mean(-1)

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.tc.n * len(self.taus)

    def after_step(self, model: nn.Module, step: int) -> None:
        self.recorder.record(step, motion=self.motion(model.w))

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            return {"val_loss": float(self.test_losses(model).mean())}

    def notes(self) -> list[str]:
        """Where the run leaves the theory's update (plain gradient descent at a constant step)."""
        opt, o = self.cfg.optim, self.optim_options
        out = []
        if opt.name != "sgdm" or getattr(o, "momentum", 0) or getattr(o, "weight_decay", 0):
            out.append("the lazy prediction is for plain gradient descent: optim sgdm, momentum 0, weight_decay 0")
        if opt.schedule != "constant":
            out.append("the lazy prediction assumes a constant learning rate: set optim.schedule = constant")
        return out

    def finish(self, model: nn.Module, history: list[dict]) -> dict[str, Any]:
        shape = (len(self.tc.scales), len(self.tc.relative_scales))
        dev = self.x.device
        w0, a0 = torch.tensor(self.w0, device=dev), torch.tensor(self.a0, device=dev)
        with torch.no_grad():
            w, a = model.w.detach(), model.a.detach()
            kd = kernel_distance(relu_ntk(self.x, w0, a0), relu_ntk(self.x, w, a))
            lrs = self.optim_options.lr * self.inv_tau2
            motion_lazy, readout_lazy, f_lazy = lazy_prediction(
                self.x, self.y, w0, a0, lrs, self.cfg.train.max_steps, self.x_test
            )
            test_lazy = 0.5 * (f_lazy - self.y_test).square().mean(-1)
            values = (self.motion(w), motion_lazy, readout_lazy, kd, self.test_losses(model), test_lazy)
            grids = [v.cpu().numpy().reshape(shape) for v in values]
        motion, motion_lazy, readout_lazy, kd, test, test_lazy = grids
        checks = phase_checks(np.array(self.tc.scales), np.array(self.tc.relative_scales), *grids)
        notes = self.notes()
        for c in checks.values():
            if notes:
                c["notes"] = notes
        self.plot(kd, test, motion, motion_lazy)
        cells = lambda v: np.round(v, 6).tolist()
        return {
            "prediction": {
                "motion_lazy": cells(motion_lazy),
                "readout_motion_lazy": cells(readout_lazy),
                "test_loss_lazy": cells(test_lazy),
            },
            "observed": {
                "scales": self.tc.scales,
                "relative_scales": self.tc.relative_scales,
                "delta": cells((self.taus**2 * (1 / self.alphas**2 - self.alphas**2)).reshape(shape)),
                "kernel_distance": cells(kd),
                "test_loss": cells(test),
                "motion": cells(motion),
            },
            "checks": checks,
        }

    def plot(self, kd: np.ndarray, test: np.ndarray, motion: np.ndarray, motion_lazy: np.ndarray) -> None:
        tc = self.tc
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
        for ax, values, title in [(axes[0], kd, "NTK distance from init"), (axes[1], test, "test loss")]:
            im = ax.imshow(np.log10(np.maximum(values, 1e-6)), origin="lower", aspect="auto", cmap="viridis")
            fig.colorbar(im, ax=ax, label="log10")
            ax.set_xticks(range(len(tc.relative_scales)), [f"{a:g}" for a in tc.relative_scales])
            ax.set_yticks(range(len(tc.scales)), [f"{s:g}" for s in tc.scales])
            ax.set_xlabel("alpha = ||w|| / tau  (< 1 upstream, > 1 downstream)")
            ax.set_ylabel("scale tau")
            ax.set_title(title, fontsize=9)
            # the lazy theory's boundary: cells whose linearisation moves the first layer by >= EPS_BOUNDARY
            ax.contour(motion_lazy, levels=[EPS_BOUNDARY], colors="w", linestyles="--", linewidths=1.2)
            ax.contour(motion, levels=[EPS_BOUNDARY], colors="r", linewidths=1.0)
        finish(
            fig,
            self.ctx.run_dir / "phase.png",
            f"ReLU student, {tc.width} neurons, d={tc.d}: first-layer motion = {EPS_BOUNDARY} "
            "(white dashed: lazy theory, red: run)",
            dpi=90,
        )
