"""An attention-only linear transformer learning in-context linear regression from small initialization:
saddle to saddle, one principal component of the input covariance at a time, as Alternating Gradient
Flows predicts.

    python train.py configs/small_tasks/attention_linear_icl.toml

The data: n sequences, each with its own regression vector w ~ N(0, I_D), a context of N pairs
(x_n, y_n = w . x_n) and a query x_q (target y_q = w . x_q), x ~ N(0, diag(task.spectrum)); a fixed
set, trained full batch. The model: H heads of linear attention (no softmax), head h with rank-one query
and key projections q_h, k_h of x and a merged value-output scalar v_h of y (the separate key-query
parametrisation whose heads learn one component each; a merged key-query matrix learns all at once).
Its prediction is x_q^T Gamma h with Gamma = sum_h v_h q_h k_h^T and h = mean_n y_n x_n
(small_tasks/attention/icl_theory.py). Init: every entry task.init_scale * N(0, 1) (from run.seed).

The checks (``finish``) compare the run with AGF computed from the data, the init and the step sizes: the
order in which the components are learned, the plateau levels, and the drop steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from configs import Config, UserError
from runtime import Context
from small_tasks.attention import icl_theory as th
from small_tasks.toolkit import staircase
from small_tasks.toolkit.base import SmallTask, check
from small_tasks.toolkit.plots import finish, plt
from small_tasks.toolkit.records import Recorder, sgd_settings

LEVEL_TOL = 0.02  # plateaus within 2% of the rank-j minima (see plateau_check)
TIME_TOL = 0.10  # drop steps within 10% of AGF's events (see time_check)
DATA, INIT = 0, 1  # random streams: the data set from task.data_seed, the init from run.seed


@dataclass
class LinearICLConfig:
    name: str = "attention_linear_icl"
    spectrum: list[float] = field(default_factory=lambda: [1.0, 0.7, 0.5, 0.35])  # input covariance eigenvalues
    heads: int = 5
    context: int = 32  # N pairs per sequence
    n: int = 512  # sequences in the (full) batch
    init_scale: float = 1e-2
    data_seed: int = 0

    def check(self) -> None:
        if len(self.spectrum) < 2 or min(self.spectrum) <= 0:
            raise UserError("task.spectrum needs at least two eigenvalues > 0, e.g. [1.0, 0.7, 0.5, 0.35]")
        if self.heads < len(self.spectrum):
            raise UserError(
                f"task.heads = {self.heads} cannot learn {len(self.spectrum)} components (one each); "
                f"set task.heads >= {len(self.spectrum)}"
            )
        if min(self.context, self.n) < 1:
            raise UserError("task.context and task.n must be >= 1")
        if self.n < len(self.spectrum) ** 2:
            raise UserError(f"task.n must be >= {len(self.spectrum) ** 2} (the loss's quadratic must be definite)")
        if self.init_scale <= 0:
            raise UserError("task.init_scale must be > 0, e.g. 1e-2")


class LinearAttention(nn.Module):
    """H heads of linear attention over (x_n, y_n) tokens: query x_q . q_h, key x_n . k_h, value v_h y_n."""

    def __init__(self, wv: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor):
        super().__init__()
        self.wv, self.wq, self.wk = (nn.Parameter(t.clone()) for t in (wv, wq, wk))

    def forward(self, x: torch.Tensor, y: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
        """(n, N, D), (n, N), (n, D) -> the predicted y_q (n,)."""
        scores = (xq @ self.wq.T)[:, None, :] * (x @ self.wk.T)  # (n, N, H): linear attention, no softmax
        return ((scores * y[..., None]).mean(1) * self.wv).sum(-1)

    def gamma(self) -> torch.Tensor:
        return th.gamma_of(self.wv, self.wq, self.wk)


class LinearICLTask(SmallTask):
    config_class = LinearICLConfig
    data_seed_key = "data_seed"
    recorded = ("trace", "rec")

    def __init__(self, cfg: Config, ctx: Context):
        super().__init__(cfg, ctx)
        tc = self.tc
        d, steps = len(tc.spectrum), cfg.train.max_steps
        rng = np.random.default_rng([tc.data_seed, DATA])
        scale = np.sqrt(np.asarray(tc.spectrum, dtype=float))
        w = rng.standard_normal((tc.n, d))
        x = rng.standard_normal((tc.n, tc.context, d)) * scale
        xq = rng.standard_normal((tc.n, d)) * scale
        as_t = lambda a: torch.tensor(a, dtype=torch.float64, device=ctx.device)  # noqa: E731
        self.x, self.y = as_t(x), as_t(np.einsum("nci,ni->nc", x, w))
        self.xq, self.yq = as_t(xq), as_t(np.einsum("ni,ni->n", xq, w))
        self.rec = Recorder.every_step(steps, {"gamma": (d, d)}, device=ctx.device)
        self.theory = self.predict()

    def initial_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(v, q, k): every entry init_scale * N(0, 1), from run.seed alone."""
        tc = self.tc
        gen = np.random.default_rng([self.cfg.run.seed, INIT])
        d = len(tc.spectrum)
        wv, wq, wk = (tc.init_scale * gen.standard_normal(s) for s in ((tc.heads,), (tc.heads, d), (tc.heads, d)))
        return tuple(torch.tensor(t, dtype=torch.float64) for t in (wv, wq, wk))

    # ---- theory ----

    def predict(self) -> dict[str, Any]:
        """AGF from the data set, the init and the run's step sizes (icl_theory.py)."""
        tc = self.tc
        quad = th.Quadratic.from_data(self.xq, th.context_features(self.x, self.y), self.yq)
        levels, minima = quad.levels()
        sgd = sgd_settings(self.cfg, self.optim_options, self.cfg.train.max_steps)
        events = th.agf_staircase(quad, minima, *(t.numpy() for t in self.initial_weights()), sgd.lrs, sgd.momentum)
        self.minima = minima
        return {
            "levels": [round(v, 8) for v in levels],
            "population_levels": [round(v, 6) for v in th.population_levels(tc.spectrum, tc.context)],
            "order": th.predicted_order(tc.spectrum),
            "drop_steps": [e["step"] for e in events],
            "escaping_heads": [e["head"] for e in events],
            "notes": sgd.notes,
        }

    # ---- the model and its loss ----

    def build_model(self) -> nn.Module:
        self.model = LinearAttention(*(t.to(self.ctx.device) for t in self.initial_weights()))
        self.rec.record(0, gamma=self.model.gamma())
        return self.model

    def batch(self, micro_index: int) -> tuple[torch.Tensor, ...]:
        return self.x, self.y, self.xq, self.yq

    def loss(self, model: nn.Module, batch: Any, micro_index: int) -> torch.Tensor:
        x, y, xq, yq = batch
        loss = 0.5 * (model(x, y, xq) - yq).square().mean()
        self.record(micro_index, loss)
        return loss

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.tc.n * (self.tc.context + 1)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            return {"val_loss": float(0.5 * (model(self.x, self.y, self.xq) - self.yq).square().mean())}

    def after_step(self, model: nn.Module, step: int) -> None:
        self.rec.record(step, gamma=self.model.gamma())

    # ---- the checks ----

    def learned_fractions(self, n: int) -> np.ndarray:
        """(n + 1, D): each principal component's progress between the two AGF plateaus that bracket its drop,
        (Gamma_ii - Gamma^(k-1)_ii) / (Gamma^(k)_ii - Gamma^(k-1)_ii), Gamma^(k) the rank-k minimiser and k
        the component's place in the predicted order: 0 on the plateau before its drop, 1 on the one after.
        Not Gamma_ii / Gamma*_ii: on a finite data set the rank-k minimisers already hold a part of the
        components not yet learned (finite-sample cross terms; up to about 10% here), which would read as
        the next component starting with the previous one."""
        gamma = np.diagonal(self.rec.numpy("gamma", n + 1), axis1=1, axis2=2)
        place = [i for grp in self.theory["order"] for i in grp]
        diag = np.array([np.diag(m) for m in self.minima])  # (D + 1, D)
        before = np.array([diag[place.index(i), i] for i in range(len(place))])
        after = np.array([diag[place.index(i) + 1, i] for i in range(len(place))])
        return (gamma - before) / (after - before)

    def finish(self, model: nn.Module, history: list[dict]) -> dict[str, Any]:
        steps, loss = staircase.loss_trace(self.trace_numpy(), history)
        n = int(np.isfinite(self.trace_numpy()).sum())
        fractions = self.learned_fractions(n)
        # steps[k] = k: the loss of the weights after k updates, as the records of Gamma and AGF's events count
        observed_drops = staircase.drop_steps(steps, loss, self.theory["levels"])
        checks = {
            "order": self.order_check(fractions),
            "plateau_levels": self.plateau_check(steps, loss),
            "drop_times": self.time_check(observed_drops),
        }
        self.plot(steps, loss, fractions)
        return {
            "prediction": self.theory,
            "observed": {
                "drop_steps": observed_drops,
                "plateaus": staircase.find_plateaus(steps, loss),
                "final_loss": float(loss[-1]) if len(loss) else None,
            },
            "checks": checks,
        }

    def resolved_order(self) -> list[list[int]]:
        """The predicted order (descending eigenvalue, equal eigenvalues tied) with consecutive components
        merged into one group where AGF's drops for them are within the time tolerance of each other,
        t_b - t_a < TIME_TOL (t_a + t_b): the init's alignment makes them escape together, and no run could
        tell their order apart within the precision the drop times are predicted to. A component whose
        drop AGF puts beyond the run is kept in its own group (the check then fails: never learned)."""
        drops = self.theory["drop_steps"]
        groups: list[list[int]] = []
        j = 0  # AGF's events come in the descending order: event j is the j-th component of that order
        for grp in self.theory["order"]:
            first, j = j, j + len(grp)
            close = (
                groups
                and len(grp) == 1
                and first < len(drops)
                and drops[first] - drops[first - 1] < TIME_TOL * (drops[first] + drops[first - 1])
            )
            if close:
                groups[-1] = groups[-1] + grp
            else:
                groups.append(list(grp))
        return groups

    def order_check(self, fractions: np.ndarray) -> dict[str, Any]:
        """Components learned in descending eigenvalue order, read from each component's progress between its
        AGF plateaus (``learned_fractions``): each must be half learned before the next one is 10% learned
        (staircase.order_check), for every pair AGF predicts resolvable (``resolved_order``). So drops that
        overlap where AGF separates them are a tie and fail, as is a component never half learned (too few
        steps); and at least one ordered pair is required: equal eigenvalues, or a large init where AGF's
        drops all come together, predict no ordered staircase, and fail."""
        steps = np.arange(len(fractions), dtype=float)
        residual = np.abs(1.0 - fractions)
        learned = staircase.learning_steps(steps, residual, np.ones(fractions.shape[1]))
        labels = [f"PC{i + 1} (lambda {v:g})" for i, v in enumerate(self.tc.spectrum)]
        groups = self.resolved_order()
        out = staircase.order_check(groups, learned, labels)
        if len(groups) < 2:
            out["passed"] = False
            out["notes"] = ["AGF predicts no ordered staircase here (tied eigenvalues or drops together)"]
        return out

    def plateau_check(self, steps: np.ndarray, loss: np.ndarray) -> dict[str, Any]:
        """AGF's levels L_0..L_D (the empirical loss minimised over Gamma of rank <= j) are plateaus of the run
        within LEVEL_TOL, found without the prediction (staircase.find_plateaus: 1% flatness on a log grid).
        2%: a plateau's median sits above its minimum by the dormant heads' growth and the active heads'
        residual transient, well under 1% of the level at the shipped init (measured: docs). Required: L_0
        and L_D always, and each intermediate level whose plateau AGF predicts long enough for the log grid
        to see, drop_{j+1} - drop_j >= 2 x staircase.min_plateau_length (two, for the drops' own widths);
        at least one intermediate level must be required, else there is no staircase to check. Fails where
        the init is too large for plateaus (no L_0) or the run stops before the last level."""
        levels, drops = self.theory["levels"], self.theory["drop_steps"]
        t_end = float(self.cfg.train.max_steps)
        required, skipped = [0], []
        for j in range(1, len(levels) - 1):
            long = j < len(drops) and (drops[j] - drops[j - 1]) >= 2 * staircase.min_plateau_length(drops[j], t_end)
            (required if long or j >= len(drops) else skipped).append(j)
        required.append(len(levels) - 1)
        gaps = [(a - b) / a for a, b in zip(levels[:-1], levels[1:])]
        out = staircase.match_levels([levels[j] for j in required], staircase.find_plateaus(steps, loss), LEVEL_TOL)
        notes = []
        if skipped:
            out["not_resolvable"] = {f"L_{j}": round(levels[j], 6) for j in skipped}
        if len(required) < 3:
            notes.append("AGF predicts no intermediate plateau long enough to see: no staircase to check")
        if min(gaps) < 2 * LEVEL_TOL:
            notes.append(f"levels {min(gaps):.3g} apart (relative): below 2 x {LEVEL_TOL}, not resolvable")
        if notes:
            out["passed"], out["notes"] = False, notes
        return out

    def time_check(self, observed: list[float | None]) -> dict[str, Any]:
        """Each drop (the first step below the midpoint of consecutive levels) within TIME_TOL (relative) of
        AGF's event for it (icl_theory.agf_staircase: the dormant heads' own steps on the frozen residual).
        AGF neglects the escaping head's feedback on the residual before the midpoint and the previous
        drop's finite duration. The escaping head's transition lasts about 1 / (lr lambda_i^2 a*) steps (a*
        its final size, about 1), against a drop at about 1 / (lr lambda_i^2 a0) (a0 its aligned init
        size), so the neglected part is of order a0 / a*, a few percent at init 1e-2; 10% leaves room for
        the feedback of the dormant heads (measured margins in docs). A drop AGF puts beyond the run, or a
        run that never drops, fails."""
        predicted = self.theory["drop_steps"]
        errors = []
        for j, seen in enumerate(observed):
            if j >= len(predicted) or seen is None:
                errors.append(float("inf"))
            else:
                errors.append(abs(seen - predicted[j]) / predicted[j])
        extra = {"notes": self.theory["notes"]} if self.theory["notes"] else {}
        return check(
            bool(errors) and max(errors) <= TIME_TOL,
            {"drop_steps": predicted, "tolerance": TIME_TOL},
            observed,
            max_rel_error=round(max(errors), 4) if errors else None,
            **extra,
        )

    def plot(self, steps: np.ndarray, loss: np.ndarray, fractions: np.ndarray) -> None:
        """staircase.png: the loss with AGF's levels and drop steps; each component's progress (learned_fractions)."""
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(9, 3.4))
        ax.plot(steps, loss, color="k", lw=1.4, label="training loss")
        for j, level in enumerate(self.theory["levels"]):
            ax.axhline(level, color="tab:red", ls="--", lw=0.7, label="AGF levels" if j == 0 else None)
        colors = plt.cm.viridis(np.linspace(0, 0.85, fractions.shape[1]))
        for j, t in enumerate(self.theory["drop_steps"]):
            for a in (ax, bx):
                a.axvline(t, color="tab:blue", ls=":", lw=0.9, label="AGF drops" if j == 0 and a is ax else None)
        for i, lam in enumerate(self.tc.spectrum):
            bx.plot(np.arange(1, len(fractions)), fractions[1:, i], color=colors[i], lw=1.4, label=f"lambda {lam:g}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.legend(fontsize=7, loc="lower left")
        bx.set_xscale("log")
        bx.set_xlabel("step")
        bx.set_ylabel("progress of each component's drop")
        bx.legend(fontsize=7, loc="upper left")
        title = f"in-context regression, {self.tc.heads} heads, init {self.tc.init_scale:g}"
        finish(fig, self.ctx.run_dir / "staircase.png", title=title, dpi=100)  # small enough for docs/img
