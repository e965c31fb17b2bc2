"""Smallest width at which the two-layer power network composes k elements exactly, against the
composition paper's bound: widths m * 2^(k-1) * |G|, m = 1..k+1.

    python -m eval.width_sweep [--group C5] [--ks 2 3 4] [--widths 6 8 10 12 ...] [--seeds 2]
    symbreak width-sweep --group C5 --ks 2 3 4

Expressivity, not dynamics: each (k, width) is trained through the Trainer with Adam from O(1)
initialization, best of ``--seeds`` restarts; a width composes when a restart passes the task's own
``reaches_zero_loss`` (final loss below 1% of the smallest non-zero level of the staircase), not a
fraction of the initial loss: from O(1) weights a degree-k network starts in the thousands (9,125 at
k = 4 on C5), so a width ending at 2.55, against 3.0 for the zero function, would pass. The theory says
the width needed grows exponentially in k (a product of k linear forms is a sum of 2^(k-1) k-th powers).
Two checks, printed like a run's and failing the command with exit code 6:

- width_within_bound: for every k, the smallest passing width is at most (k+1) * 2^(k-1) * |G|, the
  paper's largest line. Fails when no width up to the bound composes (or the grid stops short of it).
- width_grows_exponentially: the smallest widths grow at least as 2^(k-1) does, log2(w_k / w_k0) >= k - k0
  between the smallest and largest k of the sweep. Fails on a width that grows linearly in k (what the
  deeper models achieve: ``--model rnn`` or ``deep`` are expected to fail it).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
import tempfile

from configs import CONFIG_DIR, ArgumentParser, UserError, command, load_config
from small_tasks.composition.groups import parse_group
from trainer import CHECKS_FAILED_EXIT, Trainer


def composes(group: str, model: str, k: int, width: int, seed: int, steps: int) -> tuple[bool, float]:
    """Whether one restart reaches zero loss (the task's check), and its final loss."""
    with tempfile.TemporaryDirectory() as root:  # nothing of the run is kept but the check
        args = [
            f"--run.dir={root}",
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
        with contextlib.redirect_stdout(io.StringIO()):  # each run's own lines would bury the sweep's
            s = Trainer(load_config(CONFIG_DIR / "small_tasks/group_composition.toml", args)).run()
    return s["checks"]["reaches_zero_loss"]["passed"], s["final_val_loss"]


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
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--group", default="C5")
    ap.add_argument("--model", default="mlp", help="mlp | rnn | deep")
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 3, 4])
    widths = [6, 8, 9, 10, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 100, 120, 160, 200]  # up to C5's k = 4 bound
    ap.add_argument("--widths", type=int, nargs="+", default=widths)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3000)
    args = ap.parse_args(argv)
    if len(args.ks) < 2 or min(args.ks) < 2:
        raise UserError(f"--ks needs at least two values >= 2 to measure growth, got {args.ks}")
    order = parse_group(args.group).order
    min_width: dict[int, int | None] = {}
    for k in sorted(args.ks):
        min_width[k] = None
        for w in sorted(args.widths):
            runs = [composes(args.group, args.model, k, w, seed, args.steps) for seed in range(args.seeds)]
            best = min(v for _, v in runs)
            print(f"{args.group} {args.model} k={k} width {w:3d}: best final loss {best:.3g}", flush=True)
            if any(ok for ok, _ in runs):
                min_width[k] = w
                break
    result = checks(min_width, order)
    for name, c in result.items():
        print(f"check {name}: {'PASS' if c['passed'] else 'FAIL'} (expected {c['expected']}, observed {c['observed']})")
    print(json.dumps({str(k): w for k, w in min_width.items()}))
    return 0 if all(c["passed"] for c in result.values()) else CHECKS_FAILED_EXIT


if __name__ == "__main__":
    sys.exit(main())
