"""A small classifier with all three symmetries, trained by SGD, against the exact conservation laws.

    python train.py configs/small_tasks/conservation_laws.toml
    python train.py configs/small_tasks/conservation_laws.toml --optim.sgdm.momentum=0.9

Network: x -> W_in -> layer norm (no gain, eps 0) -> W_hidden -> ReLU -> W_out, b_out -> softmax.
- translation: adding one vector to every row of W_out (one number to every entry of b_out) shifts all
  logits alike, so S = the sum over classes of W_out's rows (of b_out) is a linear charge;
- scale: the layer norm makes the loss invariant to W_in -> a W_in, so |W_in|^2 is a quadratic charge;
- rescale: ReLU is positively homogeneous, so neuron i's |W_out[:, i]|^2 - |W_hidden[i]|^2 is one.
The laws (small_tasks/toolkit/noether.py) hold for any data order, so training draws random mini-batches
(a pure function of run.seed and the step). Float64 throughout, so "exact" means 1e-9 here.

The exact scale and rescale laws take the run's own squared steps, so they are implementation checks; the
predictions use only the init and the hyperparameters: the translation law, the rescale charge's decay in
the gradient-flow limit (``rescale_decay``) and the scale group's equilibrium step (``scale_equilibrium``).
``task.hidden_bias`` and ``task.layernorm_eps`` break the rescale and the scale symmetry, for runs they must reject.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import optim
from configs import Config, at_least, require
from runtime import Context
from small_tasks.toolkit import noether, plots
from small_tasks.toolkit.base import SmallTask, check
from small_tasks.toolkit.records import Recorder, SGDSettings, decay_check, law_check, sgd_settings

EXACT_TOL = 1e-9  # float64 round-off accumulated over the run, relative to the charge's terms
OSCILLATOR_TOL = 0.02  # the continuous approximation's error, O((lr omega)^2): for lr omega <= ~0.3
# rescale_decay: the gradient-flow limit drops the kinetic drive K = |v_out|^2 - |v_in|^2, O(lr^2 |g|^2 /
# (1 - momentum)^2) per step; over the window it must stay within 5% of the charge's initial size
DECAY_TOL = 0.05
DECAY_FLOOR = 0.1  # the window ends where the predicted factor |h_n| falls below this (the decay is the claim)
# a decay smaller than 10 x DECAY_TOL could not be told from a conserved charge within the tolerance
DECAY_MIN_EFFECT = 10 * DECAY_TOL
# scale_equilibrium: the measured relative squared step within 10% of 2 lr wd / (1 + momentum) (5% in the
# angle turned per step) over the run's second half
EQUILIBRIUM_TOL = 0.1
# the telescoped sums' boundary terms are ~2 f Q for a charge fluctuating by f ~ 5% (mini-batches), against
# (steps) * 2 lr wd / (1 + momentum) * Q in the sums: a window of one relaxation (this product >= 1) keeps
# them at ~EQUILIBRIUM_TOL; shorter windows cannot tell the equilibrium from the approach to it
EQUILIBRIUM_MIN_TURNS = 1.0


@dataclass
class ConservationLawsConfig:
    name: str = "conservation_laws"
    d_in: int = 8
    width: int = 16  # features into the layer norm
    hidden: int = 16  # ReLU neurons
    classes: int = 5
    n: int = 256  # examples
    batch_size: int = 32  # examples per step, drawn anew each step; 0 = the full batch
    data_seed: int = 0
    # symmetry breakers, for runs the predictions must reject: a fixed, unlearned offset added before the
    # ReLU (rescaling a neuron no longer commutes with it), and the layer norm's eps (|W_in x|^2 ~ eps
    # no longer cancels)
    hidden_bias: float = 0.0
    layernorm_eps: float = 0.0

    def check(self) -> None:
        at_least("task", 1, d_in=self.d_in, hidden=self.hidden, n=self.n)
        require(self.layernorm_eps >= 0, f"task.layernorm_eps must be >= 0, got {self.layernorm_eps}")
        at_least("task", 2, width=self.width, classes=self.classes)  # a layer norm of one feature is constant
        require(
            0 <= self.batch_size <= self.n, f"task.batch_size must be in [0, task.n = {self.n}], got {self.batch_size}"
        )


class SymmetricNet(nn.Module):
    def __init__(
        self,
        d_in: int,
        width: int,
        hidden: int,
        classes: int,
        generator: torch.Generator,
        hidden_bias: float = 0.0,
        eps: float = 0.0,
    ):
        super().__init__()
        self.hidden_bias, self.eps = hidden_bias, eps

        def init(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, generator=generator, dtype=torch.float64) / shape[-1] ** 0.5)

        self.w_in = init(width, d_in)
        self.w_hidden = init(hidden, width)
        self.w_out = init(classes, hidden)
        self.b_out = nn.Parameter(0.1 * torch.randn(classes, generator=generator, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.layer_norm(x @ self.w_in.T, (self.w_in.shape[0],), eps=self.eps)  # eps 0: exactly scale invariant
        return F.relu(h @ self.w_hidden.T + self.hidden_bias) @ self.w_out.T + self.b_out


def linear_charges(w_out: torch.Tensor, b_out: torch.Tensor) -> dict[str, torch.Tensor]:
    """The translation charges: W_out's and b_out's sums over classes."""
    return {"translation_weight": w_out.sum(0), "translation_bias": b_out.sum()}


def quadratic_charges(w_in: torch.Tensor, w_hidden: torch.Tensor, w_out: torch.Tensor) -> dict[str, torch.Tensor]:
    """The scale charge |W_in|^2 and the per-neuron rescale charges |W_out[:, i]|^2 - |W_hidden[i]|^2.

    Applied to parameters these are the charges; to steps theta_{n+1} - theta_n, the kinetic terms; to
    gradients, plain SGD's gradient terms."""
    return {"scale": w_in.square().sum(), "rescale": w_out.square().sum(0) - w_hidden.square().sum(1)}


def charge_sizes(net: SymmetricNet) -> dict[str, torch.Tensor]:
    """The size of the terms each charge sums (|.| summed; squares added): what round-off scales with."""
    return {
        "translation_weight": net.w_out.abs().sum(0),
        "translation_bias": net.b_out.abs().sum(),
        "scale": net.w_in.square().sum(),
        "rescale": net.w_out.square().sum(0) + net.w_hidden.square().sum(1),
    }


def law_checks(
    rec: dict[str, np.ndarray], sgd: SGDSettings, wd: dict[str, float], grad_clip: float = 0.0
) -> dict[str, Any]:
    """Every law against the records of a run (rows: after 0..n steps; kinetic and gradient rows: step n).

    Each exact law predicts the charge from its value at step 0 and, for a quadratic charge, the
    squared steps (or, for plain SGD's gradient form, the squared gradients): it fails when the run is
    not the assumed update (another momentum, Nesterov, another optimizer, a wrong learning rate or
    weight decay, mixed weight decay within a symmetric group). The oscillators fail where lr omega is
    too large for a continuous description (or for a wrong momentum).
    """
    lrs, beta = sgd.lrs, sgd.momentum
    n = len(lrs)
    notes = list(sgd.notes)
    if wd["w_out"] != wd["w_hidden"]:
        notes.append("W_out and W_hidden decay differently, so the rescale law does not close; set optim.decay")
    extra = {"notes": notes} if notes else {}

    def size(key: str) -> float:
        return float(np.max(rec["size_" + key]))

    tw = noether.linear_charge(rec["translation_weight"][0], lrs, wd["w_out"], beta)
    tb = noether.linear_charge(rec["translation_bias"][0], lrs, wd["b_out"], beta)
    scale = noether.quadratic_charge(rec["scale"][0], rec["kinetic_scale"], lrs, wd["w_in"], beta)
    rescale = noether.quadratic_charge(rec["rescale"][0], rec["kinetic_rescale"], lrs, wd["w_out"], beta)
    predicted = {"translation_weight": tw, "translation_bias": tb, "scale": scale, "rescale": rescale}

    def translation(pred_w: np.ndarray, pred_b: np.ndarray, tol: float) -> dict[str, Any]:
        w = law_check(rec["translation_weight"], pred_w, size("translation_weight"), tol, **extra)
        b = law_check(rec["translation_bias"], pred_b, size("translation_bias"), tol, **extra)
        worse = max((w, b), key=lambda c: c["observed"] if isinstance(c["observed"], float) else np.inf)
        return {**worse, "passed": w["passed"] and b["passed"]}

    checks = {
        "translation_law": translation(tw, tb, EXACT_TOL),
        "scale_law": law_check(rec["scale"], scale, size("scale"), EXACT_TOL, kind="implementation", **extra),
        "rescale_law": law_check(rec["rescale"], rescale, size("rescale"), EXACT_TOL, kind="implementation", **extra),
    }
    if beta == 0.0:  # the papers' form for plain SGD, with the gradients themselves
        grad_notes = notes + (["gradients are clipped; the gradient form uses the raw ones"] if grad_clip else [])
        grad_extra = {"notes": grad_notes} if grad_notes else {}
        for key in ("scale", "rescale"):
            pred = noether.quadratic_charge_sgd(rec[key][0], rec["grad_" + key], lrs, wd[key_param(key)])
            checks[f"{key}_law_gradient_form"] = law_check(
                rec[key], pred, size(key), EXACT_TOL, kind="implementation", **grad_extra
            )
    if sgd.constant_lr:
        lr = float(lrs[0])

        def form(kappa: float) -> dict[str, Any]:
            if beta == 0.0:
                return {"form": "gradient flow q' = -kappa q + K / lr", "kappa": kappa}
            omega = noether.frequency(lr, kappa, beta)
            return {
                "form": "damped oscillator",
                "gamma": noether.damping(lr, beta),
                "omega": omega,
                "lr_omega": lr * omega,
                "valid_for": "lr * omega <= ~0.3",
            }

        cw = noether.linear_charge_continuous(rec["translation_weight"][0], n, lr, wd["w_out"], beta)
        cb = noether.linear_charge_continuous(rec["translation_bias"][0], n, lr, wd["b_out"], beta)
        cs = noether.quadratic_charge_continuous(rec["scale"][0], rec["kinetic_scale"], lr, wd["w_in"], beta)
        cr = noether.quadratic_charge_continuous(rec["rescale"][0], rec["kinetic_rescale"], lr, wd["w_out"], beta)
        checks["translation_oscillator"] = {**translation(cw, cb, OSCILLATOR_TOL), **form(wd["w_out"])}
        checks["scale_oscillator"] = {
            **law_check(rec["scale"], cs, size("scale"), OSCILLATOR_TOL, kind="implementation", **extra),
            **form(2 * wd["w_in"]),
        }
        checks["rescale_oscillator"] = {
            **law_check(rec["rescale"], cr, size("rescale"), OSCILLATOR_TOL, kind="implementation", **extra),
            **form(2 * wd["w_out"]),
        }
        predicted.update(continuous_scale=cs, continuous_rescale=cr, continuous_translation_weight=cw)
    if wd["w_out"] > 0 and wd["w_out"] == wd["w_hidden"]:
        checks["rescale_decay"] = decay_check(
            rec["rescale"], lrs, wd["w_out"], beta, DECAY_TOL, DECAY_FLOOR, DECAY_MIN_EFFECT, **extra
        )
    if wd["w_in"] > 0 and sgd.constant_lr:
        lr = float(lrs[0])
        checks["scale_equilibrium"] = equilibrium_check(rec["scale"], rec["kinetic_scale"], lr, wd["w_in"], beta, notes)
    return {"checks": checks, "predicted": predicted}


def equilibrium_check(
    scale: np.ndarray, kinetic: np.ndarray, lr: float, wd: float, momentum: float, notes: list[str] | None = None
) -> dict[str, Any]:
    """A prediction from lr, wd and momentum alone: over the run's second half the scale-invariant group
    turns on its sphere at the equilibrium of ``noether.spherical_equilibrium``, sum |v|^2 / sum |W_in|^2 =
    2 lr wd / (1 + momentum), i.e. an effective learning rate (angle per step) of its square root.

    It fails for a run that has not reached the equilibrium (too few steps from an init far from it), a
    wrong weight decay or momentum, another optimizer (Adam's steps are not set by this balance), or a
    loss that is not scale invariant (then -2 lr <theta, g> adds to the balance)."""
    n = len(kinetic)
    start = n // 2
    predicted = noether.spherical_equilibrium(lr, wd, momentum)
    turns = (n - start) * predicted
    window_ok = np.all(np.isfinite(scale[start:])) and np.all(np.isfinite(kinetic[start:]))
    observed = float(kinetic[start:].sum() / scale[start:n].sum()) if window_ok else float("nan")
    ratio = observed / predicted
    notes = list(notes or [])
    if turns < EQUILIBRIUM_MIN_TURNS:
        needs = f"needs {EQUILIBRIUM_MIN_TURNS:g}"
        notes.append(f"the window of {n - start} steps spans {turns:.3g} relaxations ({needs}): train longer")
    return check(
        bool(np.isfinite(ratio)) and abs(ratio - 1.0) <= EQUILIBRIUM_TOL and turns >= EQUILIBRIUM_MIN_TURNS,
        f"sum |v|^2 / sum |W_in|^2 over steps {start}..{n} = 2 lr wd / (1 + momentum) = {predicted:.4g} "
        f"within {EQUILIBRIUM_TOL:g} relative",
        float(f"{observed:.4g}"),
        ratio=float(f"{ratio:.4g}"),
        effective_lr_predicted=float(f"{np.sqrt(predicted):.4g}"),
        effective_lr_observed=float(f"{np.sqrt(max(observed, 0.0)):.4g}"),
        **({"notes": notes} if notes else {}),
    )


def key_param(charge: str) -> str:
    """The parameter whose weight decay a quadratic charge follows."""
    return {"scale": "w_in", "rescale": "w_out"}[charge]


def teacher_classes(rng: np.random.Generator, n: int, d_in: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """n Gaussian inputs and their classes under a random linear teacher (argmax of x W)."""
    x = rng.standard_normal((n, d_in))
    return x, np.argmax(x @ rng.standard_normal((d_in, classes)), axis=1)


class ConservationLawsTask(SmallTask):
    config_class = ConservationLawsConfig
    data_seed_key = "data_seed"
    recorded = ("trace", "record")  # the charges of every step: a resume keeps them

    def __init__(self, cfg: Config, ctx: Context):
        super().__init__(cfg, ctx)
        tc = self.tc
        rng = np.random.default_rng(tc.data_seed)
        x, labels = teacher_classes(rng, tc.n, tc.d_in, tc.classes)
        self.x = torch.tensor(x, device=ctx.device)
        self.y = torch.tensor(labels, device=ctx.device)
        self.n_steps = cfg.train.max_steps

    def build_model(self) -> nn.Module:
        tc = self.tc
        gen = torch.Generator().manual_seed(self.cfg.run.seed)
        net = SymmetricNet(tc.d_in, tc.width, tc.hidden, tc.classes, gen, tc.hidden_bias, tc.layernorm_eps)
        h = tc.hidden
        shapes = {"translation_weight": (h,), "translation_bias": (), "scale": (), "rescale": (h,)}
        shapes |= {"size_" + k: s for k, s in shapes.items()}
        shapes |= {"kinetic_scale": (), "kinetic_rescale": (h,), "grad_scale": (), "grad_rescale": (h,)}
        self.record = Recorder.every_step(self.n_steps, shapes, device=self.ctx.device)
        self.net = net
        self.write_charges(0)
        # plain SGD's gradient form needs |g|^2 of each step: taken as backward finishes each tensor
        self.grads: dict[str, torch.Tensor] = {}
        for name in ("w_in", "w_hidden", "w_out"):
            getattr(net, name).register_post_accumulate_grad_hook(self.grad_hook(name))
        return net

    def grad_hook(self, name: str):
        def hook(p: torch.Tensor) -> None:
            self.grads[name] = p.grad.detach().clone()

        return hook

    def param_groups(self, model: nn.Module) -> list[dict]:
        groups = optim.param_groups(model, self.cfg.optim)
        decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
        self.wd = {name: float(decay[id(p)]) for name, p in model.named_parameters()}
        return groups

    def batch(self, micro_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.tc.batch_size == 0:
            return self.x, self.y
        rng = np.random.default_rng([self.cfg.run.seed, micro_index])
        idx = torch.as_tensor(rng.choice(self.tc.n, self.tc.batch_size, replace=False), device=self.ctx.device)
        return self.x[idx], self.y[idx]

    def loss(self, model: nn.Module, batch: Any, micro_index: int) -> torch.Tensor:
        self.before = [p.detach().clone() for p in (self.net.w_in, self.net.w_hidden, self.net.w_out)]
        x, y = batch
        return F.cross_entropy(model(x), y)

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.tc.batch_size or self.tc.n

    def write_charges(self, row: int) -> None:
        net = self.net
        charges = linear_charges(net.w_out, net.b_out) | quadratic_charges(net.w_in, net.w_hidden, net.w_out)
        sizes = {"size_" + k: v for k, v in charge_sizes(net).items()}
        self.record.record(row, **charges, **sizes)

    def after_step(self, model: nn.Module, step: int) -> None:
        net = self.net
        steps = [p - b for p, b in zip((net.w_in, net.w_hidden, net.w_out), self.before)]
        kinetic = quadratic_charges(*steps)
        self.record.record(step - 1, kinetic_scale=kinetic["scale"], kinetic_rescale=kinetic["rescale"])
        if len(self.grads) == 3:
            grads = quadratic_charges(self.grads["w_in"], self.grads["w_hidden"], self.grads["w_out"])
            self.record.record(step - 1, grad_scale=grads["scale"], grad_rescale=grads["rescale"])
        self.write_charges(step)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            return {"val_loss": float(F.cross_entropy(model(self.x), self.y))}

    def records(self, n: int) -> dict[str, np.ndarray]:
        """The run's records for n steps: charges (n + 1 rows), kinetic and gradient terms (n rows)."""
        rec = self.record
        per_step = ("kinetic_scale", "kinetic_rescale", "grad_scale", "grad_rescale")
        return {name: rec.numpy(name, n if name in per_step else n + 1) for name in rec.names()}

    def finish(self, model: nn.Module, history: list[dict]) -> dict[str, Any]:
        n = int(np.isfinite(self.record.numpy("scale", self.n_steps + 1)).sum()) - 1
        rec = self.records(n)
        sgd = sgd_settings(self.cfg, self.optim_options, n)
        out = law_checks(rec, sgd, self.wd, self.cfg.optim.grad_clip)
        self.plot(rec, out["predicted"], sgd)
        pred = out["predicted"]
        return {
            "prediction": {
                "translation_bias_final": float(pred["translation_bias"][-1]),
                "scale_final": float(pred["scale"][-1]),
                "gamma": noether.damping(float(sgd.lrs[0]), sgd.momentum),
            },
            "observed": {
                "translation_bias_final": float(rec["translation_bias"][-1]),
                "scale_final": float(rec["scale"][-1]),
                "final_loss": float(self.evaluate(model)["val_loss"]),
            },
            "checks": out["checks"],
        }

    def plot(self, rec: dict[str, np.ndarray], pred: dict[str, np.ndarray], sgd: SGDSettings) -> None:
        run_dir, steps = self.ctx.run_dir, np.arange(len(rec["scale"]))
        title = f"SGD lr {sgd.lrs[0]:g}, momentum {sgd.momentum:g}, weight decay {self.wd['w_in']:g}"
        plots.plot_law(
            run_dir / "translation.png",
            steps,
            rec["translation_weight"][:, :3],
            pred["translation_weight"][:, :3],
            pred["continuous_translation_weight"][:, :3] if "continuous_translation_weight" in pred else None,
            "translation: column sums of W_out, " + title,
            "sum over classes",
            float(np.max(rec["size_translation_weight"])),
            [f"neuron {i}" for i in range(3)],
        )
        plots.plot_law(
            run_dir / "scale.png",
            steps,
            rec["scale"],
            pred["scale"],
            pred.get("continuous_scale"),
            "scale: |W_in|^2 (layer-norm fed), " + title,
            "|W_in|^2",
            float(np.max(rec["size_scale"])),
        )
        plots.plot_law(
            run_dir / "rescale.png",
            steps,
            rec["rescale"][:, :4],
            pred["rescale"][:, :4],
            pred["continuous_rescale"][:, :4] if "continuous_rescale" in pred else None,
            "rescale: |W_out[:, i]|^2 - |W_hidden[i]|^2, " + title,
            "charge",
            float(np.max(rec["size_rescale"])),
            [f"neuron {i}" for i in range(4)],
        )
        lrs = np.concatenate([sgd.lrs, sgd.lrs[-1:]])
        plots.plot_series(
            run_dir / "effective_lr.png",
            steps,
            {"lr / |W_in|^2 (run)": lrs / rec["scale"], "lr / |W_in|^2 (law, theory)": lrs / pred["scale"]},
            "scale invariance: the effective step on the sphere\n" + title,
            "step",
            "effective learning rate",
            logy=True,
        )
