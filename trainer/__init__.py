"""The one training loop, for every Task: the Trainer, its entry point and its exit codes."""

from trainer.cli import main, report
from trainer.exits import (
    CHECKS_FAILED_EXIT,
    DESYNC_EXIT,
    NONFINITE_EXIT,
    PREEMPTED_EXIT,
    USER_ERROR_EXIT,
    NonFiniteLoss,
    RanksDiverged,
    exit_process,
    ignore_stop_signals,
)
from trainer.logs import MetricsLog, read_jsonl
from trainer.loop import Hook, Trainer
from trainer.state import TrainState

__all__ = [
    "CHECKS_FAILED_EXIT",
    "DESYNC_EXIT",
    "NONFINITE_EXIT",
    "PREEMPTED_EXIT",
    "USER_ERROR_EXIT",
    "Hook",
    "MetricsLog",
    "NonFiniteLoss",
    "RanksDiverged",
    "TrainState",
    "Trainer",
    "exit_process",
    "ignore_stop_signals",
    "main",
    "read_jsonl",
    "report",
]
