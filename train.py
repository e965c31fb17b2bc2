"""The one training path: a config builds a Task, the Trainer runs it.

    python train.py [CONFIG] [--section.key=value ...]        # default: configs/quickstart.toml
    torchrun --standalone --nproc_per_node=N train.py CONFIG   # DDP (NCCL on GPU, gloo on CPU)
    accelerate launch --multi_gpu --num_processes=N train.py CONFIG
    python train.py CONFIG --run.resume=true                   # continue from the latest good checkpoint

Exit codes: 0 done, 2 a usage error (one line on stderr), 3 stopped by SIGTERM/SIGINT after writing a
checkpoint, 4 non-finite loss or parameters, 5 parameters differ across ranks. See docs/distributed.md.

Language-model pretraining is one Task; every small task is another. The Trainer owns everything
that is not task-specific: device, DDP, optimizer and schedule, accumulation, autocast, compile,
logging, validation, checkpoints, resume, signals and the progress bar.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from checkpoints import (
    check_resumable,
    latest_good_checkpoint,
    list_checkpoints,
    load_checkpoint,
    remove_partial_writes,
    rng_state,
    save_checkpoint,
    set_aside_newer,
    set_rng_state,
)
from configs import Config, UserError, load_config, to_dict, to_toml
from optim import build_optimizer, lr_multiplier, param_groups

USER_ERROR_EXIT = 2  # a problem the user can fix; one line on stderr
PREEMPTED_EXIT = 3  # SIGTERM/SIGINT: checkpoint written, resume with --run.resume=true
NONFINITE_EXIT = 4  # the loss became NaN/inf and the policy said stop; the last good checkpoint is kept
DESYNC_EXIT = 5  # parameters differ across ranks: a bug or a hardware fault, never silently trained on
# Testing aid: "nan@STEP" turns rank 0's loss at STEP into NaN; "desync@STEP" perturbs the last rank's
# parameters after STEP. Read from the environment so that no config or checkpoint carries it.
FAULT_ENV = "SYMBREAK_FAULT"

# Dense peak FLOP/s by GPU name fragment: (bf16, tf32). Matched in order, so specific names first.
GPU_PEAK_FLOPS: list[tuple[str, float, float]] = [
    ("H200", 989e12, 494e12),
    ("H100 PCIe", 756e12, 378e12),
    ("H100", 989e12, 494e12),
    ("H20", 148e12, 74e12),
    ("B200", 2250e12, 1100e12),
    ("A100", 312e12, 156e12),
    ("A10G", 70e12, 35e12),
    ("L40S", 362e12, 183e12),
    ("L4", 121e12, 60e12),
    ("RTX 4090", 165e12, 83e12),
    ("RTX 3090", 71e12, 36e12),
    ("A6000", 155e12, 78e12),
    ("V100", 125e12, 15.7e12),
    ("T4", 65e12, 8.1e12),
]


# --------------------------------------------------------------------------------------------
# Runtime context: device, ranks
# --------------------------------------------------------------------------------------------


@dataclass
class Context:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    run_dir: Path = Path("runs/run")
    dtype: torch.dtype | None = None  # autocast dtype, None for full precision

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def all_reduce(self, t: torch.Tensor, op: Any = dist.ReduceOp.SUM) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(t, op=op)
        return t

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def run_on_main(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on rank 0; its result, or its UserError, reaches every rank.

        A check or a file operation that only rank 0 performs must not leave the other ranks waiting
        in a collective when it fails: every rank raises the same one-line error instead.
        """
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except UserError as e:
                error = str(e)
        if self.distributed:
            box = [result, error]
            dist.broadcast_object_list(box, src=0)
            result, error = box
        if error is not None:
            raise SharedUserError(error)
        return result


class SharedUserError(UserError):
    """A UserError that every rank raised alike: reported once, by rank 0."""


def setup_context(cfg: Config) -> Context:
    """Read torchrun's environment, pick the device and start the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want = cfg.run.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("run.device asks for CUDA but no GPU is visible; use --run.device=cpu")
        if want == "cuda" and local_rank >= torch.cuda.device_count():
            raise UserError(
                f"LOCAL_RANK {local_rank} but {torch.cuda.device_count()} GPU(s) visible on this node; "
                "launch at most one process per GPU (--nproc_per_node)"
            )
        device = torch.device(f"cuda:{local_rank}") if want == "cuda" else torch.device(want)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device(want)
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)  # tiny models on shared CPUs: 1 avoids thread contention
    if world > 1 and not dist.is_initialized():
        if not {"MASTER_ADDR", "MASTER_PORT"} <= set(os.environ):
            raise UserError(
                f"WORLD_SIZE={world} but MASTER_ADDR/MASTER_PORT are not set; "
                "start with torchrun or accelerate launch, which set them"
            )
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    dtypes = {"float32": None, "bfloat16": torch.bfloat16}
    if cfg.run.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else None
    elif cfg.run.dtype in dtypes:
        dtype = dtypes[cfg.run.dtype]
    else:
        raise UserError(f"unknown run.dtype '{cfg.run.dtype}'; use auto, float32 or bfloat16")
    run_dir = Path(cfg.run.dir) / cfg.run.name
    return Context(device, rank, world, local_rank, run_dir, dtype)


def peak_flops(device: torch.device, dtype: torch.dtype | None, override: float = 0.0) -> float | None:
    """The device's dense peak FLOP/s for the precision in use, for MFU; None when unknown."""
    if override > 0:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, bf16, tf32 in GPU_PEAK_FLOPS:
        if fragment in name:
            return bf16 if dtype is torch.bfloat16 else tf32
    return None


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------


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

    def finish(self, model: nn.Module, history: list[dict]) -> dict[str, Any]:
        """After training, on rank 0: extra summary entries (small tasks add ``checks``)."""
        return {}


# Task name -> "module:Class", imported on demand so a task's dependencies load only when used.
TASKS: dict[str, str] = {
    "lm": "train:LMTask",
    "group_composition": "small_tasks.group_composition:GroupCompositionTask",
    "modular_addition": "small_tasks.group_composition:ModularAdditionTask",
    "diagonal_linear": "small_tasks.diagonal_linear:DiagonalLinearTask",
}


def build_task(cfg: Config, ctx: Context) -> Task:
    name = cfg.task.get("name", "lm")
    if name not in TASKS:
        raise UserError(f"unknown task '{name}'; set task.name to one of: {', '.join(sorted(TASKS))}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)(cfg, ctx)


def build_gpt(cfg: Config, tokenizer_vocab: int) -> nn.Module:
    """The GPT that ``cfg.model`` and ``cfg.symmetry`` describe, for a tokenizer of ``tokenizer_vocab`` ids."""
    from model import GPT, PRESETS, GPTConfig

    m, s = cfg.model, cfg.symmetry
    n_layer, n_head, n_embd = m.n_layer, m.n_head, m.n_embd
    if m.preset:
        if m.preset not in PRESETS:
            raise UserError(f"unknown model.preset '{m.preset}'; use one of: {', '.join(PRESETS)}")
        n_layer, n_head, n_embd = PRESETS[m.preset]
    vocab = m.vocab_size or tokenizer_vocab
    if vocab < tokenizer_vocab:
        raise UserError(
            f"model.vocab_size {vocab} is smaller than the tokenizer's {tokenizer_vocab}; raise it or set 0"
        )
    try:
        gcfg = GPTConfig(
            vocab_size=vocab,
            block_size=m.block_size,
            n_layer=n_layer,
            n_head=n_head,
            n_embd=n_embd,
            mlp=m.mlp,
            prelu_mean=m.prelu_mean,
            prelu_std=m.prelu_std,
            bias=m.bias,
            dropout=m.dropout,
            mode=s.mode,
            q_mean=s.q_mean,
            q_std_min=s.q_std_min,
            q_std_max=s.q_std_max,
            v_mean=s.v_mean,
            v_std=s.v_std,
            k_bias=s.k_bias,
            k_mean=s.k_mean,
            k_std=s.k_std,
            per_head=s.per_head,
        )
    except ValueError as e:
        raise UserError(f"invalid model/symmetry config: {e}") from None
    return GPT(gcfg)


class LMTask(Task):
    """Next-token prediction on token shards with the symmetry-broken GPT."""

    def __init__(self, cfg: Config, ctx: Context):
        super().__init__(cfg, ctx)
        if set(cfg.task) - {"name"}:
            extra = sorted(set(cfg.task) - {"name"})[0]
            raise UserError(f"unknown config key 'task.{extra}' for the lm task; remove it")
        from data.dataset import TOKENIZER_DIR, open_dataset

        self.data = open_dataset(cfg.data, ctx)
        self.tokenizer = self.data.tokenizer
        if ctx.is_main:  # so that evaluation tools can read the run without its data
            self.data.save_tokenizer(ctx.run_dir / TOKENIZER_DIR)
        m = cfg.model
        self.block_size = m.block_size
        self.train = self.data.stream("train", cfg.train.batch_size, m.block_size, cfg.run.seed)
        eval_bs = cfg.eval.batch_size or cfg.train.batch_size
        self.val = self.data.stream("val", eval_bs, m.block_size, cfg.run.seed, shuffle=False)

    def build_model(self) -> nn.Module:
        self.model = build_gpt(self.cfg, self.tokenizer.vocab_size)
        return self.model

    def batch(self, micro_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.train.batch(micro_index)
        return to_device(x, self.ctx.device), to_device(y, self.ctx.device)

    def loss(self, model: nn.Module, batch: Any, micro_index: int) -> torch.Tensor:
        from model import draw_biases

        biases = draw_biases(self.model.bias_spec, self.cfg.run.seed, micro_index, self.ctx.device)
        x, y = batch
        return model(x, y, biases)[1]

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.cfg.train.batch_size * self.block_size

    def flops_per_token(self, model: nn.Module) -> float | None:
        return self.model.flops_per_token()

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Mean loss over the first ``eval.tokens`` of the validation split, shared across ranks."""
        span = self.val.B * self.val.T
        n = max(1, min(self.val.per_epoch, self.cfg.eval.tokens // span))
        total = torch.zeros(2, device=self.ctx.device, dtype=torch.float64)
        for m in range(self.ctx.rank, n, self.ctx.world_size):
            x, y = self.val.batch(m)
            with self.ctx.autocast():
                _, loss = model(to_device(x, self.ctx.device), to_device(y, self.ctx.device))
            total[0] += loss.double()
            total[1] += 1
        if self.ctx.distributed:
            dist.all_reduce(total)
        out = {"val_loss": float(total[0] / total[1])}
        if self.cfg.eval.logic:
            from eval.logic import run_suite

            out.update(run_suite(model, self.tokenizer, n=self.cfg.eval.logic_n, device=self.ctx.device))
        return out

    def finish(self, model: nn.Module, history: list[dict]) -> dict[str, Any]:
        if not self.cfg.eval.sample_tokens:
            return {}
        text = sample_text(
            model,
            self.tokenizer,
            self.cfg.eval.sample_prompt,
            self.cfg.eval.sample_tokens,
            seed=self.cfg.run.seed,
            device=self.ctx.device,
        )
        return {"sample": text}


def to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(a)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@torch.no_grad()
def sample_text(
    model: nn.Module,
    tokenizer: Any,
    prompt: str,
    n_tokens: int,
    temperature: float = 0.8,
    top_k: int | None = 40,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> str:
    was_training = model.training
    model.eval()
    device = torch.device(device)
    # sampling must not disturb (or depend on) the training streams, on the CPU or the GPU
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        ids = tokenizer.encode(prompt) or [tokenizer.eot]
        idx = torch.tensor([ids], dtype=torch.long, device=device)
        out = model.generate(idx, n_tokens, temperature=temperature, top_k=top_k)
    model.train(was_training)
    return tokenizer.decode(out[0].tolist())


# --------------------------------------------------------------------------------------------
# Logging
# --------------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file; a line cut short by a kill mid-write is dropped."""
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


class MetricsLog:
    """metrics.jsonl on rank 0. A resumed run first keeps only the lines up to its checkpoint's step
    (from ``source`` when this run dir has none yet: a run branched from another run's checkpoint),
    so that the run and its continuation share one file with each step logged once."""

    def __init__(self, path: Path, resume_step: int | None, enabled: bool, source: Path | None = None):
        self.path, self.enabled = path, enabled
        self.history: list[dict] = []
        if not enabled:
            return
        if resume_step is not None:
            src = path if path.exists() else source
            if src is not None and src.exists():
                self.history = [r for r in read_jsonl(src) if r.get("step", 0) <= resume_step]
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self.history))
            os.replace(tmp, path)
        elif path.exists():
            path.unlink()
        self.file = open(path, "a", buffering=1)  # a line at a time: a kill loses at most the line in flight

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.history.append(record)
        self.file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self.enabled and not self.file.closed:
            self.file.close()


class WandbLogger:
    def __init__(self, cfg: Config, ctx: Context):
        self.run = None
        if cfg.run.wandb == "disabled" or not ctx.is_main:
            return
        if cfg.run.wandb not in ("offline", "online"):
            raise UserError(f"unknown run.wandb '{cfg.run.wandb}'; use disabled, offline or online")
        try:
            import wandb
        except ImportError:
            raise UserError(
                "run.wandb is set but wandb is not installed; pip install wandb or set --run.wandb=disabled"
            ) from None
        self.run = wandb.init(
            project=cfg.run.wandb_project,
            name=cfg.run.name,
            mode=cfg.run.wandb,
            config=to_dict(cfg),
            dir=str(ctx.run_dir),
            resume="allow",
        )

    def log(self, record: dict) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["step"])

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()


# --------------------------------------------------------------------------------------------
# The Trainer
# --------------------------------------------------------------------------------------------


class NonFiniteLoss(Exception):
    """The loss, the gradients or the parameters became NaN/inf and the policy says stop."""


class RanksDiverged(Exception):
    """Parameters differ across ranks: a bug or a hardware fault."""


def parse_fault(text: str) -> tuple[str, int] | None:
    """The ``SYMBREAK_FAULT`` testing aid: "nan@STEP" or "desync@STEP"."""
    if not text:
        return None
    kind, _, at = text.partition("@")
    if kind not in ("nan", "desync") or not at.isdigit():
        raise UserError(f"cannot read {FAULT_ENV}='{text}'; write nan@STEP or desync@STEP, or unset it")
    return kind, int(at)


class Trainer:
    def __init__(self, cfg: Config, ctx: Context | None = None):
        self.cfg = cfg
        self.ctx = ctx or setup_context(cfg)
        self.stop_signal: int | None = None
        self.exit_code = 0
        self.bar = None
        self.log: MetricsLog | None = None
        self.wandb: WandbLogger | None = None
        self.fault = parse_fault(os.environ.get(FAULT_ENV, ""))

    def say(self, msg: str) -> None:
        if self.ctx.is_main:
            if self.bar is not None:
                self.bar.write(msg)
            else:
                print(msg, flush=True)

    def _prepare_run_dir(self) -> None:
        """Refuse to start over an existing run by accident; clear it on overwrite; drop partial writes."""
        cfg, run_dir = self.cfg, self.ctx.run_dir
        resuming = cfg.run.resume or bool(cfg.run.checkpoint)

        def prepare() -> None:
            occupied = bool(list_checkpoints(run_dir)) or (run_dir / "metrics.jsonl").exists()
            if occupied and not resuming and not cfg.run.overwrite:
                raise UserError(
                    f"run dir '{run_dir}' already holds a run; pass --run.resume=true to continue it, "
                    "--run.overwrite=true to replace it, or choose another --run.name"
                )
            if occupied and cfg.run.overwrite and not resuming:
                for p in list(run_dir.glob("ckpt_*")) + [run_dir / "metrics.jsonl", run_dir / "summary.json"]:
                    p.unlink(missing_ok=True)
            run_dir.mkdir(parents=True, exist_ok=True)
            remove_partial_writes(run_dir)

        self.ctx.run_on_main(prepare)

    def _resume_state(self) -> tuple[Path, dict[str, Any]] | None:
        """Rank 0 picks and verifies the checkpoint (falling back past damaged ones); every rank loads it."""
        cfg, ctx = self.cfg, self.ctx
        if not (cfg.run.resume or cfg.run.checkpoint):
            return None
        picked: dict[str, Any] = {}

        def pick() -> str | None:
            if cfg.run.checkpoint:
                path = Path(cfg.run.checkpoint)
                state = load_checkpoint(path)
            else:
                found = latest_good_checkpoint(ctx.run_dir, self.say)
                if found is None:
                    self.say(f"no checkpoint in '{ctx.run_dir}' yet; starting the run from the beginning")
                    return None
                path, state = found
            check_resumable(state, cfg, ctx.world_size, path)
            set_aside_newer(ctx.run_dir, state["step"], self.say)
            picked["state"] = state
            return str(path)

        path = ctx.run_on_main(pick)
        if path is None:
            return None
        state = picked.get("state") or load_checkpoint(Path(path), verify=False)
        self.say(f"resuming from {path} at step {state['step']}")
        return Path(path), state

    def _install_signal_handlers(self) -> dict[int, Any]:
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

    def _check_params(self, model: nn.Module, step: int) -> None:
        """Parameters must be finite and bit-identical on every rank (DDP keeps them so).

        One float64 sum per tensor and one MAX all-reduce of (sums, -sums, a non-finite flag): cheap
        enough for every log step and every checkpoint, so neither a NaN nor a desync is saved.
        """
        sums = torch.stack([p.detach().sum(dtype=torch.float64) for p in model.parameters()])
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

    def run(self) -> dict[str, Any]:
        previous = self._install_signal_handlers()
        try:
            return self._run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.bar is not None:
                self.bar.close()
                self.bar = None
            if self.log is not None:
                self.log.close()
            if self.wandb is not None:
                self.wandb.finish()

    def _run(self) -> dict[str, Any]:
        cfg, ctx = self.cfg, self.ctx
        if cfg.train.on_nonfinite not in ("stop", "skip"):
            raise UserError(f"unknown train.on_nonfinite '{cfg.train.on_nonfinite}'; use stop or skip")
        if cfg.train.sync_interval < 1 or (cfg.train.sync_interval > 1 and cfg.train.on_nonfinite == "skip"):
            raise UserError("train.sync_interval must be >= 1, and 1 when train.on_nonfinite=skip; fix one of them")
        self._prepare_run_dir()
        torch.manual_seed(cfg.run.seed)
        np.random.seed(cfg.run.seed % 2**32)
        random.seed(cfg.run.seed)
        task = build_task(cfg, ctx)
        model = task.build_model().to(ctx.device)
        optimizer = build_optimizer(task.param_groups(model), cfg.optim)
        resumed = self._resume_state()
        step, tokens, wall_prev, best_val, skips = 0, 0, 0.0, math.inf, 0
        initial_val: dict[str, float] | None = None
        if resumed is not None:
            path, state = resumed
            try:
                model.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
            except (RuntimeError, ValueError, KeyError) as e:
                detail = " ".join(str(e).split())[:300]
                raise UserError(
                    f"'{path}' does not fit this model and optimizer ({detail}); check the config"
                ) from None
            step, tokens, wall_prev = state["step"], state["tokens"], state["wall_s"]
            best_val, skips, initial_val = state["best_val"], state["skips"], state.get("initial_val")
            rngs = state["rng"]  # one per rank; the same on every rank unless a task draws per rank
            set_rng_state(rngs[ctx.rank] if len(rngs) == ctx.world_size else rngs[0], ctx.device)
            del state
        A, W = cfg.train.grad_accum, ctx.world_size
        tokens_per_step = task.tokens_per_micro_batch * A * W
        max_steps = cfg.train.max_steps
        if cfg.train.max_tokens > 0:
            max_steps = math.ceil(cfg.train.max_tokens / tokens_per_step)
        if resumed is not None and step >= max_steps:
            self.say(f"the run already finished {step} steps; raise --train.max_steps to train further")
            summary_file = ctx.run_dir / "summary.json"
            return json.loads(summary_file.read_text()) if ctx.is_main and summary_file.exists() else {}
        if ctx.is_main:
            (ctx.run_dir / "config.toml").write_text(to_toml(to_dict(cfg)))
        train_model = torch.compile(model) if cfg.run.compile else model
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            train_model = DDP(train_model, device_ids=ids)
        source = resumed[0].parent / "metrics.jsonl" if resumed is not None else None
        log = self.log = MetricsLog(ctx.run_dir / "metrics.jsonl", step if resumed else None, ctx.is_main, source)
        wandb = self.wandb = WandbLogger(cfg, ctx)
        fpt = task.flops_per_token(model)
        peak = peak_flops(ctx.device, ctx.dtype, cfg.train.peak_flops)
        requires_loss = getattr(optimizer, "requires_loss", False)
        n_params = sum(p.numel() for p in model.parameters())
        self.say(
            f"run {ctx.run_dir}: {n_params / 1e6:.2f}M parameters, {W} process(es) on {ctx.device}, "
            f"{tokens_per_step} tokens/step, {max_steps} steps, optimizer {cfg.optim.name}"
        )

        def evaluate() -> dict[str, float]:
            model.eval()
            out = task.evaluate(model)
            model.train()
            return out

        if resumed is None and cfg.eval.interval >= 0:
            initial_val = evaluate()
            rec = {"step": 0, "tokens": 0, **initial_val}
            log.log(rec)
            wandb.log(rec)
            self.say("step 0: " + ", ".join(f"{k} {v:.4f}" for k, v in initial_val.items()))

        if ctx.is_main and cfg.train.progress:
            from tqdm import tqdm

            self.bar = tqdm(
                total=max_steps,
                initial=step,
                desc=cfg.run.name,
                unit="step",
                dynamic_ncols=True,
                mininterval=0.5,
                file=sys.stderr,
            )

        last_val: dict[str, float] = {}
        last_val_step = -1

        def checkpoint() -> None:
            """Collective: the ranks' random states are gathered, the parameters checked, rank 0 writes."""
            rngs = ctx.all_gather_object(rng_state(ctx.device))
            self._check_params(model, step)
            payload = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "tokens": tokens,
                "wall_s": wall_prev + time.time() - t_start,
                "config": to_dict(cfg),
                "world_size": W,
                "rng": rngs,
                "best_val": best_val,
                "val_loss": last_val.get("val_loss") if last_val_step == step else None,
                "skips": skips,
                "initial_val": initial_val,
            }
            ctx.run_on_main(lambda: save_checkpoint(ctx.run_dir, step, payload, cfg.train.keep_checkpoints))

        t_start = time.time()
        t_log, tokens_log = time.time(), tokens
        model.train()
        loss_sum = torch.zeros((), device=ctx.device)
        shared = torch.zeros(2, device=ctx.device)  # [mean loss, stop flag]: one all-reduce per synced step
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        while step < max_steps:
            mult = lr_multiplier(step, cfg.optim, max_steps)
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * mult
            loss_sum.zero_()
            for i in range(A):
                m = (step * A + i) * W + ctx.rank
                batch = task.batch(m)
                sync = contextlib.nullcontext() if (not ctx.distributed or i == A - 1) else train_model.no_sync()
                with sync:
                    with ctx.autocast():
                        loss = task.loss(train_model, batch, m)
                    if self.fault == ("nan", step + 1) and ctx.is_main and i == 0:
                        loss = loss * math.nan
                    (loss / A).backward()
                loss_sum += loss.detach()
            # every rank syncs on the same steps: each sync_interval-th, each logged one and the last
            sync = (step + 1) % cfg.train.sync_interval == 0 or (step + 1) % cfg.train.log_interval == 0
            sync = sync or step + 1 == max_steps
            if sync or requires_loss:  # an optimizer that takes the loss needs this step's, every step
                shared[0] = loss_sum / A
                shared[1] = float(self.stop_signal is not None)
                ctx.all_reduce(shared)
                shared[0] /= W
            if sync:
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                # the step's one host sync: every rank gets the same numbers, so every rank decides alike
                loss_f, stop_f, norm_f = torch.cat([shared, grad_norm.reshape(1).to(shared.dtype)]).tolist()
            else:
                if cfg.optim.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                loss_f, stop_f, norm_f = 0.0, 0.0, 0.0  # unchecked: treated as finite, not stopping
            stopping = stop_f > 0
            skipped = None
            if math.isfinite(loss_f) and math.isfinite(norm_f):
                if requires_loss:
                    optimizer.step(loss=shared[0])
                else:
                    optimizer.step()
            else:
                what = f"loss {loss_f}" if not math.isfinite(loss_f) else f"gradient norm {norm_f}"
                if cfg.train.on_nonfinite == "stop" or skips >= cfg.train.max_skips:
                    good = list_checkpoints(ctx.run_dir)
                    where = f"the last good checkpoint is {good[-1]}" if good else "no checkpoint was written"
                    raise NonFiniteLoss(f"non-finite {what} at step {step + 1}; {where}")
                skips += 1
                skipped = f"non-finite {what}"
                self.say(f"warning: {skipped} at step {step + 1}; step skipped ({skips}/{cfg.train.max_skips})")
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens += tokens_per_step
            if self.fault == ("desync", step) and ctx.rank == W - 1:
                with torch.no_grad():
                    next(model.parameters()).add_(1e-3)
            if self.bar is not None:
                self.bar.update(1)
            if skipped:
                rec = {"step": step, "tokens": tokens, "skipped": skipped}
                log.log(rec)
                wandb.log(rec)
            elif step % cfg.train.log_interval == 0 or step == max_steps:
                self._check_params(model, step)
                now = time.time()
                tps = (tokens - tokens_log) / max(now - t_log, 1e-9)
                t_log, tokens_log = now, tokens
                rec = {
                    "step": step,
                    "train_loss": loss_f,
                    "lr": optimizer.param_groups[0]["lr"],
                    "tokens": tokens,
                    "tok_per_s": tps,
                    "grad_norm": norm_f,
                }
                if fpt and peak:
                    rec["mfu"] = fpt * tps / (peak * W)
                if ctx.is_main:
                    rec.update(task.step_metrics(model, step))
                log.log(rec)
                wandb.log(rec)
                if self.bar is not None:
                    self.bar.set_postfix(loss=f"{loss_f:.4f}", tok_s=f"{tps:,.0f}", refresh=False)
            is_last = step == max_steps
            if (cfg.eval.interval > 0 and step % cfg.eval.interval == 0) or is_last:
                last_val, last_val_step = evaluate(), step
                rec = {"step": step, "tokens": tokens, **last_val}
                log.log(rec)
                wandb.log(rec)
                best_val = min(best_val, last_val.get("val_loss", math.inf))
                self.say(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in last_val.items()))
                t_log = time.time()  # throughput counts training time only
            if is_last or stopping or (cfg.train.checkpoint_interval and step % cfg.train.checkpoint_interval == 0):
                checkpoint()
            if stopping and not is_last:
                name = signal.Signals(self.stop_signal).name if self.stop_signal else "a signal on another rank"
                self.say(f"stopped by {name} after step {step}; checkpoint written, continue with --run.resume=true")
                self.exit_code = PREEMPTED_EXIT
                break
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        summary: dict[str, Any] = {}
        if ctx.is_main:
            summary = {
                "final_val_loss": last_val.get("val_loss") if last_val else None,
                "best_val_loss": best_val if math.isfinite(best_val) else None,
                "initial_val_loss": (initial_val or {}).get("val_loss"),
                "steps": step,
                "tokens": tokens,
                "wall_s": wall_prev + time.time() - t_start,
                "params": n_params,
                "run_dir": str(ctx.run_dir),
                "completed": self.exit_code == 0,
                "skipped_steps": skips,
            }
            summary.update({k: v for k, v in last_val.items() if k != "val_loss"})
            if self.exit_code == 0:
                summary.update(task.finish(model, log.history))
            (ctx.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary


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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
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
            cfg = load_config(config_path, overrides)
        except UserError as e:  # every rank reads the same files and arguments
            raise SharedUserError(str(e)) from None
        trainer = Trainer(cfg)
        summary = trainer.run()
        if trainer.ctx.is_main:
            report(summary)
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


def ignore_stop_signals() -> None:
    """Training is over: a SIGTERM/SIGINT now would only turn this process's exit code into a kill."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)


def exit_process(code: int) -> None:
    """End a process that ran distributed without interpreter finalization; others exit normally.

    torch keeps a gloo process group alive past ``destroy_process_group`` once DDP has used it, so its
    worker threads outlive the run. One that still drops a finished collective when the interpreter
    finalizes must take the GIL, and CPython ends such a thread with ``pthread_exit``, which libstdc++
    turns into ``std::terminate``: a SIGABRT, and a failed launch, after a run that had ended well.
    By now every file is written and closed, so skipping finalization loses nothing.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:  # one process: setup_context made no process group
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    code = main()
    ignore_stop_signals()
    exit_process(code)
