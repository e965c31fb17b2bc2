"""Modular addition (a + b) mod p, sequential group composition's C_p, k = 2 case, with the quadratic network
f = ((x_a U^T + x_b V^T)^2) W of the Alternating Gradient Flows paper, trained by gradient descent with momentum.

    python train.py configs/small_tasks/modular_addition.toml

It is ``GroupCompositionTask`` (data, loss, spectra, plots, the staircase in closed form) with its own
template (amplitudes at a few frequencies), network and prediction: AGF run from the run's own initial
weights (``agf_power.class_agf``), whose onsets the checks hold the run to, the closed-form escape steps
as lower bounds, and optionally AGF restarted from the run's weights after each level (a diagnostic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from configs import UserError
from small_tasks.composition import agf, agf_power, groups
from small_tasks.composition.group_composition import LEVEL_TOL, ZERO_LOSS, GroupCompositionTask
from small_tasks.composition.models import PowerMLP
from small_tasks.toolkit import staircase
from small_tasks.toolkit.base import check


@dataclass
class ModularAdditionConfig:
    name: str = "modular_addition"
    p: int = 20
    frequencies: list[int] = field(default_factory=lambda: [1, 3, 5])
    spectrum: list[float] = field(default_factory=lambda: [10.0, 5.0, 2.5])  # |x_hat| at +-frequencies
    phase: str = "random"  # random (seeded) | zero (the reference code's cosine template)
    template_seed: int = 0
    width: int = 18
    init_scale: float = 1e-2  # U, V ~ init * N(0,1)/sqrt(2p), W ~ init * N(0,1)/sqrt(p)
    restart_agf: bool = False  # keep the weights at logged steps; restart AGF from them after each level


class ModularAdditionTask(GroupCompositionTask):
    """(a + b) mod p with the quadratic network f = ((x_a U^T + x_b V^T)^2) W and AGF's drop times."""

    config_class = ModularAdditionConfig

    def setup(self) -> None:
        tc = self.tc
        if tc.p < 3:
            raise UserError(f"task.p must be >= 3, got {tc.p}")
        if len(tc.frequencies) != len(tc.spectrum):
            raise UserError("task.frequencies and task.spectrum need the same length (one amplitude per frequency)")
        if any(not 0 < f < (tc.p + 1) / 2 for f in tc.frequencies) or len(set(tc.frequencies)) != len(tc.frequencies):
            raise UserError(f"task.frequencies must be distinct and in 1..{(tc.p - 1) // 2} for p={tc.p}")
        self.group = groups.cyclic(tc.p)
        self.k = 2
        self.sampled, self.segments = False, None  # every pair, the sum's template as the one target
        self.amplitudes = dict(zip(tc.frequencies, tc.spectrum))
        self.powers = [0.0] * tc.p
        for f, a in self.amplitudes.items():
            self.powers[f] = self.powers[tc.p - f] = a**2 / tc.p  # P = |x_hat|^2 / p per complex irrep
        self.template = groups.template_from_powers(self.group, self.powers, tc.template_seed, tc.phase)
        self.snapshots: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # step -> weights, with restart_agf

    def make_model(self) -> nn.Module:
        """The quadratic network: U and V ~ init * N(0, 1) / sqrt(2p), W ~ init * N(0, 1) / sqrt(p)."""
        p, tc = self.tc.p, self.tc
        return PowerMLP(2 * p, tc.width, p, 2, tc.init_scale, in_fan=2 * p, out_fan=p)

    def step_metrics(self, model: nn.Module, step: int) -> dict[str, Any]:
        if self.tc.restart_agf:
            self.snapshots[step] = (model.W_in.detach().clone(), model.W_out.detach().clone())
        return super().step_metrics(model, step)

    def initial_norm(self) -> float:
        """sqrt(2) * init: U and V rows carry init^2 / 2 each, a W row init^2."""
        return float(np.sqrt(2.0)) * self.tc.init_scale

    def class_label(self, c: int) -> str:
        return f"k={min(self.classes[c])}"

    def title(self) -> str:
        return f"modular addition p={self.tc.p}, quadratic width {self.tc.width}"

    def theory_applies(self) -> bool:
        """AGF is run here for the reference's optimizer: gradient descent with momentum (flow time lr / (1 - beta)
        per step), without a schedule or clipping, which would change that clock."""
        return self.cfg.optim.name == "sgdm" and self.clock() is not None

    def predict(self) -> tuple[dict[str, Any], list[list[int]], list[int]]:
        """The closed-form staircase, the closed-form escape steps (a neuron aligned from the start: lower
        bounds), and AGF run from this run's initial weights (``agf_power.class_agf``): the step at which each
        frequency starts to drop, and the staircase those onsets draw."""
        out, order, utilities = self.staircase()
        if not self.theory_applies():
            return out, order, []
        per_step, theta0 = self.clock(), self.initial_norm()
        label = self.class_label
        out["closed_form_steps"] = {
            label(c): round(float(agf.escape_time(utilities[c], theta0, 2, 0.0)) / per_step, 1)
            for grp in order
            for c in grp
        }
        w_in, w_out = self.init
        t_max = self.cfg.train.max_steps * per_step
        run = agf_power.class_agf(self.x.flatten(1), self.y, w_in, w_out, 2, 0.0, t_max, self.basis, self.owner)
        onsets = sorted((t, c) for c, t in run.onset.items() if c in {c for grp in order for c in grp})
        levels = agf.staircase_levels(self.class_powers(), self.group.order, [[c] for _, c in onsets])
        out["agf"] = {
            "onset_steps": {label(c): round(t / per_step, 1) for t, c in onsets},
            "staircase": {"steps": [round(t / per_step, 1) for t, _ in onsets], "levels": levels},
            "neurons": {label(c): {"first": run.first[c], "absorbed": run.absorbed[c]} for _, c in onsets},
        }
        return out, order, []

    def predicted_curve(self, pred: dict) -> tuple[list[float], list[float]] | None:
        return (pred["agf"]["staircase"]["steps"], pred["agf"]["staircase"]["levels"]) if "agf" in pred else None

    def depth_applies(self) -> bool:
        return False  # one quadratic layer on a pair: no deeper composer to read a staircase of

    def finish(self, model: nn.Module, history: list[dict]) -> dict[str, Any]:
        out = super().finish(model, history)
        if self.tc.restart_agf and self.theory_applies():
            out["agf_restarted"] = self.restarted_agf(history)
        return out

    def restarted_agf(self, history: list[dict]) -> dict[str, Any]:
        """AGF restarted from the run's own weights at the first logged step where every frequency before the
        next one in the predicted order has at most LEVEL_TOL of its share left: the step at which AGF then
        starts the next frequency, the neuron that starts it, and that neuron's weight in it and in the
        frequencies before it, at initialization and at the restart; and the largest part of the loss, at the
        logged steps since the previous restart, in residual modes that are not functions of a + b
        (``off_sum_loss``). A diagnostic, not a check (it reads the run): AGF from the initial weights
        assumes the dormant neurons come out of each drop as they went in, and sees a residual that is a
        function of a + b, against which each neuron's frequencies grow independently; restarted after the
        drop it assumes neither, so where the two differ, what happened during the drop moved the onset.
        The weights are kept in memory, so a resumed run restarts from the steps since it resumed only."""
        logged = [r for r in history if "loss_by_irrep" in r and r["step"] in self.snapshots]
        resid = np.array([[sum(r["loss_by_irrep"][i] for i in cls) for cls in self.classes] for r in logged])
        share = np.array(self.class_powers()) / self.group.order
        order = [c for grp in self.staircase()[1] for c in grp]
        per_step, label = self.clock(), self.class_label
        out: dict[str, Any] = {}
        previous = 0
        for n in range(1, len(order)):
            done, nxt = order[:n], order[n]
            at = next((j for j in range(len(logged)) if all(resid[j, c] <= LEVEL_TOL * share[c] for c in done)), None)
            if at is None:
                out[label(nxt)] = "the frequencies before it never reached their level"
                continue
            step = logged[at]["step"]
            w_in, w_out = self.snapshots[step]
            since = [r["step"] for r in logged if previous <= r["step"] <= step]
            off_sum = max(self.off_sum_loss(*self.snapshots[s]) for s in since)
            previous = step
            t_max, x = self.cfg.train.max_steps * per_step, self.x.flatten(1)
            args = (x, self.y, w_in, w_out, self.k, 0.0, t_max, self.basis, self.owner)
            run = agf_power.class_agf(*args, learned=tuple(done), t0=step * per_step)
            found = {"restart_step": step, "max_off_sum_loss": float(f"{off_sum:.4g}")}
            if nxt not in run.onset:
                out[label(nxt)] = {**found, "onset_step": None}
                continue
            i = run.first[nxt]
            out[label(nxt)] = {
                **found,
                "onset_step": round(run.onset[nxt] / per_step, 1),
                "neuron": i,
                "its_weight_at_init_and_restart": {
                    label(c): [round(self.class_weight(w[0], w[1], i, c), 5) for w in (self.init, (w_in, w_out))]
                    for c in [*done, nxt]
                },
                "its_growth_since_previous_restart": self.growth_by_residual(i, nxt, since),
            }
        return out

    def split_residual(self, w_in: torch.Tensor, w_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The residual y - f of these weights split into its function of a + b (its mean over the pairs with
        the same sum; the targets are such functions) and the rest."""
        resid = self.y - (self.x.flatten(1) @ w_in.T).square() @ w_out.T
        p, total = self.tc.p, self.seqs.sum(1) % self.tc.p
        mean = torch.zeros(p, p, dtype=resid.dtype, device=resid.device).index_add_(0, total, resid) / (len(resid) / p)
        return mean[total], resid - mean[total]

    @torch.no_grad()
    def off_sum_loss(self, w_in: torch.Tensor, w_out: torch.Tensor) -> float:
        """The part of the loss of these weights in residual modes that are not functions of a + b."""
        return float(self.split_residual(w_in, w_out)[1].square().mean())

    @torch.no_grad()
    def growth_by_residual(self, i: int, c: int, steps: list[int]) -> dict[str, float]:
        """How much neuron i's weight in class c grew over the logged ``steps`` (ln of the ratio), and the
        parts of it that the residual's function of a + b and its rest drove: the rate d ln|theta_c|/dt =
        theta_c . g_c / |theta_c|^2, g = -grad L from each part, at each interval's start times its flow time;
        and the rest's part again for the neuron cut down to its weights in c (what the rest does to a
        neuron with nothing in the other classes).
        The sum resolves the growth only as finely as the log does: the two parts against the observed growth
        say how well (within 10% on the reference runs, logged every 100 steps; not during the few-hundred-step
        drops at 5x the learning rate)."""
        x, n, p = self.x.flatten(1), self.y.numel(), self.tc.p
        cols = self.basis[:, self.owner[:, c] > 0]

        def part(theta: torch.Tensor) -> torch.Tensor:  # (3p,) -> its coordinates in class c, per block
            return (theta.reshape(-1, p) @ cols).flatten()

        def rate(u: torch.Tensor, w: torch.Tensor, r: torch.Tensor) -> float:  # d ln|theta_c|/dt driven by r
            h = x @ u
            g = torch.cat([(4 / n) * (h * (r @ w)) @ x, (2 / n) * (h * h) @ r])
            theta = part(torch.cat([u, w]))
            return float(theta @ part(g) / theta.square().sum())

        out = {"a+b": 0.0, "rest": 0.0, "rest_on_its_part_in_c_alone": 0.0}
        proj = cols @ cols.T
        for s0, s1 in zip(steps[:-1], steps[1:]):
            w_in, w_out = self.snapshots[s0]
            u, w = w_in[i], w_out[:, i]
            along, rest = self.split_residual(w_in, w_out)
            dt = (s1 - s0) * self.clock()
            out["a+b"] += rate(u, w, along) * dt
            out["rest"] += rate(u, w, rest) * dt
            out["rest_on_its_part_in_c_alone"] += rate((u.reshape(-1, p) @ proj).flatten(), proj @ w, rest) * dt
        first, last = (self.class_weight(*self.snapshots[s], i, c) for s in (steps[0], steps[-1]))
        return {"observed": round(math.log(last / first), 3), **{k: round(v, 3) for k, v in out.items()}}

    def class_weight(self, w_in: torch.Tensor, w_out: torch.Tensor, i: int, c: int) -> float:
        """The norm of neuron i's weights (its row of U and V, its column of W) in class c's subspace."""
        theta = torch.cat([w_in[i : i + 1], w_out[:, i : i + 1].T], 1).double()
        return float(agf_power.class_shares(theta, self.k + 1, self.basis.double(), self.owner.double())[0, c]) ** 0.5

    def checks(
        self,
        pred: dict,
        order: list[list[int]],
        recruited: list[int],
        steps: np.ndarray,
        loss: np.ndarray,
        learned: list[dict],
    ) -> dict[str, Any]:
        """AGF's predictions against the run.

        - plateau_levels: every per-frequency level after the first, (1/p) * sum of the powers of the
          frequencies not yet learned, is a plateau of the run within 2%. Fails when two frequencies drop
          together, in a run too short to reach a level.
        - plateaus_are_predicted_levels: the converse for the long plateaus, those spanning at least half
          the log-time of the shortest predicted one (start to first onset, onset to onset): each is a
          per-frequency level within 2%. Fails on a
          frequency learned in two long pieces or in the wrong order. (Shorter plateaus are the partial fits
          while a frequency's neurons join one by one, which the per-frequency theory does not resolve.)
        - learned_in_predicted_order: ``staircase.order_check`` on the order of descending U*_c (of |x_hat|).
        - drops_at_agf_steps: each frequency starts to drop (10% of its share gone) within 25% of its onset
          in AGF, both ways. Fails on a run slower or faster than AGF says from its initial weights: another
          learning rate, initialization or spectrum than the prediction's.
        - drops_after_closed_form_bounds: each frequency starts to drop after the closed-form escape step
          of a neuron aligned from the start at the typical initial norm and driven by the targets alone.
          Fails on a run faster than any such neuron (a larger initialization or learning rate), and also
          where a drop's residual off the functions of a + b has grown the neuron that starts a later
          frequency (``restarted_agf``), which AGF's utility phase does not bound.
        - reaches_zero_loss: the final loss below 1% of the smallest non-zero level.
        """
        levels, run = pred["levels"], pred["agf"]
        plateaus = staircase.find_plateaus(steps, loss)
        at = [1.0, *run["staircase"]["steps"]]  # the predicted plateaus: from the start to each onset, onset to onset
        span = min((math.log(b / a) for a, b in zip(at[:-1], at[1:]) if b > a), default=0.0)
        long = [p for p in plateaus if math.log(max(p["end"], 1.0) / max(p["start"], 1.0)) >= span / 2]
        labels = [self.class_label(c) for c in range(len(self.classes))]
        final = float(loss[-1]) if len(loss) else float("nan")
        smallest = min(v for v in levels if v > 0)
        observed = {labels[c]: learned[c]["start"] for grp in order for c in grp}
        ok_bound = all(got is not None and got >= pred["closed_form_steps"][name] for name, got in observed.items())
        bounds = {k: f">= {v:.0f}" for k, v in pred["closed_form_steps"].items()}
        return {
            "plateau_levels": staircase.match_levels(levels[1:], plateaus, LEVEL_TOL),
            "plateaus_are_predicted_levels": {
                **staircase.match_plateaus(long, levels, LEVEL_TOL),
                "min_log_span": round(span / 2, 3),
            },
            "learned_in_predicted_order": staircase.order_check(order, learned, labels),
            "drops_at_agf_steps": self.onset_check(order, learned, run["onset_steps"], set()),
            "drops_after_closed_form_bounds": check(ok_bound, bounds, observed),
            "reaches_zero_loss": check(final < ZERO_LOSS * smallest, f"< {ZERO_LOSS * smallest:.3g}", final),
        }
