"""Stochastic collapse as Tasks: ensembles of independent SGD trajectories, one model holding all the
replicas of every setting of a sweep (their losses summed, so each replica gets its own gradient),
against the Lyapunov exponents of small_tasks/sgd/collapse.py.

    python train.py configs/small_tasks/stochastic_collapse.toml          # quartic well, sweep of zeta
    python train.py configs/small_tasks/stochastic_collapse_neuron.toml   # single neuron, zeta and lr

The noise of step n is drawn from a generator seeded by (run.seed, n), so a resumed run is exact.
A trajectory has collapsed when its |theta| (the neuron's |(w1, w2)|) is below ``task.collapse_eps``
at the end of the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

import optim
from configs import Config, at_least, non_negative, positive, require
from runtime import Context
from small_tasks.sgd import collapse
from small_tasks.toolkit.base import SmallTask, check
from small_tasks.toolkit.plots import finish, plt
from small_tasks.toolkit.records import sgd_settings

KS_LEVEL = 0.01  # the stationary histogram fits the density when the KS distance is below its 1% critical value
CLEAR_SE = 3.0  # a sweep point is on a side of 1/2 only when it is this many binomial standard errors away
# A point's outcome by step T is decided by the drift of log|theta| only when the drift |lambda| T beats this
# many diffusion spreads sqrt(lr zeta^2 T); nearer the threshold only the measured exponent can tell
DECISIVE_SPREADS = 2.0
EXPONENT_LEVEL = 0.01  # measured against predicted exponents: family-wise false-alarm level of the z-scores
MIN_GAIN_SAMPLES = 10_000  # replica-steps near 0 that make a point's exponent measurable
LINEAR_EPS = 1e-4  # |theta| below this is linear: the cubic term changes the gain by lr theta^2 <= 1e-8 lr


@dataclass
class QuarticConfig:
    name: str = "stochastic_collapse"
    mu: float = 1.5
    zeta: float = 1.0  # the noise whose stationary histogram is checked against the density
    sweep: list[float] = field(default_factory=lambda: [0.8, 1.0, 1.3, 1.5, 1.6, 1.85, 2.0, 2.3])
    replicas: int = 2000  # trajectories per noise level
    collapse_eps: float = 1e-10
    data_seed: int = 0  # seeds the starting points, |theta_0| ~ U(0.5, 1.5)

    def check(self) -> None:
        check_ensemble(self)


@dataclass
class NeuronConfig:
    name: str = "stochastic_collapse_neuron"
    m: int = 32  # data points
    teacher: float = 1.0  # y = teacher * x + label_noise * N(0, 1)
    label_noise: float = 0.1
    zeta: float = 5.0  # SGD noise of the learning-rate sweep (label noise sqrt(m) zeta, fresh each step)
    sweep: list[float] = field(default_factory=lambda: [2.0, 3.0, 3.5, 5.0, 6.0, 8.0])  # zeta at optim's lr
    lr_sweep: list[float] = field(default_factory=lambda: [0.02, 0.035, 0.05, 0.1, 0.13, 0.18])  # lr at task.zeta
    replicas: int = 400
    init_scale: float = 1e-3  # w1, w2 ~ init_scale * N(0, 1): starting next to the dead neuron
    collapse_eps: float = 1e-8
    data_seed: int = 0

    def check(self) -> None:
        check_ensemble(self)
        at_least("task", 1, m=self.m)
        positive("task", init_scale=self.init_scale)
        for lr in self.lr_sweep:
            positive("task", lr_sweep=lr)


def check_ensemble(tc: QuarticConfig | NeuronConfig) -> None:
    at_least("task", 1, replicas=tc.replicas)
    positive("task", collapse_eps=tc.collapse_eps)
    require(bool(tc.sweep), "task.sweep is empty; give at least one noise level")
    for zeta in tc.sweep:  # each a noise level zeta: the message names the key that holds it
        non_negative("task", sweep=zeta)
    non_negative("task", zeta=tc.zeta)


def decisive(exponent: float, spread: float, steps: int) -> bool:
    """Whether the drift of log|theta| over ``steps`` (exponent * steps) beats DECISIVE_SPREADS diffusion
    spreads sqrt(spread^2 steps), spread^2 the per-step variance of log|1 + c|: only then does the
    fraction below collapse_eps at the end say which side of the threshold a point is on."""
    return abs(exponent) * steps >= DECISIVE_SPREADS * spread * math.sqrt(steps)


def sweep_check(
    values: list[float], fractions: np.ndarray, exponents: list[float], replicas: int, decided: list[bool] | None = None
) -> dict[str, Any]:
    """Each decided point (``decided``, default all) must collapse (fraction > 1/2) where the exponent is
    negative and survive where it is positive, each clearly (by more than CLEAR_SE binomial standard
    errors), and the decided points must lie on both sides: a sweep that does not bracket the threshold,
    a wrong threshold, too few replicas or too short a run (trajectories still on their way) fail. Points
    too near the threshold to be decided by step T are left to ``exponent_check``."""
    decided = [True] * len(values) if decided is None else list(decided)
    keep = np.nonzero(decided)[0]
    se = math.sqrt(0.25 / replicas)
    predicted = ["collapse" if exponents[i] < 0 else "survive" for i in keep]
    observed = ["collapse" if fractions[i] > 0.5 else "survive" for i in keep]
    clear = bool(np.all(np.abs(np.asarray(fractions)[keep] - 0.5) > CLEAR_SE * se))
    both = len(set(predicted)) == 2
    return check(
        both and clear and predicted == observed,
        predicted,
        [round(float(fractions[i]), 4) for i in keep],
        values=[values[i] for i in keep],
        undecided_by_the_last_step=[values[i] for i in range(len(values)) if not decided[i]],
        exponents=[float(f"{e:.4g}") for e in exponents],
        standard_error=round(se, 4),
        brackets_threshold=both,
        clear=clear,
    )


def exponent_check(
    values: list[float], predicted: list[float], measured: np.ndarray, se: np.ndarray, samples: np.ndarray
) -> dict[str, Any]:
    """The measured exponent (the mean per-step log|theta_{n+1} / theta_n| of the replica-steps with
    |theta_n| < LINEAR_EPS) against the predicted one, at every point with MIN_GAIN_SAMPLES samples:
    within the Bonferroni bound of EXPONENT_LEVEL in standard errors (the increments are martingale
    differences, so the standard error is the sample std / sqrt(samples) however long a replica stays),
    and of the predicted sign by more than CLEAR_SE standard errors, with measured points on both sides
    of zero. A wrong exponent (the continuous lr (mu - zeta^2 / 2) between the continuous threshold and
    the discrete one, where the two differ in sign), momentum, or points too near zero to resolve fail."""
    keep = np.nonzero(np.asarray(samples) >= MIN_GAIN_SAMPLES)[0]
    pred, meas, err = np.asarray(predicted)[keep], np.asarray(measured)[keep], np.asarray(se)[keep]
    z = np.abs(meas - pred) / err if len(keep) else np.array([np.inf])
    tail = torch.tensor(1.0 - EXPONENT_LEVEL / (2 * max(len(keep), 1)), dtype=torch.float64)
    z_max = float(torch.special.ndtri(tail))
    signed = bool(len(keep)) and bool(np.all((np.sign(meas) == np.sign(pred)) & (np.abs(meas) > CLEAR_SE * err)))
    both = len(set(np.sign(pred).tolist())) == 2
    return check(
        bool(both and signed and np.max(z) <= z_max),
        {"exponents": [float(f"{e:.4g}") for e in pred], "z_max": round(z_max, 3), "sign_by_se": CLEAR_SE},
        [float(f"{e:.4g}") for e in meas],
        values=[values[i] for i in keep],
        standard_errors=[float(f"{e:.2g}") for e in err],
        max_z=round(float(np.max(z)), 3),
        sign_resolved=signed,
        both_signs=both,
        unmeasured=[values[i] for i in range(len(values)) if i not in set(keep.tolist())],
    )


class Replicas(nn.Module):
    """One parameter per setting of a sweep, so that each setting can have its own learning rate."""

    def __init__(self, starts: list[torch.Tensor]):
        super().__init__()
        self.settings = nn.ParameterList(nn.Parameter(s) for s in starts)
        # per setting: sum, sum of squares and count of log|theta_{n+1} / theta_n| where |theta_n| < LINEAR_EPS
        self.register_buffer("gain", torch.zeros(3, len(starts), dtype=torch.float64))

    def stacked(self) -> torch.Tensor:
        return torch.stack(list(self.settings))


class CollapseTask(SmallTask):
    """What both setups share: the noise stream, the ensemble and the plain-SGD notes."""

    data_seed_key = "data_seed"

    def __init__(self, cfg: Config, ctx: Context):
        super().__init__(cfg, ctx)
        self.lr = self.optim_options.lr

    def param_groups(self, model: nn.Module) -> list[dict]:
        """One group per setting, at its learning rate (``self.lrs``), with the weight decay that
        ``optim.decay`` gives the replicas' tensors (the same for all: they have one shape)."""
        decay = {id(p): g["weight_decay"] for g in optim.param_groups(model, self.cfg.optim) for p in g["params"]}
        params = list(self.model.settings)
        self.wd = float(decay[id(params[0])])
        return [{"params": [p], "lr": lr, "weight_decay": decay[id(p)]} for p, lr in zip(params, self.lrs)]

    def noise(self, micro_index: int, shape: tuple[int, ...]) -> torch.Tensor:
        rng = np.random.default_rng([self.cfg.run.seed, micro_index])
        return torch.as_tensor(rng.standard_normal(shape), device=self.ctx.device)

    def notes(self) -> list[str]:
        """Where the run leaves the setting the exponents are derived for (plain SGD at a constant lr)."""
        sgd = sgd_settings(self.cfg, self.optim_options, 1)
        notes = list(sgd.notes)
        if sgd.momentum > 0:
            notes.append("the exponents are derived for plain SGD; momentum accumulates the noise")
        if self.cfg.optim.schedule != "constant" or self.cfg.optim.warmup_steps:
            notes.append("the noise is scaled for the base learning rate; use a constant schedule")
        return notes

    def final(self) -> np.ndarray:
        with torch.no_grad():
            return self.model.stacked().double().cpu().numpy()


class StochasticCollapseTask(CollapseTask):
    """Quartic well theta <- theta + lr (mu theta - theta^3) + sqrt(lr) zeta theta xi: plain SGD on
    -mu theta^2/2 + theta^4/4 - (zeta / sqrt(lr)) xi theta^2 / 2, one row of replicas per noise level
    (the sweep's, then task.zeta's)."""

    config_class = QuarticConfig

    def __init__(self, cfg: Config, ctx: Context):
        super().__init__(cfg, ctx)
        self.zetas = [*self.tc.sweep, self.tc.zeta]
        self.zeta_rows = torch.tensor(self.zetas, dtype=torch.float64, device=ctx.device)[:, None]
        self.lrs = [self.lr] * len(self.zetas)

    def build_model(self) -> nn.Module:
        rng = np.random.default_rng(self.tc.data_seed)
        starts = [torch.as_tensor(rng.uniform(0.5, 1.5, self.tc.replicas)) for _ in self.zetas]
        self.model = Replicas(starts)
        return self.model

    def batch(self, micro_index: int) -> torch.Tensor:
        return self.noise(micro_index, (len(self.zetas), self.tc.replicas))

    def loss(self, model: nn.Module, batch: Any, micro_index: int) -> torch.Tensor:
        theta = self.model.stacked()
        self.before = theta.detach().clone()
        sq = theta.square()
        noise = self.zeta_rows / math.sqrt(self.lr) * batch
        return (-0.5 * self.tc.mu * sq + 0.25 * sq.square() - 0.5 * noise * sq).sum()

    @property
    def tokens_per_micro_batch(self) -> int:
        return len(self.zetas) * self.tc.replicas

    def after_step(self, model: nn.Module, step: int) -> None:
        """Accumulate the per-step log gain of the replicas in the linear region (the exponent's estimate)."""
        with torch.no_grad():
            old, new = self.before.abs(), self.model.stacked().abs()
            near = (old < LINEAR_EPS) & (old > 1e-280) & (new > 0)
            g = torch.where(near, torch.log(new / torch.where(near, old, 1.0)), 0.0)
            self.model.gain += torch.stack([g.sum(1), g.square().sum(1), near.sum(1).double()])

    def measured_exponents(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean log gain, its standard error, samples) per setting, from the linear region."""
        s, q, n = self.model.gain.cpu().numpy()
        mean = s / np.maximum(n, 1)
        se = np.sqrt(np.maximum(q / np.maximum(n, 1) - mean**2, 0.0) / np.maximum(n, 1))
        return mean, se, n

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """The noise-free loss -mu theta^2/2 + theta^4/4, averaged over all replicas."""
        with torch.no_grad():
            sq = self.model.stacked().square()
            return {"val_loss": float((-0.5 * self.tc.mu * sq + 0.25 * sq.square()).mean())}

    def finish(self, model: nn.Module, history: list[dict]) -> dict[str, Any]:
        tc, lr, wd = self.tc, self.lr, self.wd
        theta = np.abs(self.final())
        fractions = (theta < tc.collapse_eps).mean(axis=1)
        threshold = collapse.quartic_threshold(lr, tc.mu, wd)
        exponents = [collapse.quartic_lyapunov(lr, tc.mu, z, wd) for z in tc.sweep]
        steps = self.cfg.train.max_steps
        decided = [decisive(e, math.sqrt(lr) * z, steps) for e, z in zip(exponents, tc.sweep)]
        notes = self.notes()
        extra = {"notes": notes} if notes else {}
        sweep = sweep_check(tc.sweep, fractions[:-1], exponents, tc.replicas, decided)
        measured, se, samples = self.measured_exponents()
        k = len(tc.sweep)
        checks = {
            "collapse_threshold": {**sweep, **extra},
            "collapse_exponent": {**exponent_check(tc.sweep, exponents, measured[:k], se[:k], samples[:k]), **extra},
        }
        z_exp = collapse.quartic_lyapunov(lr, tc.mu, tc.zeta, wd)
        if z_exp > 0 and collapse.quartic_shape(tc.mu, tc.zeta, wd) > 0:
            d = collapse.ks_statistic(theta[-1], lambda x: collapse.quartic_cdf(x, tc.mu, tc.zeta, wd))
            crit = collapse.ks_critical(tc.replicas, KS_LEVEL)
            checks["stationary_density"] = check(
                d <= crit,
                f"KS distance <= {crit:.4f} (its {KS_LEVEL:g} critical value for {tc.replicas} samples)",
                round(d, 5),
                zeta=tc.zeta,
                gamma_shape=collapse.quartic_shape(tc.mu, tc.zeta, wd),
                **extra,
            )
        else:  # no stationary density: the theory predicts that this noise level collapses
            se = math.sqrt(0.25 / tc.replicas)
            checks["collapses_at_zeta"] = check(
                bool(fractions[-1] > 0.5 + CLEAR_SE * se),
                f"collapse: fraction > 1/2 + {CLEAR_SE:g} standard errors",
                round(float(fractions[-1]), 4),
                zeta=tc.zeta,
                exponent=z_exp,
                **extra,
            )
        self.plot(fractions[:-1], threshold, theta[-1])
        return {
            "prediction": {
                "threshold": threshold,
                "threshold_continuous": collapse.quartic_threshold_continuous(tc.mu, wd),
                "exponents": exponents,
            },
            "observed": {
                "collapsed_fraction": fractions[:-1].round(4).tolist(),
                "zeta_fraction": float(fractions[-1]),
                "exponents": [float(f"{e:.4g}") for e in measured[:k]],
            },
            "checks": checks,
        }

    def plot(self, fractions: np.ndarray, threshold: float, samples: np.ndarray) -> None:
        tc = self.tc
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
        se = np.sqrt(fractions * (1 - fractions) / tc.replicas)
        left.errorbar(tc.sweep, fractions, yerr=se, fmt="o-", color="k", ms=4, label="SGD ensemble")
        left.axvline(threshold, color="tab:red", label=f"discrete threshold {threshold:.3f}")
        cont = collapse.quartic_threshold_continuous(tc.mu, self.wd)
        left.axvline(cont, color="tab:blue", ls="--", label=f"sqrt(2 mu) = {cont:.3f}")
        left.set_xlabel("noise zeta")
        left.set_ylabel(f"P(|theta| < {tc.collapse_eps:g})")
        left.set_title(f"quartic well, mu={tc.mu:g}, lr={self.lr:g}", fontsize=9)
        left.legend(fontsize=7)
        positive = samples[samples > 0]
        if len(positive) and collapse.quartic_shape(tc.mu, tc.zeta, self.wd) > 0:
            logs = np.log10(positive)
            right.hist(logs, bins=60, density=True, color="0.7", label=f"|theta| at the end, zeta={tc.zeta:g}")
            grid = np.linspace(logs.min(), logs.max(), 400)
            theta = 10.0**grid
            dens = collapse.quartic_density(theta, tc.mu, tc.zeta, self.wd) * theta * math.log(10.0)
            right.plot(grid, dens, color="tab:red", label="stationary density (theory)")
            right.set_xlabel("log10 |theta|")
            right.legend(fontsize=7)
        else:
            right.text(0.5, 0.5, f"zeta = {tc.zeta:g}: no stationary density (collapse)", ha="center")
        finish(fig, self.ctx.run_dir / "collapse.png")


class NeuronCollapseTask(CollapseTask):
    """f = w2 tanh(w1 x) on fixed data, loss (1/2m) sum (f_i - y_i - sqrt(m) zeta xi_i)^2 with fresh label
    noise each step; settings: the zeta sweep at optim's lr, then the lr sweep at task.zeta (each
    setting its own parameter group, so its own learning rate)."""

    config_class = NeuronConfig

    def __init__(self, cfg: Config, ctx: Context):
        super().__init__(cfg, ctx)
        tc = self.tc
        rng = np.random.default_rng(tc.data_seed)
        x = rng.standard_normal(tc.m)
        y = tc.teacher * x + tc.label_noise * rng.standard_normal(tc.m)
        self.x_np, self.y_np = x, y
        self.x = torch.as_tensor(x, device=ctx.device)
        self.y = torch.as_tensor(y, device=ctx.device)
        self.zetas = [*tc.sweep] + [tc.zeta] * len(tc.lr_sweep)
        self.lrs = [self.lr] * len(tc.sweep) + list(tc.lr_sweep)
        self.noise_scale = torch.tensor(self.zetas, dtype=torch.float64, device=ctx.device)[:, None, None]

    def build_model(self) -> nn.Module:
        gen = torch.Generator().manual_seed(self.cfg.run.seed)
        starts = [
            self.tc.init_scale * torch.randn(2, self.tc.replicas, generator=gen, dtype=torch.float64)
            for _ in self.zetas
        ]
        self.model = Replicas(starts)
        return self.model

    def batch(self, micro_index: int) -> torch.Tensor:
        return self.noise(micro_index, (len(self.zetas), self.tc.replicas, self.tc.m))

    def loss(self, model: nn.Module, batch: Any, micro_index: int) -> torch.Tensor:
        w = self.model.stacked()  # (settings, 2, replicas)
        f = w[:, 1, :, None] * torch.tanh(w[:, 0, :, None] * self.x)
        target = self.y + math.sqrt(self.tc.m) * self.noise_scale * batch
        return 0.5 * (f - target).square().mean(-1).sum()

    @property
    def tokens_per_micro_batch(self) -> int:
        return len(self.zetas) * self.tc.replicas * self.tc.m

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """The noise-free data loss (1/2m) sum (f_i - y_i)^2, averaged over all replicas."""
        with torch.no_grad():
            w = self.model.stacked()
            f = w[:, 1, :, None] * torch.tanh(w[:, 0, :, None] * self.x)
            return {"val_loss": float(0.5 * (f - self.y).square().mean())}

    def finish(self, model: nn.Module, history: list[dict]) -> dict[str, Any]:
        tc, wd = self.tc, self.wd
        norms = np.sqrt(np.square(self.final()).sum(axis=1))
        fractions = (norms < tc.collapse_eps).mean(axis=1)
        gains = [collapse.neuron_gain(self.x_np, self.y_np, z) for z in self.zetas]
        exponents = [collapse.neuron_lyapunov(lr, a, b, wd) for lr, (a, b) in zip(self.lrs, gains)]
        notes = self.notes()
        extra = {"notes": notes} if notes else {}
        k = len(tc.sweep)
        checks = {
            "collapse_threshold_zeta": {**sweep_check(tc.sweep, fractions[:k], exponents[:k], tc.replicas), **extra}
        }
        if tc.lr_sweep:
            checks["collapse_threshold_lr"] = {
                **sweep_check(tc.lr_sweep, fractions[k:], exponents[k:], tc.replicas),
                **extra,
            }
        a, b = collapse.neuron_gain(self.x_np, self.y_np, tc.zeta)
        prediction = {
            "sum_xy_over_sum_xx": float(np.dot(self.x_np, self.y_np) / np.dot(self.x_np, self.x_np)),
            "gain_mean_a": a,
            "gain_std_b": b,
            "exponents": exponents,
        }
        for key, fn in (
            ("threshold_lr_at_zeta", lambda: collapse.neuron_threshold_lr(a, b, wd)),
            ("threshold_zeta_at_lr", lambda: collapse.neuron_threshold_zeta(self.lr, self.x_np, self.y_np, wd)),
        ):
            try:
                prediction[key] = fn()
            except ValueError:
                prediction[key] = None  # the exponent never turns negative: this neuron never dies
        # the paper's SDE threshold lr zeta^2 sigma'(0) / 2 = sum xy / sum xx, in this task's zeta
        prediction["threshold_lr_continuous"] = 2 * prediction["sum_xy_over_sum_xx"] / tc.zeta**2
        prediction["threshold_zeta_continuous"] = math.sqrt(2 * prediction["sum_xy_over_sum_xx"] / self.lr)
        self.plot(fractions, prediction)
        return {
            "prediction": prediction,
            "observed": {"collapsed_fraction": fractions.round(4).tolist()},
            "checks": checks,
        }

    def plot(self, fractions: np.ndarray, prediction: dict[str, Any]) -> None:
        tc = self.tc
        k = len(tc.sweep)
        panels = [("noise zeta", tc.sweep, fractions[:k], prediction["threshold_zeta_at_lr"], f"lr={self.lr:g}")]
        if tc.lr_sweep:
            panels.append(
                ("learning rate", tc.lr_sweep, fractions[k:], prediction["threshold_lr_at_zeta"], f"zeta={tc.zeta:g}")
            )
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
        for ax, (xlabel, xs, fr, threshold, fixed) in zip(axes[0], panels):
            se = np.sqrt(fr * (1 - fr) / tc.replicas)
            ax.errorbar(xs, fr, yerr=se, fmt="o-", color="k", ms=4, label="SGD ensemble")
            if threshold is not None:
                ax.axvline(threshold, color="tab:red", label=f"predicted threshold {threshold:.3g}")
            cont = prediction["threshold_lr_continuous" if xlabel == "learning rate" else "threshold_zeta_continuous"]
            ax.axvline(cont, color="tab:blue", ls="--", label=f"lr zeta^2 / 2 = Sxy/Sxx: {cont:.3g} (SDE)")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"P(|w| < {tc.collapse_eps:g})")
            ax.set_title(f"single tanh neuron, {fixed}", fontsize=9)
            ax.legend(fontsize=7)
        finish(fig, self.ctx.run_dir / "collapse.png")
