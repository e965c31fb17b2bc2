"""Validation loss on a fixed token budget: the number the trainer logs, and a tool to recompute it.

    python -m eval.val RUN_DIR [--tokens 10485760] [--checkpoint FILE] [--batch_size B]

The loss is the mean over the first ``tokens // (B * T)`` windows of the validation split, read in
order (no shuffling), with the evaluation (mean) biases: the same numbers on every call and every
device count. The trainer's validation calls ``validation_loss`` too, so the two cannot drift apart.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn as nn

from configs import ArgumentParser, UserError, command, resolve_device
from data.loader import TokenStream
from eval.run import LoadedRun, load_run, run_dataset
from progress import progress_bar
from runtime import Context, to_device

DEFAULT_TOKENS = 10 * 1024 * 1024  # 10,485,760: the budget used for the 124M runs


def windows(stream: TokenStream, tokens: int) -> int:
    """How many whole validation windows a budget of ``tokens`` reads: at least one, at most the split."""
    return max(1, min(stream.per_epoch, tokens // (stream.B * stream.T)))


@torch.no_grad()
def validation_loss(
    model: nn.Module, stream: TokenStream, tokens: int, ctx: Context, progress: bool = False
) -> float:
    """Mean loss over the first ``windows(stream, tokens)`` windows, split across the ranks of ``ctx``."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, device=ctx.device, dtype=torch.float64)
    mine = range(ctx.rank, windows(stream, tokens), ctx.world_size)
    for m in progress_bar(mine, desc="validation", unit="batch", disable=not progress, file=sys.stderr, leave=False):
        x, y = stream.batch(m)
        with ctx.autocast():
            _, loss = model(to_device(x, ctx.device), to_device(y, ctx.device))
        total[0] += loss.double()
        total[1] += 1
    ctx.all_reduce(total)
    model.train(was_training)
    return float(total[0] / total[1])


def run_validation_loss(
    run: LoadedRun,
    tokens: int = DEFAULT_TOKENS,
    batch_size: int = 0,
    device: str = "cpu",
    data: str | None = None,
    progress: bool = False,
) -> dict:
    """{"val_loss", "tokens", "whole_split"} for a loaded run (eval.run.LoadedRun).

    ``tokens`` in is the requested budget; out, what was read: whole windows of batch_size x
    block_size, at most the whole validation split (then ``whole_split`` is true). The data is the run's
    own (checked), or the dataset folder ``data``.
    """
    if tokens < 1:
        raise UserError(f"--tokens must be positive, got {tokens}")
    cfg = run.config
    B = batch_size or cfg.eval.batch_size or cfg.train.batch_size
    dataset = run_dataset(run, data)
    stream = dataset.stream("val", B, cfg.model.block_size, cfg.run.seed, shuffle=False)
    loss = validation_loss(run.model, stream, tokens, Context(device=torch.device(device)), progress)
    n = windows(stream, tokens)
    return {"val_loss": loss, "tokens": n * B * cfg.model.block_size, "whole_split": n == stream.per_epoch}


@command
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description="Deterministic validation loss of a run on a fixed token budget.")
    p.add_argument("run_dir")
    p.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help="validation tokens to read (default 10485760)")
    p.add_argument("--batch_size", type=int, default=0, help="sequences per forward (default: the run's eval batch)")
    p.add_argument("--checkpoint", default=None, help="a checkpoint file (default: the run's latest)")
    p.add_argument("--data", default=None, help="evaluate on this dataset folder instead of the run's own data")
    p.add_device()
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a sentence")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    run = load_run(args.run_dir, device, args.checkpoint)
    out = run_validation_loss(run, args.tokens, args.batch_size, device, args.data, progress=True)
    if args.json:
        print(json.dumps({"run_dir": str(run.run_dir), "checkpoint": str(run.checkpoint), **out}))
    else:
        note = f" (the whole validation split; {args.tokens:,} requested)" if out["whole_split"] else ""
        other = f" of {args.data}" if args.data else ""
        print(f"{run.checkpoint}: val_loss {out['val_loss']:.4f} on {out['tokens']:,} tokens{other}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
