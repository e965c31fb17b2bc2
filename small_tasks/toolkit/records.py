"""Per-step records of the small tasks and what they are compared with.

- ``Recorder``: named tensors at chosen steps, kept across a resume (the one mechanism for records);
- ``record_steps``, ``log_steps``: which steps to keep (evenly and log-spaced, so that both the early,
  small-initialisation phase and the whole run are resolved);
- ``flow_times``: the gradient-flow time after each number of steps. Plain gradient descent with step
  sizes lr_j is the Euler discretisation of gradient flow, reaching time t_k = sum_{j<k} lr_j after k
  steps (k * lr under a constant schedule); its error against the flow is first order in lr;
- ``sgd_settings``: the run's learning rate step by step and its momentum, as the SGD laws assume;
- ``law_check``, ``decay_check``: the form of a law's check."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import optim
from configs import Config
from small_tasks.toolkit import noether
from small_tasks.toolkit.base import check


def flow_times(cfg: Config, options: Any, steps: np.ndarray) -> np.ndarray:
    """Gradient-flow time after each entry of ``steps`` optimizer steps, from the run's learning rate schedule
    (``options``: the optimizer's typed options, ``SmallTask.optim_options``)."""
    lr = options.lr
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
    """Named tensors at chosen steps (row i: the state after ``steps[i]`` steps; step 0 is before training),
    in buffers on the device, written without a host sync. The one way the small tasks keep per-step
    records: a task lists its recorders in ``recorded``, so they are saved with every checkpoint, and a
    resumed run's checks see the steps taken before the resume. Rows are matched by step, so a run
    resumed to train longer keeps the rows it shares with the shorter one; steps not taken stay NaN.

    ``shapes`` allocates buffers up front (dtype ``dtype``); a name recorded without one is allocated at
    its first record, with the recorded tensor's shape and dtype."""

    def __init__(
        self,
        steps: np.ndarray,
        device: torch.device | str = "cpu",
        shapes: dict[str, tuple[int, ...]] | None = None,
        dtype: torch.dtype = torch.float64,
    ):
        self.steps = np.asarray(steps, dtype=int)
        self.slot = {int(s): i for i, s in enumerate(self.steps)}
        self.device = torch.device(device)
        self.buffers: dict[str, torch.Tensor] = {}
        for name, shape in (shapes or {}).items():
            self.buffers[name] = torch.full((len(self.steps), *shape), float("nan"), dtype=dtype, device=self.device)

    @classmethod
    def every_step(
        cls, n_steps: int, shapes: dict[str, tuple[int, ...]], device: torch.device | str = "cpu"
    ) -> Recorder:
        """Rows for steps 0..n_steps, float64 buffers of the given shapes."""
        return cls(np.arange(n_steps + 1), device, shapes)

    @torch.no_grad()
    def record(self, step: int, **tensors: torch.Tensor) -> None:
        i = self.slot.get(int(step))
        if i is None:
            return
        for name, value in tensors.items():
            if name not in self.buffers:
                shape = (len(self.steps), *value.shape)
                self.buffers[name] = torch.full(shape, float("nan"), dtype=value.dtype, device=self.device)
            self.buffers[name][i] = value.detach()

    def names(self) -> list[str]:
        return list(self.buffers)

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

    def numpy(self, name: str, rows: int | None = None) -> np.ndarray:
        """The buffer on the host: every row, or the first ``rows``."""
        value = self.buffers[name] if rows is None else self.buffers[name][:rows]
        return value.cpu().numpy()

    def taken(self, name: str) -> np.ndarray:
        """Which recorded steps this run took (a resumed run lacks those before its start)."""
        values = self.numpy(name)
        return np.isfinite(values.reshape(len(self.steps), -1)).all(axis=1)


@dataclass
class SGDSettings:
    """The update the laws assume, read from the run's config: lrs[n] is the learning rate of step n."""

    lrs: np.ndarray
    momentum: float
    notes: list[str] = field(default_factory=list)

    @property
    def constant_lr(self) -> bool:
        return bool(np.all(self.lrs == self.lrs[0]))


def sgd_settings(cfg: Config, options: Any, n_steps: int) -> SGDSettings:
    """Learning rate per step (the schedule applied to the base lr) and momentum; ``notes`` says where the
    run leaves the laws' assumptions (heavy-ball torch SGD), so that failed checks come with a reason."""
    lrs = options.lr * np.array([optim.lr_multiplier(s, cfg.optim, cfg.train.max_steps) for s in range(n_steps)])
    notes = []
    if cfg.optim.name != "sgdm":
        notes.append(f"the laws are derived for optim.name = sgdm; this run uses {cfg.optim.name}")
        return SGDSettings(lrs, 0.0, notes)
    if options.nesterov and options.momentum > 0:
        notes.append("the laws are derived for heavy-ball momentum; set optim.sgdm.nesterov = false")
    return SGDSettings(lrs, options.momentum, notes)


def law_check(observed: np.ndarray, predicted: np.ndarray, scale: float, tolerance: float, **extra: Any) -> dict:
    """Passed when max_n |observed - predicted| <= tolerance * scale (``scale``: the size of the terms
    that make up the charge, so that round-off is measured against what it accumulates on)."""
    if observed.shape != predicted.shape or not np.all(np.isfinite(observed)):
        return check(False, "a finite record of every step", "records missing or non-finite", **extra)
    error = float(np.max(np.abs(observed - predicted)) / max(scale, 1e-300))
    return check(
        error <= tolerance,
        f"relative deviation <= {tolerance:g}",
        float(f"{error:.3g}"),
        tolerance=tolerance,
        final_observed=np.asarray(observed[-1]).ravel()[:4].round(10).tolist(),
        final_predicted=np.asarray(predicted[-1]).ravel()[:4].round(10).tolist(),
        **extra,
    )


def decay_check(
    observed: np.ndarray,
    lrs: np.ndarray,
    wd: float,
    momentum: float,
    tolerance: float,
    floor: float,
    min_effect: float,
    **extra: Any,
) -> dict:
    """A prediction: a quadratic charge decays as Q_n = h_n Q_0 (``noether.decay_factor`` with kappa = 2 wd),
    from its initial value and the hyperparameters alone, for as long as the predicted factor |h_n| stays
    >= ``floor`` (beyond it the dropped kinetic drive's own level dominates, not the decay).

    Passed when max |Q_n - h_n Q_0| over the window <= tolerance * max |Q_0| and the predicted decay over
    the window, 1 - |h_end|, is >= ``min_effect``: a run too short (or a weight decay too small) for the
    decay to stand out from a conserved charge does not pass."""
    h = noether.decay_factor(lrs, 2.0 * wd, momentum)
    below = np.flatnonzero(np.abs(h) < floor)
    end = int(below[0]) if len(below) else len(h) - 1
    effect = float(1.0 - abs(h[end]))
    scale = float(np.max(np.abs(observed[0])))
    window = observed[: end + 1]
    if not np.all(np.isfinite(window)):
        return check(False, "a finite record of every step", "records missing or non-finite", **extra)
    predicted = h[: end + 1].reshape(-1, *([1] * (observed.ndim - 1))) * observed[0]
    error = float(np.max(np.abs(window - predicted)) / max(scale, 1e-300))
    notes = list(extra.pop("notes", []))
    if effect < min_effect:
        notes.append(f"the predicted decay {effect:.3g} is below {min_effect:g}: train longer or raise weight decay")
    return check(
        error <= tolerance and effect >= min_effect,
        f"Q_n = h_n Q_0 within {tolerance:g} of max |Q_0| while |h_n| >= {floor:g}, decay 1 - |h| >= {min_effect:g}",
        float(f"{error:.3g}"),
        predicted_decay=float(f"{effect:.4g}"),
        window_steps=end,
        **({"notes": notes} if notes else {}),
        **extra,
    )
