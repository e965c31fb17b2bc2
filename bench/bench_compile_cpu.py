"""Does torch.compile pay for the quickstart on a CPU? Eager and compiled trainer steps side by side.

    python bench/bench_compile_cpu.py [--rounds 5] [--steps 10] [--threads 1] [--warm_cache]

Two trainers of configs/quickstart.toml (bench/trainer_steps.py: the trainer's own ``train_step``),
one with ``--run.compile=true``. The compiled one's first step is its compilation; afterwards rounds of
``--steps`` steps alternate between the two, the order swapped each round. Prints the median seconds
per step, the speed-up, the compile time, and the quickstart's 800 steps both ways. Inductor keeps
compiled code on disk and reuses it; the compilation is timed with an empty cache (a first run's),
unless ``--warm_cache`` keeps the usual one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import torch  # noqa: E402
from trainer_steps import close, seconds_per_step, started_trainer  # noqa: E402

from configs import load_config  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10, help="steps per variant per round")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warm_cache", action="store_true", help="reuse inductor's on-disk cache of compiled code")
    args = p.parse_args()
    if not args.warm_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor_")
    runs = tempfile.mkdtemp(prefix="bench_compile_")
    common = [f"--run.dir={runs}", f"--run.threads={args.threads}"]
    trainers, first = {}, {}
    for compiled in (False, True):
        name = [f"--run.name=c{int(compiled)}", f"--run.compile={str(compiled).lower()}"]
        trainers[compiled] = started_trainer([*common, *name])
        t = time.perf_counter()
        trainers[compiled].train_step()  # compiles, for the compiled one
        first[compiled] = time.perf_counter() - t
        seconds_per_step(trainers[compiled], 2)  # warm-up
    times: dict[bool, list[float]] = {False: [], True: []}
    for r in range(args.rounds):
        for compiled in (False, True) if r % 2 == 0 else (True, False):
            times[compiled].append(seconds_per_step(trainers[compiled], args.steps))
    for trainer in trainers.values():
        close(trainer)
    eager, comp = statistics.median(times[False]), statistics.median(times[True])
    compile_s = first[True] - comp
    steps = load_config().train.max_steps  # the quickstart's own (the benchmark's trainers never stop)
    cache = "warm" if args.warm_cache else "empty"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), quickstart config, {args.rounds} rounds")
    print(f"inductor cache: {cache}")
    print(f"{'':<10}{'s/step':>10}{'min':>10}{'max':>10}{'first step s':>15}")
    for compiled, label in ((False, "eager"), (True, "compiled")):
        v = times[compiled]
        print(f"{label:<10}{statistics.median(v):>10.3f}{min(v):>10.3f}{max(v):>10.3f}{first[compiled]:>15.1f}")
    print(f"speed-up per step (eager / compiled): {eager / comp:.2f}x; compilation: {compile_s:.0f}s")
    if eager > comp:
        print(f"break-even after {compile_s / (eager - comp):.0f} steps")
    print(f"{steps} quickstart steps: eager {steps * eager:.0f}s, compiled {compile_s + steps * comp:.0f}s")


if __name__ == "__main__":
    main()
