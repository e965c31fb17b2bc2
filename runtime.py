"""The process's runtime: its device, its rank among the processes of a launch, and its precision.

``setup_context`` reads torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``), picks the device
and starts the process group (NCCL on GPUs, gloo on CPUs). Everything that runs on several ranks takes a
``Context``: tasks, evaluations and the trainer.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from configs import Config, UserError, resolve_device

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
    if "ACCELERATE_MIXED_PRECISION" in os.environ and "WORLD_SIZE" not in os.environ and "MASTER_ADDR" in os.environ:
        # accelerate's simple launcher: --num_processes N without --multi_gpu starts this one process only
        print("note: accelerate launch started one process; add --multi_gpu to start --num_processes of them",
              file=sys.stderr, flush=True)
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want = resolve_device(cfg.run.device, "--run.device")  # a device this machine lacks is refused here
    if want.startswith("cuda"):
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
    if cfg.run.dtype == "auto":  # the values were checked when the config was loaded
        dtype = torch.bfloat16 if device.type == "cuda" else None
    else:
        dtype = {"float32": None, "bfloat16": torch.bfloat16}[cfg.run.dtype]
    run_dir = Path(cfg.run.dir) / cfg.run.name
    return Context(device, rank, world, local_rank, run_dir, dtype)


def out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocation that the device (or the host, for CPU tensors) could not serve."""
    text = str(e)
    return isinstance(e, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in text


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


def to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(a)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@contextlib.contextmanager
def count_host_syncs() -> Iterator[list[str]]:
    """Collect every synchronisation of the host with a CUDA stream inside the block (CUDA's sync debug
    mode warns at each: ``.item()``, a blocking copy, a kernel whose output size needs the host, ...).

    Yields the list the warnings' texts are appended to; on a machine without CUDA it stays empty.
    """
    found: list[str] = []
    if not torch.cuda.is_available():
        yield found
        return
    before = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode(before)
    found += [str(w.message) for w in caught if "synchroniz" in str(w.message)]
