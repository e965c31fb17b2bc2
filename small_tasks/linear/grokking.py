"""Get rich quick, grokking: does an upstream initialization shorten the time to generalise on modular addition?

    python train.py configs/small_tasks/grokking_upstream.toml

Inputs are the pairs (a, b) of Z_p, target the one-hot of (a + b) mod p; a random task.train_fraction of the
p^2 pairs (from task.data_seed and the instance) is trained on, the rest is the test set. The network is
f(a, b) = W (U e_a + V e_b)^2: embeddings U, V (width x p), a quadratic hidden layer, a readout W (p x width),
trained full-batch by gradient descent on the mean over training pairs of ||f - y||^2.

Per entry, U and V start at task.scale * alpha * N(0, 1) and W at task.scale / alpha^2 * N(0, 1) for every alpha
in task.relative_scales, with the same draws: the function at the start is the same for every alpha (degree
two in the embeddings, one in the readout), only the split between the layers differs. Gradient flow conserves,
per hidden neuron, ||W_i||^2 - (||U_i||^2 + ||V_i||^2) / 2 (the activation is homogeneous of degree 2), which
is p scale^2 (1/alpha^4 - alpha^2) in expectation: alpha < 1 is upstream (the embeddings move fastest), alpha = 1
balanced, alpha > 1 downstream. task.instances (data split and draws) x alphas train side by side.

The grokking time of a network is the first step at which its test accuracy reaches task.threshold; the
accuracies are read off the forward pass of every step (no extra evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from configs import Config, UserError
from runtime import Context
from small_tasks.linear.get_rich_quick import DATA, INIT, summarize
from small_tasks.toolkit.base import EnsembleTask, check
from small_tasks.toolkit.plots import finish, plt
from small_tasks.toolkit.records import Recorder

# The layer ratio: an embedding neuron's relative speed is ||W_i|| ||z_i|| / ||U_i|| ~ scale / alpha^2, so the
# upstream embeddings turn 1/alpha^2 times faster than the balanced ones. If grokking waited only on the
# embeddings' rotation, it would come 1/alpha^2 times sooner; the check asks for at least the square root of
# that (half the ratio's effect on a log scale): a factor that a tie, or the seed-to-seed spread of one
# network's grokking time (about 10%), cannot produce for alpha <= 0.5 (sqrt(4) = 2).
SPEEDUP_SHARE = 0.5


@dataclass
class UpstreamGrokkingConfig:
    name: str = "grokking_upstream"
    p: int = 23
    width: int = 64
    train_fraction: float = 0.8
    scale: float = 0.1
    relative_scales: list[float] = field(default_factory=lambda: [0.5, 1.0])  # 1.0 (balanced) must be one
    threshold: float = 0.95  # test accuracy that counts as grokked
    instances: int = 2
    data_seed: int = 0

    def check(self) -> None:
        if self.p < 3 or self.width < 1 or self.instances < 1:
            raise UserError("task.p must be >= 3, task.width and task.instances >= 1")
        if not 0 < self.train_fraction < 1:
            raise UserError(f"task.train_fraction must be in (0, 1), got {self.train_fraction}")
        if self.scale <= 0 or min(self.relative_scales, default=0) <= 0 or len(self.relative_scales) < 2:
            raise UserError("task.scale must be > 0 and task.relative_scales at least two values > 0, e.g. [0.5, 1.0]")
        if 1.0 not in self.relative_scales:
            raise UserError("task.relative_scales must include the balanced network, 1.0, e.g. [0.5, 1.0]")
        if not 0 < self.threshold <= 1:
            raise UserError(f"task.threshold must be in (0, 1], got {self.threshold}")


def grokking_steps(test_acc: np.ndarray, threshold: float) -> np.ndarray:
    """Per network (columns of (steps + 1, K)), the first step whose test accuracy reaches ``threshold``;
    NaN where none does (or where the record has a gap before it, as after a resume)."""
    out = np.full(test_acc.shape[1], np.nan)
    for k in range(test_acc.shape[1]):
        hit = np.nonzero(test_acc[:, k] >= threshold)[0]
        if len(hit) and np.isfinite(test_acc[: hit[0], k]).all():
            out[k] = hit[0]
    return out


def speedup_check(times: np.ndarray, alphas: np.ndarray, threshold: float) -> dict[str, Any]:
    """``times`` (instance, alpha): grokking steps, one column per alpha (1 is balanced). Every upstream network
    (alpha < 1) must grok in every instance, at least (1/alpha^2)^SPEEDUP_SHARE times sooner than the
    balanced network of its instance; a run without an upstream alpha, or where the balanced network never
    groks, fails."""
    up = [j for j, a in enumerate(alphas) if a < 1]
    bal = times[:, list(alphas).index(1.0)]
    ratios = {f"alpha={alphas[j]:g}": bal / times[:, j] for j in up}
    need = {f"alpha={alphas[j]:g}": float((1 / alphas[j] ** 2) ** SPEEDUP_SHARE) for j in up}
    passed = bool(up) and bool(np.isfinite(times).all())
    passed &= all(bool(np.all(ratios[k] >= need[k])) for k in ratios)
    return check(
        passed,
        {
            k: f">= {v:.3g} (layer ratio 1/alpha^2 = {v ** (1 / SPEEDUP_SHARE):.3g}, to the power {SPEEDUP_SHARE})"
            for k, v in need.items()
        }
        or "an upstream network (alpha < 1) to compare",
        {k: summarize(v) for k, v in ratios.items()},
        grokking_steps={f"alpha={a:g}": summarize(times[:, j]) for j, a in enumerate(alphas)},
        threshold=threshold,
    )


class QuadraticNetworks(nn.Module):
    """K networks f_k(a, b) = W_k (U_k e_a + V_k e_b)^2 on every pair of Z_p: outputs (K, p^2, p)."""

    def __init__(self, u: np.ndarray, v: np.ndarray, w: np.ndarray, pairs: np.ndarray):
        super().__init__()
        self.u, self.v, self.w = (nn.Parameter(torch.tensor(t, dtype=torch.float64)) for t in (u, v, w))
        self.register_buffer("first", torch.tensor(pairs[:, 0]))
        self.register_buffer("second", torch.tensor(pairs[:, 1]))

    def forward(self) -> torch.Tensor:
        hidden = self.u[:, :, self.first] + self.v[:, :, self.second]  # (K, width, p^2)
        return (self.w @ hidden.square()).transpose(1, 2)


class UpstreamGrokkingTask(EnsembleTask):
    config_class = UpstreamGrokkingConfig
    data_seed_key = "data_seed"
    recorded = ("trace", "recorder")

    def __init__(self, cfg: Config, ctx: Context):
        super().__init__(cfg, ctx)
        tc = self.tc
        p = tc.p
        self.pairs = np.array([(a, b) for a in range(p) for b in range(p)])
        n_train = int(round(tc.train_fraction * p * p))
        masks, us, vs, ws = [], [], [], []
        for i in range(tc.instances):
            order = np.random.default_rng([tc.data_seed, DATA, i]).permutation(p * p)
            train = np.zeros(p * p, dtype=bool)
            train[order[:n_train]] = True
            init = np.random.default_rng([cfg.run.seed, INIT, i])
            u, v, w = (init.standard_normal(s) for s in ((tc.width, p), (tc.width, p), (p, tc.width)))
            for alpha in tc.relative_scales:
                us.append(u * tc.scale * alpha)
                vs.append(v * tc.scale * alpha)
                ws.append(w * tc.scale / alpha**2)
                masks.append(train)
        self.u0, self.v0, self.w0 = np.stack(us), np.stack(vs), np.stack(ws)
        self.train_mask = torch.tensor(np.stack(masks), dtype=torch.float64, device=ctx.device)  # (K, p^2)
        target = (self.pairs[:, 0] + self.pairs[:, 1]) % p
        self.x = torch.zeros(0, device=ctx.device)  # the inputs are every pair, built into the model
        self.y = torch.tensor(np.eye(p)[target], device=ctx.device)
        self.label = torch.tensor(target, device=ctx.device)
        k = len(us)
        self.recorder = Recorder.every_step(cfg.train.max_steps, {"test_acc": (k,), "train_acc": (k,)}, ctx.device)

    def build_model(self) -> nn.Module:
        return QuadraticNetworks(self.u0, self.v0, self.w0, self.pairs)

    def accuracies(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        right = (out.argmax(-1) == self.label).double()
        train = (right * self.train_mask).sum(1) / self.train_mask.sum(1)
        test = (right * (1 - self.train_mask)).sum(1) / (1 - self.train_mask).sum(1)
        return train, test

    def loss(self, model: nn.Module, batch: Any, micro_index: int) -> torch.Tensor:
        """The summed training losses; the same forward pass gives this step's accuracies (before the update)."""
        out = model()
        train, test = self.accuracies(out.detach())
        self.recorder.record(micro_index, train_acc=train, test_acc=test)
        per_pair = (out - self.y).square().sum(-1)
        loss = ((per_pair * self.train_mask).sum(1) / self.train_mask.sum(1)).sum()
        self.record(micro_index, loss)
        return loss

    @property
    def tokens_per_micro_batch(self) -> int:
        return int(self.train_mask.sum())

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """``val_loss``: the test error, 1 - test accuracy, averaged over the networks."""
        with torch.no_grad():
            return {"val_loss": float(1 - self.accuracies(model())[1].mean())}

    def finish(self, model: nn.Module, history: list[dict]) -> dict[str, Any]:
        tc = self.tc
        with torch.no_grad():
            self.recorder.record(
                self.cfg.train.max_steps, **dict(zip(("train_acc", "test_acc"), self.accuracies(model())))
            )
        test_acc = self.recorder.numpy("test_acc")
        alphas = np.array(tc.relative_scales)
        times = grokking_steps(test_acc, tc.threshold).reshape(tc.instances, len(alphas))
        self.plot(test_acc, alphas)
        final = test_acc[-1].reshape(tc.instances, len(alphas))
        # the step the training set is fitted (same threshold): upstream fits it soonest through its fast embeddings
        fitted = grokking_steps(self.recorder.numpy("train_acc"), tc.threshold).reshape(tc.instances, len(alphas))
        return {
            "observed": {
                "grokking_step": {f"alpha={a:g}": summarize(times[:, j]) for j, a in enumerate(alphas)},
                "memorisation_step": {f"alpha={a:g}": summarize(fitted[:, j]) for j, a in enumerate(alphas)},
                "final_test_accuracy": {f"alpha={a:g}": summarize(final[:, j]) for j, a in enumerate(alphas)},
                "delta_per_neuron": {
                    f"alpha={a:g}": round(float(tc.p * tc.scale**2 * (1 / a**4 - a**2)), 6) for a in alphas
                },
            },
            "checks": {"upstream_groks_sooner": speedup_check(times, alphas, tc.threshold)},
        }

    def plot(self, test_acc: np.ndarray, alphas: np.ndarray) -> None:
        steps = np.arange(len(test_acc))
        per = test_acc.reshape(len(steps), self.tc.instances, len(alphas))
        fig, ax = plt.subplots(figsize=(5.6, 3.6))
        colors = plt.cm.viridis(np.linspace(0, 0.85, len(alphas)))
        for j, (a, color) in enumerate(zip(alphas, colors)):
            kind = "upstream" if a < 1 else "balanced" if a == 1 else "downstream"
            for i in range(self.tc.instances):
                ax.plot(steps, per[:, i, j], color=color, lw=1, label=f"alpha={a:g} ({kind})" if i == 0 else None)
        ax.axhline(self.tc.threshold, color="k", ls=":", lw=0.8)
        ax.set_xlabel("step")
        ax.set_ylabel("test accuracy")
        ax.legend(fontsize=7)
        title = f"modular addition p={self.tc.p}, scale {self.tc.scale:g}, {self.tc.instances} instances"
        finish(fig, self.ctx.run_dir / "grokking.png", title, dpi=90)
