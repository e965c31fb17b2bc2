"""A run's state at chosen steps, for comparison with a gradient-flow closed form.

- ``flow_times``: the gradient-flow time after each number of steps. Plain gradient descent with step
  sizes lr_j is the Euler discretisation of gradient flow, reaching time t_k = sum_{j<k} lr_j after k
  steps (k * lr under a constant schedule); its error against the flow is first order in lr.
- ``record_steps``: the steps to keep: evenly spaced and log-spaced, so that both the early
  (small-initialisation) phase and the whole run are resolved.
- ``Recorder``: copies named tensors at those steps into buffers on the device (no host sync per step);
  steps a run did not take (before a resume) stay NaN.
"""

from __future__ import annotations

import numpy as np
import torch

import optim
from configs import Config


def flow_times(cfg: Config, steps: np.ndarray) -> np.ndarray:
    """Gradient-flow time after each entry of ``steps`` optimizer steps, from the run's learning rate schedule."""
    lr = optim.settings(cfg.optim).lr
    last = int(np.max(steps, initial=0))
    rates = np.array([lr * optim.lr_multiplier(k, cfg.optim, cfg.train.max_steps) for k in range(last)])
    cumulative = np.concatenate([[0.0], np.cumsum(rates)])
    return cumulative[np.asarray(steps, dtype=int)]


def record_steps(max_steps: int, count: int) -> np.ndarray:
    """About ``count`` steps in [0, max_steps]: half evenly spaced, half log-spaced, always 0 and the last."""
    even = np.linspace(0, max_steps, count // 2 + 1)
    logs = np.geomspace(1, max(max_steps, 1), count - count // 2)
    return np.unique(np.concatenate([even, logs, [0, max_steps]]).round().astype(int))


def log_steps(max_steps: int, per_decade: int) -> np.ndarray:
    """Log-spaced steps from 1 to max_steps, ``per_decade`` of them per factor of 10, and the last."""
    decades = np.log10(max(max_steps, 1))
    grid = 10 ** (np.arange(0, decades * per_decade + 1) / per_decade)
    return np.unique(np.concatenate([grid.round(), [max_steps]]).astype(int))


class Recorder:
    """Buffers of named tensors at ``steps`` (step 0 is the state before training)."""

    def __init__(self, steps: np.ndarray, device: torch.device):
        self.steps = np.asarray(steps, dtype=int)
        self.slot = {int(s): i for i, s in enumerate(self.steps)}
        self.device = device
        self.buffers: dict[str, torch.Tensor] = {}

    def record(self, step: int, **tensors: torch.Tensor) -> None:
        i = self.slot.get(step)
        if i is None:
            return
        for name, value in tensors.items():
            if name not in self.buffers:
                shape = (len(self.steps), *value.shape)
                self.buffers[name] = torch.full(shape, float("nan"), dtype=value.dtype, device=self.device)
            self.buffers[name][i] = value.detach()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"steps": torch.as_tensor(self.steps), **self.buffers}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Records from a checkpoint, matched by step (a run resumed to train longer records other steps)."""
        saved_steps = state["steps"].tolist()
        rows = [(i, self.slot[s]) for i, s in enumerate(saved_steps) if s in self.slot]
        for name, saved in state.items():
            if name == "steps":
                continue
            if name not in self.buffers:
                shape = (len(self.steps), *saved.shape[1:])
                self.buffers[name] = torch.full(shape, float("nan"), dtype=saved.dtype, device=self.device)
            for src, dst in rows:
                self.buffers[name][dst] = saved[src].to(self.device)

    def numpy(self, name: str) -> np.ndarray:
        return self.buffers[name].cpu().numpy()

    def taken(self, name: str) -> np.ndarray:
        """Which recorded steps this run took (a resumed run lacks those before its start)."""
        values = self.numpy(name)
        return np.isfinite(values.reshape(len(self.steps), -1)).all(axis=1)
