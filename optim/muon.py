"""Muon on the hidden matrices of the transformer blocks, AdamW on every other parameter: one optimizer.

Muon takes, for a weight matrix W (rows × cols, an nn.Linear's out × in) with gradient G, every step:

  B ← μ·B + G                                   momentum (B starts at 0, so the first B is G)
  U = G + μ·B  (Nesterov)   or   U = B
  O = NS_k(U) ≈ U_svd V_svdᵀ                    k Newton-Schulz steps: U's singular values pushed to ~1
  W ← W·(1 − lr·wd) − lr·√max(1, rows/cols)·O   decoupled weight decay, then the step

NS_k normalises X = U/(‖U‖_F + 1e-7), which puts every singular value in [0, 1], then repeats the quintic
X ← a·X + (b·A + c·A²)·X with A = X Xᵀ and (a, b, c) = (3.4445, −4.7750, 2.0315), on the wide
orientation of U (so that A is the smaller Gram matrix). The polynomial p(s) = a·s + b·s³ + c·s⁵ has a
steep slope at 0 (a ≈ 3.4), which lifts small singular values fast; the price is that after 5 steps they
sit in a band around 1 (0.68 to 1.21 for those above 0.3% of ‖U‖_F), not at 1 exactly. Only the
direction of U matters, so the common form B ← μ·B + (1 − μ)·G gives the same O.

Shape scaling: an orthogonal O has RMS entry 1/√max(rows, cols); the factor √max(1, rows/cols) makes
that 1/√cols = 1/√fan_in for every shape, the scale of the weights' own initialisation, so ``lr`` moves
every matrix by the same fraction of its typical entry.

Which parameters: the weights of the nn.Linear layers inside the model's repeated blocks (the modules of
an nn.ModuleList: for the GPT the attention and MLP projections). Everything else (embeddings and the tied
output head, LayerNorm gains, biases, PReLU slopes, any other learned tensor of a block, whatever its
shape) goes to ``torch.optim.AdamW`` with the ``adamw_*`` settings. Both sides follow the trainer's
schedule: each group's ``lr`` is set from its ``base_lr`` (``lr`` or ``adamw_lr``) every step.

The Newton-Schulz products run in bf16 on CUDA (fast there, and the iteration tolerates it) and in the
parameter's dtype elsewhere (CPU bf16 matrix products are far slower than fp32). Every rank does the
same arithmetic on the same all-reduced gradients, and the state (momentum buffers, AdamW's moments)
is all in ``state_dict()``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from configs import UserError, at_least, non_negative, positive, require
from optim.adamw import Options as AdamWOptions
from optim.adamw import build as build_adamw

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # the quintic's (a, b, c): steepest slope at 0 that stays bounded
NS_EPS = 1e-7


@dataclass
class Options:  # [optim.muon]
    lr: float = 0.02  # Muon's, for the block matrices
    momentum: float = 0.95
    nesterov: bool = True
    ns_steps: int = 5  # Newton-Schulz steps
    weight_decay: float = 0.0  # decoupled, on the block matrices: W <- W * (1 - lr * weight_decay)
    adamw_lr: float = 1e-3  # the AdamW side: embeddings, head, gains, biases, everything else
    adamw_betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    adamw_eps: float = 1e-8
    adamw_weight_decay: float = 0.1  # decoupled, where optim.decay puts decay

    def check(self) -> None:
        require(0 <= self.momentum < 1, f"optim.muon.momentum must be in [0, 1), got {self.momentum}")
        at_least("optim.muon", 1, ns_steps=self.ns_steps)
        positive("optim.muon", adamw_lr=self.adamw_lr)
        non_negative("optim.muon", weight_decay=self.weight_decay, adamw_eps=self.adamw_eps,
                     adamw_weight_decay=self.adamw_weight_decay)
        ok = len(self.adamw_betas) == 2 and all(0 <= b < 1 for b in self.adamw_betas)
        require(ok, f"optim.muon.adamw_betas must be two numbers in [0, 1), got {self.adamw_betas}")

    def adamw(self) -> AdamWOptions:
        return AdamWOptions(self.adamw_lr, list(self.adamw_betas), self.adamw_eps, self.adamw_weight_decay)


def orthogonalize(g: torch.Tensor, steps: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """NS_k(g): ``steps`` quintic Newton-Schulz steps towards the orthogonal polar factor of the matrix g,
    computed in ``dtype`` (default g's), returned in g's dtype."""
    a, b, c = NS_COEFFICIENTS
    x = g.to(dtype or g.dtype)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (x.norm() + NS_EPS)  # the Frobenius norm bounds the spectral norm: singular values in [0, 1]
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b·A + c·A²
        x = torch.addmm(x, poly, x, beta=a)  # a·X + (b·A + c·A²)·X
    return (x.T if tall else x).to(g.dtype)


def shape_scale(p: torch.Tensor) -> float:
    """√max(1, rows/cols): every orthogonalised update gets RMS 1/√fan_in (see the module docstring)."""
    rows, cols = p.shape
    return max(1.0, rows / cols) ** 0.5


def block_matrices(model: nn.Module) -> set[int]:
    """The ids of the weights of the nn.Linear layers inside the model's repeated blocks (nn.ModuleList)."""
    return {
        id(m.weight)
        for blocks in model.modules()
        if isinstance(blocks, nn.ModuleList)
        for m in blocks.modules()
        if isinstance(m, nn.Linear)
    }


def split_groups(model: nn.Module, decay: list[nn.Parameter], no_decay: list[nn.Parameter], o: Options) -> list[dict]:
    """Muon's groups first (so the logged ``lr`` is Muon's), then AdamW's at ``adamw_lr``; ``decay`` and
    ``no_decay`` are the parameters ``optim.decay`` does and does not decay."""
    matrices = block_matrices(model)
    groups = []
    for muon, lr, wd in ((True, o.lr, o.weight_decay), (False, o.adamw_lr, o.adamw_weight_decay)):
        for params, decayed in ((decay, True), (no_decay, False)):
            mine = [p for p in params if (id(p) in matrices) == muon]
            if mine:
                groups.append({"params": mine, "muon": muon, "lr": lr, "weight_decay": wd if decayed else 0.0})
    return groups


class Muon(torch.optim.Optimizer):
    """Muon on the groups marked ``muon=True``, AdamW on the others, with one ``param_groups`` and one
    ``state``: the AdamW side is a ``torch.optim.AdamW`` over the very same group dicts and state dict."""

    def __init__(self, groups: list[dict], o: Options):
        if not any(g.get("muon") for g in groups):
            raise UserError(
                "optim.name = muon needs matrices inside repeated blocks (nn.Linear layers in an nn.ModuleList, "
                "as in the GPT) and this model has none; use adamw"
            )
        for g in groups:
            if g.get("muon") and any(p.dim() != 2 for p in g["params"]):
                raise ValueError("Muon's groups take matrices only")
        defaults = dict(lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, ns_steps=o.ns_steps,
                        weight_decay=o.weight_decay, muon=False)
        super().__init__(groups, defaults)
        self.adamw_options = o.adamw()
        self._attach_adamw()

    def _attach_adamw(self) -> None:
        """(Re)builds the AdamW side on the current group dicts and state (after a load replaced them);
        torch's AdamW fills in its own keys (betas, eps, ...) in those dicts, so they are saved with them."""
        groups = [g for g in self.param_groups if not g["muon"]]
        self.adamw = build_adamw(groups, self.adamw_options) if groups else None
        if self.adamw is not None:
            self.adamw.state = self.state

    def __setstate__(self, state: dict) -> None:  # load_state_dict replaces the groups and the state
        super().__setstate__(state)
        if hasattr(self, "adamw_options"):
            self._attach_adamw()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["muon"]:
                self._muon(group)
        if self.adamw is not None:
            self.adamw.step()
        return loss

    def _muon(self, group: dict) -> None:
        lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buf = state["momentum_buffer"]
            buf.mul_(mu).add_(p.grad)
            u = p.grad.add(buf, alpha=mu) if group["nesterov"] else buf
            o = orthogonalize(u, group["ns_steps"], torch.bfloat16 if p.is_cuda else None)
            if wd:
                p.mul_(1 - lr * wd)
            p.add_(o, alpha=-lr * shape_scale(p))


def build(groups: list[dict], o: Options) -> Muon:
    return Muon(groups, o)
