"""Pass rates of a small task's checks over seeds: how often the theory's checks hold, not whether one run passed.

    python -m eval.verify configs/small_tasks/group_composition.toml --seeds 8
    symbreak verify configs/small_tasks/dihedral.toml --seeds 4 --jobs 2 --out rates.json -- --optim.lr=0.05

Runs the config once per run seed 0..N-1 (``run.seed``: the initialization) with the config's data seed,
and once per data seed 0..N-1 (the task's ``data_seed_key``: template, teacher, dataset) with the config's
run seed, each through the one Trainer, and prints, per check, how many runs of each kind passed, then
each failing run with its failed checks. Overrides after ``--`` apply to every run. Works for every
SmallTask: it needs only the checks in the summary and the task's ``data_seed_key``.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from configs import ArgumentParser, UserError, command, load_config
from small_tasks.toolkit.base import SmallTask
from tasks import task_class
from trainer import Trainer


def run_one(config: str, overrides: list[str], seed: int, data_key: str | None, data_seed: int | None, root: str):
    """One run's checks: {name: passed}, and its wall time."""
    name = f"s{seed}_d{data_seed}"
    args = [*overrides, f"--run.seed={seed}", f"--run.dir={root}", f"--run.name={name}", "--train.progress=false"]
    if data_key is not None:
        args.append(f"--task.{data_key}={data_seed}")
    start = time.time()
    with contextlib.redirect_stdout(io.StringIO()):  # the runs' own progress lines would bury the table
        summary = Trainer(load_config(config, args)).run()
    if summary.get("completed") is False:  # SIGINT/SIGTERM stop the run in flight; stop the sweep with it
        raise UserError(f"run {name} was stopped by a signal; the pass rates are incomplete, nothing was written")
    return summary.get("checks", {}), time.time() - start


def plan(
    config: str, overrides: list[str], seeds: int, data_seeds: int
) -> tuple[str | None, list[tuple[str, int, int | None]]]:
    """The task's data-seed key and the runs: (kind, run seed, data seed); one run may serve both kinds."""
    cfg = load_config(config, overrides)
    cls = task_class(cfg.task.get("name", "lm"))
    if not issubclass(cls, SmallTask):
        raise UserError(f"task '{cfg.task.get('name', 'lm')}' is not a small task; verify runs configs of small tasks")
    key = cls.data_seed_key
    base_data = cfg.task.get(key, getattr(cls.config_class(), key, None)) if key and cls.config_class else None
    runs = [("run", s, base_data) for s in range(seeds)]
    if key is not None:
        runs += [("data", cfg.run.seed, d) for d in range(data_seeds)]
    return key, runs


def table(results: dict[tuple[int, int | None], dict[str, dict]], runs: list, key: str | None) -> str:
    names = list(dict.fromkeys(n for r in results.values() for n in r))
    kinds = [("run seeds", "run")] + ([(f"{key} seeds", "data")] if any(k == "data" for k, _, _ in runs) else [])
    width = max([len(n) for n in names] + [5])
    head = f"{'check':<{width}}  " + "  ".join(f"{label:>{max(len(label), 9)}}" for label, _ in kinds)
    lines = [head]
    for n in names:
        cells = []
        for label, kind in kinds:
            got = [results[(s, d)].get(n, {}).get("passed") for k, s, d in runs if k == kind]
            cells.append(f"{f'{sum(bool(g) for g in got)}/{len(got)}':>{max(len(label), 9)}}")
        lines.append(f"{n:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


@command
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, overrides = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", help="a small task's config, e.g. configs/small_tasks/group_composition.toml")
    ap.add_argument("--seeds", type=int, default=8, help="run seeds 0..N-1, and data seeds 0..N-1")
    ap.add_argument("--data_seeds", type=int, default=-1, help="data seeds 0..M-1 instead (0: none, for an idle one)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time, one process and one thread each")
    ap.add_argument("--out", default="", help="also write the table and every run's checks as JSON here")
    args = ap.parse_args(own)
    data_seeds = args.seeds if args.data_seeds < 0 else args.data_seeds
    if args.seeds < 1 or args.jobs < 1:
        raise UserError(f"--seeds and --jobs must be >= 1, got {args.seeds} and {args.jobs}")
    if not Path(args.config).is_file():
        raise UserError(f"config '{args.config}' not found; give the path of a small task's TOML file")
    overrides = [*overrides, "--run.threads=1"]
    key, runs = plan(args.config, overrides, args.seeds, data_seeds)
    distinct = list(dict.fromkeys((s, d) for _, s, d in runs))
    start = time.time()
    with tempfile.TemporaryDirectory() as root:
        jobs = [(args.config, overrides, s, key, d, root) for s, d in distinct]
        if args.jobs == 1:
            done = [run_one(*j) for j in jobs]
        else:
            with ProcessPoolExecutor(args.jobs) as pool:
                done = list(pool.map(run_one, *zip(*jobs)))
    results = {sd: checks for sd, (checks, _) in zip(distinct, done)}
    wall = time.time() - start
    text = table(results, runs, key)
    print(f"{args.config}: {len(distinct)} runs, {wall:.0f}s wall ({sum(t for _, t in done):.0f}s of runs)")
    print(text)
    for (s, d), checks in results.items():
        failed = [n for n, c in checks.items() if not c["passed"]]
        if failed:
            print(f"  run.seed={s}" + (f" {key}={d}" if key else "") + f": failed {', '.join(failed)}")
    if args.out:
        out: dict[str, Any] = {
            "config": args.config,
            "overrides": overrides,
            "seeds": args.seeds,
            "data_seeds": data_seeds,
            "data_seed_key": key,
            "wall_s": wall,
            "table": text,
            "runs": [{"run_seed": s, "data_seed": d, "checks": c} for (s, d), c in results.items()],
        }
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
