"""The training state that is not the model's or the optimizer's, in both directions of a checkpoint."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from checkpoints import set_rng_state


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0
    wall_s: float = 0.0  # training time of the earlier processes of this run (a resumed run adds its own)
    best_val: float = math.inf
    skips: int = 0  # steps skipped for a non-finite loss
    optimizer_skips: int = 0  # steps the optimizer declined (ECD's on_low_loss=skip)
    initial_val: dict[str, float] | None = None  # the evaluation before the first step
    last_val: dict[str, float] = field(default_factory=dict)  # the latest evaluation, at step last_val_step
    last_val_step: int = -1

    def to_checkpoint(self, elapsed: float, rngs: list[dict[str, Any]]) -> dict[str, Any]:
        """The checkpoint's entries for this state; ``rngs`` are every rank's random streams."""
        return {
            "step": self.step,
            "tokens": self.tokens,
            "wall_s": self.wall_s + elapsed,
            "rng": rngs,
            "best_val": self.best_val,
            "val_loss": self.last_val.get("val_loss") if self.last_val_step == self.step else None,
            "skips": self.skips,
            "optimizer_skips": self.optimizer_skips,
            "initial_val": self.initial_val,
        }

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any], rank: int, world: int, device: torch.device) -> TrainState:
        """The state a checkpoint holds; this rank's random streams are restored on the way."""
        rngs = state["rng"]  # one per rank; the same on every rank unless a task draws per rank
        set_rng_state(rngs[rank] if len(rngs) == world else rngs[0], device)
        return cls(
            step=state["step"],
            tokens=state["tokens"],
            wall_s=state["wall_s"],
            best_val=state["best_val"],
            skips=state["skips"],
            optimizer_skips=state.get("optimizer_skips", 0),  # checkpoints before it was counted have none
            initial_val=state.get("initial_val"),
        )
