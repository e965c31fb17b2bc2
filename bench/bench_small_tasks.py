"""Per-step cost of the Trainer on a tiny full-batch task, against a bare PyTorch loop, side by side.

    python bench/bench_small_tasks.py [--steps 3000] [--reps 3]

The model is the modular-addition quadratic network (p = 20, width 18, 400 examples, SGD momentum 0.9),
where a step is a few microseconds of arithmetic: what is measured is the loop's own overhead.
Variants run interleaved (ABCD ABCD ...) so that load from other processes hits them alike; the
table reports the median microseconds per step and its ratio to the bare loop.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from configs import load_config
from runtime import Context
from small_tasks.composition.group_composition import ModularAdditionTask
from trainer import Trainer

CONFIG = Path(__file__).resolve().parents[1] / "configs/small_tasks/modular_addition.toml"


def bare(steps: int, threads: int = 1) -> float:
    """The same model, data and optimizer in the shortest correct loop."""
    torch.set_num_threads(threads)
    cfg = load_config(CONFIG, ["--run.name=bench", "--run.dir=" + tempfile.mkdtemp()])
    task = ModularAdditionTask(cfg, Context(torch.device("cpu")))
    model = task.build_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, foreach=True)
    x, y = task.batch(0)
    t = time.perf_counter()
    for _ in range(steps):
        F.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.set_num_threads(1)
    return (time.perf_counter() - t) / steps


def trainer(steps: int, overrides: list[str]) -> float:
    args = ["--run.dir=" + tempfile.mkdtemp(), "--run.name=bench", f"--train.max_steps={steps}"]
    args.append("--eval.at_start=false")
    cfg = load_config(CONFIG, args + ["--run.threads=1"] + overrides)
    return Trainer(cfg).run()["wall_s"] / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    variants = {
        "bare loop": lambda: bare(args.steps),
        "bare loop, 2 threads": lambda: bare(args.steps, threads=2),
        "trainer, sync every step": lambda: trainer(args.steps, ["--train.sync_interval=1"]),
        "trainer, sync every 100": lambda: trainer(args.steps, ["--train.sync_interval=100"]),
        "  same, no progress bar": lambda: trainer(args.steps, ["--train.sync_interval=100", "--train.progress=false"]),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.reps):
        for name, fn in variants.items():
            times[name].append(fn())
    base = statistics.median(times["bare loop"])
    print(f"{'variant':28s} {'us/step':>9s} {'ratio':>6s}   (1 thread unless noted, {args.steps} steps)")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:28s} {med * 1e6:9.0f} {med / base:6.2f}")


if __name__ == "__main__":
    main()
