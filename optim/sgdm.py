"""SGD with momentum: ``torch.optim.SGD`` (Nesterov by default), foreach on CPU, fused on CUDA.

Its update, per parameter: g <- grad + weight_decay * theta (coupled L2), buf <- momentum * buf + g
(buf = g on the first step), theta <- theta - lr * (g + momentum * buf with Nesterov, else buf).

``initial_velocity_std > 0`` starts the buffer at a random velocity instead, buf ~ N(0, std²) per
coordinate, as the paper's GELU runs and its published SGDM PReLU runs (symmetric, bQ-only) do; the
first step is then buf <- momentum * buf + g like every other. The draw comes from torch's global
generator when the optimizer is built, right after the model's initialisation, so it follows
``run.seed`` (and is the same on every DDP rank).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from configs import non_negative, require
from optim.kernels import fast_kwargs


@dataclass
class Options:  # [optim.sgdm]
    lr: float = 0.03
    momentum: float = 0.95
    nesterov: bool = True
    weight_decay: float = 0.0  # coupled L2: added to the gradient
    initial_velocity_std: float = 0.0  # > 0: the momentum buffer starts at N(0, std²), not at the first gradient

    def check(self) -> None:
        require(0 <= self.momentum < 1, f"optim.sgdm.momentum must be in [0, 1), got {self.momentum}")
        non_negative("optim.sgdm", weight_decay=self.weight_decay, initial_velocity_std=self.initial_velocity_std)
        require(
            self.initial_velocity_std == 0 or self.momentum > 0,
            "optim.sgdm.initial_velocity_std needs momentum > 0 (without momentum there is no velocity)",
        )


def build(groups: list[dict], o: Options) -> torch.optim.Optimizer:
    nesterov = o.nesterov and o.momentum > 0
    opt = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=nesterov, **fast_kwargs(groups))
    if o.initial_velocity_std > 0:
        with torch.no_grad():
            for group in opt.param_groups:
                for p in group["params"]:
                    opt.state[p]["momentum_buffer"] = torch.randn_like(p) * o.initial_velocity_std
    return opt
