"""Sequential group composition (and modular addition, its C_p, k = 2 case) as Tasks for train.py.

Inputs: k elements of a finite group G, each encoded as the template shifted by it; target: the
template shifted by their product. Full batch (all |G|^k sequences), MSE averaged over examples and
output coordinates, so the loss splits exactly into one term per irrep: (1/|G|) * residual power.

    python train.py configs/small_tasks/group_composition.toml
    python train.py configs/small_tasks/group_composition.toml --task.group=D5 --task.powers=[0,2.5,10,5]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import optim
from configs import Config, UserError
from runtime import Context
from small_tasks import agf, groups, plots, staircase
from small_tasks.models import PowerMLP, build_model, neuron_param_groups
from tasks import SmallTask

LEVEL_TOL = 0.02  # plateaus must match the predicted levels within 2%


@dataclass
class GroupCompositionConfig:
    name: str = "group_composition"
    group: str = "C11"  # Cn, Dn, Sn (n <= 5), products like C4xC4
    k: int = 2  # elements per sequence
    template: str = "powers"  # powers | onehot
    powers: list[float] = field(default_factory=list)  # one per irrep, in groups.py's order; [] = default
    template_seed: int = 0
    model: str = "mlp"  # mlp | rnn | deep
    width: int = 200
    init_scale: float = 1e-5  # weights ~ init_scale * N(0, 1) / sqrt(fan_in)


class GroupCompositionTask(SmallTask):
    config_class = GroupCompositionConfig
    data_seed_key = "template_seed"

    def __init__(self, cfg: Config, ctx: Context):
        super().__init__(cfg, ctx)
        self.setup()
        seqs = groups.sequences(self.group, self.k)
        x = np.stack([groups.shift(self.group, self.template, seqs[:, j]) for j in range(self.k)], axis=1)
        y = groups.shift(self.group, self.template, groups.compose(self.group, seqs))
        self.x = torch.tensor(x, dtype=torch.float32, device=ctx.device)
        self.y = torch.tensor(y, dtype=torch.float32, device=ctx.device)
        self.proj = torch.tensor(self.group.projectors(), dtype=torch.float32, device=ctx.device)
        self.classes = self.group.classes()

    def setup(self) -> None:
        """Group, k and template from the config."""
        tc = self.tc
        self.group = groups.parse_group(tc.group)
        self.k = tc.k
        if tc.k < 2:
            raise UserError(f"task.k must be >= 2, got {tc.k}")
        if self.group.order**tc.k > 2_000_000:
            raise UserError(f"{tc.group} with k={tc.k} has {self.group.order**tc.k} sequences; lower task.k")
        if tc.template == "powers":
            self.powers = list(tc.powers) or groups.default_powers(self.group)
            self.template = groups.template_from_powers(self.group, self.powers, tc.template_seed)
        elif tc.template == "onehot":
            self.template = groups.onehot_template(self.group)
            self.powers = [float(v) for v in groups.power_spectrum(self.group, self.template)]
        else:
            raise UserError(f"unknown task.template '{tc.template}'; use powers or onehot")

    def build_model(self) -> nn.Module:
        if self.tc.width < 1:
            raise UserError(f"task.width must be >= 1, got {self.tc.width}")
        return build_model(self.tc.model, self.group.order, self.tc.width, self.k, self.tc.init_scale)

    def param_groups(self, model: nn.Module) -> list[dict]:
        if self.cfg.optim.name == "per_neuron":
            return neuron_param_groups(model)
        return optim.param_groups(model, self.cfg.optim)

    def batch(self, micro_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y

    def loss(self, model: nn.Module, batch: Any, micro_index: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(model(x), y)
        self.record(micro_index, loss)
        return loss

    @property
    def tokens_per_micro_batch(self) -> int:
        return len(self.x)

    @torch.no_grad()
    def spectra(self, model: nn.Module) -> tuple[np.ndarray, np.ndarray]:
        """Mean output power per irrep, and the per-irrep share of the loss (they sum to the loss)."""
        out = model(self.x)
        err = out - self.y
        power = torch.einsum("bg,rgh,bh->r", out, self.proj, out) / len(out)
        resid = torch.einsum("bg,rgh,bh->r", err, self.proj, err) / err.numel()
        return power.cpu().numpy(), resid.cpu().numpy()

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            return {"val_loss": float(F.mse_loss(model(self.x), self.y))}

    def step_metrics(self, model: nn.Module, step: int) -> dict[str, Any]:
        power, resid = self.spectra(model)
        return {"power": [round(float(v), 7) for v in power], "loss_by_irrep": [float(f"{v:.6g}") for v in resid]}

    # ---------------------------------------------------------------- theory and checks

    def class_powers(self) -> list[float]:
        return [sum(self.powers[i] for i in cls) for cls in self.classes]

    def class_label(self, c: int) -> str:
        return "+".join(self.group.irreps[i].name for i in self.classes[c])

    def predicted_drops(self) -> list[float] | None:
        return None

    def title(self) -> str:
        return f"{self.tc.group}, k={self.k}, {self.tc.model} width {self.tc.width}"

    def extra_checks(self, steps: np.ndarray, loss: np.ndarray, levels: list[float]) -> dict[str, Any]:
        return {}

    def finish(self, model: nn.Module, history: list[dict]) -> dict[str, Any]:
        levels, drop_groups = agf.staircase_levels(self.class_powers(), self.group.order)
        steps, loss = staircase.loss_trace(self.trace_numpy(), history)
        plateaus = staircase.find_plateaus(steps, loss)
        logged = [r for r in history if "loss_by_irrep" in r]
        log_steps = np.array([r["step"] for r in logged], dtype=float)
        resid = np.array([r["loss_by_irrep"] for r in logged]).reshape(len(logged), -1)
        power = np.array([r["power"] for r in logged]).reshape(len(logged), -1)
        by_class = lambda a: np.stack([a[:, cls].sum(axis=1) for cls in self.classes], axis=1)
        cp = np.array(self.class_powers())
        learned_at = staircase.learn_steps(log_steps, by_class(resid), cp / self.group.order)
        expected_order = [self.class_label(c) for grp in drop_groups for c in grp]
        # Measured on D5 and S4: across irrep dimensions the order follows the coefficient's singular
        # value sqrt(P |G|) / d (equal for all of an irrep's singular values here), not P itself.
        size = [
            np.sqrt(cp[c] / len(cls) * self.group.order) / self.group.irreps[cls[0]].dim
            for c, cls in enumerate(self.classes)
        ]
        by_size = [self.class_label(c) for c in sorted(range(len(cp)), key=lambda c: -size[c]) if cp[c] > 0]
        nonzero = [c for c in range(len(cp)) if cp[c] > 0]
        observed = sorted(nonzero, key=lambda c: (learned_at[c] is None, learned_at[c] or 0.0))
        order_ok = all(learned_at[c] is not None for c in nonzero) and all(
            cp[a] >= cp[b] for a, b in zip(observed[:-1], observed[1:])
        )
        final = float(loss[-1]) if len(loss) else float("nan")
        smallest = min(v for v in levels if v > 0)
        checks = {
            "plateau_levels": staircase.match_levels(levels, plateaus, LEVEL_TOL),
            "learned_in_order_of_power": staircase.check(
                order_ok,
                expected_order,
                [self.class_label(c) for c in observed],
                learned_at_step={self.class_label(c): learned_at[c] for c in nonzero},
                order_by_coefficient_size=by_size,
            ),
            "reaches_zero_loss": staircase.check(final < 0.01 * smallest, f"< {0.01 * smallest:.3g}", final),
            **self.extra_checks(steps, loss, levels),
        }
        run_dir = self.ctx.run_dir
        title = self.title()
        plots.plot_loss(run_dir / "loss.png", steps, loss, levels, self.predicted_drops(), title)
        if len(logged):
            labels = [self.class_label(c) for c in range(len(self.classes))]
            plots.plot_spectrum(run_dir / "spectrum.png", log_steps, by_class(power), cp, labels, title)
        return {
            "prediction": {
                "levels": levels,
                "order": expected_order,
                "order_by_coefficient_size": by_size,
                "drop_steps": self.predicted_drops(),
            },
            "observed": {"plateaus": plateaus, "final_loss": final},
            "checks": checks,
        }


@dataclass
class ModularAdditionConfig:
    name: str = "modular_addition"
    p: int = 20
    frequencies: list[int] = field(default_factory=lambda: [1, 3, 5])
    spectrum: list[float] = field(default_factory=lambda: [10.0, 5.0, 2.5])  # |x_hat| at +-frequencies
    template_seed: int = 0
    width: int = 18
    init_scale: float = 1e-2  # U, V ~ init * N(0,1)/sqrt(2p), W ~ init * N(0,1)/sqrt(p)


class ModularAdditionTask(GroupCompositionTask):
    """(a + b) mod p with the quadratic network f = ((x_a U^T + x_b V^T)^2) W and AGF's drop times."""

    config_class = ModularAdditionConfig
    data_seed_key = "template_seed"

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
        self.amplitudes = dict(zip(tc.frequencies, tc.spectrum))
        self.powers = [0.0] * tc.p
        for f, a in self.amplitudes.items():
            self.powers[f] = self.powers[tc.p - f] = a**2 / tc.p  # P = |x_hat|^2 / p per complex irrep
        self.template = groups.template_from_powers(self.group, self.powers, tc.template_seed)

    def build_model(self) -> nn.Module:
        p, tc = self.tc.p, self.tc
        return PowerMLP(2 * p, tc.width, p, 2, tc.init_scale, in_fan=2 * p, out_fan=p)

    def drops(self) -> list[dict[str, float]]:
        o = optim.settings(self.cfg.optim)
        momentum = getattr(o, "momentum", 0.0)
        return agf.modular_addition_drops(self.tc.p, self.amplitudes, self.tc.init_scale, o.lr, momentum)

    def predicted_drops(self) -> list[float] | None:
        return [d["step"] for d in self.drops()]

    def class_label(self, c: int) -> str:
        return f"k={min(self.classes[c])}"

    def title(self) -> str:
        return f"modular addition p={self.tc.p}, quadratic width {self.tc.width}"

    def extra_checks(self, steps: np.ndarray, loss: np.ndarray, levels: list[float]) -> dict[str, Any]:
        bounds = self.predicted_drops()
        observed = staircase.drop_steps(steps, loss, levels)
        ok_bounds = all(o is not None and o >= b for o, b in zip(observed, bounds))
        ratios = [b / a if a and b else None for a, b in zip(observed[:-1], observed[1:])]
        ok_ratios = bool(ratios) and all(r is not None and 4 <= r <= 16 for r in ratios)
        return {
            "drops_after_lower_bounds": staircase.check(
                ok_bounds,
                [f">= {b:.0f}" for b in bounds],
                observed,
                observed_over_bound=[round(o / b, 3) if o else None for o, b in zip(observed, bounds)],
            ),
            "drop_time_ratios": staircase.check(
                ok_ratios, "each in [4, 16] (theory ~8)", [round(r, 3) if r else None for r in ratios]
            ),
        }
