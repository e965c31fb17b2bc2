"""The paper's question on one lent GPU, in at most nine minutes: does bQ help SGDM and ECD at GPT-2 124M?

    python bench/gpu_study.py                   # one H100/H200: at most --budget 540 s, the paired table last
    python bench/gpu_study.py --tiny --cpu      # every step at toy size on the CPU (about 45 s of CPU)
    python bench/gpu_study.py --seeds=42,83 --parallel 8 --out DIR

In order:

1. **A corpus from local files** (no network), built while step 2 runs: the built-in corpus's documents
   (docs/data.md) followed by the text of every standard-library source file, one document each, every
   20th held out, tokenized with GPT-2's BPE when its ranks are on the machine (``GPT2_BPE_FILE``, or
   ``shared/assets/gpt2.tiktoken`` beside the checkout) and with the project's own BPE otherwise.
   On CPython 3.11: 8,256 documents, 15.0M training and 0.88M validation GPT-2 tokens (a cell of a few
   thousand 4,096-token steps reads part of it once); English technical prose and Python code, not
   FineWeb-Edu, so its losses compare only with each other. Python code is easy to predict: where ECD's
   loss falls under F0 = 2 it skips steps, as the paper's code does (the cell's log warns).
2. **One small task of each family on the device**, as a user runs one (``train.py CONFIG
   --run.device=cuda``): group composition (C11, AGF's plateaus), λ-balanced linear networks (the closed
   form), SGD's conservation laws (the exact discrete laws); each must pass the checks it passes on a CPU
   (the script exits 1 after the table if one does not).
3. **The cells**: ``configs/paper/prelu.toml`` (GPT-2 124M, PReLU, context 512, 8x512 tokens a step,
   constant rate, each optimizer as the paper's code runs it) for SGDM and ECD x symmetric
   and bq x ``--seeds``, all at once as separate processes on the one GPU (``--parallel N`` runs N at a
   time, each with an equal share of the time), validated every 1,000 steps on the same 262,144 held-out
   tokens, until ``--steps`` or the end of its time (SIGTERM: a cell writes a checkpoint and stops).
4. **The table**, last: per optimizer and validation step reached by all its cells, the mean loss of
   each mode and bq - symmetric paired by seed (95% t interval over seeds when there are several).

Everything also goes to ``results.json`` in ``--out`` (default ``$OUT``).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from configs import ArgumentParser, UserError, command  # noqa: E402
from data.builtin import documents  # noqa: E402
from eval.report import Estimate, read_metrics  # noqa: E402

OPTIMIZERS = ("sgdm", "ecd")
MODES = ("symmetric", "bq")
SMALL_TASKS = ("group_composition", "lazy_rich", "conservation_laws")  # one per family
GPT2_FALLBACK = ROOT.parent / "shared" / "assets" / "gpt2.tiktoken"  # where the checkout's CI keeps the ranks
SMALL_TASK_TIMEOUT_S = 180.0
STOP_GRACE_S = 30.0  # after SIGTERM: time for a cell to write its checkpoint
TABLE_RESERVE_S = 10.0
TINY_DOCS, TINY_SMALL_STEPS, TINY_STEPS = 60, 50, 20  # --tiny: documents, small-task steps, cell steps
TINY_LM = ["--model.preset=''", "--model.n_layer=1", "--model.n_head=2", "--model.n_embd=32"]
TINY_LM += ["--model.block_size=32", "--train.batch_size=4", "--eval.tokens=1024", "--eval.interval=10"]
TINY_LM += ["--train.log_interval=5"]


@dataclass
class Study:
    device: str
    tiny: bool
    seeds: list[int]
    steps: int
    parallel: int
    work: Path
    deadline: float  # time.monotonic() by which the table is printed
    results: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def child_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if not env.get("GPT2_BPE_FILE") and GPT2_FALLBACK.is_file():
        env["GPT2_BPE_FILE"] = str(GPT2_FALLBACK)
    return env


def pick_tokenizer(choice: str) -> str:
    if choice != "auto":
        return choice
    return "gpt2" if child_env().get("GPT2_BPE_FILE") else "bpe"


# ----------------------------------------------------------------------------------- 1. the corpus


def stdlib_sources() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if not {"site-packages", "__pycache__"} & set(p.parts))


def write_corpus(folder: Path, max_docs: int) -> int:
    """The documents as numbered .txt files (data.prepare reads a folder in sorted order, one document a
    file). Returns how many were written."""
    folder.mkdir(parents=True)
    sources = (p.read_text(encoding="utf-8", errors="replace") for p in stdlib_sources())
    n = 0
    for text in itertools.chain(documents(), sources):
        if max_docs and n >= max_docs:
            break
        if text.strip():
            (folder / f"{n:06d}.txt").write_text(text, encoding="utf-8")
            n += 1
    return n


def start_corpus(s: Study, tokenizer: str) -> subprocess.Popen:
    docs = write_corpus(s.work / "corpus", TINY_DOCS if s.tiny else 0)
    s.results["corpus"] = {"documents": docs, "tokenizer": tokenizer}
    cmd = [sys.executable, "-m", "data.prepare", f"--source=files:{s.work / 'corpus'}", f"--tokenizer={tokenizer}"]
    cmd += [f"--out={s.work / 'data'}", "--val_every=20", f"--workers={min(8, os.cpu_count() or 1)}"]
    if tokenizer == "bpe":
        cmd += ["--vocab_size=8192", "--bpe_sample=20000000"]
    log = open(s.work / "prepare.log", "w")
    return subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=log, stderr=subprocess.STDOUT)


# ----------------------------------------------------------------------------------- 2. small tasks


def small_task_config(name: str) -> Path:
    """configs/small_tasks/NAME.toml, or NAME.toml in a family folder beneath it."""
    base = ROOT / "configs" / "small_tasks"
    found = [base / f"{name}.toml"] if (base / f"{name}.toml").is_file() else sorted(base.rglob(f"{name}.toml"))
    if not found:
        raise UserError(f"no config {name}.toml under {base}; the small tasks moved, update SMALL_TASKS")
    return found[0]


def start_small_tasks(s: Study) -> dict[str, subprocess.Popen]:
    procs = {}
    for name in SMALL_TASKS:
        cmd = [sys.executable, "train.py", str(small_task_config(name)), f"--run.device={s.device}"]
        cmd += [f"--run.dir={s.work / 'small'}", f"--run.name={name}", "--train.progress=false"]
        if s.tiny:
            cmd += [f"--train.max_steps={TINY_SMALL_STEPS}"]
        log = open(s.work / f"small-{name}.log", "w")
        procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=log, stderr=subprocess.STDOUT)
    return procs


def collect_small_tasks(s: Study, procs: dict[str, subprocess.Popen], started: float) -> bool:
    """Each task's checks as table rows; whether every check passed. A task past its time is killed."""
    stop = started + SMALL_TASK_TIMEOUT_S
    rows = []
    for name, proc in procs.items():
        try:
            code = proc.wait(timeout=max(1.0, stop - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
            s.notes.append(f"small task {name}: stopped after {SMALL_TASK_TIMEOUT_S:.0f}s")
        summary = s.work / "small" / name / "summary.json"
        checks = json.loads(summary.read_text()).get("checks", {}) if summary.exists() else {}
        for check, c in checks.items():
            rows.append({"task": name, "check": check, "passed": c.get("passed"), "observed": c.get("observed")})
        if not checks:
            rows.append({"task": name, "check": "-", "passed": False, "observed": f"exit {code}, no checks"})
    s.results["small_tasks"] = rows
    passed = sum(bool(r["passed"]) for r in rows)
    s.notes.append(f"small tasks on {s.device}: {passed} of {len(rows)} checks passed")
    if s.tiny:
        s.notes.append(f"small tasks: {TINY_SMALL_STEPS} steps each (--tiny): only checks that hold at any length pass")
    return passed == len(rows)


# ----------------------------------------------------------------------------------- 3. the cells


def cell_names(s: Study) -> list[tuple[str, str, int]]:
    return [(opt, mode, seed) for opt in OPTIMIZERS for seed in s.seeds for mode in MODES]


def cell_command(s: Study, opt: str, mode: str, seed: int) -> list[str]:
    cmd = [sys.executable, "train.py", str(ROOT / "configs" / "paper" / "prelu.toml")]
    cmd += [f"--optim.name={opt}", f"--symmetry.mode={mode}", f"--run.seed={seed}", f"--run.device={s.device}"]
    cmd += [f"--data.path={s.work / 'data'}", f"--run.dir={s.work / 'runs'}", f"--run.name={opt}-{mode}-s{seed}"]
    cmd += ["--train.max_tokens=0", f"--train.max_steps={s.steps}", "--train.progress=false"]
    cmd += ["--train.checkpoint_interval=0", "--train.keep_checkpoints=1", "--eval.sample_tokens=0"]
    if s.tiny:
        cmd += [*TINY_LM, "--run.threads=1"]
    else:
        cmd += ["--eval.interval=1000", "--eval.tokens=262144"]
    return cmd


def run_cells(s: Study) -> None:
    """Up to --parallel cells at a time, each given an equal share of the time left (all of it when every
    cell runs at once). A cell past its share gets SIGTERM (it writes a checkpoint and stops); one still
    running STOP_GRACE_S later is killed."""
    pending, running = cell_names(s), {}
    end = s.deadline - TABLE_RESERVE_S - STOP_GRACE_S
    waves = math.ceil(len(pending) / s.parallel)
    share = (end - time.monotonic() - (waves - 1) * STOP_GRACE_S) / waves
    while pending or running:
        now = time.monotonic()
        while pending and len(running) < s.parallel and now < end:
            opt, mode, seed = cell = pending.pop(0)
            log = open(s.work / f"cell-{opt}-{mode}-s{seed}.log", "w")
            proc = subprocess.Popen(
                cell_command(s, opt, mode, seed), cwd=ROOT, env=child_env(), stdout=log, stderr=subprocess.STDOUT
            )
            running[cell] = (proc, min(end, now + share))
        if pending and now >= end:
            s.notes.append(f"cells not started (deadline): {', '.join(f'{o}-{m}-s{x}' for o, m, x in pending)}")
            pending = []
        due = {cell: proc for cell, (proc, until) in running.items() if proc.poll() is None and now >= until}
        if due:
            stop(s, due)
        running = {cell: run for cell, run in running.items() if run[0].poll() is None}
        time.sleep(0.2)


def stop(s: Study, due: dict) -> None:
    for proc in due.values():
        proc.send_signal(signal.SIGTERM)
    end = time.monotonic() + STOP_GRACE_S
    for proc in due.values():
        try:
            proc.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    s.notes.append(f"stopped at the end of their time: {', '.join(f'{o}-{m}-s{x}' for o, m, x in due)}")


def cell_record(s: Study, opt: str, mode: str, seed: int) -> dict:
    metrics = read_metrics(s.work / "runs" / f"{opt}-{mode}-s{seed}" / "metrics.jsonl")
    val = {m["step"]: m["val_loss"] for m in metrics if "val_loss" in m}
    speed = [m["tok_per_s"] for m in metrics if "tok_per_s" in m]
    steps = max((m["step"] for m in metrics), default=0)
    return {"optimizer": opt, "mode": mode, "seed": seed, "val_loss": val, "steps": steps,
            "tok_per_s": speed[-1] if speed else None}


# ----------------------------------------------------------------------------------- 4. the table


def paired_rows(records: list[dict]) -> list[dict]:
    """Per optimizer, at every validation step all its cells reached: each mode's mean loss over seeds
    and bq - symmetric paired by seed."""
    rows = []
    for opt in OPTIMIZERS:
        mine = [r for r in records if r["optimizer"] == opt]
        if not mine:
            continue
        common = sorted(set.intersection(*(set(r["val_loss"]) for r in mine)))
        for step in common:
            by = {(r["mode"], r["seed"]): r["val_loss"][step] for r in mine}
            seeds = sorted({seed for _, seed in by if all((m, seed) in by for m in MODES)})
            sym = [by[("symmetric", x)] for x in seeds]
            bq = [by[("bq", x)] for x in seeds]
            rows.append({"optimizer": opt, "step": step, "seeds": len(seeds), "symmetric": Estimate.of(sym),
                         "bq": Estimate.of(bq), "bq - symmetric": Estimate.of([b - a for a, b in zip(sym, bq)])})
    return rows


def fmt(v, key: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, Estimate):
        return v.format("+.4f" if " - " in key else ".4f")  # a difference carries its sign
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(v)


def table(title: str, rows: list[dict]) -> list[str]:
    if not rows:
        return [f"== {title} ==", "(none)", ""]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[fmt(r.get(k), k) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    out = [f"== {title} ==", "  ".join(k.ljust(w) for k, w in zip(keys, widths))]
    return out + ["  ".join(v.ljust(w) for v, w in zip(c, widths)) for c in cells] + [""]


def report(s: Study, records: list[dict], paired: list[dict]) -> str:
    speed = [{k: r[k] for k in ("optimizer", "mode", "seed", "steps", "tok_per_s")} for r in records]
    lines = table("small tasks on the device", s.results.get("small_tasks", []))
    lines += table("cells", speed) + ["== notes =="] + s.notes + [""]
    return "\n".join(lines + table("paired by seed: validation loss, bq - symmetric (negative: bq helps)", paired))


# ----------------------------------------------------------------------------------- main


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="python bench/gpu_study.py", description=__doc__)
    p.add_argument("--budget", type=float, default=540.0, help="seconds for the whole study, table included")
    p.add_argument("--seeds", default="42", help="comma-separated seeds: each adds 4 cells")
    p.add_argument("--steps", type=int, default=0, help=f"steps per cell (0: until the deadline; --tiny: {TINY_STEPS})")
    p.add_argument("--parallel", type=int, default=0, help="cells at a time on the device (0: all)")
    p.add_argument("--tokenizer", default="auto", choices=("auto", "gpt2", "bpe", "byte"))
    p.add_argument("--tiny", action="store_true", help="toy model, few documents, short runs: checks the script")
    p.add_argument("--cpu", action="store_true", help="run on the CPU (with --tiny: the script's own test)")
    p.add_argument("--out", default=os.environ.get("OUT", ""), help="where results.json goes (default: $OUT)")
    p.add_argument("--work", default="", help="a new or empty folder for the corpus, logs and runs (default: temp)")
    return p


@command
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    start = time.monotonic()
    if not args.cpu and not torch.cuda.is_available():
        raise UserError("no CUDA device on this machine; run it on a GPU, or pass --cpu (with --tiny to check it)")
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--seeds must be integers separated by commas, got '{args.seeds}'") from None
    if not seeds or args.budget <= 0 or args.steps < 0 or args.parallel < 0:
        raise UserError("need at least one seed, --budget > 0, --steps >= 0 and --parallel >= 0; fix the flags")
    steps = args.steps or (TINY_STEPS if args.tiny else 1_000_000)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_study_"))
    if work.exists() and any(work.iterdir()):
        raise UserError(f"--work {work} is not empty; name a new or empty folder")
    work.mkdir(parents=True, exist_ok=True)
    s = Study("cpu" if args.cpu else "cuda", args.tiny, seeds, steps, args.parallel or 4 * len(seeds), work,
              start + args.budget)
    small = start_small_tasks(s)  # on the device while the corpus is written and tokenized on the CPU
    prepare = start_corpus(s, pick_tokenizer(args.tokenizer))
    checks_passed = collect_small_tasks(s, small, start)
    if prepare.wait() != 0:
        tail = (work / "prepare.log").read_text().strip().splitlines()[-1:]
        raise UserError(f"the corpus could not be prepared ({' '.join(tail)}); see {work / 'prepare.log'}")
    s.notes.append(f"corpus and small tasks ready after {time.monotonic() - start:.0f}s; work folder {work}")
    run_cells(s)
    records = [cell_record(s, *cell) for cell in cell_names(s)]
    paired = paired_rows(records)
    s.results.update(cells=records, paired=[{k: v.to_json() if isinstance(v, Estimate) else v for k, v in r.items()}
                                            for r in paired], notes=s.notes, wall_s=time.monotonic() - start)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "results.json").write_text(json.dumps(s.results, indent=1, default=str) + "\n")
    print(report(s, records, paired), flush=True)
    return 0 if checks_passed or args.tiny else 1  # a small task failing a check on the device is a failure


if __name__ == "__main__":
    sys.exit(main())
