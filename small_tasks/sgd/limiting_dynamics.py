"""The limiting dynamics of SGD on linear regression: an ensemble of independent runs trained from 0 to
convergence and far beyond, against the exact moments of small_tasks/sgd/sgd_diffusion.py.

    python train.py configs/small_tasks/limiting_dynamics.toml
    python train.py configs/small_tasks/limiting_dynamics.toml --task.spectrum=flat

Data: x ~ N(0, diag(h)) with the chosen spectrum h, y = x . theta* + sigma eps, a fresh batch of
``task.batch_size`` examples per replica and step, drawn from a generator seeded by (run.seed, step), so
resume is exact. The replicas share nothing but the data's law; their losses are summed.

What is measured, all on the device and saved with the model (so a resumed run keeps it):
- the ensemble mean of delta = theta - theta_wd and of the step p = theta_n - theta_{n-1}, every step;
- the second moments of (delta, p) over replicas and over every step from ``task.measure_from`` on;
- |theta_{t0 + tau} - theta_{t0}|^2 averaged over replicas, for ``task.origins`` starting steps t0 >=
  ``task.measure_from`` and log-spaced lags tau.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

import optim
from configs import Config, at_least, non_negative, one_of, positive, require
from runtime import Context
from small_tasks.sgd import sgd_diffusion
from small_tasks.toolkit import noether
from small_tasks.toolkit.base import SmallTask, check
from small_tasks.toolkit.plots import finish, plt
from small_tasks.toolkit.records import Recorder, sgd_settings

COVARIANCE_TOL = 0.1  # max |M_measured - M| / sqrt(M_jj M_kk) over all of (delta, p): ~1000 replicas over the window
MEAN_LEVEL = 0.01  # the ensemble mean against the exact oscillator: z-scores, family-wise false-alarm level
MEAN_CONTINUOUS_TOL = 0.1  # ... and against the continuous damped oscillator (gamma, omega_k), relative
CONTINUOUS_LR_OMEGA = 0.3  # ... in the directions where it is a fair description: lr omega_k <= 0.3
DISPLACEMENT_TOL = 0.1  # relative error of the mean squared displacement at every lag
EXPONENT_TOL = 0.05  # the fitted exponent against the theory's, fitted over the same window
SPREAD = 10.0  # a spectrum with k_max / k_min at least this relaxes direction after direction: fit a decade
ANOMALOUS_BELOW = 0.8  # a spread spectrum's exponent must be below this
NORMAL_WITHIN = 0.15  # a flat one's within this of 1


@dataclass
class LimitingDynamicsConfig:
    name: str = "limiting_dynamics"
    d: int = 12
    spectrum: str = "loguniform"  # loguniform (h_max .. h_min, geometric) | flat (all h_min)
    h_max: float = 1.0
    h_min: float = 1e-3
    eigenvalues: list[float] = field(default_factory=list)  # an explicit spectrum instead (sets d)
    batch_size: int = 4  # S: examples per replica and step
    sigma: float = 1.0  # label noise
    replicas: int = 1000
    measure_from: int = 8000  # the covariance and the displacement are measured from this step on
    origins: int = 4  # starting steps of the displacement, spread over the first half of the window
    lags: int = 24  # log-spaced lags, from 1 to half the window
    data_seed: int = 0  # seeds theta* ~ N(0, I)

    def check(self) -> None:
        at_least("task", 1, d=self.d, batch_size=self.batch_size, origins=self.origins)
        at_least("task", 2, replicas=self.replicas, lags=self.lags)
        at_least("task", 0, measure_from=self.measure_from)
        one_of("task", "spectrum", self.spectrum, ("loguniform", "flat"))
        positive("task", h_max=self.h_max, h_min=self.h_min)
        non_negative("task", sigma=self.sigma)
        for h in self.eigenvalues:
            positive("task", eigenvalues=h)


def spectrum(tc: LimitingDynamicsConfig) -> np.ndarray:
    if tc.eigenvalues:
        return np.asarray(tc.eigenvalues, dtype=np.float64)
    if tc.spectrum == "loguniform":
        return np.geomspace(tc.h_max, tc.h_min, tc.d)
    return np.full(tc.d, tc.h_min)


def fit_window(lr: float, momentum: float, k_min: float, k_max: float, longest: float) -> tuple[float, float]:
    """Where the theory gives the displacement a definite exponent, past the ballistic start of momentum
    (5 momentum / (1 - momentum) steps) and up to the longest lag measured. lr_eff = lr / (1 - momentum).
    A spread spectrum (k_max / k_min >= SPREAD): the lags 1 / (lr_eff k_max) .. 1 / (lr_eff k_min) over which
    the directions relax one after another (the anomalous regime; before it every direction still moves
    freely, after it all are saturated). A narrow one: normal diffusion before the slowest direction
    saturates, up to 0.1 / (lr_eff k_min)."""
    lr_eff = lr / (1.0 - momentum)
    ballistic = max(2.0, 5.0 * momentum / (1.0 - momentum))
    if k_max / k_min >= SPREAD:
        return max(ballistic, 1.0 / (lr_eff * k_max)), min(1.0 / (lr_eff * k_min), longest)
    return ballistic, min(0.1 / (lr_eff * k_min), longest)


def classify(exponent: float) -> str:
    if exponent < ANOMALOUS_BELOW:
        return "anomalous"
    return "normal" if abs(exponent - 1.0) <= NORMAL_WITHIN else "intermediate"


def exponent_check(
    taus: np.ndarray, measured: np.ndarray, theory: np.ndarray, window, claim: str | None = None
) -> dict[str, Any]:
    """The exponent of the measured displacement over ``window``: within EXPONENT_TOL of the theory's,
    and of the kind claimed: "anomalous" below ANOMALOUS_BELOW, "normal" within NORMAL_WITHIN of 1. The
    claim defaults to the kind of the theory's exponent (spread spectra are anomalous, flat ones
    normal); a flat spectrum claimed anomalous fails, so does a window too short to fit: under a decade
    for an anomalous claim (a sum of exponentials bends over any short window), a factor 3 for a normal one
    (the short-lag limit, where it is exact)."""
    lo, hi = window
    keep = (taus >= lo) & (taus <= hi)
    theory_claim = claim
    if claim is None and keep.sum() >= 2:
        theory_claim = classify(sgd_diffusion.exponent(taus[keep], theory[keep]))
    if hi < (10 if theory_claim == "anomalous" else 3) * lo or keep.sum() < 3:
        return check(False, "a fit window", f"no fit window: [{lo:.3g}, {hi:.3g}] is too short")
    observed = sgd_diffusion.exponent(taus[keep], measured[keep])
    predicted = sgd_diffusion.exponent(taus[keep], theory[keep])
    claim = claim or classify(predicted)
    shape = classify(observed) == claim
    return check(
        bool(shape and abs(observed - predicted) <= EXPONENT_TOL),
        {"claim": f"{claim} diffusion", "theory_exponent": round(predicted, 4)},
        round(observed, 4),
        window=[round(lo, 2), round(hi, 2)],
        tolerance=EXPONENT_TOL,
    )


class Ensemble(nn.Module):
    """The replicas' parameters, and what is measured on them (buffers: saved with every checkpoint)."""

    def __init__(self, replicas: int, d: int, starts: np.ndarray, taus: np.ndarray):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(replicas, d, dtype=torch.float64))
        self.register_buffer("second", torch.zeros(2 * d, 2 * d, dtype=torch.float64))  # sum of z z^T / R
        self.register_buffer("second_count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("origin", torch.zeros(len(starts), replicas, d, dtype=torch.float64))
        self.register_buffer("msd", torch.full((len(starts), len(taus)), float("nan"), dtype=torch.float64))
        self.register_buffer("plan", torch.as_tensor(np.concatenate([starts, taus]), dtype=torch.int64))

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        """The displacement's lags and origins follow train.max_steps: a resume must keep them."""
        plan = state_dict.get(prefix + "plan")
        if plan is not None and (plan.shape != self.plan.shape or bool((plan != self.plan).any())):
            args[-1].append("the measurement plan differs: resume with the run's train.max_steps and task keys")
            return
        super()._load_from_state_dict(state_dict, prefix, *args)


class LimitingDynamicsTask(SmallTask):
    config_class = LimitingDynamicsConfig
    data_seed_key = "data_seed"
    recorded = ("trace", "record")  # the ensemble's mean displacement and step, every step

    def __init__(self, cfg: Config, ctx: Context):
        super().__init__(cfg, ctx)
        tc = self.tc
        self.h = spectrum(tc)
        self.d = len(self.h)
        n = cfg.train.max_steps
        require(
            tc.measure_from < n - 4,
            f"task.measure_from must be below train.max_steps - 4 = {n - 4}, got {tc.measure_from}; lower it",
        )
        self.theta_star = np.random.default_rng(tc.data_seed).standard_normal(self.d)
        half = (n - tc.measure_from) // 2
        self.taus = np.unique(np.geomspace(1, half, tc.lags).round().astype(int))
        self.starts = np.linspace(tc.measure_from, n - half, tc.origins).round().astype(int)
        self.at_step: dict[int, list[tuple[int, int]]] = {}  # step -> (origin, lag index) to measure
        for k, t0 in enumerate(self.starts):
            for i, tau in enumerate(self.taus):
                self.at_step.setdefault(int(t0 + tau), []).append((k, i))
        self.scale = torch.tensor(np.sqrt(self.h), device=ctx.device)
        self.star = torch.tensor(self.theta_star, device=ctx.device)
        shapes = {"mean_delta": (self.d,), "mean_step": (self.d,)}
        self.record = Recorder.every_step(cfg.train.max_steps, shapes, device=ctx.device)

    def build_model(self) -> nn.Module:
        tc = self.tc
        self.model = Ensemble(tc.replicas, self.d, self.starts, self.taus)
        return self.model

    def param_groups(self, model: nn.Module) -> list[dict]:
        groups = optim.param_groups(model, self.cfg.optim)
        self.wd = float(groups[0]["weight_decay"])  # one tensor, one group
        self.minimum = torch.tensor(sgd_diffusion.minimum(self.h, self.theta_star, self.wd), device=self.ctx.device)
        with torch.no_grad():
            delta = self.model.theta - self.minimum
            self.record.record(0, mean_delta=delta.mean(0), mean_step=torch.zeros_like(delta[0]))
        return groups

    def batch(self, micro_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        tc = self.tc
        rng = np.random.default_rng([self.cfg.run.seed, micro_index])
        z = torch.as_tensor(rng.standard_normal((tc.replicas, tc.batch_size, self.d + 1)), device=self.ctx.device)
        x = z[..., :-1] * self.scale
        return x, x @ self.star + tc.sigma * z[..., -1]

    def loss(self, model: nn.Module, batch: Any, micro_index: int) -> torch.Tensor:
        x, y = batch
        self.before = self.model.theta.detach().clone()
        residual = torch.einsum("rsd,rd->rs", x, self.model.theta) - y
        return 0.5 * residual.square().mean(1).sum()  # each replica: the mean over its own batch

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.tc.replicas * self.tc.batch_size

    def after_step(self, model: nn.Module, step: int) -> None:
        m = self.model
        theta = m.theta.detach()
        delta, p = theta - self.minimum, theta - self.before
        self.record.record(step, mean_delta=delta.mean(0), mean_step=p.mean(0))
        if step >= self.tc.measure_from:
            z = torch.cat([delta, p], dim=1)
            m.second += z.T @ z / len(z)
            m.second_count += 1
        for k in np.nonzero(self.starts == step)[0]:
            m.origin[k] = theta
        for k, i in self.at_step.get(step, ()):
            m.msd[k, i] = (theta - m.origin[k]).square().sum(1).mean()

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """The excess loss over the noise floor, E over x of (x . (theta - theta*))^2 / 2, replica mean."""
        with torch.no_grad():
            e = self.model.theta - self.star
            return {"val_loss": float(0.5 * (e.square() * self.scale.square()).sum(1).mean())}

    def steps_done(self) -> int:
        return int(np.isfinite(self.record.numpy("mean_delta", self.cfg.train.max_steps + 1)[:, 0]).sum()) - 1

    def finish(self, model: nn.Module, history: list[dict]) -> dict[str, Any]:
        n = self.steps_done()
        sgd = sgd_settings(self.cfg, self.optim_options, n)
        notes = list(sgd.notes) + ([] if sgd.constant_lr else ["the stationary state needs a constant lr"])
        nesterov = sgd.momentum > 0 and bool(self.optim_options.nesterov)
        out = self.analyse(float(sgd.lrs[0]), sgd.momentum, notes, heavy_ball=not nesterov)
        if "plot" in out:
            self.plot(*out.pop("plot"), float(sgd.lrs[0]), sgd.momentum)
        return out

    def analyse(self, lr: float, beta: float, notes: list[str] = (), heavy_ball: bool = True) -> dict[str, Any]:
        """Every check of the run's records against the theory for SGD at ``lr`` with momentum ``beta``
        (the run's own, or another, to see that a wrong theory is rejected). The theory is derived for
        heavy-ball momentum: for a Nesterov run (``heavy_ball`` False) no check can pass, since the ones
        that do not resolve the difference (the continuous mean, the exponent: Nesterov's correction is of
        order lr there) would otherwise confirm a theory that was not derived for the run."""
        tc, h, wd = self.tc, self.h, self.wd
        m = self.model
        n = self.steps_done()
        extra = {"notes": list(notes)} if notes else {}
        checks: dict[str, Any] = {}
        try:
            stat = sgd_diffusion.stationary(h, self.theta_star, lr, wd, beta, tc.batch_size, tc.sigma)
        except ValueError as e:
            return {"checks": {"stationary_state": check(False, "a stationary state", str(e), **extra)}}
        # the second moments of (delta, p) over the measuring window: the exact recursion from the start at
        # rest, averaged over the same steps (stationary or not); the position, velocity and cross blocks
        delta0 = -sgd_diffusion.minimum(h, self.theta_star, wd)
        start = min(tc.measure_from, n)
        exact = sgd_diffusion.moments(
            h, self.theta_star, np.zeros(self.d), lr, wd, beta, tc.batch_size, tc.sigma, n, average_from=start
        )
        variance = exact.blocks[:, :, 0, 0]
        transient = float(np.max(np.abs(variance[start] / np.diag(stat.cov) - 1.0)))
        count = float(m.second_count)
        measured = (m.second / max(count, 1.0)).cpu().numpy()
        cov = measured[: self.d, : self.d]
        window_theory = exact.window.transpose(2, 0, 3, 1).reshape(2 * self.d, 2 * self.d)
        diag = np.diag(window_theory)
        rel = np.abs(measured - window_theory) / np.sqrt(np.outer(diag, diag))
        blocks = {
            name: float(np.max(rel[rows, cols])) if count else float("inf")
            for name, rows, cols in (
                ("position", slice(0, self.d), slice(0, self.d)),
                ("velocity", slice(self.d, None), slice(self.d, None)),
                ("cross", slice(0, self.d), slice(self.d, None)),
            )
        }
        checks["second_moments"] = check(
            max(blocks.values()) <= COVARIANCE_TOL,
            f"max |M_run - M| / sqrt(M_jj M_kk) <= {COVARIANCE_TOL:g} in every block of E[(delta, p)(delta, p)^T], "
            "M the exact recursion averaged over the measuring window",
            {k: round(v, 4) for k, v in blocks.items()},
            transient_left_at_measure_from=float(f"{transient:.3g}"),
            replicas=tc.replicas,
            steps_averaged=int(count),
            **extra,
        )
        # the mean: the exact damped oscillator per direction (the noise of a mean over the replicas from
        # the exact variance at each step), and its continuous approximation
        mean_run = self.record.numpy("mean_delta", n + 1)
        mean_exact = exact.means[:, :, 0]
        roundoff = 1e-12 * float(np.max(np.abs(delta0)))  # step 0 is deterministic: all replicas start at 0
        se = np.sqrt(np.maximum(variance - mean_exact**2, 0.0) / tc.replicas) + roundoff
        z = float(np.max(np.abs(mean_run - mean_exact) / se))
        # Bonferroni over every step and direction: a bound that holds however correlated they are
        z_max = float(torch.special.ndtri(torch.tensor(1.0 - MEAN_LEVEL / (2 * se.size), dtype=torch.float64)))
        checks["mean_oscillator"] = check(
            z <= z_max,
            f"max over steps and directions of |mean_run - mean| / standard error <= {z_max:.3g}",
            round(z, 3),
            gamma=noether.damping(lr, beta),
            omega=[round(noether.frequency(lr, k, beta), 4) for k in h + wd],
            **extra,
        )
        lr_omega = np.array([lr * noether.frequency(lr, k, beta) for k in h + wd])
        fair = np.nonzero(lr_omega <= CONTINUOUS_LR_OMEGA)[0]
        if len(fair):
            cont = np.stack(
                [
                    noether.oscillator(delta0[j], delta0[j] * (1 - lr * (h[j] + wd)), n, lr, h[j] + wd, beta)
                    for j in fair
                ],
                1,
            )
            cont_err = float(np.max(np.abs(mean_run[:, fair] - cont))) / float(np.max(np.abs(delta0[fair])))
            checks["mean_continuous_oscillator"] = check(
                cont_err <= MEAN_CONTINUOUS_TOL,
                f"max |mean_run - oscillator| / max|delta_0| <= {MEAN_CONTINUOUS_TOL:g} where lr omega <= "
                f"{CONTINUOUS_LR_OMEGA:g}",
                round(cont_err, 5),
                directions=fair.tolist(),
                **extra,
            )
        # the displacement over the lags, and its exponent
        # from the exact second moments at each origin (no stationarity assumed), over the same origins
        msd_origins = m.msd.cpu().numpy()
        msd_run = np.nanmean(msd_origins, axis=0)
        exact_msd = sgd_diffusion.transient_displacement(exact.blocks, h, lr, wd, beta, self.starts, self.taus)
        msd_theory = np.nanmean(np.where(np.isfinite(msd_origins), exact_msd, np.nan), axis=0)
        msd_stationary = sgd_diffusion.displacement(stat, h, lr, wd, beta, self.taus)
        rel = np.abs(msd_run / msd_theory - 1.0)
        checks["displacement"] = check(
            bool(np.all(rel <= DISPLACEMENT_TOL)),
            f"|MSD_run / MSD - 1| <= {DISPLACEMENT_TOL:g} at every lag, tau = 1..{int(self.taus[-1])}, MSD from the "
            "exact second moments at each origin",
            round(float(np.max(rel)), 4),
            stationary_limit_error=round(float(np.max(np.abs(msd_theory / msd_stationary - 1.0))), 4),
            **extra,
        )
        window = fit_window(lr, beta, float(np.min(h + wd)), float(np.max(h + wd)), float(self.taus[-1]))
        checks["diffusion_exponent"] = {**exponent_check(self.taus, msd_run, msd_theory, window), **extra}
        if not heavy_ball:
            for c in checks.values():
                c["resolved_by_the_data"] = c["passed"]
                c["passed"] = False
        return {
            "plot": (stat, msd_run, msd_theory, window, mean_run, mean_exact, measured),
            "prediction": {
                "stationary_variance": np.diag(stat.cov).round(8).tolist(),
                "msd": msd_theory.round(8).tolist(),
                "taus": self.taus.tolist(),
            },
            "observed": {"stationary_variance": np.diag(cov).round(8).tolist(), "msd": msd_run.round(8).tolist()},
            "checks": checks,
        }

    def phase_direction(self, mean: np.ndarray) -> int:
        """The direction whose mean turns most clearly: sign changes times the initial offset."""
        turns = (np.diff(np.sign(mean), axis=0) != 0).sum(0)
        return int(np.argmax(turns * np.abs(mean[0])))

    def plot(self, stat, msd_run, msd_theory, window, mean_run, mean_exact, measured, lr, beta) -> None:
        tc, d = self.tc, self.d
        fig, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.2))
        left.loglog(self.taus, msd_run, "o", color="k", ms=4, label="SGD ensemble")
        left.loglog(self.taus, msd_theory, color="tab:red", label="2 tr C - 2 tr[(A^tau Z)]  (theory)")
        lo, hi = window
        left.axvspan(lo, hi, color="0.9", label="exponent fit window")
        ref = msd_theory[np.searchsorted(self.taus, lo)] * (self.taus / lo)
        left.loglog(self.taus, ref, color="tab:blue", ls=":", lw=0.8, label="slope 1")
        left.set_xlabel("lag tau (steps)")
        left.set_ylabel("E |theta(t + tau) - theta(t)|^2")
        name = "given" if tc.eigenvalues else tc.spectrum
        left.set_title(f"{name} spectrum, lr {lr:g}, momentum {beta:g}, S {tc.batch_size}", fontsize=9)
        left.legend(fontsize=7)
        j = self.phase_direction(mean_exact)
        steps = self.record.numpy("mean_step", len(mean_run))[:, j]
        exact_step = np.concatenate([[0.0], np.diff(mean_exact[:, j])])
        horizon = min(len(mean_run), max(50, int(20 / max(noether.damping(lr, beta) * lr, 1e-9))))
        middle.plot(mean_run[:horizon, j], steps[:horizon], color="k", lw=1.4, label="ensemble mean (run)")
        middle.plot(mean_exact[:horizon, j], exact_step[:horizon], color="tab:red", ls="--", label="A^n z_0 (theory)")
        middle.set_xlabel(f"mean delta_{j} (position)")
        middle.set_ylabel(f"mean p_{j} = step (velocity)")
        middle.set_title(f"direction {j} (h = {self.h[j]:.3g}): the mean's damped rotation", fontsize=9)
        middle.legend(fontsize=7)
        with torch.no_grad():
            theta = self.model.theta.detach()
            cloud = torch.stack([theta[:, j] - self.minimum[j], theta[:, j] - self.before[:, j]]).cpu().numpy()
        right.plot(cloud[0, :500], cloud[1, :500], ".", color="0.6", ms=2, label="replicas at the end")
        for z, color, label in (
            (measured[np.ix_([j, d + j], [j, d + j])], "tab:blue", "stationary 2-sigma, run"),
            (stat.z[j, j], "tab:red", "stationary 2-sigma, theory"),
        ):
            vals, vecs = np.linalg.eigh(z)
            t = np.linspace(0, 2 * math.pi, 200)
            ellipse = vecs @ (2 * np.sqrt(np.maximum(vals, 0))[:, None] * np.stack([np.cos(t), np.sin(t)]))
            right.plot(ellipse[0], ellipse[1], color=color, lw=1.0, ls="--" if color == "tab:red" else "-", label=label)
        right.set_xlabel(f"delta_{j}")
        right.set_ylabel(f"p_{j}")
        right.set_title("the stationary (position, velocity) covariance", fontsize=9)
        right.legend(fontsize=7)
        finish(fig, self.ctx.run_dir / "limiting_dynamics.png")
