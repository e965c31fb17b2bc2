"""Sequential group composition as a Task for train.py (modular addition, its C_p, k = 2 case with AGF's
network, is ``small_tasks.composition.modular_addition``, built on this one).

Inputs: k elements of a finite group G, each encoded as the template shifted by it; target: the
template shifted by their product. Full batch (all |G|^k sequences), MSE averaged over examples and
output coordinates, so the loss splits exactly into one term per irrep: (1/|G|) * residual power.

    python train.py configs/small_tasks/group_composition.toml
    python train.py configs/small_tasks/group_composition.toml --task.group=D5 --task.powers=[0,2.5,10,5]

The theory (``small_tasks.composition.agf``) predicts, for the two-layer power network trained by per-neuron SGD or
plain gradient descent from small initialization, the order in which the classes of irreps are learned
(descending maximal utility U*_c), the plateau levels that order implies, and the step at which the
first class drops. The checks compare the run with those numbers, in both directions. The recurrent and
deep models, trained the same way on every intermediate product, get the staircase of
``small_tasks.composition.depth`` on the composition of all k.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

import optim
from configs import Config, UserError
from runtime import Context
from small_tasks.composition import agf, agf_power, depth, groups
from small_tasks.composition.models import MODELS, PowerMLP, build_model, neuron_param_groups
from small_tasks.toolkit import plots, staircase
from small_tasks.toolkit.base import SmallTask, check

LEVEL_TOL = 0.02  # plateaus match predicted levels within 2%
DROP_TOL = 0.25  # a class starts to drop within 25% of its predicted step (escape, or AGF's onset)
ZERO_LOSS = 0.01  # "zero" loss: below 1% of the smallest non-zero level
EVAL_SEQUENCES = 1 << 17  # above this many sequences the loss is measured on a fixed sample of this size


@dataclass
class GroupCompositionConfig:
    name: str = "group_composition"
    group: str = "C11"  # Cn, Dn, Sn (n <= 5), products like C4xC4
    k: int = 2  # elements per sequence
    template: str = "powers"  # powers | onehot
    powers: list[float] = field(default_factory=list)  # one per irrep, in groups.py's order; [] = default
    phase: str = "random"  # powers template: random (seeded) | zero (x_hat = c * I, the reference code's)
    template_seed: int = 0
    model: str = "mlp"  # mlp | rnn | deep
    width: int = 200
    init_scale: float = 1e-5  # weights ~ init_scale * N(0, 1) / sqrt(fan_in)
    batch: int = 0  # 0: every sequence each step (full batch); N: N random sequences per step
    targets: str = "final"  # final: the product of all k | all: every intermediate product too (rnn, deep)


class GroupCompositionTask(SmallTask):
    config_class = GroupCompositionConfig
    data_seed_key = "template_seed"
    recorded = ("trace", "class_trace")  # the per-step loss and its share per class: a resume keeps both

    def __init__(self, cfg: Config, ctx: Context):
        super().__init__(cfg, ctx)
        self.setup()
        n = self.group.order
        self.shifted = torch.tensor(groups.shift(self.group, self.template, np.arange(n)), dtype=torch.float32)
        self.shifted = self.shifted.to(ctx.device)  # row g: the template shifted by g
        self.table = torch.tensor(self.group.table, device=ctx.device)
        if self.sampled or n**self.k > EVAL_SEQUENCES:  # the loss is measured on a fixed sample
            gen = torch.Generator().manual_seed(0)
            seqs = torch.randint(n, (min(n**self.k, EVAL_SEQUENCES), self.k), generator=gen)
        else:
            seqs = torch.tensor(groups.sequences(self.group, self.k))
        self.seqs = seqs.to(ctx.device)
        self.x, self.y = self.encode(self.seqs)
        self.proj = torch.tensor(self.group.projectors(), dtype=torch.float32, device=ctx.device)
        self.classes = self.group.classes()
        basis, owner = self.group.class_basis()
        self.basis = torch.tensor(basis, dtype=torch.float32, device=ctx.device)
        self.owner = torch.tensor(np.eye(len(self.classes))[owner], dtype=torch.float32, device=ctx.device)
        # per step, each class's share of the loss (they sum to it): when each class is learned
        self.class_trace = torch.full((cfg.train.max_steps, len(self.classes)), float("nan"), device=ctx.device)

    def setup(self) -> None:
        """Group, k, template and batches from the config."""
        tc = self.tc
        self.group = groups.parse_group(tc.group)
        self.k = tc.k
        if tc.k < 2:
            raise UserError(f"task.k must be >= 2, got {tc.k}")
        if tc.batch < 0:
            raise UserError(f"task.batch must be >= 0 (0: every sequence each step), got {tc.batch}")
        self.sampled = tc.batch > 0
        self.segments = self.intermediate_segments()
        if self.group.order**tc.k > EVAL_SEQUENCES and not tc.batch:
            raise UserError(
                f"{tc.group} with k={tc.k} has {self.group.order**tc.k} sequences, too many for one batch; "
                "sample them with task.batch=N or lower task.k"
            )
        if tc.template == "powers":
            self.powers = list(tc.powers) or groups.default_powers(self.group)
            self.template = groups.template_from_powers(self.group, self.powers, tc.template_seed, tc.phase)
        elif tc.template == "onehot":
            self.template = groups.onehot_template(self.group)
            self.powers = [float(v) for v in groups.power_spectrum(self.group, self.template)]
        else:
            raise UserError(f"unknown task.template '{tc.template}'; use powers or onehot")

    def build_model(self) -> nn.Module:
        if self.tc.width < 1:
            raise UserError(f"task.width must be >= 1, got {self.tc.width}; set it to the number of hidden neurons")
        model = self.make_model()
        self.keep_init(model)
        return model

    def make_model(self) -> nn.Module:
        """The network of ``task.model`` at the config's width and initialization."""
        return build_model(self.tc.model, self.group.order, self.tc.width, self.k, self.tc.init_scale)

    def keep_init(self, model: nn.Module) -> None:
        """The initial weights of a two-layer network, from which the theory follows each neuron (a resumed
        run rebuilds them from the same seed)."""
        self.init = (model.W_in.detach().clone(), model.W_out.detach().clone()) if isinstance(model, PowerMLP) else None

    def param_groups(self, model: nn.Module) -> list[dict]:
        if self.cfg.optim.name == "per_neuron":
            return neuron_param_groups(model)
        return optim.param_groups(model, self.cfg.optim)

    def intermediate_segments(self) -> list[tuple[int, int]] | None:
        """With ``targets = "all"``: the inputs each intermediate output of the model composes."""
        targets = self.tc.targets
        if targets == "final":
            return None
        if targets != "all":
            raise UserError(f"unknown task.targets '{targets}'; use final or all")
        if self.tc.model not in ("rnn", "deep"):
            raise UserError("task.targets=all trains on intermediate products: use task.model=rnn or deep")
        return MODELS[self.tc.model].segments(self.k)

    def product(self, seqs: torch.Tensor) -> torch.Tensor:
        prod = seqs[:, 0]
        for j in range(1, seqs.shape[1]):
            prod = self.table[prod, seqs[:, j]]
        return prod

    def encode(self, seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs (B, k, |G|), the shifted templates, and targets (B, |G|), the template shifted by the product."""
        return self.shifted[seqs], self.shifted[self.product(seqs)]

    def batch(self, micro_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.sampled and self.segments is None:
            return self.x, self.y
        if self.sampled:  # a pure function of the step, so that a resumed run draws the same batches
            gen = torch.Generator().manual_seed(self.cfg.run.seed * 1_000_003 + micro_index)
            seqs = torch.randint(self.group.order, (self.tc.batch, self.k), generator=gen).to(self.ctx.device)
        else:
            seqs = self.seqs
        x, y = self.encode(seqs)
        if self.segments is not None:
            y = torch.stack([self.shifted[self.product(seqs[:, a:b])] for a, b in self.segments], dim=1)
        return x, y

    def loss(self, model: nn.Module, batch: Any, micro_index: int) -> torch.Tensor:
        x, y = batch
        err = (model(x) if self.segments is None else model.outputs(x)) - y
        loss = err.square().mean()
        self.record(micro_index, loss)
        if micro_index < len(self.class_trace):
            with torch.no_grad():  # the final product's error: (B, |G|) either way
                self.class_trace[micro_index] = self.class_shares(err if err.dim() == 2 else err[:, -1])
        return loss

    def class_shares(self, err: torch.Tensor) -> torch.Tensor:
        """Each class's share of the mean squared error ``err`` (N, |G|); the shares sum to the loss."""
        return (err @ self.basis.to(err.dtype)).square().sum(0) @ self.owner.to(err.dtype) / err.numel()

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.tc.batch if self.sampled else len(self.x)

    @torch.no_grad()
    def spectra(self, model: nn.Module) -> tuple[np.ndarray, np.ndarray]:
        """Mean output power per irrep, and the per-irrep share of the loss (they sum to the loss)."""
        out = model(self.x)
        err = out - self.y
        power = torch.einsum("bg,rgh,bh->r", out, self.proj, out) / len(out)
        resid = torch.einsum("bg,rgh,bh->r", err, self.proj, err) / err.numel()
        return power.cpu().numpy(), resid.cpu().numpy()

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """The loss of the product of all k elements (on every sequence, or a fixed sample of them)."""
        with torch.no_grad():
            return {"val_loss": float((model(self.x) - self.y).square().mean())}

    def step_metrics(self, model: nn.Module, step: int) -> dict[str, Any]:
        power, resid = self.spectra(model)
        return {"power": [round(float(v), 7) for v in power], "loss_by_irrep": [float(f"{v:.6g}") for v in resid]}

    # ---------------------------------------------------------------- theory

    def class_powers(self) -> list[float]:
        return [sum(self.powers[i] for i in cls) for cls in self.classes]

    def class_label(self, c: int) -> str:
        return "+".join(self.group.irreps[i].name for i in self.classes[c])

    def title(self) -> str:
        return f"{self.tc.group}, k={self.k}, {self.tc.model} width {self.tc.width}"

    def initial_norm(self) -> float:
        """The typical initial norm of one neuron (row of W_in with column of W_out): init * sqrt(1 + |G| / width)."""
        return self.tc.init_scale * float(np.sqrt(1 + self.group.order / self.tc.width))

    def clock(self) -> float | None:
        """Flow time per optimizer step, lr / (1 - momentum); None where steps have no fixed flow time: a
        schedule, or clipping (which rescales time along the same path, so the order and levels still hold)."""
        if self.cfg.optim.schedule != "constant" or self.cfg.optim.grad_clip > 0:
            return None
        o = self.optim_options
        return o.lr / (1 - getattr(o, "momentum", 0.0))

    def theory_applies(self) -> bool:
        """The staircase theory here is for the two-layer power network under per-neuron SGD (the flow
        d theta_i/dt = -|theta_i|^(1-k) grad_i L) on every sequence, as the paper trains it."""
        return self.tc.model == "mlp" and self.cfg.optim.name == "per_neuron" and not self.sampled

    def staircase(self) -> tuple[dict[str, Any], list[list[int]], np.ndarray]:
        """The closed-form staircase: levels, order (as groups of class indices) and utilities U*_c."""
        cp = self.class_powers()
        utilities = agf.class_max_utility(self.group, self.template, self.k)
        order = agf.predicted_order(np.where(np.array(cp) > 0, utilities, 0.0))
        label = self.class_label
        out: dict[str, Any] = {
            "levels": agf.staircase_levels(cp, self.group.order, order),
            "order": [[label(c) for c in grp] for grp in order],
            "order_by_power": [label(c) for c in sorted(range(len(cp)), key=lambda c: -cp[c]) if cp[c] > 0],
            "max_utility": {label(c): float(f"{utilities[c]:.6g}") for grp in order for c in grp},
        }
        return out, order, utilities

    def predict(self) -> tuple[dict[str, Any], list[list[int]], list[int]]:
        """The prediction for the summary; the predicted order as groups of class indices; the recruited
        classes (from the first one with fewer aligned neurons at the first escape than it needs on)."""
        out, order, utilities = self.staircase()
        if not self.theory_applies():
            return out, order, []
        label = self.class_label
        norm_power = 1.0 - self.k
        theta0 = self.initial_norm()
        times = {c: agf.escape_time(utilities[c], theta0, self.k, norm_power) for grp in order for c in grp}
        aligned = self.aligned_neurons(norm_power, times[order[0][0]])
        needed = {c: self.neurons_needed(c) for c in times}
        out["aligned_neurons"] = {label(c): int(aligned[c]) for c in times}
        out["neurons_needed"] = {label(c): needed[c] for c in times}
        per_step = self.clock()
        out["escape_steps"] = {label(c): round(float(t) / per_step, 1) for c, t in times.items()} if per_step else None
        fresh = 0
        while fresh < len(order) and all(aligned[c] >= needed[c] for c in order[fresh]):
            fresh += 1
        recruited = [c for grp in order[fresh:] for c in grp]
        out["recruited"] = [label(c) for c in recruited]
        return out, order, recruited

    def depth_applies(self) -> bool:
        """The deeper composers' staircase (``depth``): the RNN or the deep model trained on every intermediate
        product by per-neuron SGD on every sequence (under plain gradient descent the deep model's first drop
        came 42% after the closed form's, docs/small_tasks.md: not claimed)."""
        return (
            self.tc.model in depth.DEEP_MODELS
            and self.segments is not None
            and self.cfg.optim.name == "per_neuron"
            and not self.sampled
        )

    def depth_prediction(self) -> tuple[dict[str, Any], list[list[int]]]:
        """``depth.predict`` for this run's group, template, model and initialization."""
        theta0 = depth.initial_norm(self.tc.model, self.group.order, self.tc.width, self.tc.init_scale)
        labels = [self.class_label(c) for c in range(len(self.classes))]
        return depth.predict(  # per-neuron SGD of a quadratic block: norm power 1 - 2
            self.group, self.template, self.class_powers(), labels, self.tc.model, self.k, theta0, -1.0, self.clock()
        )

    def predicted_curve(self, pred: dict) -> tuple[list[float], list[float]] | None:
        """A predicted loss curve to draw over the run's (event steps, levels), where the theory gives one."""
        return None

    def neurons_needed(self, c: int) -> int:
        """Neurons a class needs to be learned at once: 2^(k-1) per real dimension d^2 m of its isotypic
        subspace (a product of two linear forms is a difference of two squares), 4 for a frequency pair at
        k = 2, as many as AGF and the runs recruit per frequency on modular addition."""
        cls = self.classes[c]
        return 2 ** (self.k - 1) * self.group.irreps[cls[0]].dim ** 2 * len(cls)

    def aligned_neurons(self, norm_power: float, t_first: float) -> np.ndarray:
        """Per class, how many neurons are aligned with it (more than half their weight in its subspace)
        when the first class escapes, by AGF's utility flow from this run's initial weights."""
        w_in, w_out = self.init
        dirs = agf_power.dormant_directions(self.x.flatten(1), self.y, w_in, w_out, self.k, norm_power, t_first)
        share = agf_power.class_shares(dirs, self.k + 1, self.basis.double(), self.owner.double())
        dominant = share.argmax(1)[share.max(1).values > 0.5]
        return np.bincount(dominant.cpu().numpy(), minlength=len(self.classes))

    # ---------------------------------------------------------------- checks

    def checks(
        self,
        pred: dict,
        order: list[list[int]],
        recruited: list[int],
        steps: np.ndarray,
        loss: np.ndarray,
        learned: list[dict],
    ) -> dict[str, Any]:
        """The theory's predictions against the run.

        The theory follows fresh neurons: a class is learned when the neurons that aligned with it from
        initialization escape. ``aligned_neurons`` counts them from this run's initial weights (AGF's
        utility flow, not the run). From the first class with fewer aligned neurons than it needs
        (``neurons_needed``) on, the classes are ``recruited``: learned later by neurons freed by the classes
        before, in an order and in pieces that the theory does not predict; the checks hold the run to what
        it does predict.

        - plateau_levels: every predicted level after the first (which holds by construction at small
          init), down to the level where recruitment starts, is a plateau of the run within 2%. Fails when
          two classes drop together (the level between never forms), in a run too short to reach a level,
          when a class is learned in pieces.
        - plateaus_are_predicted_levels: the converse; every plateau of the run above the level where
          recruitment starts (all of them, 0 included, if nothing is recruited) lies within 2% of a
          predicted level. Fails on plateaus the theory does not predict: a class learned in pieces, two
          classes learned in the wrong order (a level of the other order), a partial fit.
        - learned_in_predicted_order: ``staircase.order_check`` on the order of descending U*_c, the
          recruited classes as one last group (after all the others, no order among them). Fails on a
          wrong order, on overlapping drops (a tie is not resolved by the run), on a class never learned.
        - drops_at_predicted_steps: the first class (or tied group) starts to drop (10% learned) within 25% of
          its escape step, both ways (a larger initialization or learning rate drops early, a smaller one
          late); every later class, fresh or recruited, not before 75% of its escape step. The later fresh
          escapes are lower bounds only: a neuron aligned with a later class also carries weight in the
          classes before it, grown during their plateaus, which per-neuron SGD counts in the norm that scales
          its step, and an active neuron can gain weight in it during an earlier drop; neither the closed
          form nor AGF from the initial weights predicts the delay (D5's default template: rot2 28% after its
          escape step, docs/small_tasks.md). Absent where steps have no fixed flow time.
        - reaches_zero_loss: the final loss below 1% of the smallest non-zero level.
        """
        levels = pred["levels"]
        plateaus = staircase.find_plateaus(steps, loss)
        labels = [self.class_label(c) for c in range(len(self.classes))]
        fresh = [grp for grp in order if not set(grp) & set(recruited)]
        floor = levels[len(fresh)]  # the level at which recruitment starts (0 if none)
        above = [p for p in plateaus if p["level"] >= (1 - LEVEL_TOL) * floor]
        final = float(loss[-1]) if len(loss) else float("nan")
        smallest = min(v for v in levels if v > 0)
        out = {
            "plateau_levels": staircase.match_levels(levels[1 : len(fresh) + 1], plateaus, LEVEL_TOL),
            "plateaus_are_predicted_levels": staircase.match_plateaus(above, levels[: len(fresh) + 1], LEVEL_TOL),
            "learned_in_predicted_order": staircase.order_check(
                fresh + ([recruited] if recruited else []), learned, labels
            ),
        }
        if pred.get("escape_steps"):
            after_first = {c for grp in order[1:] for c in grp}  # the first group alone is held both ways
            out["drops_at_predicted_steps"] = self.onset_check(order, learned, pred["escape_steps"], after_first)
        out["reaches_zero_loss"] = check(final < ZERO_LOSS * smallest, f"< {ZERO_LOSS * smallest:.3g}", final)
        return out

    def onset_check(
        self, order: list[list[int]], learned: list[dict], expected: dict[str, float], lower_only: set[int]
    ) -> dict[str, Any]:
        """Each class of ``order`` starts to drop (``learned[c]["start"]``) within DROP_TOL of its expected step
        (by label), both ways, or, for the classes in ``lower_only``, not before (1 - DROP_TOL) of it; a class
        that never starts, or has no expected step, fails."""
        expected_out, observed, errors, ok = {}, {}, {}, True
        for grp in order:
            for c in grp:
                name, got = self.class_label(c), learned[c]["start"]
                want = expected.get(name)
                seen = got is not None and want is not None
                err = (got - want) / want if seen else float("inf")
                ok &= seen and (err >= -DROP_TOL if c in lower_only else abs(err) <= DROP_TOL)
                shown = None if want is None else round(want, 1)
                expected_out[name] = f">= {want:.0f}" if c in lower_only and want is not None else shown
                observed[name], errors[name] = got, round(err, 4)
        return check(ok, expected_out, observed, rel_error=errors, tolerance=DROP_TOL)

    def finish(self, model: nn.Module, history: list[dict]) -> dict[str, Any]:
        steps, loss = staircase.loss_trace(self.trace_numpy(), history)
        logged = [r for r in history if "loss_by_irrep" in r]
        log_steps = np.array([r["step"] for r in logged], dtype=float)
        by_class = lambda a: np.stack([a[:, cls].sum(axis=1) for cls in self.classes], axis=1)
        logged_resid = by_class(np.array([r["loss_by_irrep"] for r in logged]).reshape(len(logged), -1))
        class_steps, resid = staircase.joined_trace(self.class_trace.double().cpu().numpy(), log_steps, logged_resid)
        cp = np.array(self.class_powers())
        learned = staircase.learning_steps(class_steps, resid, cp / self.group.order)
        pred, order, recruited = self.predict()
        final = self.evaluate(model)["val_loss"]  # the composition of all k, whatever the training targets
        if self.theory_applies():
            checks = self.checks(pred, order, recruited, steps, loss, learned)
            escape = list(pred["escape_steps"].values()) if pred.get("escape_steps") else None
        else:  # deeper models, other optimizers: composing exactly is the claim, the staircase is not this theory's
            smallest = min(v for v in pred["levels"] if v > 0)
            checks = {"reaches_zero_loss": check(final < ZERO_LOSS * smallest, f"< {ZERO_LOSS * smallest:.3g}", final)}
            escape = None
        run_dir, title = self.ctx.run_dir, self.title()
        if self.depth_applies():  # the deeper composers' staircase, read on the composition of all k
            pred, order = self.depth_prediction()
            train = (steps, loss)  # the mean over every intermediate product, drawn beside it
            steps, loss = class_steps, resid.sum(axis=1)
            labels = [self.class_label(c) for c in range(len(self.classes))]
            checks = {**depth.checks(pred, order, labels, steps, loss, learned), **checks}
            drops = list(pred["drop_steps"].values()) if pred.get("drop_steps") else None
            depth.plot_staircase(run_dir / "loss.png", (steps, loss), train, pred["levels"], drops, title)
        else:
            curve = self.predicted_curve(pred)
            plots.plot_loss(run_dir / "loss.png", steps, loss, pred["levels"], escape, title, curve)
        if len(logged):
            power = by_class(np.array([r["power"] for r in logged]).reshape(len(logged), -1))
            labels = [self.class_label(c) for c in range(len(self.classes))]
            plots.plot_spectrum(run_dir / "spectrum.png", log_steps, power, cp, labels, title)
        return {
            "prediction": pred,
            "observed": {
                "plateaus": staircase.find_plateaus(steps, loss),
                "learned_at_step": {self.class_label(c): learned[c] for c in range(len(cp)) if cp[c] > 0},
                "final_loss": final,
            },
            "checks": checks,
        }
