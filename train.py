"""The one training path: a config builds a Task, the Trainer runs it.

    python train.py [CONFIG] [--section.key=value ...]        # default: configs/quickstart.toml
    torchrun --standalone --nproc_per_node=N train.py CONFIG   # DDP (NCCL on GPU, gloo on CPU)

Language-model pretraining is one Task; every small task is another. The Trainer owns everything
that is not task-specific: device, DDP, optimizer and schedule, accumulation, autocast, compile,
logging, validation, checkpoints, resume, signals and the progress bar.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from configs import Config, UserError, load_config, to_dict, to_toml
from optim import build_optimizer, lr_multiplier, param_groups

PREEMPTED_EXIT = 3  # SIGTERM/SIGINT: checkpoint written, resume with --run.resume=true
NONFINITE_EXIT = 4  # the loss became NaN/inf and the policy said stop; the last good checkpoint is kept

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

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t /= self.world_size
        return t

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


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
        device = torch.device(f"cuda:{local_rank}") if want == "cuda" else torch.device(want)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device(want)
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)  # tiny models on shared CPUs: 1 avoids thread contention
    if world > 1 and not dist.is_initialized():
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


class LMTask(Task):
    """Next-token prediction on token shards with the symmetry-broken GPT."""

    def __init__(self, cfg: Config, ctx: Context):
        super().__init__(cfg, ctx)
        if set(cfg.task) - {"name"}:
            extra = sorted(set(cfg.task) - {"name"})[0]
            raise UserError(f"unknown config key 'task.{extra}' for the lm task; remove it")
        from data.dataset import open_dataset

        self.data = open_dataset(cfg.data, ctx)
        self.tokenizer = self.data.tokenizer
        m = cfg.model
        self.block_size = m.block_size
        self.train = self.data.stream("train", cfg.train.batch_size, m.block_size, cfg.run.seed)
        eval_bs = cfg.eval.batch_size or cfg.train.batch_size
        self.val = self.data.stream("val", eval_bs, m.block_size, cfg.run.seed, shuffle=False)

    def build_model(self) -> nn.Module:
        from model import GPT, PRESETS, GPTConfig

        m, s = self.cfg.model, self.cfg.symmetry
        n_layer, n_head, n_embd = m.n_layer, m.n_head, m.n_embd
        if m.preset:
            if m.preset not in PRESETS:
                raise UserError(f"unknown model.preset '{m.preset}'; use one of: {', '.join(PRESETS)}")
            n_layer, n_head, n_embd = PRESETS[m.preset]
        vocab = m.vocab_size or self.tokenizer.vocab_size
        if vocab < self.tokenizer.vocab_size:
            raise UserError(
                f"model.vocab_size {vocab} is smaller than the tokenizer's "
                f"{self.tokenizer.vocab_size}; raise it or set 0"
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
        self.model = GPT(gcfg)
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
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # sampling must not disturb (or depend on) the training streams
    ids = tokenizer.encode(prompt) or [tokenizer.eot]
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    out = model.generate(idx, n_tokens, temperature=temperature, top_k=top_k)
    torch.random.set_rng_state(gen_state)
    model.train(was_training)
    return tokenizer.decode(out[0].tolist())


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------

CKPT_GLOB = "ckpt_*.pt"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate((state["python_version"], tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, payload: dict[str, Any], keep: int) -> Path:
    """Write atomically, record its sha256 beside it, then prune: the newest ``keep`` and the best stay."""
    path = run_dir / f"ckpt_{step:08d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    torch.save(payload, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    meta = {"step": step, "sha256": sha256_file(path), "val_loss": payload.get("val_loss")}
    side = path.with_suffix(".json")
    side.with_suffix(".json.tmp").write_text(json.dumps(meta))
    os.replace(side.with_suffix(".json.tmp"), side)
    prune_checkpoints(run_dir, keep)
    return path


def checkpoint_meta(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    ckpts = sorted(run_dir.glob(CKPT_GLOB))
    if keep <= 0 or len(ckpts) <= keep:
        return
    scored = [(checkpoint_meta(p).get("val_loss"), p) for p in ckpts]
    scored = [(v, p) for v, p in scored if v is not None and math.isfinite(v)]
    best = min(scored, key=lambda vp: vp[0])[1] if scored else None
    for p in ckpts[:-keep]:
        if p != best:
            p.unlink(missing_ok=True)
            p.with_suffix(".json").unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load and verify one checkpoint; raises UserError naming the file when it is damaged."""
    meta = checkpoint_meta(path)
    if meta.get("sha256") and sha256_file(path) != meta["sha256"]:
        raise UserError(f"checkpoint '{path}' does not match its recorded sha256 (corrupt)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle: all mean the same to the user
        raise UserError(f"checkpoint '{path}' cannot be read ({type(e).__name__}: {e})") from None


def latest_good_checkpoint(run_dir: Path, warn) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint that loads and verifies; damaged newer ones are reported and skipped."""
    ckpts = sorted(run_dir.glob(CKPT_GLOB), reverse=True)
    if not ckpts:
        raise UserError(f"no checkpoint in '{run_dir}' to resume from; start without --run.resume")
    for path in ckpts:
        try:
            return path, load_checkpoint(path)
        except UserError as e:
            warn(f"warning: {e}; falling back to an earlier checkpoint")
    raise UserError(f"every checkpoint in '{run_dir}' is corrupt; restart with --run.overwrite=true")


# Config keys that may differ between a run and its resumed continuation.
RESUME_MAY_CHANGE = {
    "run": {"resume", "checkpoint", "overwrite", "device", "compile", "wandb", "wandb_project", "dtype"},
    "train": {
        "max_steps",
        "max_tokens",
        "log_interval",
        "checkpoint_interval",
        "keep_checkpoints",
        "peak_flops",
        "progress",
        "grad_accum",
        "on_nonfinite",
        "max_skips",
    },
    "eval": "*",
}


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    diffs = []
    for section, values in new.items():
        free = RESUME_MAY_CHANGE.get(section, set())
        if free == "*":
            continue
        before = old.get(section, {})
        for key in sorted(set(values) | set(before)):
            if key not in free and before.get(key) != values.get(key):
                diffs.append(f"{section}.{key}: {before.get(key)!r} -> {values.get(key)!r}")
    return diffs


# --------------------------------------------------------------------------------------------
# Logging
# --------------------------------------------------------------------------------------------


class MetricsLog:
    """metrics.jsonl on rank 0; a resumed run first drops lines past its checkpoint's step."""

    def __init__(self, path: Path, resume_step: int | None, enabled: bool):
        self.path, self.enabled = path, enabled
        self.history: list[dict] = []
        if not enabled:
            return
        if resume_step is not None and path.exists():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut by a kill mid-write
                if rec.get("step", 0) <= resume_step:
                    self.history.append(rec)
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self.history))
            os.replace(tmp, path)
        elif path.exists():
            path.unlink()
        self.file = open(path, "a", buffering=1)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.history.append(record)
        self.file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self.enabled:
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


class Trainer:
    def __init__(self, cfg: Config, ctx: Context | None = None):
        self.cfg = cfg
        self.ctx = ctx or setup_context(cfg)
        self.stop_signal: int | None = None

    def say(self, msg: str) -> None:
        if self.ctx.is_main:
            if getattr(self, "bar", None) is not None:
                self.bar.write(msg)
            else:
                print(msg, flush=True)

    def _prepare_run_dir(self) -> None:
        cfg, run_dir = self.cfg, self.ctx.run_dir
        resuming = cfg.run.resume or bool(cfg.run.checkpoint)
        if self.ctx.is_main:
            occupied = run_dir.exists() and any(run_dir.glob(CKPT_GLOB)) or (run_dir / "metrics.jsonl").exists()
            if occupied and not resuming and not cfg.run.overwrite:
                raise UserError(
                    f"run dir '{run_dir}' already holds a run; pass --run.resume=true to continue it, "
                    "--run.overwrite=true to replace it, or choose another --run.name"
                )
            if occupied and cfg.run.overwrite and not resuming:
                for p in list(run_dir.glob("ckpt_*")) + [run_dir / "metrics.jsonl", run_dir / "summary.json"]:
                    p.unlink(missing_ok=True)
            run_dir.mkdir(parents=True, exist_ok=True)
        self.ctx.barrier()

    def _resume_state(self) -> dict[str, Any] | None:
        cfg = self.cfg
        if cfg.run.checkpoint:
            path = Path(cfg.run.checkpoint)
            if not path.is_file():
                raise UserError(f"checkpoint '{path}' not found; pass an existing file to --run.checkpoint")
            state = load_checkpoint(path)
        elif cfg.run.resume:
            path, state = latest_good_checkpoint(self.ctx.run_dir, self.say)
        else:
            return None
        diffs = config_differences(state["config"], to_dict(cfg))
        if diffs:
            raise UserError(f"cannot resume from '{path}': the config differs in {'; '.join(diffs)}")
        old = state["config"]["train"]
        if old["grad_accum"] * state["world_size"] != cfg.train.grad_accum * self.ctx.world_size:
            raise UserError(
                f"cannot resume from '{path}': it used grad_accum x world_size = "
                f"{old['grad_accum']}x{state['world_size']}; keep their product the same"
            )
        self.say(f"resuming from {path} at step {state['step']}")
        return state

    def _install_signal_handlers(self) -> None:
        def handler(signum, frame):
            self.stop_signal = signum

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, handler)

    def _should_stop(self) -> bool:
        """Every rank must agree to stop at the same step, so the flag is all-reduced."""
        flag = float(self.stop_signal is not None)
        if self.ctx.distributed:
            t = torch.tensor([flag], device=self.ctx.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = t.item()
        return flag > 0

    def run(self) -> dict[str, Any]:
        cfg, ctx = self.cfg, self.ctx
        self._prepare_run_dir()
        torch.manual_seed(cfg.run.seed)
        np.random.seed(cfg.run.seed % 2**32)
        random.seed(cfg.run.seed)
        task = build_task(cfg, ctx)
        model = task.build_model().to(ctx.device)
        optimizer = build_optimizer(task.param_groups(model), cfg.optim)
        state = self._resume_state()
        step, tokens, wall_prev, best_val, skips = 0, 0, 0.0, math.inf, 0
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            step, tokens, wall_prev = state["step"], state["tokens"], state["wall_s"]
            best_val, skips = state.get("best_val", math.inf), state.get("skips", 0)
            set_rng_state(state["rng"])
        if ctx.is_main:
            (ctx.run_dir / "config.toml").write_text(to_toml(to_dict(cfg)))
        train_model = torch.compile(model) if cfg.run.compile else model
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            train_model = DDP(train_model, device_ids=ids)
        A, W = cfg.train.grad_accum, ctx.world_size
        tokens_per_step = task.tokens_per_micro_batch * A * W
        max_steps = cfg.train.max_steps
        if cfg.train.max_tokens > 0:
            max_steps = math.ceil(cfg.train.max_tokens / tokens_per_step)
        log = MetricsLog(ctx.run_dir / "metrics.jsonl", step if state else None, ctx.is_main)
        wandb = WandbLogger(cfg, ctx)
        fpt = task.flops_per_token(model)
        peak = peak_flops(ctx.device, ctx.dtype, cfg.train.peak_flops)
        requires_loss = getattr(optimizer, "requires_loss", False)
        self._install_signal_handlers()
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

        initial_val = None
        if state is None and cfg.eval.interval >= 0:
            initial_val = evaluate()
            rec = {"step": 0, "tokens": 0, **initial_val}
            log.log(rec)
            wandb.log(rec)
            self.say("step 0: " + ", ".join(f"{k} {v:.4f}" for k, v in initial_val.items()))
        elif state is not None:
            initial_val = state.get("initial_val")

        self.bar = None
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

        def payload(last_val: float | None) -> dict[str, Any]:
            return {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "tokens": tokens,
                "wall_s": wall_prev + time.time() - t_start,
                "config": to_dict(cfg),
                "world_size": W,
                "rng": rng_state(),
                "best_val": best_val,
                "val_loss": last_val,
                "skips": skips,
                "initial_val": initial_val,
            }

        def checkpoint(last_val: float | None = None) -> None:
            if ctx.is_main:
                save_checkpoint(ctx.run_dir, step, payload(last_val), cfg.train.keep_checkpoints)
            ctx.barrier()

        t_start = time.time()
        t_log, tokens_log = time.time(), tokens
        last_val: dict[str, float] = {}
        exit_code = 0
        model.train()
        loss_acc = torch.zeros((), device=ctx.device)
        while step < max_steps:
            mult = lr_multiplier(step, cfg.optim, max_steps)
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * mult
            loss_acc.zero_()
            for i in range(A):
                m = (step * A + i) * W + ctx.rank
                batch = task.batch(m)
                sync = contextlib.nullcontext() if (not ctx.distributed or i == A - 1) else train_model.no_sync()
                with sync:
                    with ctx.autocast():
                        loss = task.loss(train_model, batch, m)
                    (loss / A).backward()
                loss_acc += loss.detach() / A
            ctx.all_reduce_mean(loss_acc)
            if not torch.isfinite(loss_acc):
                optimizer.zero_grad(set_to_none=True)
                if cfg.train.on_nonfinite == "skip" and skips < cfg.train.max_skips:
                    skips += 1
                    self.say(
                        f"warning: non-finite loss at step {step + 1}; step skipped ({skips}/{cfg.train.max_skips})"
                    )
                    step += 1
                    tokens += tokens_per_step
                    continue
                log.close()
                good = sorted(ctx.run_dir.glob(CKPT_GLOB))
                where = f"the last good checkpoint is {good[-1]}" if good else "no checkpoint was written"
                raise NonFiniteLoss(f"loss became {loss_acc.item()} at step {step + 1}; {where}")
            grad_norm = None
            if cfg.optim.grad_clip > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            if requires_loss:
                optimizer.step(loss=loss_acc)
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens += tokens_per_step
            if self.bar is not None:
                self.bar.update(1)
            if step % cfg.train.log_interval == 0 or step == max_steps:
                now = time.time()
                tps = (tokens - tokens_log) / max(now - t_log, 1e-9)
                t_log, tokens_log = now, tokens
                rec = {
                    "step": step,
                    "train_loss": loss_acc.item(),
                    "lr": optimizer.param_groups[0]["lr"],
                    "tokens": tokens,
                    "tok_per_s": tps,
                }
                if grad_norm is not None:
                    rec["grad_norm"] = float(grad_norm)
                if fpt and peak:
                    rec["mfu"] = fpt * tps / (peak * W)
                if ctx.is_main:
                    rec.update(task.step_metrics(model, step))
                log.log(rec)
                wandb.log(rec)
                if self.bar is not None:
                    self.bar.set_postfix(loss=f"{rec['train_loss']:.4f}", tok_s=f"{tps:,.0f}", refresh=False)
            is_last = step == max_steps
            if (cfg.eval.interval > 0 and step % cfg.eval.interval == 0) or is_last:
                last_val = evaluate()
                rec = {"step": step, "tokens": tokens, **last_val}
                log.log(rec)
                wandb.log(rec)
                best_val = min(best_val, last_val.get("val_loss", math.inf))
                self.say(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in last_val.items()))
                t_log = time.time()  # throughput counts training time only
            stopping = self._should_stop()
            if is_last or stopping or (cfg.train.checkpoint_interval and step % cfg.train.checkpoint_interval == 0):
                checkpoint(last_val.get("val_loss") if last_val else None)
            if stopping and not is_last:
                self.say(
                    f"stopped by signal {self.stop_signal} at step {step}; checkpoint written, "
                    "resume with --run.resume=true"
                )
                exit_code = PREEMPTED_EXIT
                break
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        wall = wall_prev + time.time() - t_start
        summary: dict[str, Any] = {}
        if ctx.is_main:
            summary = {
                "final_val_loss": last_val.get("val_loss") if last_val else None,
                "best_val_loss": best_val if math.isfinite(best_val) else None,
                "initial_val_loss": (initial_val or {}).get("val_loss"),
                "steps": step,
                "tokens": tokens,
                "wall_s": wall,
                "params": n_params,
                "run_dir": str(ctx.run_dir),
                "completed": exit_code == 0,
            }
            summary.update({k: v for k, v in last_val.items() if k != "val_loss"})
            if exit_code == 0:
                summary.update(task.finish(model, log.history))
            (ctx.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        log.close()
        wandb.finish()
        self.exit_code = exit_code
        return summary


class NonFiniteLoss(Exception):
    pass


def report(summary: dict[str, Any]) -> None:
    """The closing lines a user reads: losses, the sample, the checks and where the run lives."""
    if not summary:
        return
    if summary.get("initial_val_loss") is not None and summary.get("final_val_loss") is not None:
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
    trainer = None
    try:
        cfg = load_config(config_path, overrides)
        trainer = Trainer(cfg)
        summary = trainer.run()
        if trainer.ctx.is_main:
            report(summary)
        return trainer.exit_code
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:
        print(f"error: {e}; lower optim.lr or use --train.on_nonfinite=skip", file=sys.stderr)
        return NONFINITE_EXIT
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
