"""Stochastic collapse helps generalization: a student with more neurons than its teacher, trained by SGD
at a large learning rate for T1 steps and then at a small one, collapses onto the teacher's subnetwork
when the large rate is above the collapse threshold, and its test error falls with T1.

    python train.py configs/small_tasks/collapse_generalization.toml

Student: the diagonal linear network f(x) = sum_j u_j v_j x_j (d neurons), teacher: k of them nonzero,
n examples with label noise (small_tasks/sgd/teacher_collapse.py has the theory). One model holds every
setting's replicas: a sweep of the large rate (each for the longest T1) and a sweep of T1 at
``task.large_lr``. The small rate is the optimizer's; each setting's large rate is applied by scaling its
loss by large / small for its first T1 steps, which for plain SGD (no momentum, no weight decay, a
constant schedule: required) is exactly a step at the large rate. The batches of step n are drawn from
(run.seed, n), so a resumed run is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from configs import Config, UserError, at_least, positive, require
from runtime import Context
from small_tasks.sgd import teacher_collapse as theory
from small_tasks.sgd.stochastic_collapse import CLEAR_SE, sweep_check
from small_tasks.toolkit.base import SmallTask, check
from small_tasks.toolkit.plots import finish, plt
from small_tasks.toolkit.records import Recorder, record_steps

DECIDED_SPREADS = 2.0  # an outcome at step T1 is predicted only when log|u| ends this many spreads from log(eps)
INIT_LOG_SD = math.pi / (2 * math.sqrt(2))  # the std of log|z|, z ~ N(0, 1): the spread of log|u| at init
# log|z| for z ~ N(0, 1) has mean -(gamma + log 2) / 2: where log|u_0| starts on average
INIT_LOG_MEAN = -(0.5772156649015329 + math.log(2.0)) / 2
# The drop of the test error with T1 must reach half the drop the theory predicts (least squares on all
# neurons against least squares on the neurons that do not collapse). The small rate's fluctuation adds
# to every surviving neuron's error, so collapse removes more than the least-squares gap; half leaves
# room for the neurons still on their way at the longest T1. A run without noise predicts no drop.
MIN_DROP_FRACTION = 0.5
EXPONENT_TOLERANCE = 0.3  # measured exponent within 30% of the predicted one, plus the fluctuation term
MIN_GAIN_SAMPLES = 10_000
LINEAR_EPS = 1e-3  # a neuron is in the linear region when max(|u|, |v|) < this
CANCEL = 1e-9  # u +- v is read only where it is above CANCEL * max(|u|, |v|) (float64 cancellation)


@dataclass
class CollapseGeneralizationConfig:
    name: str = "collapse_generalization"
    d: int = 16  # student neurons (= inputs)
    k: int = 2  # teacher neurons
    n: int = 1024  # training examples
    teacher: float = 1.0  # beta*_j = teacher * (+1, -1, ...) for j < k
    label_noise: float = 2.0
    batch_size: int = 1  # examples per step, drawn with replacement; >= n: the full batch (no noise)
    init_scale: float = 0.5  # u, v ~ init_scale * N(0, 1)
    collapse_eps: float = 1e-4  # a neuron has collapsed when |u| and |v| are both below this
    large_lr: float = 0.06  # the large rate of the T1 sweep
    # A rate below the collapse of every extra neuron, run for the shortest and the longest T1: how much the
    # test error falls with a longer large phase without collapse (a large rate also shrinks neurons it
    # does not kill), which the T1 sweep's fall must exceed by the collapse's share.
    control_lr: float = 0.01
    t1_sweep: list[int] = field(default_factory=lambda: [0, 500, 1000, 2000, 3500, 5000])
    lr_sweep: list[float] = field(default_factory=lambda: [0.005, 0.01, 0.03, 0.06, 0.08])  # at the longest T1
    replicas: int = 100
    data_seed: int = 0

    def check(self) -> None:
        at_least("task", 1, d=self.d, n=self.n, batch_size=self.batch_size, replicas=self.replicas)
        at_least("task", 0, k=self.k)
        require(self.k < self.d, f"task.k = {self.k} must be below task.d = {self.d}; the student needs extra neurons")
        positive("task", init_scale=self.init_scale, collapse_eps=self.collapse_eps, large_lr=self.large_lr)
        positive("task", control_lr=self.control_lr)
        positive("task", label_noise=self.label_noise, teacher=self.teacher)
        require(len(self.t1_sweep) >= 2, "task.t1_sweep needs at least two lengths; give e.g. [0, 5000]")
        for t1 in self.t1_sweep:
            at_least("task", 0, t1_sweep=t1)
        require(bool(self.lr_sweep), "task.lr_sweep is empty; give at least one large rate")
        for lr in self.lr_sweep:
            positive("task", lr_sweep=lr)


class TwoLayer(nn.Module):
    """u, v of shape (settings, replicas, d)."""

    def __init__(self, u: torch.Tensor, v: torch.Tensor):
        super().__init__()
        self.u, self.v = nn.Parameter(u), nn.Parameter(v)


class CollapseGeneralizationTask(SmallTask):
    """Settings: the lr sweep (each large rate for max(t1_sweep) steps), then the T1 sweep at task.large_lr."""

    config_class = CollapseGeneralizationConfig
    data_seed_key = "data_seed"
    recorded = ("trace", "records", "switch", "gain")

    def __init__(self, cfg: Config, ctx: Context):
        super().__init__(cfg, ctx)
        tc, opt = self.tc, self.optim_options
        if cfg.optim.name != "sgdm" or opt.momentum or opt.weight_decay or cfg.optim.schedule != "constant":
            raise UserError(
                "collapse_generalization applies each setting's large rate by scaling its loss, exact only for "
                "plain SGD; set optim.name = sgdm, momentum = 0, weight_decay = 0, schedule = constant"
            )
        if cfg.optim.warmup_steps or cfg.optim.grad_clip:
            raise UserError("collapse_generalization needs plain SGD steps; set optim.warmup_steps = 0, grad_clip = 0")
        self.t1_max = max(tc.t1_sweep)
        if cfg.train.max_steps <= self.t1_max:
            raise UserError(
                f"train.max_steps = {cfg.train.max_steps} leaves no small-rate phase after T1 = {self.t1_max}; "
                f"set it above {self.t1_max}"
            )
        self.small = opt.lr
        # settings: the lr sweep, the T1 sweep, the control at the shortest and the longest T1
        self.large = [*tc.lr_sweep, *[tc.large_lr] * len(tc.t1_sweep), tc.control_lr, tc.control_lr]
        self.t1 = [self.t1_max] * len(tc.lr_sweep) + list(tc.t1_sweep) + [min(tc.t1_sweep), self.t1_max]
        self.data = theory.make_data(tc.d, tc.k, tc.n, tc.teacher, tc.label_noise, tc.data_seed)
        self.x = torch.as_tensor(self.data.x, device=ctx.device)
        self.y = torch.as_tensor(self.data.y, device=ctx.device)
        self.beta_star = torch.as_tensor(self.data.teacher, device=ctx.device)
        shape = (len(self.large), tc.replicas, tc.d)
        # boost[s, n]: the loss factor of setting s at step n (large / small during its first T1 steps)
        steps = torch.arange(cfg.train.max_steps, device=ctx.device)
        t1 = torch.tensor(self.t1, device=ctx.device)[:, None]
        ratio = torch.tensor(self.large, dtype=torch.float64, device=ctx.device)[:, None] / self.small
        self.boost = torch.where(steps < t1, ratio, torch.ones_like(ratio))
        self.records = Recorder(record_steps(cfg.train.max_steps, 40), ctx.device)
        self.switch = torch.full(shape, float("nan"), dtype=torch.float64, device=ctx.device)  # max(|u|,|v|) at T1
        # per setting, branch (u+, u-) and neuron: sum, sum of squares, count of linear-region log gains
        self.gain = torch.zeros(3, len(self.large), 2, tc.d, dtype=torch.float64, device=ctx.device)

    def build_model(self) -> nn.Module:
        tc = self.tc
        gen = torch.Generator().manual_seed(self.cfg.run.seed)
        shape = (len(self.large), tc.replicas, tc.d)
        u = tc.init_scale * torch.randn(shape, generator=gen, dtype=torch.float64)
        v = tc.init_scale * torch.randn(shape, generator=gen, dtype=torch.float64)
        self.model = TwoLayer(u.to(self.ctx.device), v.to(self.ctx.device))
        self.after_step(self.model, 0)
        return self.model

    def batch(self, micro_index: int) -> torch.Tensor | None:
        tc = self.tc
        if tc.batch_size >= tc.n:
            return None
        rng = np.random.default_rng([self.cfg.run.seed, micro_index])
        idx = rng.integers(0, tc.n, size=(len(self.large), tc.replicas, tc.batch_size))
        return torch.as_tensor(idx, device=self.ctx.device)

    def loss(self, model: nn.Module, batch: Any, micro_index: int) -> torch.Tensor:
        m = self.model
        self.before = (m.u.detach().clone(), m.v.detach().clone())
        beta = m.u * m.v  # (S, R, d)
        if batch is None:
            r = beta @ self.x.T - self.y  # (S, R, n)
        else:
            x = self.x[batch]  # (S, R, B, d)
            r = (beta[:, :, None, :] * x).sum(-1) - self.y[batch]
        per = 0.5 * r.square().mean(-1)  # (S, R)
        boost = self.boost[:, min(micro_index, self.boost.shape[1] - 1)]
        loss = (per * boost[:, None]).sum()
        self.record(micro_index, per.detach().mean())
        return loss

    @property
    def tokens_per_micro_batch(self) -> int:
        return len(self.large) * self.tc.replicas * min(self.tc.batch_size, self.tc.n)

    def excess(self) -> torch.Tensor:
        """|beta - beta*|^2 per replica: the expected test error on fresh inputs minus the label noise."""
        with torch.no_grad():
            return (self.model.u * self.model.v - self.beta_star).square().sum(-1)

    def collapsed(self, size: torch.Tensor) -> torch.Tensor:
        return size < self.tc.collapse_eps

    def after_step(self, model: nn.Module, step: int) -> None:
        """The state at each setting's switch, the linear-region log gains of the large phase, the records."""
        with torch.no_grad():
            u, v = self.model.u, self.model.v
            size = torch.maximum(u.abs(), v.abs())
            for s, t1 in enumerate(self.t1):
                if t1 == step:
                    self.switch[s] = size[s]
            if step > 0:
                u0, v0 = self.before
                big0 = torch.maximum(u0.abs(), v0.abs())
                large = torch.tensor([step <= t1 for t1 in self.t1], device=u.device)[:, None, None]
                for b, (a0, a1) in enumerate(((u0 + v0, u + v), (u0 - v0, u - v))):
                    near = large & (big0 < LINEAR_EPS) & (a0.abs() > CANCEL * big0) & (a1.abs() > CANCEL * size)
                    g = torch.where(near, torch.log(a1.abs() / torch.where(near, a0.abs(), 1.0)), 0.0)
                    self.gain[:, :, b] += torch.stack([g.sum(1), g.square().sum(1), near.sum(1).double()])
            frac = self.collapsed(size[..., self.tc.k :]).double().mean((1, 2))
            self.records.record(step, excess=self.excess().mean(1), collapsed=frac)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {"val_loss": float(self.excess().mean())}

    # ---- the analysis ----

    def measured_exponents(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean log gain, its standard error, samples) per setting, branch and neuron. The standard error
        treats the log gains as independent, which they are not quite: the fit's fluctuation, which enters
        the gain, is correlated over steps; the check uses a relative tolerance instead."""
        s, q, n = self.gain.cpu().numpy()
        mean = s / np.maximum(n, 1)
        se = np.sqrt(np.maximum(q / np.maximum(n, 1) - mean**2, 0.0) / np.maximum(n, 1))
        return mean, se, n

    def predictions(self) -> dict[str, Any]:
        """Everything the checks compare with, from the data and the hyperparameters alone."""
        tc, data = self.tc, self.data
        lrs = sorted(set(self.large))
        exps = {lr: theory.exponents(data, lr, tc.batch_size) for lr in lrs}
        bare = {lr: theory.exponents(data, lr, tc.batch_size, fluctuation=False) for lr in tc.lr_sweep}
        spreads = {lr: theory.step_spread(data, lr, tc.batch_size) for lr in lrs}
        full = theory.least_squares(data, np.arange(tc.d))
        on_teacher = theory.least_squares(data, data.support)
        return {
            "exponents": exps,
            "bare_exponents": bare,
            "spreads": spreads,
            "error_least_squares_all": float(theory.excess_error(full, data.teacher)),
            "error_least_squares_teacher": float(theory.excess_error(on_teacher, data.teacher)),
        }

    def outcome(self, lr: float, t1: int, pred: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Per neuron at step t1 of the large rate lr: (the expected log(max(|u|, |v|) / eps), decided); the
        neuron is predicted to have collapsed where the first is negative. log max(|u|, |v|)
        starts near log(init_scale) + INIT_LOG_MEAN and drifts by lambda per step; an outcome is decided
        when the expected end lies DECIDED_SPREADS spreads (diffusion plus the spread at init) from log(eps)."""
        lam = np.maximum(*pred["exponents"][lr])
        end = math.log(self.tc.init_scale) + INIT_LOG_MEAN + lam * t1
        spread = np.sqrt(np.square(pred["spreads"][lr]) * t1 + INIT_LOG_SD**2)
        gap = end - math.log(self.tc.collapse_eps)
        return gap, np.abs(gap) >= DECIDED_SPREADS * spread

    def finish(self, model: nn.Module, history: list[dict]) -> dict[str, Any]:
        tc = self.tc
        pred = self.predictions()
        at_switch = self.collapsed(self.switch).double().cpu().numpy()  # (S, R, d)
        excess = self.excess().cpu().numpy()  # (S, R)
        ns, nt = len(tc.lr_sweep), len(tc.t1_sweep)
        sweep = slice(ns, ns + nt)
        checks = {
            "collapse_threshold": self.threshold_check(at_switch[:ns], pred),
            "test_error_falls_with_t1": self.drop_check(excess[sweep], at_switch[sweep], pred, excess[ns + nt :]),
            "collapse_exponent": self.exponent_check(pred),
        }
        grid = np.geomspace(min(self.large) / 4, max(self.large), 10)
        threshold = theory.thresholds(self.data, tc.batch_size, grid)
        self.plot(excess, at_switch, pred, threshold)
        return {
            "prediction": {
                "threshold_lr_per_neuron": [None if np.isnan(t) else round(float(t), 5) for t in threshold],
                "error_least_squares_all": pred["error_least_squares_all"],
                "error_least_squares_teacher": pred["error_least_squares_teacher"],
            },
            "observed": {
                "collapsed_fraction_lr_sweep": at_switch[:ns, :, tc.k :].mean((1, 2)).round(4).tolist(),
                "collapsed_fraction_t1_sweep": at_switch[sweep, :, tc.k :].mean((1, 2)).round(4).tolist(),
                "test_error_t1_sweep": excess[sweep].mean(1).round(5).tolist(),
                "control_collapsed_fraction": at_switch[ns + nt :, :, tc.k :].mean((1, 2)).round(4).tolist(),
                "control_test_error": excess[ns + nt :].mean(1).round(5).tolist(),
            },
            "checks": checks,
        }

    def threshold_check(self, at_switch: np.ndarray, pred: dict[str, Any]) -> dict[str, Any]:
        """(a) Every neuron at every large rate of the lr sweep, at the end of its large phase: collapsed in
        most replicas iff both its exponents are negative (the teacher's neurons included, which must not
        collapse), each outcome decided by the drift (``outcome``) and clearly (more than CLEAR_SE binomial
        standard errors from 1/2), with outcomes of both kinds. A sweep below the threshold only, a run
        too short for the drift, or a full batch (nothing collapses) fails."""
        tc = self.tc
        labels, fractions, gaps, decided = [], [], [], []
        for s, lr in enumerate(tc.lr_sweep):
            gap, sure = self.outcome(lr, self.t1_max, pred)
            for j in range(tc.d):
                labels.append(f"lr={lr:g} neuron={j}")
                fractions.append(float(at_switch[s, :, j].mean()))
                gaps.append(float(gap[j]))  # sweep_check predicts collapse where this is negative
                decided.append(bool(sure[j]))
        result = sweep_check(labels, np.array(fractions), gaps, tc.replicas, decided)
        result["expected"] = [f"{x}: {p}" for x, p in zip(result.pop("values"), result["expected"])]
        result["predicted_log_distance_to_eps"] = result.pop("exponents")  # what sweep_check read the side from
        result["notes"] = self.notes()
        return result

    def drop_check(
        self, excess: np.ndarray, at_switch: np.ndarray, pred: dict[str, Any], control: np.ndarray
    ) -> dict[str, Any]:
        """(b) The T1 sweep at task.large_lr: the fall of the mean test error from the shortest to the
        longest T1, minus the fall of the control (``control``: task.control_lr at those two T1, where no
        neuron is predicted to collapse), is at least MIN_DROP_FRACTION of the predicted drop and more than
        CLEAR_SE standard errors, and no longer T1 raises the sweep's error by more than CLEAR_SE standard
        errors. The predicted drop: least squares on every neuron minus least squares on the teacher's
        neurons and the ones predicted not to collapse by the longest T1; where nothing is predicted to
        collapse (a rate below the threshold, the full batch) there is no drop to find, and the check
        fails; so it does where the control is predicted to collapse a neuron (it would not be a control)."""
        tc = self.tc
        gap, sure = self.outcome(tc.large_lr, self.t1_max, pred)
        off = np.arange(tc.k, tc.d)
        gone = off[(gap[off] < 0) & sure[off]]
        control_gap, _ = self.outcome(tc.control_lr, self.t1_max, pred)
        control_collapses = off[control_gap[off] < 0].tolist()  # expected below eps, decided or not
        keep = np.setdiff1d(np.arange(tc.d), gone)
        kept_fit = theory.least_squares(self.data, keep)
        predicted_drop = pred["error_least_squares_all"] - float(theory.excess_error(kept_fit, self.data.teacher))
        order = np.argsort(tc.t1_sweep)
        means = excess.mean(1)[order]
        ses = excess.std(1, ddof=1)[order] / math.sqrt(tc.replicas)
        control_means = control.mean(1)
        control_ses = control.std(1, ddof=1) / math.sqrt(control.shape[1])
        control_drop = float(control_means[0] - control_means[-1])
        drop = float(means[0] - means[-1]) - control_drop
        drop_se = float(math.hypot(ses[0], ses[-1], *control_ses))
        rises = [float(means[i + 1] - means[i]) for i in range(len(means) - 1)]
        flat = all(r <= CLEAR_SE * math.hypot(ses[i], ses[i + 1]) for i, r in enumerate(rises))
        wanted = MIN_DROP_FRACTION * predicted_drop
        passed = len(gone) > 0 and predicted_drop > 0 and drop >= wanted and drop > CLEAR_SE * drop_se and flat
        passed = passed and not control_collapses
        notes = self.notes()
        if not len(gone):
            notes.append(f"no neuron is predicted to collapse at lr {tc.large_lr:g} by T1 = {self.t1_max}")
        if control_collapses:
            notes.append(f"task.control_lr = {tc.control_lr:g} is predicted to collapse neurons {control_collapses}")
        return check(
            passed,
            f"drop beyond the control's >= {MIN_DROP_FRACTION:g} x predicted {predicted_drop:.4g} and > {CLEAR_SE:g} "
            "SE, never rising",
            round(drop, 5),
            standard_error=round(drop_se, 5),
            control_drop=round(control_drop, 5),
            control_test_error=control_means.round(5).tolist(),
            test_error_by_t1={int(tc.t1_sweep[i]): round(float(m), 5) for i, m in zip(order, means)},
            predicted_collapsed=gone.tolist(),
            collapsed_fraction_by_t1=at_switch[order][:, :, tc.k :].mean((1, 2)).round(4).tolist(),
            never_rising=flat,
            notes=notes,
        )

    def exponent_check(self, pred: dict[str, Any]) -> dict[str, Any]:
        """(c) The growth rate of log|u +- v| of every neuron measured near its invariant set (max(|u|, |v|)
        < LINEAR_EPS) during the large phase, against the predicted exponent lambda, at every (rate, neuron,
        branch) with MIN_GAIN_SAMPLES samples whose drift |lambda| T1 beats DECIDED_SPREADS diffusion spreads
        (nearer 0 the fit's slow fluctuation biases the few neurons that linger there): within
        EXPONENT_TOLERANCE |lambda| plus the size of the fit's fluctuation term |lambda - lambda_0| (lambda_0:
        the exponent without it), the part of the theory that is approximate (a Gaussian of the stationary
        covariance of balanced neurons); of lambda's sign
        where |lambda| exceeds that tolerance; at least one measured point. A batch size other than the
        predicted one (B = 4: a quarter of the noise, the exponents turn positive), or a run too short to
        reach the linear region, fails."""
        tc = self.tc
        mean, se, n = self.measured_exponents()
        rows, unresolved = [], []
        for s, lr in enumerate(tc.lr_sweep):
            spread = pred["spreads"][lr]
            for b in range(2):
                lam, lam0 = pred["exponents"][lr][b], pred["bare_exponents"][lr][b]
                for j in range(tc.d):
                    if n[s, b, j] < MIN_GAIN_SAMPLES:
                        continue
                    if abs(lam[j]) * self.t1_max < DECIDED_SPREADS * spread[j] * math.sqrt(self.t1_max):
                        unresolved.append(f"lr={lr:g} neuron={j} {'+-'[b]}")  # too near 0 to matter by T1
                    else:
                        tol = EXPONENT_TOLERANCE * abs(lam[j]) + abs(lam[j] - lam0[j])
                        rows.append((lr, j, b, float(lam[j]), float(mean[s, b, j]), float(tol)))
        bad = [r for r in rows if abs(r[4] - r[3]) > r[5] or (abs(r[3]) > r[5] and np.sign(r[4]) != np.sign(r[3]))]
        worst = max((abs(r[4] - r[3]) / r[5] for r in rows), default=float("inf"))
        return check(
            bool(rows) and not bad,
            f"|measured - lambda| <= {EXPONENT_TOLERANCE:g} |lambda| + |lambda - lambda_0|, lambda's sign beyond it",
            {"points": len(rows), "worst_deviation_over_tolerance": round(worst, 4)},
            failing=[f"lr={r[0]:g} neuron={r[1]} {'+-'[r[2]]}: {r[3]:.4g} vs {r[4]:.4g}" for r in bad][:10],
            unresolved_by_t1=unresolved,
            notes=self.notes(),
        )

    def notes(self) -> list[str]:
        tc = self.tc
        if tc.batch_size >= tc.n:
            return ["full batch: no noise, the theory predicts no collapse"]
        return []

    def plot(self, excess: np.ndarray, at_switch: np.ndarray, pred: dict[str, Any], threshold: np.ndarray) -> None:
        tc = self.tc
        ns = len(tc.lr_sweep)
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
        t1 = np.asarray(tc.t1_sweep)
        order = np.argsort(t1)
        err = excess[ns:].mean(1)[order]
        se = excess[ns:].std(1, ddof=1)[order] / math.sqrt(tc.replicas)
        left.errorbar(t1[order], err, yerr=se, fmt="o-", color="k", ms=4, label="test error (excess)")
        left.axhline(pred["error_least_squares_all"], color="tab:blue", ls="--", label="least squares, all neurons")
        left.axhline(pred["error_least_squares_teacher"], color="tab:green", ls="--", label="least squares, teacher's")
        left.set_xlabel(f"T1 (steps at lr {tc.large_lr:g}, then lr {self.small:g})")
        left.set_ylabel("|beta - beta*|^2")
        twin = left.twinx()
        frac = at_switch[ns:, :, tc.k :].mean((1, 2))[order]
        twin.plot(t1[order], frac, "s:", color="tab:red", ms=4, label="collapsed fraction at T1")
        twin.set_ylabel("fraction of extra neurons collapsed", color="tab:red")
        twin.set_ylim(-0.02, 1.02)
        # when the median extra neuron with a negative exponent is predicted to reach eps at the large rate
        lam = np.maximum(*pred["exponents"][tc.large_lr])[tc.k :]
        start = math.log(tc.init_scale) + INIT_LOG_MEAN - math.log(tc.collapse_eps)
        if np.any(lam < 0):
            crossing = float(np.median(start / -lam[lam < 0]))
            label = f"predicted collapse (median neuron): {crossing:.0f}"
            left.axvline(crossing, color="tab:red", ls="--", lw=0.9, label=label)
        left.legend(fontsize=7, loc="center right")
        left.set_title(f"d={tc.d} student, k={tc.k} teacher, n={tc.n}, B={tc.batch_size}", fontsize=9)
        lrs = np.asarray(tc.lr_sweep)
        observed = at_switch[:ns, :, tc.k :].mean((1, 2))
        predicted = [float(np.mean(np.maximum(*pred["exponents"][lr])[tc.k :] < 0)) for lr in tc.lr_sweep]
        right.plot(lrs, observed, "o-", color="k", ms=4, label=f"collapsed at T1 = {self.t1_max}")
        right.plot(lrs, predicted, "x--", color="tab:red", label="fraction with negative exponent")
        finite = threshold[tc.k :][np.isfinite(threshold[tc.k :])]
        if len(finite):
            right.axvspan(finite.min(), finite.max(), color="tab:red", alpha=0.1, label="extra neurons' thresholds")
        right.axvline(tc.large_lr, color="tab:blue", ls=":", label=f"T1 sweep's rate {tc.large_lr:g}")
        right.set_xscale("log")
        right.set_xticks(lrs, [f"{lr:g}" for lr in lrs])
        right.xaxis.set_minor_formatter(plt.NullFormatter())
        right.set_xlabel("large learning rate")
        right.set_ylabel("fraction of extra neurons collapsed")
        right.legend(fontsize=7)
        finish(fig, self.ctx.run_dir / "collapse_generalization.png", dpi=100)
