"""``python train.py``: load the config, run the Trainer, report, and exit with the documented code."""

from __future__ import annotations

import os
import sys
from typing import Any

import torch.distributed as dist

from configs import UserError, load_config, program
from runtime import SharedUserError
from trainer.exits import (
    CHECKS_FAILED_EXIT,
    DESYNC_EXIT,
    NONFINITE_EXIT,
    USER_ERROR_EXIT,
    NonFiniteLoss,
    RanksDiverged,
    ignore_stop_signals,
)
from trainer.loop import Hook, Trainer

USAGE = """usage: {prog} [CONFIG] [--section.key=value ...]      (default: configs/quickstart.toml)
       torchrun --standalone --nproc_per_node=N train.py CONFIG   (DDP: NCCL on GPU, gloo on CPU)
       python train.py CONFIG --run.resume=true                   (continue from the latest good checkpoint)

A CONFIG is a TOML file with the sections run, model, symmetry, optim (and one table per optimizer,
[optim.<name>]), data, train, eval and task; every key can be overridden, e.g. --optim.name=ecd,
--optim.lr=0.3, --train.max_steps=60, --symmetry.mode=bq, --optim.adamw.betas=[0.9,0.95].

Exit codes: 0 done, 2 a usage error (one line on stderr), 3 stopped by SIGTERM/SIGINT after writing a
checkpoint, 4 non-finite loss or parameters, 5 parameters differ across ranks, 6 a theory check of a
small task failed. See docs/distributed.md and docs/small_tasks.md."""


def report(summary: dict[str, Any]) -> None:
    """The closing lines a user reads: losses, the sample, the checks and where the run lives."""
    if not summary:
        return
    if summary.get("completed") is False:
        print(
            f"stopped after {summary['steps']} steps ({summary['tokens']:,} tokens, {summary['wall_s']:.0f}s); "
            "continue with --run.resume=true"
        )
    elif summary.get("initial_val_loss") is not None and summary.get("final_val_loss") is not None:
        print(
            f"val loss: {summary['initial_val_loss']:.4f} at step 0 -> {summary['final_val_loss']:.4f} "
            f"after {summary['steps']} steps ({summary['tokens']:,} tokens, {summary['wall_s']:.0f}s)"
        )
    if summary.get("sample"):
        print("sample:\n" + summary["sample"])
    for name, check in summary.get("checks", {}).items():
        print(
            f"check {name}: {'PASS' if check['passed'] else 'FAIL'} "
            f"(expected {check['expected']}, observed {check['observed']})"
        )
    print(f"run: {summary['run_dir']}")


def failed_checks(summary: dict[str, Any]) -> list[str]:
    return [name for name, check in summary.get("checks", {}).items() if not check["passed"]]


def main(argv: list[str] | None = None, hooks: list[Hook] | tuple[Hook, ...] = ()) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE.format(prog=program()))
        return 0
    config_path = argv[0] if argv and not argv[0].startswith("--") else None
    overrides = argv[1:] if config_path else argv
    rank = int(os.environ.get("RANK", "0"))
    owns_process_group = not dist.is_initialized()  # a caller's process group outlives this run

    def error(msg: str, everywhere: bool) -> None:
        """One line on stderr; an error that every rank hits alike is printed by rank 0 alone."""
        if rank == 0:
            print(f"error: {msg}", file=sys.stderr)
        elif not everywhere:
            print(f"error (rank {rank}): {msg}", file=sys.stderr)

    try:
        try:
            trainer = Trainer(load_config(config_path, overrides), hooks=hooks)
        except UserError as e:  # every rank reads the same files and arguments
            raise SharedUserError(str(e)) from None
        summary = trainer.run()
        if trainer.ctx.is_main:
            report(summary)
        if trainer.exit_code == 0 and failed_checks(summary):
            error(f"{len(failed_checks(summary))} check(s) failed: {', '.join(failed_checks(summary))}", True)
            return CHECKS_FAILED_EXIT
        return trainer.exit_code
    except UserError as e:
        error(str(e), isinstance(e, SharedUserError))
        return USER_ERROR_EXIT
    except NonFiniteLoss as e:  # decided on all-reduced values: the same on every rank
        error(f"{e}; lower optim.lr or use --train.on_nonfinite=skip", everywhere=True)
        return NONFINITE_EXIT
    except RanksDiverged as e:
        error(str(e), everywhere=True)
        return DESYNC_EXIT
    except KeyboardInterrupt:  # Ctrl-C before training started: nothing to save
        error("interrupted", everywhere=True)
        return 130
    finally:
        if owns_process_group and dist.is_initialized():
            ignore_stop_signals()  # torchrun signals the ranks still tearing down when one rank exits first
            dist.destroy_process_group()
