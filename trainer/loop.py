"""The Trainer: one loop for every Task, read top-down as its named steps.

    setup        run dir, seeds, task, model, optimizer, resume, loggers, the first evaluation
    train_step   the micro-batches of one step (accumulation, the DDP sync), clipping, the optimizer step
    end_step     logging, evaluation, checkpointing and stopping, as the step's number asks
    finish       the summary

It owns everything that is not task-specific: device, DDP, optimizer and schedule, accumulation,
autocast, compile, logging, validation, checkpoints, resume, signals and the progress bar.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import optim
from checkpoints import (
    check_resumable,
    kept_checkpoint,
    latest_good_checkpoint,
    list_checkpoints,
    load_checkpoint,
    remove_partial_writes,
    replace_file,
    rng_state,
    save_checkpoint,
    set_aside_newer,
)
from configs import Config, UserError, to_dict, to_toml
from model import GPTConfig
from progress import ProgressBar, progress_bar
from runtime import Context, out_of_memory, peak_flops, setup_context
from tasks import build_task
from trainer.exits import PREEMPTED_EXIT, NonFiniteLoss, RanksDiverged
from trainer.init_from import adopt_source_architecture, source_config, user_set
from trainer.logs import Loggers, MetricsLog, WandbLogger, resume_history, wandb_module
from trainer.rundir import RunLock, check_start, clear_run
from trainer.state import TrainState


class Hook:
    """A way into the loop without branches in it (tests install hooks that inject faults)."""

    def on_loss(self, trainer: Trainer, step: int, micro: int, loss: torch.Tensor) -> torch.Tensor:
        """A micro-batch's loss before its backward pass; ``step`` counts from 1."""
        return loss

    def after_step(self, trainer: Trainer, step: int) -> None:
        """After the optimizer step that made ``step`` steps."""


@dataclass
class StepResult:
    loss: float  # the step's mean loss over micro-batches and ranks (0.0 on a step that did not sync)
    grad_norm: float
    stopping: bool  # a stop signal reached some rank
    skipped: str | None  # why the update was skipped, if it was


class Trainer:
    def __init__(self, cfg: Config, ctx: Context | None = None, hooks: list[Hook] | tuple[Hook, ...] = ()):
        # an init_from source's architecture where the user chose none: the weights fit only their own model
        self.cfg, self.adopted = adopt_source_architecture(optim.resolve(cfg))
        self.ctx = ctx or setup_context(self.cfg)
        self.hooks = list(hooks)
        self.stop_signal: int | None = None
        self.exit_code = 0
        self.bar: ProgressBar | None = None
        self.logs: Loggers | None = None
        self.tracker = WandbLogger(self.cfg, self.ctx)
        self.state = TrainState()
        self.lock = RunLock(self.ctx.run_dir)

    def say(self, msg: str) -> None:
        if self.ctx.is_main:
            if self.bar is not None:
                self.bar.write(msg)
            else:
                print(msg, flush=True)

    def run(self) -> dict[str, Any]:
        previous = self.install_signal_handlers()
        try:
            if not self.setup():
                return self.existing_summary()
            self.train()
            return self.finish()
        except OSError as e:  # a full disk (or a file taken away) while writing the run's files
            fix = "free disk space or fix permissions"
            raise UserError(self.failure(e.strerror or str(e), e.filename, fix)) from None
        except (MemoryError, RuntimeError) as e:
            if not out_of_memory(e):
                raise
            raise UserError(self.out_of_memory_advice()) from None
        finally:
            try:  # the lock goes whatever else fails on the way out: a stale one would block the retry
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
                self.close_bar()
                if self.logs is not None:
                    self.logs.close()
                self.tracker.finish()  # a start that failed after wandb began
            finally:
                if self.ctx.is_main:
                    self.lock.release()

    def failure(self, reason: str, filename: Any, fix: str) -> str:
        """The error line of a run stopped by its environment: what failed, what is kept, how to go on."""
        where = f": '{filename}'" if filename else ""
        return (
            f"the run stopped at step {self.state.step} ({reason}{where}); "
            f"{kept_checkpoint(self.ctx.run_dir)}; {fix}, then continue with --run.resume=true"
        )

    def out_of_memory_advice(self) -> str:
        """Which size to shrink: the model's, when it did not even fit before training; else the batch's."""
        device = self.ctx.device
        if getattr(self, "optimizer", None) is None:  # the model (or its optimizer) could not be allocated
            tokenizer = getattr(getattr(self, "task", None), "tokenizer", None)
            if tokenizer is None:  # a small task: its sizes live in [task]
                return f"the task's model does not fit in the memory of {device}; lower its sizes in [task]"
            m = GPTConfig.from_config(self.cfg.model, self.cfg.symmetry, tokenizer.vocab_size)
            n = 12 * m.n_layer * m.n_embd**2 + (m.padded_vocab_size + m.block_size) * m.n_embd  # weights, roughly
            return (
                f"the model does not fit in the memory of {device}: model.n_layer={m.n_layer} and "
                f"model.n_embd={m.n_embd} make about {n:.3g} parameters ({4 * n / 2**30:,.0f} GiB in fp32); "
                "lower model.n_embd or model.n_layer (or pick a smaller model.preset)"
            )
        return self.failure(
            f"out of memory on {device}", None,
            "lower train.batch_size (raise train.grad_accum to keep the tokens per step) or the model's size",
        )

    # ------------------------------------------------------------------------------------ setup

    def setup(self) -> bool:
        """Everything before the first step; False when a resumed run has nothing left to do.

        Every check runs before anything is written into the run dir, so a start that fails leaves the
        run dir as it was (and a run dir it had to create, gone again).
        """
        cfg, ctx = self.cfg, self.ctx
        ctx.run_on_main(lambda: self.lock.acquire(self.say))
        resuming = cfg.run.resume or bool(cfg.run.checkpoint)
        replace = ctx.run_on_main(lambda: check_start(ctx.run_dir, resuming, cfg.run.overwrite))
        torch.manual_seed(cfg.run.seed)
        np.random.seed(cfg.run.seed % 2**32)
        random.seed(cfg.run.seed)
        if self.adopted:
            self.say(self.adopted)
        self.task = build_task(cfg, ctx)
        self.model = self.task.build_model().to(ctx.device)
        self.optimizer = optim.build_optimizer(self.task.param_groups(self.model), cfg.optim)
        wandb = wandb_module(cfg) if ctx.is_main else None
        resumed = self.resume() if resuming else None
        if resumed is None and cfg.run.init_from:
            self.init_weights(Path(cfg.run.init_from))
        self.tokens_per_step = self.task.tokens_per_micro_batch * cfg.train.grad_accum * ctx.world_size
        self.max_steps = cfg.train.max_steps
        if cfg.train.max_tokens > 0:
            self.max_steps = math.ceil(cfg.train.max_tokens / self.tokens_per_step)
        if resumed is not None and self.state.step >= self.max_steps:
            self.say(f"the run already finished {self.state.step} steps; raise --train.max_steps to train further")
            return False
        source = resumed.parent / "metrics.jsonl" if resumed is not None else None
        resume_step = self.state.step if resumed is not None else None
        read: dict[str, list[dict]] = {}  # the resume's metrics, read before the run dir changes (rank 0)
        if resumed is not None:
            path = ctx.run_dir / "metrics.jsonl"
            ctx.run_on_main(lambda: read.update(history=resume_history(path, self.state.step, source)))
        ctx.run_on_main(lambda: self.tracker.start(wandb, continuing=resuming))
        ctx.run_on_main(lambda: self.write_run_files(replace, resumed))
        self.train_model = self.wrap(self.model)
        metrics = MetricsLog(ctx.run_dir / "metrics.jsonl", resume_step, ctx.is_main, source, read.get("history"))
        self.logs = Loggers(metrics, self.tracker)
        n_params = sum(p.numel() for p in self.model.parameters())
        self.say(
            f"run {ctx.run_dir}: {n_params / 1e6:.2f}M parameters, {ctx.world_size} process(es) on {ctx.device}, "
            f"{self.tokens_per_step} tokens/step, {self.max_steps} steps, optimizer {cfg.optim.name}"
        )
        if resumed is None and cfg.eval.at_start:
            self.state.initial_val = self.evaluate()
        if ctx.is_main and cfg.train.progress:
            self.bar = progress_bar(
                total=self.max_steps,
                initial=self.state.step,
                desc=cfg.run.name,
                unit="step",
                dynamic_ncols=True,
                mininterval=0.5,
                file=sys.stderr,
            )
        return True

    def write_run_files(self, replace: bool, resumed: Path | None) -> None:
        """The checks have passed: the run dir becomes this run's (rank 0)."""
        run_dir = self.ctx.run_dir
        if replace:
            clear_run(run_dir)
        remove_partial_writes(run_dir)
        if resumed is not None:
            set_aside_newer(run_dir, self.state.step, self.say)
        self.task.write_run_files(run_dir)
        replace_file(run_dir / "config.toml", to_toml(to_dict(self.cfg)))  # a resume's old one stays on a full disk
        self.tracker.keep_id()

    def resume(self) -> Path | None:
        """Load the checkpoint to continue from, if any: rank 0 picks and verifies it (falling back past
        damaged ones), every rank loads it. Returns its path."""
        cfg, ctx = self.cfg, self.ctx
        picked: dict[str, Any] = {}

        def pick() -> str | None:
            if cfg.run.checkpoint:
                path = Path(cfg.run.checkpoint)
                state = load_checkpoint(path, warn=self.say)
            else:
                found = latest_good_checkpoint(ctx.run_dir, self.say)
                if found is None:
                    self.say(f"no checkpoint in '{ctx.run_dir}' yet; starting the run from the beginning")
                    return None
                path, state = found
            state["config"] = optim.upgrade_config(state["config"])
            check_resumable(state, cfg, ctx.world_size, path)
            picked["state"] = state
            return str(path)

        path = ctx.run_on_main(pick)
        if path is None:
            return None
        state = picked.get("state") or load_checkpoint(Path(path), verify=False)
        self.say(f"resuming from {path} at step {state['step']}")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            detail = " ".join(str(e).split())[:300]
            raise UserError(f"'{path}' does not fit this model and optimizer ({detail}); check the config") from None
        self.task.load_state_dict(state.get("task", {}))
        self.state = TrainState.from_checkpoint(state, ctx.rank, ctx.world_size, ctx.device)
        return Path(path)

    def init_weights(self, source: Path) -> None:
        """``run.init_from``: a new run that starts from another run's weights (a checkpoint file, or the
        newest checkpoint of a run dir), with a fresh optimizer and schedule."""
        if source.is_dir():
            found = list_checkpoints(source)
            if not found:
                raise UserError(f"run.init_from '{source}' holds no checkpoint; pass a ckpt_*.pt file or a run dir")
            source = found[-1]
        state = load_checkpoint(source, warn=self.say)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            detail = " ".join(str(e).split())[:300]
            given, chosen = source_config(source), ", ".join(user_set(self.cfg, "model"))
            mine = f" (set by you: {chosen})" if chosen else ""
            fix = "set [model] to match"
            if given:  # its architecture is written down: taken over when no model key is set
                fix = f"drop your model keys, or pass its config: python train.py {given} --run.name=NEW ..."
            raise UserError(
                f"run.init_from '{source}' holds weights of another architecture than [model]{mine} ({detail}); {fix}"
            ) from None
        self.say(f"starting from the weights of {source}")

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model the steps run: compiled if asked, DDP across ranks; ``self.model`` stays the bare one."""
        if self.cfg.run.compile:
            model = torch.compile(model)
        if self.ctx.distributed:
            ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        return model

    def install_signal_handlers(self) -> dict[int, Any]:
        """SIGTERM/SIGINT only raise a flag: the step in flight finishes, a checkpoint follows, exit 3.

        Repeats are ignored: Ctrl-C under torchrun reaches each worker twice (terminal and launcher).
        """
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):
            if self.stop_signal is None:
                self.stop_signal = signum

        previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handler)
            # restart interrupted system calls: a signal must not fail a collective inside gloo or NCCL
            signal.siginterrupt(sig, False)
        return previous

    # ------------------------------------------------------------------------------------ the loop

    def train(self) -> None:
        self.start_training()
        while self.state.step < self.max_steps:
            if self.end_step(self.train_step()):
                break

    def start_training(self) -> None:
        """What the steps share: clocks, the MFU figures, the loss buffers; the model in training mode.
        (Benchmarks call it, then ``train_step`` directly, to time the steps the trainer runs.)"""
        self.t_start = self.t_log = time.time()
        self.tokens_log = self.state.tokens
        self.fpt = self.task.flops_per_token(self.model)
        self.peak = peak_flops(self.ctx.device, self.ctx.dtype, self.cfg.train.peak_flops)
        self.requires_loss = getattr(self.optimizer, "requires_loss", False)
        self.loss_sum = torch.zeros((), device=self.ctx.device)
        self.shared = torch.zeros(2, device=self.ctx.device)  # [mean loss, stop flag]: one all-reduce per sync
        self.model.train()

    def train_step(self) -> StepResult:
        cfg, s = self.cfg, self.state
        mult = optim.lr_multiplier(s.step, cfg.optim, self.max_steps)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * mult
        self.accumulate()
        loss, stopping, grad_norm = self.sync_and_clip()
        skipped = None
        if math.isfinite(loss) and math.isfinite(grad_norm):
            try:
                if self.requires_loss:
                    self.optimizer.step(loss=self.shared[0])
                else:
                    self.optimizer.step()
            except UserError as e:  # the optimizer's own refusal (ECD below F0): say at which step
                raise UserError(f"step {s.step + 1}: {e}") from None
            skipped = getattr(self.optimizer, "skip_reason", None)
            if skipped:
                s.optimizer_skips += 1
                self.say(f"warning: step {s.step + 1} skipped ({s.optimizer_skips} so far): {skipped}")
        else:
            skipped = self.skip_update(loss, grad_norm)
        self.optimizer.zero_grad(set_to_none=True)
        s.step += 1
        s.tokens += self.tokens_per_step
        with torch.no_grad():
            self.task.after_step(self.model, s.step)
        for hook in self.hooks:
            hook.after_step(self, s.step)
        return StepResult(loss, grad_norm, stopping, skipped)

    def accumulate(self) -> None:
        """Forward and backward over the step's micro-batches; DDP syncs gradients on the last one only."""
        A, W, ctx, step = self.cfg.train.grad_accum, self.ctx.world_size, self.ctx, self.state.step
        self.loss_sum.zero_()
        for i in range(A):
            m = (step * A + i) * W + ctx.rank
            batch = self.task.batch(m)
            last = not ctx.distributed or i == A - 1
            with contextlib.nullcontext() if last else self.train_model.no_sync():
                with ctx.autocast():
                    loss = self.task.loss(self.train_model, batch, m)
                for hook in self.hooks:
                    loss = hook.on_loss(self, step + 1, i, loss)
                (loss / A).backward()
            self.loss_sum += loss.detach()

    def sync_and_clip(self) -> tuple[float, bool, float]:
        """(mean loss, stop, gradient norm) as every rank sees them, and the gradients clipped.

        Every rank syncs on the same steps: each sync_interval-th, each logged one and the last. On the
        others the numbers are not read (loss and norm 0.0: treated as finite, not stopping), so the
        step makes no host synchronisation; an optimizer that takes the loss still gets it every step.
        """
        cfg, W, step = self.cfg, self.ctx.world_size, self.state.step + 1
        sync = step % cfg.train.sync_interval == 0 or step % cfg.train.log_interval == 0 or step == self.max_steps
        if sync or self.requires_loss:
            self.shared[0] = self.loss_sum / cfg.train.grad_accum
            self.shared[1] = float(self.stop_signal is not None)
            self.ctx.all_reduce(self.shared)
            self.shared[0] /= W
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        if not sync:
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
            return 0.0, False, 0.0
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        # the step's one host sync: every rank gets the same numbers, so every rank decides alike
        loss, stop, norm = torch.cat([self.shared, grad_norm.reshape(1).to(self.shared.dtype)]).tolist()
        return loss, stop > 0, norm

    def skip_update(self, loss: float, grad_norm: float) -> str:
        """A non-finite loss or gradient: stop (with the last good checkpoint) or skip, as configured."""
        cfg, s = self.cfg, self.state
        what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {grad_norm}"
        if cfg.train.on_nonfinite == "stop" or s.skips >= cfg.train.max_skips:
            good = list_checkpoints(self.ctx.run_dir)
            where = f"the last good checkpoint is {good[-1]}" if good else "no checkpoint was written"
            raise NonFiniteLoss(f"non-finite {what} at step {s.step + 1}; {where}")
        s.skips += 1
        self.say(f"warning: non-finite {what} at step {s.step + 1}; step skipped ({s.skips}/{cfg.train.max_skips})")
        return f"non-finite {what}"

    def end_step(self, result: StepResult) -> bool:
        """Log, evaluate, checkpoint as this step asks; True when the run stops here."""
        cfg, s = self.cfg, self.state
        if self.bar is not None:
            self.bar.update(1)
        if result.skipped:
            self.logs.log({"step": s.step, "tokens": s.tokens, "skipped": result.skipped})
        elif s.step % cfg.train.log_interval == 0 or s.step == self.max_steps:
            self.log_step(result)
        is_last = s.step == self.max_steps
        if (cfg.eval.interval > 0 and s.step % cfg.eval.interval == 0) or is_last:
            s.last_val, s.last_val_step = self.evaluate(), s.step
            s.best_val = min(s.best_val, s.last_val.get("val_loss", math.inf))
            self.t_log = time.time()  # throughput counts training time only
        interval = cfg.train.checkpoint_interval
        if is_last or result.stopping or (interval and s.step % interval == 0):
            self.checkpoint()
        if result.stopping and not is_last:
            name = signal.Signals(self.stop_signal).name if self.stop_signal else "a signal on another rank"
            self.say(f"stopped by {name} after step {s.step}; checkpoint written, continue with --run.resume=true")
            self.exit_code = PREEMPTED_EXIT
            return True
        return False

    def log_step(self, result: StepResult) -> None:
        s = self.state
        self.check_params()
        now = time.time()
        tps = (s.tokens - self.tokens_log) / max(now - self.t_log, 1e-9)
        self.t_log, self.tokens_log = now, s.tokens
        rec = {
            "step": s.step,
            "train_loss": result.loss,
            "lr": self.optimizer.param_groups[0]["lr"],
            "tokens": s.tokens,
            "tok_per_s": tps,
            "grad_norm": result.grad_norm,
        }
        if self.fpt and self.peak:
            rec["mfu"] = self.fpt * tps / (self.peak * self.ctx.world_size)
        if self.ctx.is_main:
            rec.update(self.task.step_metrics(self.model, s.step))
        self.logs.log(rec)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{result.loss:.4f}", tok_s=f"{tps:,.0f}", refresh=False)

    def evaluate(self) -> dict[str, float]:
        """The task's evaluation, logged and printed."""
        s = self.state
        self.model.eval()
        values = self.task.evaluate(self.model)
        self.model.train()
        self.logs.log({"step": s.step, "tokens": s.tokens, **values})
        self.say(f"step {s.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
        return values

    def checkpoint(self) -> None:
        """Collective: the ranks' random states are gathered, the parameters checked, rank 0 writes."""
        cfg, ctx = self.cfg, self.ctx
        rngs = ctx.all_gather_object(rng_state(ctx.device))
        self.check_params()
        payload = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "config": to_dict(cfg),
            "world_size": ctx.world_size,
            "task": self.task.state_dict(),
            **self.state.to_checkpoint(time.time() - self.t_start, rngs),
        }
        ctx.run_on_main(lambda: save_checkpoint(ctx.run_dir, self.state.step, payload, cfg.train.keep_checkpoints))

    def check_params(self) -> None:
        """Parameters must be finite and bit-identical on every rank (DDP keeps them so).

        One float64 sum per tensor and one MAX all-reduce of (sums, -sums, a non-finite flag): cheap
        enough for every log step and every checkpoint, so neither a NaN nor a desync is saved.
        """
        step = self.state.step
        sums = torch.stack([p.detach().sum(dtype=torch.float64) for p in self.model.parameters()])
        bad = (~torch.isfinite(sums)).any().to(torch.float64).reshape(1)
        both = self.ctx.all_reduce(torch.cat([sums, -sums, bad]), dist.ReduceOp.MAX)
        if both[-1] > 0:
            raise NonFiniteLoss(f"parameters became non-finite by step {step}")
        n = len(sums)
        spread = both[:n] + both[n : 2 * n]  # max - min over ranks, per tensor
        if (spread > 0).any():
            raise RanksDiverged(
                f"parameters differ across ranks after step {step} in {int((spread > 0).sum())} of {n} tensors "
                f"(largest spread of a tensor sum {float(spread.max()):.3g}); a bug or a hardware fault: "
                "resume from the last checkpoint with --run.resume=true"
            )

    # ------------------------------------------------------------------------------------ the end

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def finish(self) -> dict[str, Any]:
        """The summary (rank 0 writes summary.json; the task adds its own entries to a completed run)."""
        self.close_bar()
        ctx, s = self.ctx, self.state
        if not ctx.is_main:
            return {}
        summary = {
            "final_val_loss": s.last_val.get("val_loss") if s.last_val else None,
            "best_val_loss": s.best_val if math.isfinite(s.best_val) else None,
            "initial_val_loss": (s.initial_val or {}).get("val_loss"),
            "steps": s.step,
            "tokens": s.tokens,
            "wall_s": s.wall_s + time.time() - self.t_start,
            "params": sum(p.numel() for p in self.model.parameters()),
            "run_dir": str(ctx.run_dir),
            "completed": self.exit_code == 0,
            "skipped_steps": s.skips + s.optimizer_skips,
        }
        summary.update({k: v for k, v in s.last_val.items() if k != "val_loss"})
        if self.exit_code == 0:
            summary.update(self.task.finish(self.model, self.logs.history))
        replace_file(ctx.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary

    def existing_summary(self) -> dict[str, Any]:
        path = self.ctx.run_dir / "summary.json"
        return json.loads(path.read_text()) if self.ctx.is_main and path.exists() else {}
