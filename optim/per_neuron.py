"""SGD (with momentum) whose step is scaled per neuron by ||theta_i||^(1-k).

A neuron i of a layer with a degree-k activation owns slices of several tensors (row i of the input
weights, column i of the output weights). From small initialization its norm grows like
d||theta_i||/dt ~ ||theta_i||^k, so plain gradient descent spends almost all its time escaping the
origin; scaling the step by ||theta_i||^(1-k) makes that escape take comparable time at every scale
while keeping the direction of the update, which is what the theory of sequential learning analyses.

Groups opt in with two entries (set by a task's ``param_groups``):
    {"params": [W_in, W_out], "neuron_dims": [0, 1], "norm_power": 1 - k}
``neuron_dims[j]`` is the dimension of ``params[j]`` that indexes neurons (same count in every
tensor of the group). Groups without ``neuron_dims`` take plain SGD steps.

Update: buf = momentum * buf + grad (+ weight_decay * theta); theta_i -= lr * ||theta_i||^(1-k) * buf_i,
the norm taken before the step over all of the neuron's slices jointly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from configs import UserError, non_negative, require


@dataclass
class Options:  # [optim.per_neuron]
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0  # coupled L2

    def check(self) -> None:
        require(0 <= self.momentum < 1, f"optim.per_neuron.momentum must be in [0, 1), got {self.momentum}")
        non_negative("optim.per_neuron", weight_decay=self.weight_decay)


def _view(scale: torch.Tensor, p: torch.Tensor, dim: int) -> torch.Tensor:
    shape = [1] * p.dim()
    shape[dim] = -1
    return scale.view(shape)


class PerNeuronSGD(torch.optim.Optimizer):
    def __init__(self, groups: list[dict], lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        for g in groups:
            dims = g.get("neuron_dims")
            if dims is None:
                continue
            if len(dims) != len(g["params"]):
                raise UserError("per_neuron: each param group needs one neuron_dims entry per tensor")
            counts = {p.shape[d] for p, d in zip(g["params"], dims)}
            if len(counts) != 1:
                raise UserError(f"per_neuron: tensors of one group disagree on the neuron count {sorted(counts)}")
        super().__init__(groups, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "norm_power": 0.0})

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            params = [p for p in g["params"] if p.grad is not None]
            if not params:
                continue
            updates = []
            for p in params:
                d = p.grad
                if g["weight_decay"]:
                    d = d.add(p, alpha=g["weight_decay"])
                if g["momentum"]:
                    state = self.state[p]
                    if "buf" not in state:
                        state["buf"] = d.clone()
                    else:
                        state["buf"].mul_(g["momentum"]).add_(d)
                    d = state["buf"]
                updates.append(d)
            dims = g.get("neuron_dims")
            if dims is None or g["norm_power"] == 0:
                torch._foreach_add_(params, updates, alpha=-g["lr"])
                continue
            sq = None
            for p, dim in zip(g["params"], dims):
                other = [a for a in range(p.dim()) if a != dim]
                s = p.pow(2).sum(dim=other) if other else p.pow(2)
                sq = s if sq is None else sq + s
            scale = sq.pow(0.5 * g["norm_power"]).mul_(-g["lr"])
            by_id = {id(p): dim for p, dim in zip(g["params"], dims)}
            for p, d in zip(params, updates):
                p.addcmul_(d, _view(scale, p, by_id[id(p)]))
        return None


def build(groups: list[dict], o: Options) -> torch.optim.Optimizer:
    return PerNeuronSGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
