"""The max-margin bias of a quasi-homogeneous model against a homogeneous one, on exponential loss.

    python train.py configs/small_tasks/quasi_homogeneous.toml

f_qh = u x1 + v^2 x2 is quasi-homogeneous: f(e^alpha u, e^(alpha/2) v) = e^alpha f, so u scales fastest.
Past separability, gradient flow on an exponential loss maximises the margin under a norm on the fastest
parameters only (here |u|), so on data that x2 alone separates (y x2 > 0) u/(|u| + v^2) -> 0: the
classifier keeps x2 alone. The homogeneous f_h = u x1 + v x2 goes to the L2 max-margin direction
(``margins.max_margin``, a QP solved independently of the run). Two datasets of task.n points, labels +-1:
  - "toy": x1 ~ N(0, 1) + y * task.x1_shift, y x2 ~ U(task.x2_margin, task.x2_margin + 1);
  - "robust": both features separate, y x1 ~ U(task.robust_x1, 2 task.robust_x1) wide, y x2 ~
    U(task.robust_x2, 2 task.robust_x2) narrow: the L2 max-margin classifier leans on x1, the
    quasi-homogeneous one drops it and keeps only x2's small margin, so a smaller L2 perturbation
    flips one of its labels.
Four networks (each model on each dataset) train side by side. Convergence is logarithmically slow in
gradient-flow time, so the run takes unit-length steps: the objective is sum_k L_k / ||grad L_k|| with the
norm held constant, whose gradient is the unit vector along -grad L_k, so SGD with learning rate lr moves
each network by exactly lr per step (normalised gradient descent: the learning rate schedule
lr / ||grad L||, which keeps the step from vanishing with the loss). Its small-lr limit traces gradient
flow's path at unit speed, so the path, and with it the implicit bias, is the flow's. Checks read trends
over log-spaced steps, not limits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from configs import Config, UserError
from runtime import Context
from small_tasks.linear.margins import l2_margin, max_margin
from small_tasks.toolkit.base import SmallTask, check
from small_tasks.toolkit.plots import Panel, plot_boundaries, plot_panels
from small_tasks.toolkit.records import Recorder, log_steps

RATIO_SLOPE = -1.0  # d log(ratio) / d log(step) over the last decade at most this (theory: about -2)
ANGLE_SLOPE = -0.5  # d log(angle to the max-margin direction) / d log(step) over the last decade (theory: -1)
MARGIN_TOL = 0.02  # relative distance of each final L2 margin from its predicted limit
NETWORKS = [("toy", 2), ("toy", 1), ("robust", 2), ("robust", 1)]  # (dataset, power of v)
DATA, INIT = 0, 1  # random streams


@dataclass
class QuasiHomogeneousConfig:
    name: str = "quasi_homogeneous"
    n: int = 20
    x2_margin: float = 0.5  # the toy's smallest y x2: x2 alone separates it when > 0
    x1_shift: float = 0.0  # the toy's mean y x1
    robust_x1: float = 1.0
    robust_x2: float = 0.1
    init: float = 0.1  # scale of the random (u0, v0)
    per_decade: int = 8  # recorded steps per factor of 10
    data_seed: int = 0

    def check(self) -> None:
        if self.n < 2 or self.init <= 0 or self.per_decade < 2:
            raise UserError("task.n must be >= 2, task.init > 0 and task.per_decade >= 2")


def toy_data(rng: np.random.Generator, tc: QuasiHomogeneousConfig) -> tuple[np.ndarray, np.ndarray]:
    y = np.where(np.arange(tc.n) % 2 == 0, 1.0, -1.0)
    x1 = rng.standard_normal(tc.n) + y * tc.x1_shift
    x2 = y * rng.uniform(tc.x2_margin, tc.x2_margin + 1, tc.n)
    return np.stack([x1, x2], 1), y


def robust_data(rng: np.random.Generator, tc: QuasiHomogeneousConfig) -> tuple[np.ndarray, np.ndarray]:
    y = np.where(np.arange(tc.n) % 2 == 0, 1.0, -1.0)
    x1 = y * rng.uniform(tc.robust_x1, 2 * tc.robust_x1, tc.n)
    x2 = y * rng.uniform(tc.robust_x2, 2 * tc.robust_x2, tc.n)
    return np.stack([x1, x2], 1), y


class TwoFeatureModels(nn.Module):
    """K models f_k = u[k] x1 + v[k]^power[k] x2, each on its own dataset x[k]."""

    def __init__(self, u: np.ndarray, v: np.ndarray, powers: list[int]):
        super().__init__()
        self.u = nn.Parameter(torch.tensor(u, dtype=torch.float64))
        self.v = nn.Parameter(torch.tensor(v, dtype=torch.float64))
        self.register_buffer("powers", torch.tensor(powers, dtype=torch.float64))

    def coefficients(self) -> torch.Tensor:
        """(K, 2): the linear classifier beta = (u, v^power) each model computes."""
        return torch.stack([self.u, self.v**self.powers], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.coefficients()[:, None, :]).sum(-1)


class QuasiHomogeneousTask(SmallTask):
    config_class = QuasiHomogeneousConfig
    data_seed_key = "data_seed"
    recorded = ("trace", "recorder")

    def __init__(self, cfg: Config, ctx: Context):
        super().__init__(cfg, ctx)
        tc = self.tc
        rng = np.random.default_rng([tc.data_seed, DATA])
        self.data = {"toy": toy_data(rng, tc), "robust": robust_data(rng, tc)}
        try:
            self.max_margin = {name: max_margin(x, y) for name, (x, y) in self.data.items()}
        except ValueError as e:
            raise UserError(f"{e}: with these task settings the homogeneous model has no max-margin limit") from None
        self.x = torch.tensor(np.stack([self.data[d][0] for d, _ in NETWORKS]), device=ctx.device)
        self.y = torch.tensor(np.stack([self.data[d][1] for d, _ in NETWORKS]), device=ctx.device)
        init = np.random.default_rng([cfg.run.seed, INIT])
        self.u0, self.v0 = np.abs(tc.init * init.standard_normal((2, len(NETWORKS))))
        self.recorder = Recorder(np.concatenate([[0], log_steps(cfg.train.max_steps, tc.per_decade)]), ctx.device)

    def build_model(self) -> nn.Module:
        model = TwoFeatureModels(self.u0, self.v0, [p for _, p in NETWORKS])
        self.recorder.record(0, u=model.u, v=model.v)
        return model

    def batch(self, micro_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y

    def log_losses(self, model: nn.Module) -> torch.Tensor:
        """log of each network's exponential loss, mean_i exp(-y_i f(x_i)), without under- or overflow."""
        return torch.logsumexp(-self.y * model(self.x), dim=1) - np.log(self.tc.n)

    def loss(self, model: nn.Module, batch: Any, micro_index: int) -> torch.Tensor:
        x, y = batch
        z = -y * model(x)
        # the loss scaled by e^{-max z}: the step below depends only on its gradient's direction
        scaled = torch.exp(z - z.detach().max(dim=1, keepdim=True).values).mean(1)
        grads = torch.autograd.grad(scaled.sum(), [model.u, model.v], retain_graph=True)
        norms = torch.sqrt(grads[0] ** 2 + grads[1] ** 2)  # per network: the models share no parameter
        self.record(micro_index, self.log_losses(model).detach().sum())
        return (scaled / norms.detach()).sum()

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.tc.n

    def after_step(self, model: nn.Module, step: int) -> None:
        self.recorder.record(step, u=model.u, v=model.v)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """The toy quasi-homogeneous network's exponential loss, which vanishes (its log is in step_metrics)."""
        with torch.no_grad():
            return {"val_loss": float(self.log_losses(model)[0].exp())}

    def step_metrics(self, model: nn.Module, step: int) -> dict[str, Any]:
        with torch.no_grad():
            return {"log_loss": [float(f"{v:.6g}") for v in self.log_losses(model).tolist()]}

    def finish(self, model: nn.Module, history: list[dict]) -> dict[str, Any]:
        rec = self.recorder
        taken = rec.taken("u") & (rec.steps > 0)
        steps = rec.steps[taken]
        u, v = rec.numpy("u")[taken], rec.numpy("v")[taken]
        powers = np.array([p for _, p in NETWORKS])
        beta = np.stack([u, v**powers], -1)  # (T, K, 2)
        ratio = np.abs(u[:, 0]) / (np.abs(u[:, 0]) + v[:, 0] ** 2)
        target = self.max_margin["toy"] / np.linalg.norm(self.max_margin["toy"])
        cos = beta[:, 1] @ target / np.linalg.norm(beta[:, 1], axis=-1)
        angle = np.arccos(np.clip(cos, -1, 1))
        scores = np.stack([self.data[d][1] * (beta[:, k] @ self.data[d][0].T) for k, (d, _) in enumerate(NETWORKS)], 1)
        margins = scores.min(-1)  # (T, K)
        # past separability in the sense of the max-margin theorems: the exponential loss below 1/n, so that
        # every point is classified with exp(-y f) < 1; before it the direction has no reason to settle
        log_loss = np.log(np.exp(-(scores - margins[..., None])).mean(-1)) - margins
        separated = log_loss < -np.log(self.tc.n)
        qp_ratio = abs(target[0]) / (abs(target[0]) + target[1])  # where the homogeneous model's |u|/(|u| + v) goes
        checks = {
            "quasi_homogeneous_ratio_falls": self.trend_check(
                steps,
                separated[:, 0],
                ratio,
                RATIO_SLOPE,
                "u/(|u| + v^2) of u x1 + v^2 x2 on the toy data",
                homogeneous_ratio={
                    "observed": round(float(abs(u[-1, 1]) / (abs(u[-1, 1]) + v[-1, 1])), 6),
                    "l2_max_margin": round(float(qp_ratio), 6),
                },
            ),
            "homogeneous_to_l2_max_margin": self.trend_check(
                steps,
                separated[:, 1],
                angle,
                ANGLE_SLOPE,
                "angle of (u, v) to the L2 max-margin direction (QP) on the toy data",
                direction=target.round(6).tolist(),
            ),
            "normalized_margin_converges": self.margin_check(steps, separated, scores, beta),
            "quasi_homogeneous_less_robust": self.robustness_check(beta[-1]),
        }
        self.plot(steps, beta, ratio, angle)
        return {
            "prediction": {
                "l2_max_margin": {d: round(1 / float(np.linalg.norm(b)), 6) for d, b in self.max_margin.items()},
                "l2_max_margin_direction": {
                    d: (b / np.linalg.norm(b)).round(6).tolist() for d, b in self.max_margin.items()
                },
            },
            "observed": {
                "final_coefficients": {f"{d}, v^{p}": beta[-1, k].tolist() for k, (d, p) in enumerate(NETWORKS)}
            },
            "checks": checks,
        }

    @staticmethod
    def trend_check(
        steps: np.ndarray, separated: np.ndarray, values: np.ndarray, slope_max: float, what: str, **extra: Any
    ) -> dict[str, Any]:
        """``values`` at log-spaced steps fall from each decade (step 10, 100, ...) to the next once the network
        is past separability (exponential loss < 1/n), and over the last decade, fitted on log-log axes,
        with a slope of at most ``slope_max``. Before separability, and within a decade, the path may turn
        (the direction overshoots the QP's, u crosses zero), so the trend is read over decades. A quantity
        that settles at a positive value (the model keeps x1, or stops short of the QP's direction) flattens
        out and fails the slope; a run with fewer than two decades past separability fails."""
        past = np.nonzero(separated)[0]
        start = steps[past[0]] if len(past) else np.inf
        decades = [i for i, s in enumerate(steps) if s >= max(start, 10) and np.log10(s) % 1 == 0]
        last = steps >= steps[-1] / 10
        if len(decades) < 2 or last.sum() < 3 or not np.all(values[last] > 0):
            reason = "fewer than two decades of steps past separability"
            return check(False, f"{what}: falling over decades", None, reason=reason, separated_at=float(start))
        falls = bool(np.all(np.diff(values[decades]) < 0))
        slope = float(np.polyfit(np.log(steps[last]), np.log(values[last]), 1)[0])
        return check(
            falls and slope <= slope_max,
            f"{what}: falling from decade to decade past separability, log-log slope over the last decade "
            f"<= {slope_max}",
            {"slope": round(slope, 3), "by_decade": {int(steps[i]): float(f"{values[i]:.4g}") for i in decades}},
            separated_at=int(start),
            **extra,
        )

    def margin_limits(self) -> np.ndarray:
        """Per network, the L2 margin its classifier tends to: the QP's max margin for u x1 + v x2 (the
        homogeneous theorem), the margin of e2 = (0, 1), x1 dropped, for u x1 + v^2 x2 (the quasi-homogeneous
        one: the norm constraint falls on the fastest parameter u alone, which goes to 0 relative to v^2)."""
        limits = []
        for d, p in NETWORKS:
            x, y = self.data[d]
            limits.append(l2_margin(np.array([0.0, 1.0]) if p == 2 else self.max_margin[d], x, y))
        return np.array(limits)

    def margin_check(
        self, steps: np.ndarray, separated: np.ndarray, scores: np.ndarray, beta: np.ndarray
    ) -> dict[str, Any]:
        """The theorems' statement about the margin: past separability (exponential loss < 1/n) the normalised
        margin min_i y_i f(x_i) / ||beta|| (scale-free; f = beta . x) converges to the limit of
        ``margin_limits``. Read as in ``trend_check``: its relative distance from the limit falls from each
        decade of steps to the next past separability (within a decade a unit-length step may overshoot: the
        raw margin dips at lr 1, never at 0.1) until both decades are within MARGIN_TOL / 10 (where the
        approach is no longer resolved against the tolerance), and ends within MARGIN_TOL of the limit. Fails
        with fewer than two decades past separability (too few steps, data never separated), or a margin that
        settles elsewhere (weight decay: a finite optimum)."""
        normalized = scores.min(-1) / np.linalg.norm(beta, axis=-1)  # (T, K)
        limits = self.margin_limits()
        names = [f"{d}, v^{p}" for d, p in NETWORKS]
        # a limit <= 0 (e2 does not separate the data: x1 is needed) is a run the statement does not cover
        gap = np.abs(normalized - limits) / np.where(limits > 0, limits, np.nan)
        converges, detail = [], {}
        for k, name in enumerate(names):
            past = np.nonzero(separated[:, k])[0]
            start = steps[past[0]] if len(past) else np.inf
            decades = [i for i, s in enumerate(steps) if s >= max(start, 10) and np.log10(s) % 1 == 0]
            seq = gap[decades, k]
            # falling, or both ends already within a tenth of the tolerance, where the approach is not resolved
            falls = all(b < a or max(a, b) <= MARGIN_TOL / 10 for a, b in zip(seq, seq[1:]))
            ok = len(decades) >= 2 and limits[k] > 0 and falls and bool(gap[-1, k] <= MARGIN_TOL)
            converges.append(bool(ok))
            detail[name] = {
                "separated_at": None if not len(past) else int(start),
                "gap_by_decade": {int(steps[i]): float(f"{gap[i, k]:.4g}") for i in decades},
            }
        return check(
            all(converges),
            {n: round(float(v), 6) for n, v in zip(names, limits)},
            {n: round(float(v), 6) for n, v in zip(names, normalized[-1])},
            claim="past separability the normalised margin's relative distance from its limit falls from decade "
            f"to decade (until within {MARGIN_TOL / 10:g}) and ends <= {MARGIN_TOL}",
            converges=dict(zip(names, converges)),
            by_network=detail,
        )

    def robustness_check(self, beta_end: np.ndarray) -> dict[str, Any]:
        """On the robust data: the quasi-homogeneous classifier's L2 margin (the smallest perturbation that flips
        a training label) is smaller than the homogeneous one's, and each is within MARGIN_TOL of its predicted
        limit: e2's margin min y x2 (x1 dropped) and the QP's 1/||beta*||."""
        x, y = self.data["robust"]
        limits = self.margin_limits()
        predicted = {"v^2": float(limits[2]), "v": float(limits[3])}
        observed = {"v^2": l2_margin(beta_end[2], x, y), "v": l2_margin(beta_end[3], x, y)}
        close = all(abs(observed[k] - predicted[k]) <= MARGIN_TOL * predicted[k] for k in predicted)
        return check(
            close and observed["v^2"] < observed["v"],
            {k: round(val, 6) for k, val in predicted.items()},
            {k: round(val, 6) for k, val in observed.items()},
            robustness_ratio=round(observed["v^2"] / observed["v"], 4),
            tolerance=MARGIN_TOL,
        )

    def plot(self, steps: np.ndarray, beta: np.ndarray, ratio: np.ndarray, angle: np.ndarray) -> None:
        run_dir = self.ctx.run_dir
        ends = np.array([steps[0], steps[-1]])
        margin_curves, margin_limits = [], []
        for k, (d, p) in enumerate(NETWORKS):
            x, y = self.data[d]
            margin_curves.append([l2_margin(b, x, y) for b in beta[:, k]])
            limit = np.array([0.0, 1.0]) if p == 2 else self.max_margin[d]
            margin_limits.append(l2_margin(limit, x, y))
        labels = [f"{d}, v^{p}" for d, p in NETWORKS]
        last = steps >= steps[-1] / 10
        # the rates derived for unit-length steps, through the last point: v ~ k, u ~ log k; angle ~ 1/k
        rate = lambda f, values: f(steps[last]) * values[-1] / f(steps[-1])
        panels = [
            Panel(
                "toy, u x1 + v^2 x2: u/(|u| + v^2) -> 0",
                steps,
                ratio[:, None],
                steps[last],
                rate(lambda k: np.log(k) / k**2, ratio)[:, None],
                "step",
                "u / (|u| + v^2)",
                ["simulation"],
                logx=True,
                logy=True,
                theory_label="rate log k / k^2",
            ),
            Panel(
                "toy, u x1 + v x2: angle to the L2 max-margin direction",
                steps,
                angle[:, None],
                steps[last],
                rate(lambda k: 1 / k, angle)[:, None],
                "step",
                "angle (rad)",
                ["simulation"],
                logx=True,
                logy=True,
                theory_label="rate 1 / k",
            ),
            Panel(
                "L2 margin of the classifier (robustness radius)",
                steps,
                np.array(margin_curves).T,
                ends,
                np.tile(margin_limits, (2, 1)),
                "step",
                "min_i y_i beta.x_i / |beta|",
                labels,
                logx=True,
                theory_label="predicted limits",
            ),
        ]
        plot_panels(run_dir / "quasi_homogeneous.png", panels, "exponential loss, unit-length steps", columns=3)
        x, y = self.data["robust"]
        lines = {
            "u x1 + v^2 x2 (run)": (beta[-1, 2], "-"),
            "u x1 + v x2 (run)": (beta[-1, 3], "-"),
            "L2 max margin (QP)": (self.max_margin["robust"], "--"),
        }
        plot_boundaries(run_dir / "robustness.png", x, y, lines, "robust data: decision boundaries at the end")
