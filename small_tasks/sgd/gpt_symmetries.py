"""The conservation laws of small_tasks/toolkit/noether.py on the real model: a short LM run of the quickstart GPT
trained by heavy-ball SGD, its charges recorded every step and compared with the laws.

    python train.py configs/small_tasks/gpt_symmetries.toml                          # symmetric attention
    python train.py configs/small_tasks/gpt_symmetries.toml --symmetry.mode=bqbv     # with bQ and bV

Symmetries of the symmetric GPT (pre-LayerNorm, tied embeddings, all derived here):
- translation: wte -> wte + c (every row) and wpe -> wpe - c leaves the residual stream unchanged and
  shifts every logit of a position by c . h, which softmax ignores: S = sum_v wte_v - sum_p wpe_p is a
  linear charge;
- scale of the LayerNorm-fed weights: everything that writes the residual stream (wte, wpe, every
  c_proj weight and bias) times a, ln_f's gain and bias over a: every LayerNorm sees a x (invariant at
  eps = 0, so ``task.layernorm_eps`` sets it) and the tied head's logits are unchanged. Its charge
  |writers|^2 - |ln_f|^2 follows the quadratic law;
- GL(head_dim) per head on queries and keys: W^q -> M W^q, W^k -> M^-T W^k (learned biases with them,
  [W | b] below) keeps every score; on values and outputs: W^v -> M W^v, W_o[:, h] -> W_o[:, h] M^-1. Its
  symmetric generators give the matrix charges D_qk = W^q W^q^T - W^k W^k^T and D_vo = W^v W^v^T -
  W_o[:, h]^T W_o[:, h] (quadratic law); its antisymmetric ones, the rotations, give no charge of
  that form (theta^T A theta = 0) but an angular momentum J = skew(W V^T) summed over the pair
  (V = the step): J_n = momentum (lr_n / lr_{n-1}) J_{n-1} - lr_n skew(W d^T), and skew(W g^T) = 0 under
  rotation invariance, so J stays 0 from rest.
The symmetry-breaking biases are added after the projection and do not rotate with it: bQ breaks the
q/k group (rotations included), bV the v/o one; translation and scale stay symmetries. A matrix charge
is compared through fixed linear functionals (its trace and four random projections u^T D u), which
obey the same law, so nothing of size head_dim^2 is kept per step.

The records live in memory for the run, so this task does not resume (it is a short run).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

import optim
from configs import Config, UserError, build_section
from runtime import Context
from small_tasks.sgd.conservation_laws import DECAY_FLOOR, DECAY_MIN_EFFECT, DECAY_TOL  # the same decay claim
from small_tasks.toolkit import noether, plots
from small_tasks.toolkit.base import check
from small_tasks.toolkit.records import Recorder, decay_check, law_check, sgd_settings
from tasks.lm import LMTask

EXACT_TOL = 1e-9  # float64: the structural laws hold to round-off accumulated over the run
TRANSLATION_TOL = 1e-6  # the cross-entropy runs in float32, so sum_v dL/dz_v = 0 only to its round-off
FLOAT32_TOL = 1e-5  # a float32 model: every law to float32 round-off (measured: <= 1.2e-6 in 200 steps)
BROKEN_FACTOR = 100.0  # a broken symmetry must miss its law by this many times the tolerance
N_PROJECTIONS = 4  # random u^T D u functionals per head, besides the trace


@dataclass
class GPTSymmetriesConfig:
    name: str = "gpt_symmetries"
    layernorm_eps: float = 0.0  # 0: the residual-stream scale symmetry is exact; the model's default is 1e-5
    float64: bool = True  # parameters and activations in float64 (the loss's softmax stays float32)


class GPTSymmetriesTask(LMTask):
    def __init__(self, cfg: Config, ctx: Context):
        self.tc = build_section(GPTSymmetriesConfig, cfg.task, "task")
        if cfg.run.resume:
            raise UserError("gpt_symmetries keeps its per-step records in memory; start the run afresh")
        if cfg.model.position != "learned" or cfg.symmetry.learned:  # its laws are derived for that model
            raise UserError(
                "gpt_symmetries checks the laws of the GPT with a position embedding and drawn biases; "
                "remove model.position and symmetry.learned"
            )
        # the LM task takes no task keys of its own
        super().__init__(dataclasses.replace(cfg, task={"name": cfg.task["name"]}), ctx)
        self.cfg = cfg
        self.optim_options = optim.settings(cfg.optim)  # read once, as SmallTask does

    def build_model(self) -> nn.Module:
        model = super().build_model()
        if self.tc.float64:
            model.double()
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = self.tc.layernorm_eps
        cfg = model.config
        self.L, self.H, self.dh = cfg.n_layer, cfg.n_head, cfg.head_dim
        gen = torch.Generator().manual_seed(0)
        u = torch.randn(N_PROJECTIONS, self.dh, generator=gen, dtype=torch.float64)
        self.functionals = u / u.norm(dim=1, keepdim=True)
        t = model.transformer
        self.writers = [t.wte.weight, t.wpe.weight] + [
            p
            for block in t.h
            for p in (block.attn.c_proj.weight, block.attn.c_proj.bias, block.mlp.c_proj.weight, block.mlp.c_proj.bias)
            if p is not None
        ]
        self.readers = [p for p in (t.ln_f.weight, t.ln_f.bias) if p is not None]
        n, C = self.cfg.train.max_steps, cfg.n_embd
        heads = (self.L, self.H, 1 + N_PROJECTIONS)
        shapes = {"translation": (C,), "size_translation": (C,), "scale": (), "size_scale": (), "kinetic_scale": ()}
        for pair in ("qk", "vo"):
            shapes |= {
                pair: heads,
                f"size_{pair}": heads,
                f"kinetic_{pair}": heads,
                f"angular_{pair}": (self.L, self.H),
            }
        self.rec = Recorder.every_step(n, shapes, device=self.ctx.device)
        self.write_charges(0)
        return model

    def param_groups(self, model: nn.Module) -> list[dict]:
        groups = optim.param_groups(model, self.cfg.optim)
        self.decay = {id(p): float(g["weight_decay"]) for g in groups for p in g["params"]}
        return groups

    # ---- the charges ----

    def head_factors(self, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Per layer and head the factors the GL groups act on, from c_attn's weight [3C, C] and bias and
        c_proj's weight [C, C] (or their steps): [W^q | b^q], [W^k | b^k], [W^v | b^v], W_o[:, h]^T, each
        (L, H, head_dim, .)."""
        L, H, dh = self.L, self.H, self.dh
        w, b, o = tensors["attn_w"], tensors["attn_b"], tensors["proj_w"]  # (L, 3C, C), (L, 3C), (L, C, C)
        full = torch.cat([w, b[..., None]], dim=-1).view(L, 3, H, dh, -1)
        out = o.view(L, o.shape[1], H, dh).permute(0, 2, 3, 1)  # (L, H, dh, C)
        return full[:, 0], full[:, 1], full[:, 2], out

    def attention_tensors(self, source) -> dict[str, torch.Tensor]:
        """c_attn's and c_proj's weights of every layer, stacked, in float64 (``source``: a parameter ->
        tensor map, e.g. the parameters themselves or their steps)."""
        blocks = self.model.transformer.h
        C = self.model.config.n_embd

        def bias(block: nn.Module) -> torch.Tensor:
            b = block.attn.c_attn.bias
            return source(b) if b is not None else torch.zeros(3 * C, dtype=torch.float64, device=self.ctx.device)

        return {
            "attn_w": torch.stack([source(bl.attn.c_attn.weight) for bl in blocks]),
            "attn_b": torch.stack([bias(bl) for bl in blocks]),
            "proj_w": torch.stack([source(bl.attn.c_proj.weight) for bl in blocks]),
        }

    def gram_functionals(self, a: torch.Tensor) -> torch.Tensor:
        """(trace, u_i^T A A^T u_i) of A (L, H, dh, k): (L, H, 1 + N_PROJECTIONS)."""
        proj = torch.einsum("id,lhdk->lhik", self.functionals, a).square().sum(-1)
        return torch.cat([a.square().sum((-2, -1))[..., None], proj], dim=-1)

    def quadratic(self, q, k, v, o) -> dict[str, torch.Tensor]:
        gq, gk, gv, go = (self.gram_functionals(x) for x in (q, k, v, o))
        return {"qk": gq - gk, "vo": gv - go, "size_qk": gq + gk, "size_vo": gv + go}

    def write_charges(self, row: int) -> None:
        with torch.no_grad():
            t = self.model.transformer
            writers = sum(p.double().square().sum() for p in self.writers)
            readers = sum(p.double().square().sum() for p in self.readers)
            wte, wpe = t.wte.weight.double(), t.wpe.weight.double()
            factors = self.head_factors(self.attention_tensors(lambda p: p.double()))
            self.rec.record(
                row,
                translation=wte.sum(0) - wpe.sum(0),
                size_translation=wte.abs().sum(0) + wpe.abs().sum(0),
                scale=writers - readers,
                size_scale=writers + readers,
                **self.quadratic(*factors),
            )

    def loss(self, model: nn.Module, batch: Any, micro_index: int) -> torch.Tensor:
        self.before = {id(p): p.detach().to(torch.float64, copy=True) for p in self.model.parameters()}
        return super().loss(model, batch, micro_index)

    def after_step(self, model: nn.Module, step: int) -> None:
        params = list(self.model.parameters())
        steps = {id(p): p.detach().double() - self.before[id(p)] for p in params}
        before = self.head_factors(self.attention_tensors(lambda p: self.before[id(p)]))
        moved = self.head_factors(self.attention_tensors(lambda p: steps[id(p)]))
        kinetic = self.quadratic(*moved)
        writers = sum(steps[id(p)].square().sum() for p in self.writers)
        readers = sum(steps[id(p)].square().sum() for p in self.readers)
        angular = {}
        for pair, (a, b, va, vb) in {
            "qk": (before[0], before[1], moved[0], moved[1]),
            "vo": (before[2], before[3], moved[2], moved[3]),
        }.items():
            m = a @ va.transpose(-1, -2) + b @ vb.transpose(-1, -2)
            size = (a.square().sum((-2, -1)) + b.square().sum((-2, -1))).sqrt() * (
                va.square().sum((-2, -1)) + vb.square().sum((-2, -1))
            ).sqrt()
            angular[f"angular_{pair}"] = (m - m.transpose(-1, -2)).norm(dim=(-2, -1)) / 2 / size.clamp_min(1e-300)
        self.rec.record(
            step - 1, kinetic_scale=writers - readers, kinetic_qk=kinetic["qk"], kinetic_vo=kinetic["vo"], **angular
        )
        self.write_charges(step)

    # ---- the checks ----

    def uniform_decay(self, params: list[torch.Tensor]) -> float | None:
        values = {self.decay[id(p)] for p in params}
        return values.pop() if len(values) == 1 else None

    def records(self) -> dict[str, np.ndarray]:
        n = int(np.isfinite(self.rec.numpy("scale", self.cfg.train.max_steps + 1)).sum()) - 1
        rec = {name: self.rec.numpy(name, n + 1) for name in self.rec.names()}
        return {k: v[:n] if k.startswith(("kinetic_", "angular_")) else v for k, v in rec.items()}

    def tolerances(self) -> tuple[float, float]:
        """(structural laws, translation): see EXACT_TOL, TRANSLATION_TOL and FLOAT32_TOL."""
        return (EXACT_TOL, TRANSLATION_TOL) if self.tc.float64 else (FLOAT32_TOL, FLOAT32_TOL)

    def analyse(self, broken: dict[str, bool]) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Checks of the records: every law where its symmetry holds; where ``broken`` says the biases
        remove it ("qk", "vo"), the law and the angular momentum must miss by BROKEN_FACTOR x tolerance."""
        rec = self.records()
        n = len(rec["kinetic_scale"])
        sgd = sgd_settings(self.cfg, self.optim_options, n)
        tol, translation_tol = self.tolerances()
        t = self.model.transformer
        attn = [
            p
            for bl in t.h
            for p in (bl.attn.c_attn.weight, bl.attn.c_attn.bias, bl.attn.c_proj.weight)
            if p is not None
        ]
        checks: dict[str, Any] = {}
        predicted: dict[str, np.ndarray] = {}

        def law(name: str, params: list, key: str, tolerance: float, make, kind: str = "implementation") -> None:
            wd = self.uniform_decay(params)
            notes = list(sgd.notes)
            if wd is None:
                notes.append("the group's tensors decay differently, so the law does not close; set optim.decay")
                wd = max(self.decay[id(p)] for p in params)
            if key == "scale" and self.tc.layernorm_eps > 0:
                notes.append(f"layer norms with eps = {self.tc.layernorm_eps:g} are only approximately scale invariant")
            predicted[name] = pred = make(wd)
            extra = {"notes": notes} if notes else {}
            checks[name] = law_check(rec[key], pred, float(np.max(rec["size_" + key])), tolerance, kind=kind, **extra)
            if key in ("qk", "vo") and not broken[key] and wd > 0:  # a prediction from D_0, lr, wd, momentum
                checks[f"{key}_charge_decay"] = decay_check(
                    rec[key], lrs, wd, beta, DECAY_TOL, DECAY_FLOOR, DECAY_MIN_EFFECT, **extra
                )

        lrs, beta = sgd.lrs, sgd.momentum
        law(
            "translation_law",
            [t.wte.weight, t.wpe.weight],
            "translation",
            translation_tol,
            lambda wd: noether.linear_charge(rec["translation"][0], lrs, wd, beta),
            kind="prediction",  # from the charge at init and the hyperparameters alone
        )
        law(
            "residual_scale_law",
            self.writers + self.readers,
            "scale",
            tol,
            lambda wd: noether.quadratic_charge(rec["scale"][0], rec["kinetic_scale"], lrs, wd, beta),
        )
        for pair in ("qk", "vo"):
            law(
                f"{pair}_charge_law",
                attn,
                pair,
                tol,
                lambda wd, k=pair: noether.quadratic_charge(rec[k][0], rec[f"kinetic_{k}"], lrs, wd, beta),
            )
            angular = float(np.max(rec[f"angular_{pair}"]))
            checks[f"{pair}_angular_momentum"] = check(
                angular <= tol, f"max |skew(W V^T)| / (|W| |V|) <= {tol:g}", float(f"{angular:.3g}")
            )
            if broken[pair]:  # the biases remove this symmetry: the theory predicts that both laws fail
                for key in (f"{pair}_charge_law", f"{pair}_angular_momentum"):
                    observed = checks.pop(key)["observed"]
                    checks[key.replace("_law", "") + "_broken_by_bias"] = check(
                        isinstance(observed, float) and observed >= BROKEN_FACTOR * tol,
                        f"broken: deviation >= {BROKEN_FACTOR * tol:g} ({BROKEN_FACTOR:g} x the tolerance)",
                        observed,
                    )
        return checks, rec, predicted

    def finish(self, model: nn.Module, history: list[dict]) -> dict[str, Any]:
        out = super().finish(model, history)
        spec = self.model.bias_spec
        checks, rec, predicted = self.analyse({"qk": spec.has_q, "vo": spec.has_v})
        self.plot(rec, predicted, sgd_settings(self.cfg, self.optim_options, len(rec["kinetic_scale"])))
        return {
            **out,
            "observed": {
                "angular_momentum_qk": float(np.max(rec["angular_qk"])),
                "angular_momentum_vo": float(np.max(rec["angular_vo"])),
            },
            "checks": checks,
        }

    def plot(self, rec: dict[str, np.ndarray], predicted: dict[str, np.ndarray], sgd) -> None:
        run_dir, steps = self.ctx.run_dir, np.arange(len(rec["scale"]))
        mode = self.model.bias_spec.symmetry.mode
        title = f"GPT ({mode}), SGD lr {sgd.lrs[0]:g}, momentum {sgd.momentum:g}"
        plots.plot_law(
            run_dir / "translation.png",
            steps,
            rec["translation"][:, :3],
            predicted["translation_law"][:, :3],
            None,
            "translation: sum wte - sum wpe, " + title,
            "charge",
            float(np.max(rec["size_translation"])),
        )
        plots.plot_law(
            run_dir / "residual_scale.png",
            steps,
            rec["scale"],
            predicted["residual_scale_law"],
            None,
            "scale: |residual writers|^2 - |ln_f|^2, " + title,
            "charge",
            float(np.max(rec["size_scale"])),
        )
        for pair in ("qk", "vo"):
            plots.plot_law(
                run_dir / f"{pair}_charge.png",
                steps,
                rec[pair][:, :, 0, 0],
                predicted[f"{pair}_charge_law"][:, :, 0, 0],
                None,
                f"GL charge tr D_{pair}, layer 0 by head\n" + title,
                "tr D",
                float(np.max(rec[f"size_{pair}"])),
                [f"head {h}" for h in range(self.H)],
            )
        tol, _ = self.tolerances()
        series = {
            f"{p}: max over heads of |skew(W V^T)| / |W||V|": np.maximum(rec[f"angular_{p}"].max((1, 2)), 1e-17)
            for p in ("qk", "vo")
        }
        series["tolerance of a conserved angular momentum (theory: 0)"] = np.full(len(steps) - 1, tol)
        plots.plot_series(
            run_dir / "angular_momentum.png",
            steps[1:],
            series,
            "angular momentum of the attention rotations\n" + title,
            "step",
            "relative angular momentum",
            logy=True,
        )
