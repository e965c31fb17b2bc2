"""SGD with momentum: ``torch.optim.SGD`` (Nesterov by default), foreach on CPU, fused on CUDA.

Its update, per parameter: g <- grad + weight_decay * theta (coupled L2), buf <- momentum * buf + g
(buf = g on the first step), theta <- theta - lr * (g + momentum * buf with Nesterov, else buf).
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

    def check(self) -> None:
        require(0 <= self.momentum < 1, f"optim.sgdm.momentum must be in [0, 1), got {self.momentum}")
        non_negative("optim.sgdm", weight_decay=self.weight_decay)


def build(groups: list[dict], o: Options) -> torch.optim.Optimizer:
    nesterov = o.nesterov and o.momentum > 0
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=nesterov, **fast_kwargs(groups))
