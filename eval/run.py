"""Load a trained model (and its tokenizer) back from a run dir, for evaluation tools."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from configs import UserError, from_dict


@dataclass
class LoadedRun:
    run_dir: Path
    config: Any  # configs.Config
    model: torch.nn.Module  # model.GPT, in eval mode
    tokenizer: Any  # data.tokenizer.Tokenizer
    checkpoint: Path


def latest_checkpoint(run_dir: Path) -> Path:
    ckpts = sorted(run_dir.glob("ckpt_*.pt"))
    if not ckpts:
        raise UserError(f"no checkpoint in '{run_dir}'; pass a run dir that finished at least one checkpoint")
    return ckpts[-1]


def load_run(
    run_dir: str | Path, device: str | torch.device = "cpu", checkpoint: str | Path | None = None
) -> LoadedRun:
    """Rebuild the run's model from its checkpoint's stored config and load the weights."""
    from checkpoints import load_checkpoint
    from train import Context, LMTask

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run dir '{run_dir}' not found; pass the folder a training run wrote (runs/<name>)")
    path = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir)
    state = load_checkpoint(path)
    cfg = from_dict({k: v for k, v in state["config"].items()})
    if cfg.task.get("name", "lm") != "lm":
        raise UserError(f"'{run_dir}' is a {cfg.task['name']} run; this tool reads language-model runs")
    ctx = Context(device=torch.device(device), run_dir=run_dir)
    task = LMTask(cfg, ctx)
    model = task.build_model()
    model.load_state_dict(state["model"])
    model.to(device).eval()
    return LoadedRun(run_dir, cfg, model, task.tokenizer, path)
