"""How the limiting dynamics of SGD scale with learning rate, batch size and momentum, and the probability
current of the stationary state: an ensemble sweep against the exact theory of small_tasks/sgd/phase_space.py.

    python train.py configs/small_tasks/limiting_scaling.toml
    python train.py configs/small_tasks/limiting_scaling.toml --task.noise=aligned    # the control

Setup: a quadratic loss with H = diag(h) (h geometric from ``task.h_max`` to ``task.h_min``) and additive
gradient noise of covariance Sigma / S per step, Sigma = ``task.noise_scale`` R diag(h) R^T: ``rotated`` (R a
random rotation from ``task.data_seed``, Sigma does not commute with H) or ``aligned`` (R = I: it does).
Each setting s of the sweep (``task.lr_scale``, ``task.batch_size``, ``task.momentum``, parallel lists) is a
group of ``task.replicas`` independent replicas trained from theta = 0 (the minimum theta* ~ N(0, I) from
``task.data_seed``) by heavy-ball SGD at lr = optim lr x lr_scale[s], with its own momentum; the noise of a
replica's batch, drawn from (run.seed, step), is the mean of S examples' noise.

Measured from step ``task.measure_from`` on, per replica (so that the replicas, independent, give the
standard errors): the time average of delta delta^T, of delta_t delta_{t-tau}^T and of |delta_t - delta_{t-tau}|^2
for each lag tau of ``task.lags``; and every step the ensemble's mean |delta|^2 per setting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from configs import Config, at_least, one_of, positive, require
from runtime import Context
from small_tasks.sgd import phase_space
from small_tasks.toolkit.base import SmallTask, check
from small_tasks.toolkit.plots import finish, plt
from small_tasks.toolkit.records import Recorder, sgd_settings

LEVEL = 0.01  # family-wise false-alarm level of each check's z-scores (Bonferroni over its entries)
RESOLUTION = 0.1  # a check must resolve a 10% error: z_max x SE <= 0.1 of the quantity's scale
# the smallest normalised circulation |C(tau)_jk - C(tau)_kj| / sqrt(C_jj C_kk) that "detailed balance is
# broken" claims. Rotated noise of the shipped spectrum (a Haar rotation of Sigma = H, data seeds 0..7) predicts
# a peak over the lags of 0.12 to 0.27 at momentum 0 and up to 0.50 at momentum 0.8, setting by setting, so
# 0.1 is below every setting's peak. A claim of "holds" must resolve it: z_max x SE <= MIN_CURRENT / 2
# everywhere, so that a current of MIN_CURRENT at any entry is measured at >= MIN_CURRENT / 2 >= z_max x SE,
# i.e. detected. A claim of "broken" needs the largest predicted entry measured with its sign, at half its
# predicted size or more, and significantly non-zero.
MIN_CURRENT = 0.1
EXACT_ZERO = 1e-9  # a predicted circulation below this (relative) is zero up to round-off: noise aligned with H


@dataclass
class LimitingScalingConfig:
    name: str = "limiting_scaling"
    d: int = 4
    h_max: float = 1.0
    h_min: float = 0.125
    noise: str = "rotated"  # rotated (Sigma does not commute with H) | aligned (Sigma = scale H: the control)
    noise_scale: float = 1.0
    lr_scale: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0, 1.0, 2.0, 1.0, 1.0])
    batch_size: list[int] = field(default_factory=lambda: [4, 4, 4, 16, 8, 4, 4])
    momentum: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.8])
    replicas: int = 500  # per setting
    measure_from: int = 1000
    lags: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64, 128])
    data_seed: int = 0  # seeds theta* and the rotation of the noise

    def check(self) -> None:
        at_least("task", 1, d=self.d)
        at_least("task", 2, replicas=self.replicas)
        at_least("task", 0, measure_from=self.measure_from)
        one_of("task", "noise", self.noise, ("rotated", "aligned"))
        positive("task", h_max=self.h_max, h_min=self.h_min, noise_scale=self.noise_scale)
        k = len(self.lr_scale)
        require(
            k >= 1 and len(self.batch_size) == k and len(self.momentum) == k,
            f"task.lr_scale, task.batch_size and task.momentum must be lists of one equal length (one entry per "
            f"setting), got {len(self.lr_scale)}, {len(self.batch_size)}, {len(self.momentum)}; "
            "give each setting all three",
        )
        for s in self.lr_scale:
            positive("task", lr_scale=s)
        for s in self.batch_size:
            at_least("task", 1, batch_size=s)
        for b in self.momentum:
            require(0 <= b < 1, f"task.momentum entries must be in [0, 1), got {b}; use heavy-ball momenta below 1")
        require(len(self.lags) >= 1, "task.lags must list at least one lag; e.g. task.lags = [1, 4, 16]")
        for tau in self.lags:
            at_least("task", 1, lags=tau)


class Sweep(nn.Module):
    """One parameter tensor per setting (its own lr and momentum), and the per-replica sums measured on
    them (buffers: saved with every checkpoint, so a resumed run keeps them)."""

    def __init__(self, settings: int, replicas: int, d: int, lags: int, ring: int):
        super().__init__()
        self.theta = nn.ParameterList(
            [nn.Parameter(torch.zeros(replicas, d, dtype=torch.float64)) for _ in range(settings)]
        )
        n = settings * replicas
        self.register_buffer("ring", torch.zeros(ring, n, d, dtype=torch.float64))  # delta of the last steps
        self.register_buffer("second", torch.zeros(n, d, d, dtype=torch.float64))  # sum of delta delta^T
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("cross", torch.zeros(lags, n, d, d, dtype=torch.float64))  # delta_t delta_{t-tau}^T
        self.register_buffer("msd", torch.zeros(lags, n, dtype=torch.float64))  # |delta_t - delta_{t-tau}|^2
        self.register_buffer("pairs", torch.zeros(lags, dtype=torch.float64))

    def all(self) -> torch.Tensor:
        return torch.cat(list(self.theta), 0)


@dataclass
class Measured:
    """Per setting: the mean over replicas of a per-replica time average, and its standard error."""

    mean: np.ndarray
    se: np.ndarray


def per_setting(values: np.ndarray, settings: int) -> Measured:
    """``values`` (replicas of all settings in order, ...): mean and standard error per setting."""
    v = values.reshape(settings, -1, *values.shape[1:])
    return Measured(v.mean(1), v.std(1, ddof=1) / np.sqrt(v.shape[1]))


def z_max(entries: int) -> float:
    """The Bonferroni bound on |z| for ``entries`` two-sided tests at family-wise level LEVEL."""
    return float(torch.special.ndtri(torch.tensor(1.0 - LEVEL / (2 * max(entries, 1)), dtype=torch.float64)))


def agreement(
    measured: np.ndarray, se: np.ndarray, predicted: np.ndarray, scale: np.ndarray, what: str, **extra: Any
) -> dict[str, Any]:
    """Measured against predicted, entry by entry: every |z| <= the Bonferroni bound, and every entry resolved
    (bound x SE <= RESOLUTION x its scale), so that too few replicas or steps cannot pass by being noisy."""
    bound = z_max(measured.size)
    z = np.abs(measured - predicted) / np.maximum(se, 1e-300)
    resolution = float(np.max(bound * se / scale))
    rel = float(np.max(np.abs(measured - predicted) / scale))
    return check(
        bool(np.all(np.isfinite(measured)) and np.max(z) <= bound and resolution <= RESOLUTION),
        f"{what}: every |z| <= {bound:.3g} (Bonferroni at {LEVEL:g} over {measured.size}), resolved to "
        f"{RESOLUTION:g} of scale",
        {"max_z": round(float(np.max(z)), 3), "max_relative_error": round(rel, 4), "resolution": round(resolution, 4)},
        **extra,
    )


def current_check(rho: np.ndarray, se: np.ndarray, rho_theory: np.ndarray, claim: str | None = None) -> dict[str, Any]:
    """Detailed balance, from the normalised circulation rho = (C(tau)_jk - C(tau)_kj) / sqrt(C_jj C_kk) of every
    setting, lag and pair. The claim defaults to the theory's: "broken" where its largest |rho| is at least
    MIN_CURRENT, "holds" where it is zero up to round-off (anything between is no claim: fails).
    - broken: the entry with the largest predicted |rho| is measured with its sign, at least half its size,
      and significantly non-zero (|z| above the Bonferroni bound over all entries);
    - holds: no entry significantly non-zero, and the run resolves MIN_CURRENT (bound x SE <= MIN_CURRENT / 2)."""
    bound = z_max(rho.size)
    top = np.unravel_index(np.argmax(np.abs(rho_theory)), rho_theory.shape)
    largest = float(np.abs(rho_theory[top]))
    if claim is None:
        claim = "broken" if largest >= MIN_CURRENT else "holds" if largest <= EXACT_ZERO else "too small to claim"
    z = rho / np.maximum(se, 1e-300)
    observed = {"largest_predicted": round(float(rho_theory[top]), 4), "measured_there": round(float(rho[top]), 4)}
    observed["max_abs_z"] = round(float(np.max(np.abs(z))), 3)
    if claim == "broken":
        passed = bool(
            largest >= MIN_CURRENT
            and np.sign(rho[top]) == np.sign(rho_theory[top])
            and abs(rho[top]) >= 0.5 * largest
            and abs(z[top]) > bound
        )
    elif claim == "holds":
        resolution = float(np.max(bound * se))
        observed["resolution"] = round(resolution, 4)
        passed = bool(np.all(np.isfinite(rho)) and np.max(np.abs(z)) <= bound and resolution <= MIN_CURRENT / 2)
    else:
        passed = False
    return check(
        passed,
        {"claim": f"detailed balance {claim}", "z_max": round(bound, 3), "min_current": MIN_CURRENT},
        observed,
    )


class LimitingScalingTask(SmallTask):
    config_class = LimitingScalingConfig
    data_seed_key = "data_seed"
    recorded = ("trace", "records")

    def __init__(self, cfg: Config, ctx: Context):
        super().__init__(cfg, ctx)
        tc, o = self.tc, self.optim_options
        require(
            cfg.optim.name == "sgdm",
            f"limiting_scaling runs heavy-ball SGD; set optim.name = sgdm, not {cfg.optim.name}",
        )
        require(
            o.momentum == 0 and not o.nesterov,
            "limiting_scaling sets each setting's momentum from task.momentum (heavy ball); set "
            "optim.sgdm.momentum = 0 and optim.sgdm.nesterov = false",
        )
        require(o.weight_decay == 0, "limiting_scaling's theory has no weight decay; set optim.sgdm.weight_decay = 0")
        n = cfg.train.max_steps
        require(
            tc.measure_from + max(tc.lags) < n,
            f"task.measure_from + the longest lag must be below train.max_steps = {n}, got "
            f"{tc.measure_from} + {max(tc.lags)}; lower them or train longer",
        )
        self.h = np.geomspace(tc.h_max, tc.h_min, tc.d)
        self.k = len(tc.lr_scale)
        rng = np.random.default_rng(tc.data_seed)
        self.theta_star = rng.standard_normal(tc.d)
        self.sigma = phase_space.noise_covariance(self.h, tc.noise, tc.noise_scale, tc.data_seed + 1)
        self.lags = np.asarray(tc.lags, dtype=int)
        dev = ctx.device
        self.star = torch.tensor(self.theta_star, device=dev)
        self.hess = torch.tensor(self.h, device=dev)
        self.chol_t = torch.tensor(np.linalg.cholesky(self.sigma).T, device=dev)
        per_replica = np.repeat(1.0 / np.sqrt(np.asarray(tc.batch_size, dtype=float)), tc.replicas)
        self.noise_std = torch.tensor(per_replica, device=dev)[:, None]
        self.records = Recorder.every_step(n, {"spread": (self.k,)}, device=dev)

    def build_model(self) -> nn.Module:
        tc = self.tc
        self.model = Sweep(self.k, tc.replicas, tc.d, len(self.lags), int(self.lags.max()) + 1)
        self.after_step(self.model, 0)
        return self.model

    def param_groups(self, model: nn.Module) -> list[dict]:
        lr = self.optim_options.lr
        return [
            {"params": [p], "lr": lr * s, "momentum": b, "weight_decay": 0.0}
            for p, s, b in zip(model.theta, self.tc.lr_scale, self.tc.momentum)
        ]

    def batch(self, micro_index: int) -> torch.Tensor:
        """The mean noise of each replica's batch of S examples: N(0, Sigma / S), drawn from (run.seed, step)."""
        rng = np.random.default_rng([self.cfg.run.seed, micro_index])
        eps = torch.as_tensor(rng.standard_normal((self.k * self.tc.replicas, self.tc.d)), device=self.ctx.device)
        return eps @ self.chol_t * self.noise_std

    def loss(self, model: nn.Module, batch: torch.Tensor, micro_index: int) -> torch.Tensor:
        """sum over replicas of 1/2 (theta - c)^T H (theta - c), c = theta* + H^-1 xi the batch's mean centre: the
        gradient is H (theta - theta*) - xi. Recorded: the replicas' mean excess loss."""
        delta = self.model.all() - self.star
        self.record(micro_index, 0.5 * (delta.detach().square() * self.hess).sum(1).mean())
        return 0.5 * (delta.square() * self.hess).sum() - (delta * batch).sum()

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.k * self.tc.replicas

    def after_step(self, model: nn.Module, step: int) -> None:
        m, lags = self.model, self.lags
        delta = m.all().detach() - self.star
        self.records.record(step, spread=delta.square().sum(1).view(self.k, -1).mean(1))
        m.ring[step % len(m.ring)] = delta
        start = self.tc.measure_from
        if step < start:
            return
        m.second += torch.einsum("ri,rj->rij", delta, delta)
        m.count += 1
        ready = np.nonzero(step - lags >= start)[0]
        if len(ready) == 0:
            return
        idx = torch.as_tensor(ready, device=delta.device)
        past = m.ring[torch.as_tensor((step - lags[ready]) % len(m.ring), device=delta.device)]
        m.cross.index_add_(0, idx, torch.einsum("ri,lrj->lrij", delta, past))
        m.msd.index_add_(0, idx, (delta - past).square().sum(-1))
        m.pairs.index_add_(0, idx, torch.ones(len(ready), dtype=torch.float64, device=delta.device))

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            delta = self.model.all() - self.star
            return {"val_loss": float(0.5 * (delta.square() * self.hess).sum(1).mean())}

    def steps_done(self) -> int:
        return int(np.isfinite(self.records.numpy("spread")[:, 0]).sum()) - 1

    def settings(self) -> list[tuple[float, int, float]]:
        lr = self.optim_options.lr
        return [(lr * s, int(b), float(m)) for s, b, m in zip(self.tc.lr_scale, self.tc.batch_size, self.tc.momentum)]

    def finish(self, model: nn.Module, history: list[dict]) -> dict[str, Any]:
        sgd = sgd_settings(self.cfg, self.optim_options, self.steps_done())
        notes = [] if sgd.constant_lr else ["the stationary state needs a constant lr"]
        out = self.analyse(self.settings(), notes)
        if "plot" in out:
            self.plot(*out.pop("plot"))
        return out

    def theory(self, settings: list[tuple[float, int, float]]) -> list[np.ndarray]:
        return [phase_space.stationary(self.h, self.sigma, lr, b, s) for lr, s, b in settings]

    def analyse(self, settings: list[tuple[float, int, float]], notes: list[str] = ()) -> dict[str, Any]:
        """Every check of the run's measurements against the exact stationary theory of ``settings`` (lr, S,
        momentum) per group: the run's own, or others, to see that a wrong theory is rejected."""
        m, k, d = self.model, self.k, self.tc.d
        extra = {"notes": list(notes)} if notes else {}
        names = ("stationary_covariance", "spread_scaling", "displacement", "probability_current", "detailed_balance")
        try:
            zs = self.theory(settings)
        except ValueError as e:
            return {"checks": {n: check(False, "a stationary state", str(e), **extra) for n in names}}
        if float(m.count) < 2 or float(m.pairs.min()) < 1:
            return {"checks": {n: check(False, "a measuring window", "too few steps measured", **extra) for n in names}}
        cov_th = np.stack([z[:, :, 0, 0] for z in zs])  # (k, d, d)
        lag_th = np.stack([phase_space.lagged(z, self.h, lr, b, self.lags) for z, (lr, _, b) in zip(zs, settings)])
        msd_th = np.stack(
            [phase_space.displacement(z, self.h, lr, b, self.lags) for z, (lr, _, b) in zip(zs, settings)]
        )
        sd = np.sqrt(np.einsum("kii->ki", cov_th))
        scale = sd[:, :, None] * sd[:, None, :]  # sqrt(C_jj C_kk), the theory's
        cov_r = (m.second / m.count).cpu().numpy()
        cross_r = (m.cross / m.pairs[:, None, None, None]).cpu().numpy().transpose(1, 0, 2, 3)  # (n, lags, d, d)
        msd_r = (m.msd / m.pairs[:, None]).cpu().numpy().T  # (n, lags)
        cov = per_setting(cov_r, k)
        iu = np.triu_indices(d)
        checks = {
            "stationary_covariance": agreement(
                cov.mean[:, iu[0], iu[1]],
                cov.se[:, iu[0], iu[1]],
                cov_th[:, iu[0], iu[1]],
                scale[:, iu[0], iu[1]],
                "C = E[delta delta^T] of every setting against the exact discrete stationary covariance",
                **extra,
            )
        }
        # the spread tr C of each setting relative to the first: exact discrete ratio, the continuous one reported
        tr_r = np.einsum("rii->r", cov_r).reshape(k, -1)
        tr, tr_se = tr_r.mean(1), tr_r.std(1, ddof=1) / np.sqrt(tr_r.shape[1])
        log_ratio, log_se = np.log(tr / tr[0]), np.sqrt((tr_se / tr) ** 2 + (tr_se[0] / tr[0]) ** 2)
        tr_th = np.einsum("kii->k", cov_th)
        sig_diag = np.diag(self.sigma)
        continuous = np.array(
            [phase_space.variance_continuous(self.h, sig_diag, lr, b, s).sum() for lr, s, b in settings]
        )
        if k > 1:
            checks["spread_scaling"] = agreement(
                log_ratio[1:],
                log_se[1:],
                np.log(tr_th[1:] / tr_th[0]),
                np.ones(k - 1),
                "log(tr C_s / tr C_0) against the exact discrete ratio (scale: 1 = a factor e)",
                predicted_ratio=np.round(tr_th[1:] / tr_th[0], 4).tolist(),
                measured_ratio=np.round(tr[1:] / tr[0], 4).tolist(),
                continuous_ratio=np.round(continuous[1:] / continuous[0], 4).tolist(),
                **extra,
            )
        msd = per_setting(msd_r, k)
        checks["displacement"] = agreement(
            msd.mean, msd.se, msd_th, msd_th, f"E|theta_(t+tau) - theta_t|^2 at lags {self.lags.tolist()}", **extra
        )
        # the circulation C(tau) - C(tau)^T, normalised by the theory's sqrt(C_jj C_kk), pairs j < k
        jl, kl = np.triu_indices(d, 1)
        circ_r = phase_space.circulation(cross_r)[..., jl, kl]  # (n, lags, pairs)
        circ = per_setting(circ_r, k)
        norm = scale[:, None, jl, kl]
        rho, rho_se = circ.mean / norm, circ.se / norm
        rho_th = phase_space.circulation(lag_th)[..., jl, kl] / norm
        if rho.size:
            checks["probability_current"] = agreement(
                rho,
                rho_se,
                rho_th,
                np.full(rho.shape, MIN_CURRENT / (2 * RESOLUTION)),
                "(C(tau)_jk - C(tau)_kj) / sqrt(C_jj C_kk) against the theory (scale 0.5: resolved to MIN_CURRENT / 2)",
                **extra,
            )
            checks["detailed_balance"] = {**current_check(rho, rho_se, rho_th), **extra}
        # the antisymmetric drift Q = (HC - CH) / 2: predicted, and read off the lag-1 circulation (momentum 0)
        plain = [i for i, (lr, _, b) in enumerate(settings) if b == 0 and self.lags[0] == 1]
        if plain and "detailed_balance" in checks:
            i = plain[0]
            q_run = -(circ.mean[i, 0]) / (2 * settings[i][0])
            checks["detailed_balance"]["drift_rotation_Q"] = {
                "theory": np.round(phase_space.drift_rotation(self.h, cov_th[i])[jl, kl], 6).tolist(),
                "from_lag_1": np.round(q_run, 6).tolist(),
            }
        if notes:
            for c in checks.values():
                c["passed"] = False
        return {
            "plot": (settings, tr, tr_se, tr_th, msd.mean, msd_th, rho, rho_se, rho_th),
            "prediction": {"spread": np.round(tr_th, 6).tolist(), "msd": np.round(msd_th, 6).tolist()},
            "observed": {"spread": np.round(tr, 6).tolist(), "msd": np.round(msd.mean, 6).tolist()},
            "checks": checks,
        }

    def plot(self, settings, tr, tr_se, tr_th, msd, msd_th, rho, rho_se, rho_th) -> None:
        lr = np.array([s[0] for s in settings])
        batch = np.array([s[1] for s in settings])
        beta = np.array([s[2] for s in settings])
        fig, axes = plt.subplots(1, 4, figsize=(17, 3.9))
        ax = axes[0]
        plain = beta == 0
        x = lr / batch
        grid = np.geomspace(x[plain].min() / 1.5, x[plain].max() * 1.5, 50) if plain.any() else np.array([])
        if plain.any():
            slope = phase_space.variance_continuous(self.h, np.diag(self.sigma), 1.0, 0.0, 1).sum()
            ax.loglog(grid, slope * grid, color="0.5", ls=":", label="continuous: tr C = (lr/S) sum Sigma_jj / 2h_j")
            ax.loglog(x[plain], tr_th[plain], "o", mfc="none", color="k", label="exact discrete")
            ax.errorbar(x[plain], tr[plain], yerr=2 * tr_se[plain], fmt="x", color="tab:red", label="run (2 SE)")
        ax.set_xlabel("lr / S (momentum 0)")
        ax.set_ylabel("spread tr C")
        ax.set_title("the spread grows as lr / S", fontsize=9)
        ax.legend(fontsize=7)
        ax = axes[1]
        base = (np.isclose(lr, lr[0])) & (batch == batch[0])
        bgrid = np.linspace(0, max(0.9, beta.max()), 60)
        exact = [
            np.trace(phase_space.stationary(self.h, self.sigma, lr[0], b, int(batch[0]))[:, :, 0, 0]) for b in bgrid
        ]
        cont = [
            phase_space.variance_continuous(self.h, np.diag(self.sigma), lr[0], b, int(batch[0])).sum() for b in bgrid
        ]
        ax.semilogy(bgrid, exact, color="k", ls="--", lw=1, label="exact discrete")
        ax.semilogy(bgrid, cont, color="0.5", ls=":", label="continuous: 1 / (1 - momentum)")
        ax.errorbar(beta[base], tr[base], yerr=2 * tr_se[base], fmt="x", color="tab:red", label="run (2 SE)")
        ax.set_xlabel(f"momentum (lr {lr[0]:g}, S {batch[0]})")
        ax.set_ylabel("spread tr C")
        ax.set_title("... and as 1 / (1 - momentum)", fontsize=9)
        ax.legend(fontsize=7)
        ax = axes[2]
        colors = plt.cm.viridis(np.linspace(0, 0.9, len(settings)))
        for i, (c, (a, s, b)) in enumerate(zip(colors, settings)):
            ax.loglog(self.lags, msd[i], "x", color=c, label=f"lr {a:g}, S {s}, momentum {b:g}")
            ax.loglog(self.lags, msd_th[i], color=c, ls="--", lw=0.9)
        ax.set_xlabel("lag tau (steps)")
        ax.set_ylabel("E |theta(t + tau) - theta(t)|^2")
        ax.set_title("displacement: run (x), exact theory (dashed)", fontsize=9)
        ax.legend(fontsize=6)
        ax = axes[3]
        pair = int(np.argmax(np.abs(rho_th).max(axis=(0, 1)))) if rho_th.size else 0
        for i, (c, (a, _, b)) in enumerate(zip(colors, settings)):
            ax.errorbar(a * self.lags / (1 - b), rho[i, :, pair], yerr=2 * rho_se[i, :, pair], fmt="x", color=c)
            ax.plot(a * self.lags / (1 - b), rho_th[i, :, pair], color=c, ls="--", lw=0.9)
        ax.axhline(0, color="0.6", lw=0.6)
        ax.set_xscale("log")
        ax.set_xlabel("lr tau / (1 - momentum)")
        ax.set_ylabel("(C(tau)_jk - C(tau)_kj) / sqrt(C_jj C_kk)")
        ax.set_title(f"circulation, {self.tc.noise} noise: run (x, 2 SE), theory (dashed)", fontsize=9)
        finish(fig, self.ctx.run_dir / "limiting_scaling.png", dpi=80)
