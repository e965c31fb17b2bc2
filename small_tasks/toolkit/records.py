"""What the SGD-law tasks share: per-step records that survive a resume, the run's SGD settings step by
step, and the form of a law check."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

import optim
from configs import Config
from small_tasks.toolkit.base import check


class StepRecord(nn.Module):
    """Per-step quantities as buffers (row n: after n steps), written on the device without a host sync.

    Being buffers of the model, they are saved with every checkpoint, so the checks of a resumed run
    still see the whole run."""

    def __init__(self, n_steps: int, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype = torch.float64):
        super().__init__()
        for name, shape in shapes.items():
            self.register_buffer(name, torch.full((n_steps + 1, *shape), float("nan"), dtype=dtype))

    @torch.no_grad()
    def write(self, row: int, **values: torch.Tensor) -> None:
        for name, value in values.items():
            buf = getattr(self, name)
            if row < len(buf):
                buf[row] = value

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
        """A checkpoint of a run with fewer ``max_steps`` fills the first rows: resuming to train longer."""
        for name, buf in self._buffers.items():
            src = state_dict.get(prefix + name)
            if src is None:
                missing_keys.append(prefix + name)
            elif src.shape[1:] != buf.shape[1:]:
                errors.append(f"{prefix + name}: shape {tuple(src.shape)} does not fit {tuple(buf.shape)}")
            else:
                rows = min(len(src), len(buf))
                with torch.no_grad():
                    buf[:rows] = src[:rows]

    def numpy(self, name: str, rows: int) -> np.ndarray:
        return getattr(self, name)[:rows].double().cpu().numpy()


@dataclass
class SGDSettings:
    """The update the laws assume, read from the run's config: lrs[n] is the learning rate of step n."""

    lrs: np.ndarray
    momentum: float
    notes: list[str] = field(default_factory=list)

    @property
    def constant_lr(self) -> bool:
        return bool(np.all(self.lrs == self.lrs[0]))


def sgd_settings(cfg: Config, n_steps: int) -> SGDSettings:
    """Learning rate per step (the schedule applied to the base lr) and momentum; ``notes`` says where the
    run leaves the laws' assumptions (heavy-ball torch SGD), so that failed checks come with a reason."""
    options = optim.settings(cfg.optim)
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
