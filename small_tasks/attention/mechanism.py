"""One attention layer from small initialization: what the unlearned query bias bQ does to the saddle that
symmetric attention must escape.

    python train.py configs/small_tasks/attention_mechanism.toml                          # symmetric
    python train.py configs/small_tasks/attention_mechanism.toml --symmetry.mode=bq       # with bQ

The model: one attention layer over one-hot tokens (vocabulary V, context T, every position attends to
every position), H heads of size head_dim with learned W_Q, W_K (H, head_dim, V), softmax or linear
attention (``task.attention``), fixed values (a random table of the data instance), the heads' outputs
averaged, and a learned output bias; no MLP. bQ and bV are the GPT's own draws (model/symmetry.py, one
layer): a fresh draw per step in training, the means at evaluation. Several copies train side by side
in one run, one per ``task.init_scales`` entry: the same random init direction (from run.seed) times
alpha, so only alpha differs between them.

The data: each sequence's targets are what a teacher attention layer of the same kind outputs, with
logits qi_strength * w[key] (a query-independent "attend to these tokens" component, w a centred unit-RMS
random vector) plus qd_strength * z[query] z[key] (a query-dependent one: tokens of two classes z = +-1
attend to their own class). ``qi_strength = 0`` is the control without a query-independent component.
The theory (small_tasks/attention/theory.py, docs/science.md) gives the checks; see ``finish``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from configs import Config, UserError
from model.symmetry import BiasDraws, BiasSpec
from runtime import Context
from small_tasks.attention import theory as th
from small_tasks.toolkit import noether, staircase
from small_tasks.toolkit.base import EnsembleTask, check
from small_tasks.toolkit.plots import finish, plt
from small_tasks.toolkit.records import Recorder, law_check, sgd_settings

CHARGE_TOL = 1e-9  # float64: the discrete law holds to accumulated round-off
BROKEN_FACTOR = 100.0  # a broken law must miss by this many times the tolerance
SLOPE_TOL = 0.25  # fitted escape slope within 25% of the saddle's prediction
SEEDED_FRACTION = 0.25  # bQ seeding the saddle: fitted slope below this fraction of the saddle's
LEVEL_TOL = 0.03  # plateau levels within 3%
DRIVE_FLOOR = 1e-9  # |G^T 1| / s_1 below this: no query-independent drive (round-off of an exact zero)
DATA, INIT = 0, 1  # random streams: the data instance from task.data_seed, the init from run.seed


@dataclass
class AttentionMechanismConfig:
    name: str = "attention_mechanism"
    attention: str = "softmax"  # softmax | linear
    init_scales: list[float] = field(default_factory=lambda: [1e-2, 1e-3, 1e-4, 1e-5])
    heads: int = 2
    head_dim: int = 4
    vocab: int = 8
    context: int = 8
    n: int = 256  # sequences in the (full) batch
    qi_strength: float = 3.0  # 0: the control without a query-independent component
    qd_strength: float = 1.5
    # every sequence holds context/2 tokens of each class z: then the query-dependent logits sum to 0 over
    # each sequence's queries, and for linear attention the query-independent gradient G^T 1 is exactly 0
    balanced: bool = False
    data_seed: int = 0

    def check(self) -> None:
        if self.attention not in th.ATTENTIONS:
            raise UserError(f"unknown task.attention '{self.attention}'; use one of {', '.join(th.ATTENTIONS)}")
        if len(self.init_scales) < 3 or min(self.init_scales) <= 0 or len(set(self.init_scales)) < 3:
            raise UserError("task.init_scales needs at least three distinct values > 0, e.g. [1e-2, 1e-3, 1e-4]")
        if min(self.heads, self.head_dim, self.n) < 1 or min(self.vocab, self.context) < 2:
            raise UserError("task.heads, head_dim and n must be >= 1 and task.vocab, context >= 2; fix the values")
        if self.qi_strength < 0 or self.qd_strength < 0 or self.qi_strength + self.qd_strength == 0:
            raise UserError("task.qi_strength and task.qd_strength must be >= 0 and not both 0")
        if self.balanced and (self.vocab % 2 or self.context % 2):
            raise UserError("task.balanced needs an even task.vocab and task.context (two classes, half each)")


class AttentionEnsemble(nn.Module):
    """K independent one-layer attention models (float64); W_Q, W_K (K, H, head_dim, V), bias (K, dv)."""

    def __init__(self, wq: torch.Tensor, wk: torch.Tensor, values: torch.Tensor, attention: str):
        super().__init__()
        self.wq, self.wk = nn.Parameter(wq.clone()), nn.Parameter(wk.clone())
        self.bias = nn.Parameter(torch.zeros(wq.shape[0], values.shape[1], dtype=torch.float64))
        self.register_buffer("values", values)
        self.attention = attention

    def forward(self, tokens: torch.Tensor, biases: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """Outputs (K, N, T, dv); ``biases``: one layer's draw, {"q"|"v": (1, heads or 1, head_dim)}."""
        biases = biases or {}
        q = self.wq[..., tokens].movedim(2, -1)  # (K, H, N, T, head_dim)
        k = self.wk[..., tokens].movedim(2, -1)
        v = self.values[tokens]  # (N, T, dv = head_dim)
        if "q" in biases:
            q = q + biases["q"].double()[0][:, None, None, :]
        if "v" in biases:
            v = v + biases["v"].double()[0][:, None, None, :]
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        return (th.attend(logits, self.attention) @ v).mean(1) + self.bias[:, None, None, :]


class AttentionMechanismTask(EnsembleTask):
    config_class = AttentionMechanismConfig
    data_seed_key = "data_seed"
    recorded = ("trace", "member_loss", "rec")

    def __init__(self, cfg: Config, ctx: Context):
        super().__init__(cfg, ctx)
        tc = self.tc
        rng = np.random.default_rng([tc.data_seed, DATA])
        v, t, dh = tc.vocab, tc.context, tc.head_dim
        w = rng.standard_normal(v)
        w = (w - w.mean()) / max(float(np.sqrt(np.mean((w - w.mean()) ** 2))), 1e-12)
        z = np.where(np.arange(v) % 2 == 0, 1.0, -1.0)
        self.teacher = tc.qi_strength * w[None, :] + tc.qd_strength * np.outer(z, z)  # logits (query, key)
        values = rng.standard_normal((v, dh)) + 0.5  # a mean, so the output bias has something to learn
        if tc.balanced:  # half the positions draw from the even tokens (z = +1), half from the odd ones
            half = rng.integers(0, v // 2, size=(tc.n, t)) * 2 + (np.arange(t) % 2)
            tokens = np.take_along_axis(half, rng.permuted(np.tile(np.arange(t), (tc.n, 1)), axis=1), axis=1)
        else:
            tokens = rng.integers(0, v, size=(tc.n, t))
        self.tokens = torch.tensor(tokens, device=ctx.device)
        self.values = torch.tensor(values, device=ctx.device)
        with torch.no_grad():
            lam = torch.tensor(self.teacher, device=ctx.device)[None]
            logits = lam[:, self.tokens[:, :, None], self.tokens[:, None, :]]
            self.y = (th.attend(logits, tc.attention) @ self.values[self.tokens]).mean(0)
        self.x = self.tokens
        sym = cfg.symmetry
        if sym.learned or sym.scale != "absolute" or sym.k_bias:
            raise UserError(
                "this task draws bQ/bV as written; remove symmetry.learned, symmetry.scale and symmetry.k_bias"
            )
        self.spec = BiasSpec(sym, 1, tc.heads, dh)
        self.draws = BiasDraws(self.spec, cfg.run.seed, ctx.device)
        k, steps = len(tc.init_scales), cfg.train.max_steps
        self.member_loss = torch.full((steps, k), float("nan"), dtype=torch.float64, device=ctx.device)
        shapes = {"charge": (k, tc.heads, dh, dh), "kinetic": (k, tc.heads, dh, dh), "size": (k,)}
        self.rec = Recorder.every_step(steps, shapes, device=ctx.device)
        self.theory = self.predict()

    # ---- theory ----

    def predict(self) -> dict[str, Any]:
        tc = self.tc
        tokens, values, y = self.tokens.cpu(), self.values.cpu(), self.y.cpu()
        level0, g = th.first_plateau(tokens, values, y, tc.attention)
        level1 = th.rank_one_level(tokens, values, y, tc.heads, tc.attention)
        sgd = sgd_settings(self.cfg, self.optim_options, 1)
        lr_eff = float(sgd.lrs[0]) / (1.0 - sgd.momentum)
        mu = torch.full((tc.head_dim,), self.spec.mean("q"), dtype=torch.float64)
        return {
            "levels": [level0, level1],
            "escape_rate": th.escape_rate(g, tc.head_dim, tc.heads),
            "saddle_slope": th.saddle_slope(g, tc.head_dim, tc.heads, lr_eff),
            "first_order_rate": th.first_order_rate(g, mu, tc.head_dim, tc.heads) if self.spec.has_q else 0.0,
            "query_independent_drive": float(g.sum(0).norm() / torch.linalg.matrix_norm(g, ord=2)),
            "lr_eff": lr_eff,
        }

    def saddle_removed(self) -> bool:
        """Does the theory expect bQ to remove the ln(1/alpha) growth of the escape? Where the first plateau
        has a query-independent gradient G^T 1 and bQ has a non-zero mean or spread: the mean drives W_K at
        first order, the spread as a random walk, and either seeds the q.k saddle from a size that does not
        depend on alpha (docs/science.md, section 10). Where G^T 1 vanishes (to round-off) the saddle stays."""
        drive = self.theory["query_independent_drive"]
        moved = self.spec.mean("q") != 0 or float(self.spec.std("q").max()) > 0
        return self.spec.has_q and moved and drive > DRIVE_FLOOR

    # ---- the model and its loss ----

    def build_model(self) -> nn.Module:
        tc = self.tc
        gen = torch.Generator().manual_seed(int(np.random.default_rng([self.cfg.run.seed, INIT]).integers(1 << 62)))
        shape = (tc.heads, tc.head_dim, tc.vocab)
        direction = torch.randn(2, *shape, generator=gen, dtype=torch.float64)
        alphas = torch.tensor(tc.init_scales, dtype=torch.float64)[:, None, None, None]
        wq, wk = (alphas * direction[i] for i in range(2))
        self.model = AttentionEnsemble(wq.to(self.ctx.device), wk.to(self.ctx.device), self.values, tc.attention)
        self.write_charge(0)
        return self.model

    def losses(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, biases=None) -> torch.Tensor:
        return 0.5 * (model(x, biases) - y).square().sum(-1).mean((1, 2))

    def loss(self, model: nn.Module, batch: Any, micro_index: int) -> torch.Tensor:
        self.before = (self.model.wq.detach().clone(), self.model.wk.detach().clone())
        per_member = self.losses(model, *batch, self.draws(micro_index))
        if micro_index < len(self.member_loss):
            self.member_loss[micro_index] = per_member.detach()
        loss = per_member.sum()
        self.record(micro_index, loss)
        return loss

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.tc.n * self.tc.context

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        means = {name: torch.full((1, 1, self.tc.head_dim), self.spec.mean(name)) for name in self.spec.streams()}
        with torch.no_grad():
            per_member = self.losses(model, self.x, self.y, {k: t.to(self.ctx.device) for k, t in means.items()})
        return {"val_loss": float(per_member.mean())}  # the copies' mean: each copy's own loss is in the trace

    # ---- the rotation charge W_Q W_Q^T - W_K W_K^T per head ----

    def write_charge(self, row: int) -> None:
        with torch.no_grad():
            wq, wk = self.model.wq, self.model.wk
            gq, gk = wq @ wq.transpose(-1, -2), wk @ wk.transpose(-1, -2)
            size = (gq + gk).diagonal(dim1=-2, dim2=-1).sum(-1).amax(-1)
            self.rec.record(row, charge=gq - gk, size=size)

    def after_step(self, model: nn.Module, step: int) -> None:
        with torch.no_grad():
            vq, vk = self.model.wq - self.before[0], self.model.wk - self.before[1]
            self.rec.record(step - 1, kinetic=vq @ vq.transpose(-1, -2) - vk @ vk.transpose(-1, -2))
        self.write_charge(step)

    # ---- the checks ----

    def finish(self, model: nn.Module, history: list[dict]) -> dict[str, Any]:
        steps_done = int(torch.isfinite(self.member_loss[:, 0]).sum())
        checks = {"rotation_charge": self.charge_check(steps_done)}
        loss = self.member_loss[:steps_done].cpu().numpy()
        escapes = self.escape_steps(loss)
        checks["escape_time"] = self.escape_check(escapes)
        if not self.saddle_removed():
            checks["plateau_levels"] = self.plateau_check(loss)
        self.plot(loss, escapes)
        return {
            "prediction": {k: v for k, v in self.theory.items()},
            "observed": {
                "escape_steps": escapes,
                # the second feature: the first step below half the rank-1 level (not a check; reported)
                "second_drop_steps": self.escape_steps(loss, 0.5 * self.theory["levels"][1]),
                "final_losses": loss[-1].tolist() if len(loss) else [],
            },
            "checks": checks,
        }

    def charge_check(self, n: int) -> dict[str, Any]:
        """Symmetric: the charge follows noether's quadratic law (exact for heavy-ball SGD, step corrections
        included) to round-off, per copy and head. With bQ the q/k rotations are no symmetry: the law must
        miss by BROKEN_FACTOR x the tolerance. Fails under Adam (no such law) or with bQ expected unbroken."""
        sgd = sgd_settings(self.cfg, self.optim_options, n)
        wd = {float(g["weight_decay"]) for g in self.groups if any(p is self.model.wq for p in g["params"])}
        charge, kinetic = self.rec.numpy("charge", n + 1), self.rec.numpy("kinetic", n)
        size = self.rec.numpy("size", n + 1).max(0)  # per copy: the largest |W_Q|^2 + |W_K|^2 of a head
        predicted = noether.quadratic_charge(charge[0], kinetic, sgd.lrs, wd.pop() if wd else 0.0, sgd.momentum)
        scale = size[None, :, None, None, None]
        relative = np.abs(charge - predicted) / scale
        # the law takes the run's own step sizes (its kinetic term): it checks the implementation against the
        # exact discrete law, not a prediction from the setup alone
        extra = {"notes": sgd.notes} if sgd.notes else {}
        result = law_check(relative, np.zeros_like(relative), 1.0, CHARGE_TOL, kind="implementation", **extra)
        if not self.spec.has_q:
            return result
        observed = result["observed"]
        return check(
            isinstance(observed, float) and observed >= BROKEN_FACTOR * CHARGE_TOL,
            f"broken by bQ: relative deviation >= {BROKEN_FACTOR * CHARGE_TOL:g}",
            observed,
            kind="implementation",
        )

    def escape_steps(self, loss: np.ndarray, below_level: float | None = None) -> list[float | None]:
        """Per copy: the first step at which its loss falls below ``below_level`` (default: the midpoint of
        the first two levels, the first feature's escape)."""
        mid = 0.5 * sum(self.theory["levels"]) if below_level is None else below_level
        out = []
        for k in range(loss.shape[1]):
            below = np.nonzero(loss[:, k] < mid)[0]
            out.append(float(below[0]) if len(below) else None)
        return out

    def escape_check(self, escapes: list[float | None]) -> dict[str, Any]:
        """Escape step against ln(1/alpha) over the copies. Saddle (symmetric, bQ of mean 0, or G^T 1 = 0): the
        fitted slope within SLOPE_TOL of H / (lr_eff c s_1). Seeded (``saddle_removed``): the slope below
        SEEDED_FRACTION of that. A copy that never escapes fails either."""
        pred = self.theory["saddle_slope"]
        x = [math.log(1.0 / a) for a in self.tc.init_scales]
        notes = sgd_settings(self.cfg, self.optim_options, 1).notes  # the slope is derived for SGD
        extra = {"escape_steps": escapes, **({"notes": notes} if notes else {})}
        if any(e is None for e in escapes):
            return check(False, "every copy escapes the first plateau", None, predicted_saddle_slope=pred, **extra)
        slope = th.fit_slope(x, escapes)
        if self.saddle_removed():
            return check(
                slope <= SEEDED_FRACTION * pred,
                f"seeded by bQ: slope <= {SEEDED_FRACTION} x the saddle's {pred:.4g} steps per e-fold",
                round(slope, 3),
                **extra,
            )
        return check(
            abs(slope - pred) <= SLOPE_TOL * pred,
            f"saddle: slope {pred:.4g} steps per e-fold of 1/alpha (within {SLOPE_TOL:.0%})",
            round(slope, 3),
            **extra,
        )

    def plateau_check(self, loss: np.ndarray) -> dict[str, Any]:
        """AGF's levels are plateaus of the copy with the smallest init, within LEVEL_TOL: with linear attention
        both (zero logits; one head with the best rank-1 logits), with softmax the first only, since there the
        runs pass the rank-1 level without settling on it (measured; see docs/small_tasks.md). Fails where
        the init is too large for a plateau, or (linear) a run that ends on the first one."""
        k = int(np.argmin(self.tc.init_scales))
        plateaus = staircase.find_plateaus(np.arange(len(loss), dtype=float), loss[:, k])
        levels = [v if v > 1e-9 * self.theory["levels"][0] else 0.0 for v in self.theory["levels"]]  # 0 to round-off
        checked = levels if self.tc.attention == "linear" else levels[:1]
        out = staircase.match_levels(checked, plateaus, LEVEL_TOL)
        if self.tc.attention != "linear":
            out["not_checked"] = {"rank_one_level": round(levels[1], 6), "plateaus": [p["level"] for p in plateaus]}
        return out

    def param_groups(self, model: nn.Module) -> list[dict]:
        self.groups = super().param_groups(model)
        return self.groups

    def plot(self, loss: np.ndarray, escapes: list[float | None]) -> None:
        """loss.png: each copy's loss with the predicted levels; escape.png: escape step against ln(1/alpha)."""
        run_dir = self.ctx.run_dir
        mode = self.cfg.symmetry.mode
        title = f"{self.tc.attention} attention, {mode}, SGD lr_eff {self.theory['lr_eff']:g}"
        steps = np.arange(1, len(loss) + 1, dtype=float)
        fig, ax = plt.subplots(figsize=(6, 3.6))
        colors = plt.cm.viridis(np.linspace(0, 0.85, loss.shape[1]))
        for k, alpha in enumerate(self.tc.init_scales):
            ax.plot(steps, loss[:, k], color=colors[k], lw=1.4, label=f"alpha {alpha:g}")
        for j, level in enumerate(self.theory["levels"]):
            ax.axhline(level, color="tab:red", ls="--", lw=0.8, label="AGF levels" if j == 0 else None)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title(title, fontsize=8)
        ax.legend(fontsize=7, loc="lower left")
        finish(fig, run_dir / "loss.png")
        fig, ax = plt.subplots(figsize=(5, 3.4))
        x = np.array([math.log(1.0 / a) for a in self.tc.init_scales])
        seen = [(xi, e) for xi, e in zip(x, escapes) if e is not None]
        if seen:
            ax.plot(*zip(*seen), "o-", color="k", label=f"run ({mode})")
            x0, e0 = seen[0]
            predicted = e0 + self.theory["saddle_slope"] * (x - x0)
            ax.plot(x, predicted, "--", color="tab:red", label="saddle slope (theory)")
            ax.legend(fontsize=7)
        ax.set_xlabel("ln(1/alpha)")
        ax.set_ylabel("escape step")
        ax.set_title(title, fontsize=8)
        finish(fig, run_dir / "escape.png")
