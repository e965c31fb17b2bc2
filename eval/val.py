"""Validation loss of a run on a fixed token budget, the same computation the trainer logs.

    python -m eval.val RUN_DIR [--tokens 10485760] [--checkpoint FILE] [--batch_size B]

The loss is the mean over the first ``tokens // (B * T)`` windows of the validation split, read in
order (no shuffling), with the evaluation (mean) biases: the same numbers on every call and every
device count. It runs LMTask.evaluate, so it cannot drift from the in-training validation.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from typing import Any

import torch

from configs import UserError, command

DEFAULT_TOKENS = 10 * 1024 * 1024  # 10,485,760: the budget used for the 124M runs


def validation_loss(run: Any, tokens: int = DEFAULT_TOKENS, batch_size: int = 0, device: str = "cpu") -> dict:
    """{"val_loss", "tokens", "whole_split"} for a loaded run (eval.run.LoadedRun).

    ``tokens`` in is the requested budget; out, what was read: whole windows of batch_size x
    block_size, at most the whole validation split (then ``whole_split`` is true).
    """
    from train import Context, LMTask

    if tokens < 1:
        raise UserError(f"--tokens must be positive, got {tokens}")
    cfg = copy.deepcopy(run.config)
    cfg.eval.tokens, cfg.eval.logic = tokens, False
    if batch_size:
        cfg.eval.batch_size = batch_size
    task = LMTask(cfg, Context(device=torch.device(device), run_dir=run.run_dir))
    span = task.val.B * task.val.T
    windows = max(1, min(task.val.per_epoch, tokens // span))  # as LMTask.evaluate reads them
    return {**task.evaluate(run.model), "tokens": windows * span, "whole_split": windows == task.val.per_epoch}


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Deterministic validation loss of a run on a fixed token budget.")
    p.add_argument("run_dir")
    p.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help="validation tokens to read (default 10485760)")
    p.add_argument("--batch_size", type=int, default=0, help="sequences per forward (default: the run's eval batch)")
    p.add_argument("--checkpoint", default=None, help="a checkpoint file (default: the run's latest)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a sentence")
    args = p.parse_args(argv)
    from eval.run import load_run

    run = load_run(args.run_dir, args.device, args.checkpoint)
    out = validation_loss(run, args.tokens, args.batch_size, args.device)
    if args.json:
        print(json.dumps({"run_dir": str(run.run_dir), "checkpoint": str(run.checkpoint), **out}))
    else:
        note = f" (the whole validation split; {args.tokens:,} requested)" if out["whole_split"] else ""
        print(f"{run.checkpoint}: val_loss {out['val_loss']:.4f} on {out['tokens']:,} tokens{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
