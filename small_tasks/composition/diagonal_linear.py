"""Diagonal linear network f(x) = <u * v, x> from small initialization, against AGF's saddle-to-saddle
prediction: loss levels (sign-constrained least squares on the active set) and jump times.

    python train.py configs/small_tasks/diagonal_linear.toml

Setup: u0 = sqrt(2) alpha, v0 = 0; X ~ N(0, diag(1/i)) (n x d), beta* = beta_scale * N(0, 1), y = X beta*;
loss 1/(2n) ||X (u*v) - y||^2; plain gradient descent. Float64: at alpha = 1e-8 the early weights are tiny.
The data instance: ``task.instance = "seeded"`` draws it from numpy's default_rng(data_seed);
``"legacy"`` as the AGF reference code does (numpy's legacy RandomState(data_seed): a multivariate normal
for X, then beta*); ``data_seed = 10`` with ``legacy`` is the reference code's own instance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from configs import Config, UserError
from runtime import Context
from small_tasks.composition import agf
from small_tasks.toolkit import plots, staircase
from small_tasks.toolkit.base import SmallTask, check

LEVEL_TOL = 0.02  # AGF's loss levels must match the plateaus within 2%
JUMP_TOL = 0.25  # and its jump steps the observed drops within 25%


@dataclass
class DiagonalLinearConfig:
    name: str = "diagonal_linear"
    d: int = 5
    n: int = 20
    alpha: float = 1e-8
    beta_scale: float = 10.0
    instance: str = "seeded"  # seeded: default_rng(data_seed) | legacy: the AGF code's RandomState(data_seed) draws
    data_seed: int = 0


class DiagonalLinear(nn.Module):
    def __init__(self, d: int, alpha: float):
        super().__init__()
        self.u = nn.Parameter(torch.full((d,), math.sqrt(2.0) * alpha, dtype=torch.float64))
        self.v = nn.Parameter(torch.zeros(d, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.u * self.v)


class DiagonalLinearTask(SmallTask):
    config_class = DiagonalLinearConfig
    data_seed_key = "data_seed"

    def __init__(self, cfg: Config, ctx: Context):
        super().__init__(cfg, ctx)
        tc = self.tc
        if tc.d < 1 or tc.n < 1 or not 0 < tc.alpha < 0.5:
            raise UserError("task.d and task.n must be >= 1 and task.alpha in (0, 0.5); fix the values")
        cov = 1.0 / np.arange(1, tc.d + 1)
        if tc.instance == "seeded":
            rng = np.random.default_rng(tc.data_seed)
            x = rng.standard_normal((tc.n, tc.d)) * np.sqrt(cov)
            self.beta_star = tc.beta_scale * rng.standard_normal(tc.d)
        elif tc.instance == "legacy":
            legacy = np.random.RandomState(tc.data_seed)
            x = legacy.multivariate_normal(np.zeros(tc.d), np.diag(cov), size=tc.n)
            self.beta_star = tc.beta_scale * legacy.randn(tc.d)
        else:
            raise UserError(f"unknown task.instance '{tc.instance}'; use seeded or legacy")
        y = x @ self.beta_star
        self.x_np, self.y_np = x, y
        self.x = torch.tensor(x, device=ctx.device)
        self.y = torch.tensor(y, device=ctx.device)
        self.prediction = agf.diagonal_linear(x, y, tc.alpha)

    def build_model(self) -> nn.Module:
        return DiagonalLinear(self.tc.d, self.tc.alpha)

    def batch(self, micro_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y

    def loss(self, model: nn.Module, batch: Any, micro_index: int) -> torch.Tensor:
        x, y = batch
        loss = 0.5 * (model(x) - y).square().mean()
        self.record(micro_index, loss)
        return loss

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.tc.n

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            return {"val_loss": float(0.5 * (model(self.x) - self.y).square().mean())}

    def step_metrics(self, model: nn.Module, step: int) -> dict[str, Any]:
        with torch.no_grad():
            return {"beta": [float(f"{v:.6g}") for v in (model.u * model.v).tolist()]}

    def lr(self) -> float:
        return self.optim_options.lr

    def predicted_steps(self) -> list[float]:
        return [t / self.lr() for t in self.prediction.times]

    def resolvable(self, t_end: float) -> list[bool]:
        """Per level after each jump: is it long enough to be seen as a plateau? AGF's plateau after jump j
        lasts until jump j + 1 (the run's end for the last), but the run only settles on it once jump j's
        transition is over (``agf.transition_time``); what is left must be at least ``min_plateau_length``.
        As alpha shrinks the plateaus grow like ln(1/alpha) and the transitions do not, so every level
        becomes resolvable; at alpha = 1e-8 two of the reference's five are not."""
        lr = self.lr()
        starts = self.predicted_steps()
        ends = [*starts[1:], t_end]
        out = []
        for start, end, rate in zip(starts, ends, self.prediction.rates):
            settled = start + agf.transition_time(rate) / lr
            out.append(end - settled >= staircase.min_plateau_length(0.5 * (settled + end), t_end))
        return out

    def finish(self, model: nn.Module, history: list[dict]) -> dict[str, Any]:
        """AGF against the run.

        - agf_levels_match_plateaus: every AGF level after the first that is long enough to be seen
          (``resolvable``) is a plateau of the run within 2%. Fails on a wrong data instance or alpha
          (other levels), a run too short to reach a level, a level gradient descent does not settle on.
        - plateaus_are_agf_levels: the converse; every plateau of the run is an AGF level within 2%.
        - agf_jump_steps: each drop (the loss crossing the midpoint of two consecutive levels) within 25%
          of AGF's jump step, and none for a jump AGF puts after the run's end. Fails on another learning
          rate or alpha than the prediction's.
        """
        pred = self.prediction
        steps, loss = staircase.loss_trace(self.trace_numpy(), history)
        plateaus = staircase.find_plateaus(steps, loss)
        predicted = self.predicted_steps()
        observed = staircase.drop_steps(steps, loss, pred.levels)
        end = float(steps[-1]) if len(steps) else 0.0
        # a jump AGF puts after the run's end is a prediction too: no drop within the run
        errors = [
            (0.0 if o is None else float("inf")) if p > end else (abs(o - p) / p if o is not None else float("inf"))
            for o, p in zip(observed, predicted)
        ]
        seen = self.resolvable(end)
        checks = {
            "agf_levels_match_plateaus": {
                **staircase.match_levels([v for v, ok in zip(pred.levels[1:], seen) if ok], plateaus, LEVEL_TOL),
                "skipped_as_too_short": [round(v, 6) for v, ok in zip(pred.levels[1:], seen) if not ok],
            },
            "plateaus_are_agf_levels": staircase.match_plateaus(plateaus, pred.levels, LEVEL_TOL),
            "agf_jump_steps": check(
                bool(errors) and max(errors) <= JUMP_TOL,
                [round(p) if p <= end else f"after the run's {end:.0f} steps" for p in predicted],
                observed,
                rel_error=[round(e, 4) for e in errors],
                tolerance=JUMP_TOL,
            ),
        }
        run_dir = self.ctx.run_dir
        title = f"diagonal linear network d={self.tc.d}, alpha={self.tc.alpha:g}"
        plots.plot_loss(run_dir / "loss.png", steps, loss, pred.levels, predicted, title)
        logged = [r for r in history if "beta" in r]
        if logged:
            log_steps = np.array([r["step"] for r in logged], dtype=float)
            beta = np.abs(np.array([r["beta"] for r in logged]))
            labels = [f"|beta_{i + 1}|" for i in range(self.tc.d)]
            final = np.abs(pred.betas[-1]) if pred.betas else np.zeros(self.tc.d)
            plots.plot_spectrum(run_dir / "spectrum.png", log_steps, beta, final, labels, title)
        return {
            "prediction": {
                "levels": pred.levels,
                "jump_steps": predicted,
                "active_sets": pred.active,
                "betas": [b.tolist() for b in pred.betas],
            },
            "observed": {"plateaus": plateaus, "drop_steps": observed, "final_loss": float(loss[-1])},
            "checks": checks,
        }
