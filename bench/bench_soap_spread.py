"""SOAP's refresh spread across DDP ranks against every rank refreshing everything, side by side.

    python -m torch.distributed.run --standalone --nproc_per_node=2 bench/bench_soap_spread.py [--width 256]

The bench model of bench_optim.py (GPT-2 124M's structure scaled down in width), the same fixed
gradients on every rank (what DDP's all-reduce leaves), SOAP refreshing on every step so that each
step times one refresh of every side plus the Adam update. The two variants run interleaved, round
after round, one torch thread per rank; rank 0 prints the median step time of each and their ratio.
The ratio's floor is 1/ranks (a perfect share) plus the broadcasts and the Adam update every rank runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_optim import fill_grads, gpt  # noqa: E402

from optim.soap import SOAP  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=256, help="n_embd of the scaled-down model (768 is 124M)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    runs = {}
    for spread in (False, True):
        model = gpt(args.width)
        fill_grads(model)
        params = [q for q in model.parameters() if q.dim() >= 2]
        max_dim = 10000 * args.width // 768
        opt = SOAP(params, lr=3e-4, precondition_frequency=1, max_precond_dim=max_dim, spread_refresh=spread)
        opt.step()  # the first bases (eigh), not timed
        runs["spread" if spread else "every rank"] = opt
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, opt in runs.items():
            dist.barrier()
            t = time.perf_counter()
            opt.step()
            dist.barrier()  # a step ends when the slowest rank's share and the broadcasts are done
            times[name].append(time.perf_counter() - t)
    if rank == 0:
        n = sum(q.numel() for q in runs["spread"].param_groups[0]["params"])
        print(f"SOAP refresh on every step, width {args.width} ({n / 1e6:.1f}M matrix parameters), {world} ranks")
        base = statistics.median(times["every rank"])
        for name, ts in times.items():
            t = statistics.median(ts)
            print(f"{name:12s} {t * 1e3:9.1f} ms/step   {t / base:5.2f} x every rank")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
