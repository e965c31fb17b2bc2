"""Smallest width at which the two-layer power network composes k elements exactly, against the
composition paper's bound: widths m * 2^(k-1) * |G|, m = 1..k+1.

    python -m small_tasks.width_sweep [--group C5] [--ks 2 3 4] [--widths 6 8 10 12 ...] [--seeds 2]
    symbreak width-sweep --group C5 --ks 2 3 4

Expressivity, not dynamics: each (k, width) is trained through the Trainer with Adam from O(1)
initialization, best of ``--seeds`` restarts; a width "reaches near-zero loss" when the final loss
is below ``--tol`` times the initial loss. The theory says the width needed grows exponentially in k (a
product of k linear forms is a sum of 2^(k-1) k-th powers). Two checks, printed like a run's and
failing the command with exit code 6:

- width_within_bound: for every k, the smallest passing width is at most (k+1) * 2^(k-1) * |G|, the
  paper's largest line. Fails when no width up to the bound composes (or the grid stops short of it).
- width_grows_exponentially: the smallest widths grow at least as 2^(k-1) does, log2(w_k / w_k0) >= k - k0
  between the smallest and largest k of the sweep. Fails on a width that grows linearly in k (what the
  deeper models achieve: ``--model rnn`` or ``deep`` are expected to fail it).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile

from configs import CONFIG_DIR, ArgumentParser, UserError, command, load_config
from small_tasks.groups import parse_group
from trainer import CHECKS_FAILED_EXIT, Trainer


def final_loss(group: str, model: str, k: int, width: int, seed: int, steps: int) -> tuple[float, float]:
    args = [
        f"--run.dir={tempfile.mkdtemp()}",
        "--run.name=w",
        "--run.threads=1",
        f"--run.seed={seed}",
        f"--task.group={group}",
        "--task.powers=[]",
        f"--task.k={k}",
        f"--task.model={model}",
        f"--task.width={width}",
        "--task.init_scale=1.0",
        "--optim.name=adamw",
        "--optim.lr=0.01",
        "--optim.adamw.weight_decay=0",
        "--optim.schedule=cosine",
        f"--train.max_steps={steps}",
        "--train.log_interval=1000000",
        "--train.progress=false",
        "--eval.interval=0",
    ]
    s = Trainer(load_config(CONFIG_DIR / "small_tasks/group_composition.toml", args)).run()
    return s["final_val_loss"], s["initial_val_loss"]


def checks(min_width: dict[int, int | None], order: int) -> dict[str, dict]:
    """The two checks of the module docstring, from the smallest passing width per k."""
    bound = {k: (k + 1) * 2 ** (k - 1) * order for k in min_width}
    inside = all(w is not None and w <= bound[k] for k, w in min_width.items())
    ks = sorted(min_width)
    lo, hi = ks[0], ks[-1]
    growth = (
        math.log2(min_width[hi] / min_width[lo]) if len(ks) > 1 and min_width[lo] and min_width[hi] else None
    )
    return {
        "width_within_bound": {
            "passed": inside,
            "expected": {k: f"<= {b}" for k, b in bound.items()},
            "observed": min_width,
        },
        "width_grows_exponentially": {
            "passed": growth is not None and growth >= hi - lo,
            "expected": f"log2(w_{hi} / w_{lo}) >= {hi - lo}",
            "observed": None if growth is None else round(growth, 3),
        },
    }


@command
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m small_tasks.width_sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("--group", default="C5")
    ap.add_argument("--model", default="mlp", help="mlp | rnn | deep")
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--widths", type=int, nargs="+", default=[6, 8, 9, 10, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--tol", type=float, default=1e-3)
    args = ap.parse_args(argv)
    if len(args.ks) < 2 or min(args.ks) < 2:
        raise UserError(f"--ks needs at least two values >= 2 to measure growth, got {args.ks}")
    order = parse_group(args.group).order
    min_width: dict[int, int | None] = {}
    for k in sorted(args.ks):
        min_width[k] = None
        for w in sorted(args.widths):
            losses = [final_loss(args.group, args.model, k, w, seed, args.steps) for seed in range(args.seeds)]
            rel = min(v / v0 for v, v0 in losses)
            print(f"{args.group} {args.model} k={k} width {w:3d}: best final loss / initial = {rel:.2e}", flush=True)
            if rel < args.tol:
                min_width[k] = w
                break
    result = checks(min_width, order)
    for name, c in result.items():
        print(f"check {name}: {'PASS' if c['passed'] else 'FAIL'} (expected {c['expected']}, observed {c['observed']})")
    print(json.dumps({str(k): w for k, w in min_width.items()}))
    return 0 if all(c["passed"] for c in result.values()) else CHECKS_FAILED_EXIT


if __name__ == "__main__":
    sys.exit(main())
