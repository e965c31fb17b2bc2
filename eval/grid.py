"""The optimizer × symmetry grid in one command: every cell trained (or a cluster script written), then the report.

    python -m eval.grid CONFIG --optimizers=adamw,sgdm,soap,ecd --modes=symmetric,bq,bqbv --seeds=0,1,2 \\
        --out DIR [--jobs N] [--logic_n 100] [--emit slurm|torchrun] [--report_only] [--section.key=value ...]

A cell is one run of CONFIG with ``--optim.name``, ``--symmetry.mode`` and ``--run.seed`` set, written
to DIR/runs/<optimizer>-<mode>-s<seed>, its output to DIR/logs/<cell>.log; the other ``--section.key=value``
arguments apply to every cell. Each cell trains with ``--run.resume=true``, then the logic suite scores
it (``--logic_n`` items per category; 0 skips it). A finished cell (a completed summary.json and its
logic.json) is skipped, an interrupted one continues from its last checkpoint, and a cell whose stored
config differs from what this command would run is refused, so one DIR never mixes two grids.
``--jobs N`` runs N cells at a time; give each one thread (``--run.threads=1``) on a CPU.

``--emit slurm`` writes DIR/grid.slurm, a job array with one task per cell; ``--emit torchrun`` writes
DIR/grid.sh, the cells one after another, each on ``$NPROC`` GPUs of one node. Both run exactly the
commands this tool would, and end by (or tell you about) ``--report_only``, which only writes the report
of the cells that have finished: DIR/report.md, report.json and the plots of ``eval.report``.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import threading
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import optim
from configs import MODES, ArgumentParser, UserError, command, load_config, parse_overrides, to_dict
from eval.report import BOOKKEEPING, build_report, flatten, read_run
from trainer.exits import NONFINITE_EXIT

AXES = {  # set by the grid for each cell: never by an override
    "optim.name": "--optimizers",
    "symmetry.mode": "--modes",
    "run.seed": "--seeds",
    "run.name": "--out",
    "run.dir": "--out",
    "run.resume": "(always true)",
    "run.overwrite": "(a grid never overwrites)",
}


@dataclass
class GridCell:
    optimizer: str
    mode: str
    seed: int
    out: Path

    @property
    def name(self) -> str:
        return f"{self.optimizer}-{self.mode}-s{self.seed}"

    @property
    def run_dir(self) -> Path:
        return self.out / "runs" / self.name

    @property
    def log(self) -> Path:
        return self.out / "logs" / f"{self.name}.log"

    def train_args(self, config: Path, overrides: list[str]) -> list[str]:
        """The trainer's arguments: an override of one optimizer's table only reaches that optimizer's cells."""
        overrides = [o for o in overrides if _table_of(o) in (None, self.optimizer)]
        own = [f"--optim.name={self.optimizer}", f"--symmetry.mode={self.mode}", f"--run.seed={self.seed}"]
        where = [f"--run.dir={self.out / 'runs'}", f"--run.name={self.name}", "--run.resume=true"]
        return [str(config), *overrides, *own, *where]

    def logic_args(self, logic_n: int) -> list[str]:
        return [str(self.run_dir), "--n", str(logic_n)]


def csv(text: str, what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise UserError(f"--{what} is empty; give a comma-separated list")
    if len(set(items)) != len(items):
        raise UserError(f"--{what} lists a value twice: {text}")
    return items


def _table_of(override: str) -> str | None:
    """The optimizer whose own table ``--optim.<name>.<knob>=...`` sets, else None."""
    parts = override[2:].split("=", 1)[0].split(".")
    return parts[1] if len(parts) == 3 and parts[0] == "optim" and parts[1] in optim.OPTIMIZERS else None


def check_overrides(overrides: list[str], optimizers: list[str]) -> None:
    """Overrides must be --section.key=value, none may set what the grid sets per cell, and a knob of an
    optimizer's table must belong to an optimizer of the grid."""
    data = parse_overrides(overrides)
    for key, flag in AXES.items():
        section, name = key.split(".")
        if name in data.get(section, {}):
            raise UserError(f"--{key} is set by the grid for each cell; use {flag} instead")
    for o in overrides:
        if _table_of(o) not in (None, *optimizers):
            name = o.split("=")[0]
            raise UserError(f"{name} sets a knob of optimizer '{_table_of(o)}', which is not in --optimizers")


def plan(
    config: Path, optimizers: list[str], modes: list[str], seeds: list[int], out: Path, overrides: list[str]
) -> list[tuple[GridCell, dict]]:
    """Every cell with the config it will run (flattened, resolved), checked before anything starts."""
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise UserError(f"unknown symmetry mode '{bad[0]}' in --modes; use some of: {', '.join(MODES)}")
    cells = []
    for opt in optimizers:
        for mode in modes:
            for seed in seeds:
                cell = GridCell(opt, mode, seed, out)
                args = cell.train_args(config, overrides)
                cfg = optim.resolve(load_config(args[0], args[1:]))
                cells.append((cell, flatten(to_dict(cfg))))
    return cells


def state(cell: GridCell, expected: dict, logic_n: int) -> str:
    """``done``, ``trained`` (the logic suite is missing), ``partial`` or ``new``; a run dir that holds
    another configuration is a UserError."""
    stored = cell.run_dir / "config.toml"
    if not stored.exists():
        return "partial" if cell.run_dir.exists() else "new"
    have = flatten(tomllib.loads(stored.read_text()))
    keys = (set(have) | set(expected)) - BOOKKEEPING
    differ = sorted(k for k in keys if have.get(k) != expected.get(k))
    if differ:
        k = differ[0]
        raise UserError(
            f"cell {cell.name} in {cell.out} ran with {k} = {have.get(k)!r}, this grid asks for "
            f"{expected.get(k)!r}; use another --out (or remove {cell.run_dir})"
        )
    if not _completed(cell.run_dir):
        return "partial"
    logic = read_run(cell.run_dir).logic
    if logic_n and (logic is None or logic.get("meta", {}).get("n") != logic_n):
        return "trained"
    return "done"


def _completed(run_dir: Path) -> bool:
    path = run_dir / "summary.json"
    return path.exists() and bool(json.loads(path.read_text()).get("completed"))


class Runner:
    """Runs cells as child processes, N at a time; a SIGTERM/SIGINT is passed on to the running cells
    (each writes a checkpoint and stops) and no further cell starts."""

    def __init__(self, config: Path, overrides: list[str], logic_n: int):
        self.config, self.overrides, self.logic_n = config, overrides, logic_n
        self.children: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopping: int | None = None

    def call(self, argv: list[str], log: Path) -> int:
        with self.lock:
            if self.stopping is not None:
                return -self.stopping
            with open(log, "a") as f:
                f.write(f"$ {shlex.join(argv)}\n")
                f.flush()
                child = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT)
            self.children.add(child)
        code = child.wait()
        with self.lock:
            self.children.discard(child)
        return code

    def run(self, cell: GridCell, stage: str) -> tuple[str, float]:
        """Train (unless only the logic suite is missing), then score; returns (outcome, seconds)."""
        t0 = time.time()
        cell.log.parent.mkdir(parents=True, exist_ok=True)
        python = [sys.executable, "-m", "symbreak"]
        if stage != "trained":
            code = self.call([*python, "train", *cell.train_args(self.config, self.overrides)], cell.log)
            if code != 0 or not _completed(cell.run_dir):
                if code == NONFINITE_EXIT:
                    return "diverged", time.time() - t0
                stopped = code in (3, -signal.SIGINT, -signal.SIGTERM)  # a checkpoint was written, or none was due
                return ("stopped: rerun to continue" if stopped else f"failed (exit {code})"), time.time() - t0
        if self.logic_n:
            code = self.call([*python, "logic", *cell.logic_args(self.logic_n)], cell.log)
            if code != 0:
                return f"logic suite failed (exit {code})", time.time() - t0
        return "done", time.time() - t0

    def stop(self, signum: int, frame=None) -> None:
        with self.lock:
            if self.stopping is None:
                self.stopping = signum
            for child in self.children:
                child.send_signal(signum)


def run_grid(pending: list[tuple[Runner, GridCell, str]], jobs: int) -> dict[str, str]:
    """Every pending cell, each with the runner of its own overrides, ``jobs`` at a time; returns each
    cell's outcome by its run dir ("done" when it finished, "diverged" when its loss became non-finite)."""
    runners = list({id(r): r for r, _, _ in pending}.values())

    def stop(signum: int, frame=None) -> None:
        for runner in runners:
            runner.stop(signum, frame)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    outcomes = {}
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(runner.run, cell, stage): cell for runner, cell, stage in pending}
            for k, future in enumerate(as_completed(futures), start=1):
                cell = futures[future]
                outcome, seconds = future.result()
                print(f"[{k}/{len(pending)}] {cell.name}: {outcome} ({seconds:.0f}s, log {cell.log})", flush=True)
                outcomes[str(cell.run_dir)] = outcome
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return outcomes


def grid_command(args, overrides: list[str]) -> list[str]:
    """This grid's own command line, for the report step of an emitted script."""
    config, out = args.config.resolve(), args.out.resolve()
    cmd = ["-m", "eval.grid", str(config), f"--optimizers={args.optimizers}", f"--modes={args.modes}"]
    cmd += [f"--seeds={args.seeds}", "--out", str(out), "--logic_n", str(args.logic_n), *overrides]
    return [*cmd, "--report_only"]


def emit(kind: str, cells: list[GridCell], runner: Runner, args, overrides: list[str]) -> Path:
    """The launch script: the same train and logic commands as a local run, for a cluster."""
    q = shlex.join
    report = f'"$PYTHON" {q(grid_command(args, overrides))}'

    def steps(cell: GridCell, train: str) -> list[str]:
        lines = [f"{train} {q(cell.train_args(runner.config, runner.overrides))}"]
        if runner.logic_n:
            lines.append(f'"$PYTHON" -m symbreak logic {q(cell.logic_args(runner.logic_n))}')
        return lines

    head = ["#!/bin/bash"]
    if kind == "slurm":
        head += [
            f"#SBATCH --job-name={args.out.name}",
            f"#SBATCH --array=0-{len(cells) - 1}",
            f"#SBATCH --output={args.out / 'logs'}/slurm-%a.log",
            "# Add your cluster's resources, e.g. #SBATCH --gpus-per-task=1 and #SBATCH --time=...",
            f"# One task per cell ({len(cells)}); after all of them: {report.replace(chr(34), '')}",
        ]
    else:
        head += [
            f"# The {len(cells)} cells one after another, each on NPROC GPUs of this node (NPROC=8 by default;",
            "# keep batch_size x grad_accum x NPROC as the config intends). Rerunning continues where it stopped.",
        ]
    body = ["set -euo pipefail", f"cd {shlex.quote(str(Path.cwd()))}", 'PYTHON="${PYTHON:-python}"']
    if kind == "slurm":
        body.append(f"mkdir -p {shlex.quote(str(args.out / 'logs'))}")
        body.append('case "$SLURM_ARRAY_TASK_ID" in')
        for i, cell in enumerate(cells):
            lines = steps(cell, '"$PYTHON" -m symbreak train')
            body.append(f"  {i})  # {cell.name}")
            body += [f"    {line}" for line in lines]
            body.append("    ;;")
        body += ['  *) echo "no cell $SLURM_ARRAY_TASK_ID in this grid" >&2; exit 2 ;;', "esac"]
        path = args.out / "grid.slurm"
    else:
        body.append('NPROC="${NPROC:-8}"')
        train = '"$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" -m symbreak train'
        for cell in cells:
            body.append(f"# {cell.name}")
            body += steps(cell, train)
        body.append(report)
        path = args.out / "grid.sh"
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(head + body) + "\n")
    path.chmod(0o755)
    return path


@command
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(
        description="Train every cell of an optimizer x symmetry x seed grid (or write a cluster script), then report.",
        allow_abbrev=False,
    )
    p.add_argument("config", type=Path)
    p.add_argument("--optimizers", required=True, help="comma-separated, e.g. adamw,sgdm,soap,ecd")
    p.add_argument("--modes", required=True, help=f"comma-separated symmetry modes: {', '.join(MODES)}")
    p.add_argument("--seeds", required=True, help="comma-separated integers, e.g. 0,1,2")
    p.add_argument("--out", required=True, type=Path, help="the grid's folder: runs/, logs/, report.md")
    p.add_argument("--jobs", type=int, default=1, help="cells at a time (give each --run.threads=1 on a CPU)")
    p.add_argument("--logic_n", type=int, default=100, help="logic items per category for each cell (0: none)")
    p.add_argument("--emit", choices=("slurm", "torchrun"), default=None, help="write a launch script instead")
    p.add_argument("--report_only", action="store_true", help="only write the report of the finished cells")
    args, overrides = p.parse_known_args(argv)
    optimizers = csv(args.optimizers, "optimizers")
    check_overrides(overrides, optimizers)
    try:
        seeds = [int(s) for s in csv(args.seeds, "seeds")]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got '{args.seeds}'") from None
    if args.jobs < 1 or args.logic_n < 0:
        raise UserError("--jobs must be >= 1 and --logic_n >= 0")
    config = args.config.resolve()
    out = args.out.resolve()
    cells = plan(config, optimizers, csv(args.modes, "modes"), seeds, out, overrides)
    runner = Runner(config, overrides, args.logic_n)
    if args.emit:
        path = emit(args.emit, [c for c, _ in cells], runner, args, overrides)
        print(f"wrote {path} ({len(cells)} cells)")
        return 0
    states = [(cell, state(cell, expected, args.logic_n)) for cell, expected in cells]
    pending = [(cell, s) for cell, s in states if s != "done"]
    unfinished: list[str] = []
    if not args.report_only:
        print(f"grid {out}: {len(cells)} cells, {len(cells) - len(pending)} already done, {len(pending)} to run")
        outcomes = run_grid([(runner, cell, s) for cell, s in pending], args.jobs)
        unfinished = [cell.name for cell, _ in pending if outcomes[str(cell.run_dir)] != "done"]
    done = [cell for cell, expected in cells if state(cell, expected, args.logic_n) == "done"]
    if done:
        path = build_report([c.run_dir for c in done], out, title=f"Grid {out.name}: {len(done)} of {len(cells)} cells")
        print(f"wrote {path} and its plots ({len(done)} of {len(cells)} cells)")
    else:
        print("no cell has finished yet: no report")
    if unfinished:
        print(f"{len(unfinished)} cell(s) did not finish: {', '.join(unfinished)}; rerun the command to continue")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
