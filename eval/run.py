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
    from checkpoints import list_checkpoints

    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise UserError(f"no checkpoint in '{run_dir}'; pass a run dir that finished at least one checkpoint")
    return ckpts[-1]


def run_tokenizer(run_dir: Path, cfg: Any) -> Any:
    """The run's own copy of its tokenizer; runs without one read it from their dataset."""
    from data.dataset import TOKENIZER_DIR, load_meta, load_tokenizer, open_dataset

    saved = run_dir / TOKENIZER_DIR
    if (saved / "meta.json").exists():
        return load_tokenizer(saved, load_meta(saved))
    return open_dataset(cfg.data).tokenizer


def load_run(
    run_dir: str | Path, device: str | torch.device = "cpu", checkpoint: str | Path | None = None
) -> LoadedRun:
    """Rebuild the run's model from its checkpoint's stored config and load the weights.

    Needs only the run dir: the tokenizer comes from the copy the trainer keeps there.
    """
    from checkpoints import load_checkpoint
    from train import build_gpt

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run dir '{run_dir}' not found; pass the folder a training run wrote (runs/<name>)")
    path = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir)
    state = load_checkpoint(path)
    cfg = from_dict(state["config"])
    if cfg.task.get("name", "lm") != "lm":
        raise UserError(f"'{run_dir}' is a {cfg.task['name']} run; this tool reads language-model runs")
    tokenizer = run_tokenizer(run_dir, cfg)
    model = build_gpt(cfg, tokenizer.vocab_size)
    model.load_state_dict(state["model"])
    model.to(device).eval()
    return LoadedRun(run_dir, cfg, model, tokenizer, path)
