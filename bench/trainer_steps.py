"""Time the trainer's own steps: a Trainer set up as for a run, then ``train_step`` called directly.

Shared by bench/gpu_check.py and bench/bench_compile_cpu.py. A step here is exactly what a run does
per step (the batch from the loader, the bias draws, autocast, compile, clipping, the optimizer), minus
logging, evaluation and checkpoints, which the settings below push out of reach.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

import optim
from configs import load_config
from data.shards import write_shard
from runtime import count_host_syncs
from trainer import Trainer

# a run that never logs, syncs, evaluates or checkpoints within the steps a benchmark takes
NO_INTERRUPTIONS = [
    "--train.max_steps=1000000",
    "--train.log_interval=1000000",
    "--train.sync_interval=1000000",
    "--eval.interval=0",
    "--eval.at_start=false",
    "--eval.sample_tokens=0",
    "--train.progress=false",
    "--run.overwrite=true",
]


def synthetic_shards(folder: Path, tokens: int, vocab: int = 257, seed: int = 0) -> Path:
    """Random byte tokens as a train and a val shard (the model's vocabulary can be set larger)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", tokens), ("val", max(tokens // 8, 1 << 16))):
        write_shard(folder / f"synth_{split}_000000.bin", rng.integers(0, vocab, n), vocab)
    (folder / "meta.json").write_text(json.dumps({"tokenizer": "byte", "vocab_size": vocab, "eot": vocab - 1}))
    return folder


def started_trainer(overrides: list[str], config: str | Path | None = None) -> Trainer:
    """A Trainer after ``setup`` and ``start_training``, ready for ``train_step``."""
    trainer = Trainer(load_config(config, [*overrides, *NO_INTERRUPTIONS]))
    trainer.setup()
    trainer.start_training()
    return trainer


def close(trainer: Trainer) -> None:
    """What ``Trainer.run`` does at its end and a benchmark skips otherwise: logs closed, run dir released."""
    if trainer.logs is not None:
        trainer.logs.close()
    if trainer.ctx.is_main:
        trainer.lock.release()


def use_optimizer(trainer: Trainer, name: str, **options) -> None:
    """Give the trainer a fresh ``name`` optimizer (its defaults, ``options`` over them) on the same model."""
    cfg = copy.copy(trainer.cfg)
    cfg.optim = dataclasses.replace(cfg.optim, name=name, lr=0.0, sections={name: options})
    cfg = optim.resolve(cfg)
    trainer.cfg = trainer.task.cfg = cfg
    trainer.optimizer = None  # free the old state first: SOAP's is several GiB at 124M
    trainer.optimizer = optim.build_optimizer(trainer.task.param_groups(trainer.model), cfg.optim)
    trainer.start_training()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_step(trainer: Trainer, steps: int) -> float:
    """Wall time of ``steps`` train steps, the device drained before and after."""
    device = trainer.ctx.device
    synchronize(device)
    t = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    synchronize(device)
    return (time.perf_counter() - t) / steps


def host_syncs_per_step(trainer: Trainer, steps: int) -> float:
    """Host synchronisations per train step, counted with CUDA's sync debug mode."""
    with count_host_syncs() as syncs:
        for _ in range(steps):
            trainer.train_step()
    return len(syncs) / steps
