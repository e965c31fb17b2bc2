"""Smallest width at which the two-layer power network composes k elements exactly, for k = 2 and 3.

    python -m small_tasks.width_sweep [--group C5] [--model mlp] [--ks 2 3] [--widths 2 4 6 8 10 12 16 24 32]

Expressivity, not dynamics: each (k, width) is trained through train.py with Adam from O(1)
initialization, best of ``--seeds`` restarts; a width "reaches near-zero loss" when the final loss
is below ``--tol`` times the initial plateau (the template's power / |G|). The theory says the width
needed grows exponentially in k (a product of k linear forms is a sum of 2^(k-1) k-th powers).
"""

from __future__ import annotations

import json
import sys
import tempfile

from configs import CONFIG_DIR, ArgumentParser, command, load_config
from trainer import Trainer


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
    return s["final_val_loss"], s["prediction"]["levels"][0]


@command
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m small_tasks.width_sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("--group", default="C5")
    ap.add_argument("--model", default="mlp", help="mlp | rnn | deep")
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--widths", type=int, nargs="+", default=[2, 4, 6, 8, 10, 12, 16, 24, 32])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--tol", type=float, default=1e-3)
    args = ap.parse_args(argv)
    result = {}
    for k in args.ks:
        rows = []
        for w in args.widths:
            losses = [final_loss(args.group, args.model, k, w, seed, args.steps) for seed in range(args.seeds)]
            best = min(v for v, _ in losses)
            rel = best / losses[0][1]
            rows.append({"width": w, "best_rel_loss": rel})
            print(f"{args.group} {args.model} k={k} width {w:3d}: best final loss / initial = {rel:.2e}", flush=True)
        ok = [r["width"] for r in rows if r["best_rel_loss"] < args.tol]
        result[k] = {"min_width": min(ok) if ok else None, "rows": rows}
    print(json.dumps({str(k): v["min_width"] for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
