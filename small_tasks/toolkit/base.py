"""The base of the small full-batch theory experiments, and the form of their checks."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn

import optim
from configs import Config, UserError, build_section
from runtime import Context
from tasks.base import Task

CHECK_KINDS = ("prediction", "implementation")


def check(passed: bool, expected: Any, observed: Any, kind: str = "prediction", **extra: Any) -> dict[str, Any]:
    """One entry of ``summary["checks"]``: did the run do what the theory predicts?

    ``kind`` says what a pass means: a ``prediction`` is computed from the theory and the setup alone
    (data, initialization, hyperparameters) and can fail when the phenomenon is absent; an
    ``implementation`` check compares the run with an exact identity that takes quantities measured on
    the same run (step sizes, gradients), so it tests the code, not the theory's claim."""
    if kind not in CHECK_KINDS:
        raise ValueError(f"check kind '{kind}' is not one of {CHECK_KINDS}")
    return {"passed": bool(passed), "expected": expected, "observed": observed, "kind": kind, **extra}


class SmallTask(Task):
    """A toy experiment trained full-batch in one process.

    ``config_class`` is the dataclass of its ``[task]`` section (parsed into ``self.tc``, so an unknown
    key or a wrong type is a one-line error); ``data_seed_key`` names the key of it that seeds the data
    instance (template, teacher, dataset), which ``eval.verify`` varies. The per-step loss is kept
    on the device (``record``), so no step waits for the host; the analysis reads it at the end.
    ``recorded`` names the attributes that hold such per-step records (tensors indexed by step, or
    objects with ``state_dict``/``load_state_dict``, such as a ``Recorder``): they go into checkpoints,
    so that a resumed run's checks see the steps taken before the resume.
    """

    config_class: type | None = None
    data_seed_key: str | None = None
    recorded: tuple[str, ...] = ("trace",)

    def __init__(self, cfg: Config, ctx: Context):
        super().__init__(cfg, ctx)
        if cfg.train.grad_accum != 1 or ctx.world_size != 1:
            raise UserError("small tasks train full-batch in one process; use --train.grad_accum=1 without torchrun")
        if self.config_class is not None:
            self.tc = build_section(self.config_class, cfg.task, "task")
        # The optimizer's typed options (defaults, its table, optim.lr folded in), validated once here
        # so that the theory reads the same learning rate and momentum the run uses.
        self.optim_options = optim.settings(cfg.optim)
        self.trace = torch.full((cfg.train.max_steps,), float("nan"), device=ctx.device)

    def state_dict(self) -> dict[str, Any]:
        state = {}
        for name in self.recorded:
            value = getattr(self, name)
            state[name] = value if isinstance(value, torch.Tensor) else value.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The records of the steps before the resume; a run resumed to train longer fills the first rows."""
        for name in self.recorded:
            saved, value = state.get(name), getattr(self, name)
            if saved is None:
                continue
            if isinstance(value, torch.Tensor):
                rows = min(len(saved), len(value))
                value[:rows] = saved[:rows].to(value)
            else:
                value.load_state_dict(saved)

    def record(self, micro_index: int, loss: torch.Tensor) -> None:
        if micro_index < len(self.trace):
            self.trace[micro_index] = loss.detach()

    def trace_numpy(self) -> np.ndarray:
        return self.trace.double().cpu().numpy()


class EnsembleTask(SmallTask):
    """Independent networks trained side by side on one full batch ``(self.x, self.y)``: the training loss
    is the sum of their losses (``losses`` gives one per network), so each gets its own gradient."""

    x: torch.Tensor
    y: torch.Tensor

    def losses(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def batch(self, micro_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y

    def loss(self, model: nn.Module, batch: Any, micro_index: int) -> torch.Tensor:
        loss = self.losses(model, *batch).sum()
        self.record(micro_index, loss)
        return loss
