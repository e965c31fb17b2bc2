"""The Task interface: one kind of experiment, as the Trainer sees it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from configs import Config
from optim import param_groups
from runtime import Context


class Task:
    """One kind of experiment. The Trainer calls these; a subclass overrides what it needs.

    Batches are addressed by their global micro-batch index, so a task holds no data position:
    the trainer's step counter determines it, which makes resume and world-size changes exact.
    """

    def __init__(self, cfg: Config, ctx: Context):
        self.cfg, self.ctx = cfg, ctx

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def param_groups(self, model: nn.Module) -> list[dict]:
        return param_groups(model, self.cfg.optim)

    def batch(self, micro_index: int) -> Any:
        """The global micro-batch ``micro_index``, on the device."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any, micro_index: int) -> torch.Tensor:
        """The micro-batch's mean loss (a 0-dim tensor); ``model`` may be DDP- or compile-wrapped."""
        raise NotImplementedError

    @property
    def tokens_per_micro_batch(self) -> int:
        """Tokens (or examples) in one micro-batch: for throughput and ``train.max_tokens``."""
        return 1

    def flops_per_token(self, model: nn.Module) -> float | None:
        return None

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Validation metrics; called on every rank with the unwrapped model in eval mode."""
        return {}

    def step_metrics(self, model: nn.Module, step: int) -> dict[str, Any]:
        """Extra metrics logged at each log interval (on rank 0): cheap per-step diagnostics."""
        return {}

    def after_step(self, model: nn.Module, step: int) -> None:
        """After every optimizer step (``step`` steps done), on every rank, without autograd: where a
        task records per-step quantities, on the device so that nothing waits for the host."""

    def state_dict(self) -> dict[str, Any]:
        """What the task keeps in a checkpoint beside the model and the optimizer (plain data, tensors)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A resumed run's task state, as ``state_dict`` gave it (empty for checkpoints without one)."""

    def write_run_files(self, run_dir: Path) -> None:
        """Once the run has passed its checks, on rank 0: what the task keeps in the run dir (the LM task
        keeps its tokenizer and a record of its data, so that evaluation needs only the run dir)."""

    def finish(self, model: nn.Module, history: list[dict]) -> dict[str, Any]:
        """After training, on rank 0: extra summary entries (small tasks add ``checks``)."""
        return {}
