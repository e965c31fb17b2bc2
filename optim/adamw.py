"""AdamW: ``torch.optim.AdamW`` (decoupled weight decay), fused on CUDA, foreach elsewhere."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from configs import non_negative, require
from optim.kernels import fast_kwargs


@dataclass
class Options:  # [optim.adamw]
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1  # decoupled: theta <- theta * (1 - lr * weight_decay)

    def check(self) -> None:
        ok = len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)
        require(ok, f"optim.adamw.betas must be two numbers in [0, 1), got {self.betas}")
        non_negative("optim.adamw", eps=self.eps, weight_decay=self.weight_decay)


def build(groups: list[dict], o: Options) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, **fast_kwargs(groups))
