"""Smallest width at which a network composes k elements exactly: the two-layer power network against the
composition paper's bound (widths m * 2^(k-1) * |G|, m = 1..k+1), and the deeper composers (the recurrent
network, the log-depth pairwise composer) against the claim that the width k = 2 needs does for every k.

    python -m eval.width_sweep [--group C5] [--ks 2 3 4] [--models mlp rnn deep] [--widths 6 8 10 ...]
        [--seeds 2] [--plot width.png]
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
  deeper models achieve).

The deeper models (``--models rnn deep``; the deep one at the k that are powers of two) train as the
composition paper trains its RNN: Adam from init 0.1 (from O(1) the RNN's degree 2^(k-1) overflows) with
the gradient clipped at 0.1, on every intermediate product (``task.targets = "all"``), on 1024 sampled
sequences a step where |G|^k is too many for one batch. Their checks:

- width_within_bound: every k composes within the k = 2 bound, 3 * 2 * |G|: the width of two suffices.
- width_subexponential: the least-squares slope of log2(width) against k is at most 1/2. The effect size:
  the two-layer network's width needs a doubling per element (slope >= 1, a product of k linear forms is
  a sum of 2^(k-1) k-th powers), the deeper ones none (slope 0); 1/2 splits the two. The grid's steps
  (at most 4/3 apart, 0.42 in log2) move a slope fitted over a span of k of at least 2 by at most 0.21,
  so a sweep that spans less fails rather than decide on quantization. Fails on widths that double with k.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

from configs import CONFIG_DIR, ArgumentParser, UserError, command, load_config
from small_tasks.composition.groups import parse_group
from small_tasks.toolkit import plots
from trainer import CHECKS_FAILED_EXIT, Trainer

DEEP_MODELS = ("rnn", "deep")
BATCH = 1024  # sequences a step where |G|^k is too many for one batch
MAX_FULL_BATCH = 1 << 14


def model_args(model: str, k: int, order: int) -> list[str]:
    """The training recipe of each model (module docstring)."""
    if model == "mlp":
        return ["--task.init_scale=1.0"]
    batch = BATCH if order**k > MAX_FULL_BATCH else 0
    return ["--task.init_scale=0.1", "--task.targets=all", f"--task.batch={batch}", "--optim.grad_clip=0.1"]


def sweeps_k(model: str, k: int) -> bool:
    """The deep model composes pairs: it has a k only where k is a power of two."""
    return model != "deep" or k & (k - 1) == 0


def composes(group: str, model: str, k: int, width: int, seed: int, steps: int) -> tuple[bool, float]:
    """Whether one restart reaches zero loss (the task's check), and its final loss."""
    order = parse_group(group).order
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
            *model_args(model, k, order),
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


def width_slope(min_width: dict[int, int | None]) -> float | None:
    """Least-squares slope of log2(width) against k (doublings per element); None if a k never composed."""
    ks = sorted(min_width)
    if len(ks) < 2 or any(min_width[k] is None for k in ks):
        return None
    return float(np.polyfit(ks, [math.log2(min_width[k]) for k in ks], 1)[0])


def checks(min_width: dict[int, int | None], order: int, model: str = "mlp") -> dict[str, dict]:
    """The checks of the module docstring for ``model``, from the smallest passing width per k."""
    if model in DEEP_MODELS:
        return deep_checks(min_width, order)
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


MAX_DEEP_SLOPE = 0.5  # doublings of the width per element: halfway between the two-layer network's 1 and 0
MIN_SPAN = 2  # the span of k over which the grid's quantization moves the slope by at most 0.21


def deep_checks(min_width: dict[int, int | None], order: int) -> dict[str, dict]:
    """The deeper models' checks (module docstring)."""
    bound = 3 * 2 * order  # the k = 2 line m = 3 of the two-layer bound
    ks = sorted(min_width)
    slope = width_slope(min_width)
    span = ks[-1] - ks[0] if ks else 0
    return {
        "width_within_bound": {
            "passed": all(w is not None and w <= bound for w in min_width.values()),
            "expected": {k: f"<= {bound}" for k in ks},
            "observed": min_width,
        },
        "width_subexponential": {
            "passed": slope is not None and span >= MIN_SPAN and slope <= MAX_DEEP_SLOPE,
            "expected": f"slope of log2(width) against k <= {MAX_DEEP_SLOPE} over a span of k >= {MIN_SPAN}",
            "observed": None if slope is None else {"slope": round(slope, 3), "span": span},
        },
    }


def plot(path: Path, group: str, results: dict[str, dict[int, int | None]]) -> None:
    """Width needed against k, log axis, one line per model; a k that never composed is left out."""
    fig, ax = plots.plt.subplots(figsize=(5, 3.4))
    for model, widths in results.items():
        ks = [k for k in sorted(widths) if widths[k] is not None]
        ax.plot(ks, [widths[k] for k in ks], "o-", label=MODEL_NAMES.get(model, model))
    ks = sorted({k for widths in results.values() for k in widths})
    order = parse_group(group).order
    ax.plot(ks, [2 ** (k - 1) * order for k in ks], "k--", lw=0.8, label="2^(k-1) |G|")
    ax.set_yscale("log", base=2)
    ax.set_xticks(ks)
    ax.set_xlabel("k (elements composed)")
    ax.set_ylabel("smallest width that composes")
    ax.legend(fontsize=7)
    plots.finish(fig, path, f"{group}: width needed against k", dpi=100)


MODEL_NAMES = {"mlp": "two-layer", "rnn": "recurrent (k steps)", "deep": "deep (log2 k layers)"}


def parse_known(items: list[str]) -> dict[str, dict[int, int]]:
    """``MODEL:K=W,K=W`` items into {model: {k: width}}."""
    out: dict[str, dict[int, int]] = {}
    for item in items:
        model, _, pairs = item.partition(":")
        try:
            widths = {int(k): int(w) for k, w in (pair.split("=") for pair in pairs.split(","))}
        except ValueError:
            raise UserError(f"--known '{item}' is not MODEL:K=W,K=W...; e.g. mlp:2=9,3=28,4=100") from None
        if model not in MODEL_NAMES or len(widths) < 2:
            raise UserError(f"--known '{item}' needs a model of mlp, rnn, deep and two k; e.g. mlp:2=9,3=28,4=100")
        out[model] = widths
    return out


@command
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--group", default="C5")
    ap.add_argument("--models", "--model", nargs="+", default=["mlp"], help="mlp | rnn | deep, one or more")
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 3, 4])
    widths = [6, 8, 9, 10, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 100, 120, 160, 200]  # up to C5's k = 4 bound
    ap.add_argument("--widths", type=int, nargs="+", default=widths)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--plot", default="", help="write the figure of width against k to this PNG")
    ap.add_argument(
        "--known",
        nargs="+",
        default=[],
        metavar="MODEL:K=W,...",
        help="smallest widths of a model measured by an earlier sweep (e.g. mlp:2=9,3=28,4=100): checked and drawn, "
        "not trained",
    )
    args = ap.parse_args(argv)
    if len(args.ks) < 2 or min(args.ks) < 2:
        raise UserError(f"--ks needs at least two values >= 2 to measure growth, got {args.ks}")
    unknown = [m for m in args.models if m not in MODEL_NAMES]
    if unknown:
        raise UserError(f"unknown --models {unknown}; use mlp, rnn or deep")
    for model in args.models:
        if sum(sweeps_k(model, k) for k in args.ks) < 2:
            raise UserError(f"--models {model} needs two --ks it can compose (deep: powers of two), got {args.ks}")
    order = parse_group(args.group).order
    results: dict[str, dict[int, int | None]] = {}
    known = parse_known(args.known)
    passed = True
    for model in dict.fromkeys([*known, *args.models]):  # each once, the known ones first
        min_width = results.setdefault(model, dict(known.get(model, {})))
        for k in [k for k in sorted(args.ks) if sweeps_k(model, k) and model not in known]:
            min_width[k] = None
            for w in sorted(args.widths):
                runs = [composes(args.group, model, k, w, seed, args.steps) for seed in range(args.seeds)]
                best = min(v for _, v in runs)
                print(f"{args.group} {model} k={k} width {w:3d}: best final loss {best:.3g}", flush=True)
                if any(ok for ok, _ in runs):
                    min_width[k] = w
                    break
        slope = width_slope(min_width)
        print(f"{model}: log2(width) against k, slope {'-' if slope is None else f'{slope:.3f}'}")
        for name, c in checks(min_width, order, model).items():
            passed &= c["passed"]
            label = name if model == "mlp" else f"{model}_{name}"  # the two-layer network's names as before
            verdict = "PASS" if c["passed"] else "FAIL"
            print(f"check {label}: {verdict} (expected {c['expected']}, observed {c['observed']})")
    if args.plot:
        plot(Path(args.plot), args.group, results)
    print(json.dumps({m: {str(k): w for k, w in widths.items()} for m, widths in results.items()}))
    return 0 if passed else CHECKS_FAILED_EXIT


if __name__ == "__main__":
    sys.exit(main())
