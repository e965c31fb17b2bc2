"""One device check: environment, the CUDA tests, trainer speed side by side, host syncs, DDP, generation.

    python bench/gpu_check.py                  # on one GPU: about 8 minutes at most, a table last
    python bench/gpu_check.py --quick          # small sizes, eager only: checks the script in ~a minute
    python bench/gpu_check.py --parts speed,optim --budget 300 --out DIR

On a GPU the speed part times the trainer's own steps (bench/trainer_steps.py) for GPT-2 124M (PReLU, bf16
autocast, random tokens) at the paper's 8x512 micro-batch and at 16x1024, for every symmetry mode and
optimizer, eager and compiled, in one process; MFU is against the peak the trainer picks for the GPU.
On a CPU every GPU-only part is skipped, saying why, and the rest runs at toy sizes (its numbers only
show that the script works). Parts run cheapest first; the compiled rows, which cost a compilation
each, take what is left of ``--budget``, most important first, and report what did not fit.

Targets (see bench/RESULTS.md): bqbv compiled 16x1024 MFU >= 0.50 on H100/H200 and bqbv/symmetric
>= 0.98; ECD's step <= 0.6x fused AdamW's; SOAP (refresh every 10) <= 1.3x AdamW's whole step at
0.5M tokens per step; no host sync in a step between logging. The table goes to stdout, every
number to ``results.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]  # the project, and trainer_steps beside this file

import torch  # noqa: E402
import torch._dynamo  # noqa: E402
from trainer_steps import (  # noqa: E402
    close,
    host_syncs_per_step,
    seconds_per_step,
    started_trainer,
    synchronize,
    synthetic_shards,
    use_optimizer,
)

from model import GPT, GPTConfig  # noqa: E402
from optim.soap import SOAP, _has_sides, _matrix  # noqa: E402
from runtime import count_host_syncs, peak_flops  # noqa: E402

MODES = ("symmetric", "bq", "bqbv")
OPTIMIZERS = ("adamw", "sgdm", "soap", "ecd")
PARTS = ("env", "tests", "speed", "optim", "ddp", "generate")
LATE_PARTS_S = {"optim": 30.0, "ddp": 50.0, "generate": 25.0}  # kept free for them by the speed part
SECTIONS = ("environment", "device tests", "speed", "ratios", "host syncs", "optimizer step", "soap step")
SECTIONS += ("ddp", "generation")


class OutOfTime(BaseException):
    """The hard time limit: raised by SIGALRM wherever the script is, caught only at the top."""


@dataclass
class Sizes:
    """What the parts run: GPT-2 124M on a GPU, a toy model elsewhere."""

    model: list[str]
    shapes: list[tuple[int, int]]
    warmup: int
    steps: int
    compiled: bool
    label: str
    gen_tokens: int
    accum_for_half_million: int = 32  # 16 x 1024 x 32 = 0.5M tokens per step

    @classmethod
    def pick(cls, cuda: bool, quick: bool) -> Sizes:
        if cuda and not quick:
            gpt2 = ["--model.preset=124M", "--model.vocab_size=50257", "--model.mlp=prelu"]
            return cls(gpt2, [(8, 512), (16, 1024)], 3, 20, True, "GPT-2 124M (PReLU), bf16 autocast", 256)
        toy = ["--model.n_layer=2", "--model.n_embd=128", "--model.n_head=2", "--model.vocab_size=512"]
        label = "toy GPT (2 layers, 128 wide)" + (", bf16 autocast" if cuda else ", fp32 on the CPU")
        return cls(toy, [(2, 32), (4, 64)], 1, 2 if quick else 5, not quick, label, 32)


@dataclass
class Report:
    sections: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    part_seconds: dict[str, float] = field(default_factory=dict)

    def add(self, section: str, **row: Any) -> None:
        self.sections.setdefault(section, []).append(row)

    def rows(self, section: str) -> list[dict[str, Any]]:
        return self.sections.get(section, [])


class Budget:
    def __init__(self, seconds: float):
        self.total, self.start = seconds, time.monotonic()

    def left(self) -> float:
        return self.total - (time.monotonic() - self.start)

    def allows(self, seconds: float, reserve: float = 0.0) -> bool:
        """Whether ``seconds`` of work fit and still leave ``reserve`` for the parts that follow."""
        return self.left() - reserve >= seconds


@dataclass
class Check:
    args: argparse.Namespace
    device: torch.device
    sizes: Sizes
    budget: Budget
    work: Path
    parts: list[str]
    report: Report = field(default_factory=Report)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def skip_without_cuda(self, section: str, what: str) -> None:
        if not self.cuda:
            self.report.add(section, setting=what, result="skipped: no CUDA device on this machine")

    def base_overrides(self, shape: tuple[int, int], mode: str, compiled: bool, name: str) -> list[str]:
        B, T = shape
        return [
            *self.sizes.model,
            f"--model.block_size={T}",
            f"--train.batch_size={B}",
            "--train.grad_accum=1",
            f"--symmetry.mode={mode}",
            f"--run.compile={str(compiled).lower()}",
            f"--run.device={self.device.type}",
            f"--data.path={self.work / 'shards'}",
            f"--run.dir={self.work / 'runs'}",
            f"--run.name={name}",
            "--run.threads=1" if not self.cuda else "--run.threads=0",
            "--optim.warmup_steps=0",
        ]


# ----------------------------------------------------------------------------------- environment


def part_env(c: Check) -> None:
    r = c.report
    r.add("environment", item="python", value=platform.python_version())
    r.add("environment", item="torch", value=torch.__version__)
    r.add("environment", item="CUDA (torch build)", value=torch.version.cuda or "none")
    if not c.cuda:
        r.add("environment", item="device", value=f"CPU ({os.cpu_count()} cores); every GPU part is skipped")
        return
    r.add("environment", item="cuDNN", value=str(torch.backends.cudnn.version()))
    props = torch.cuda.get_device_properties(c.device)
    r.add(
        "environment", item="device", value=f"{props.name} x{torch.cuda.device_count()}, sm_{props.major}{props.minor}"
    )
    r.add("environment", item="memory", value=f"{props.total_memory / 2**30:.0f} GiB")
    for dtype, label in ((torch.bfloat16, "bf16"), (None, "tf32")):
        peak = peak_flops(c.device, dtype)
        value = f"{peak / 1e12:.0f} TFLOP/s" if peak else "not in runtime.GPU_PEAK_FLOPS: no MFU (--train.peak_flops)"
        r.add("environment", item=f"peak the trainer picks, {label}", value=value)
    try:
        import triton

        r.add("environment", item="triton", value=triton.__version__)
    except ImportError:
        r.add("environment", item="triton", value="not installed: torch.compile cannot use inductor on the GPU")


# ----------------------------------------------------------------------------------- the CUDA tests


def part_tests(c: Check) -> None:
    """tests/test_cuda.py in a child process (a crash there cannot end this script); one row per test,
    read from pytest's verbose lines, so a run cut at its time limit still reports what it finished."""
    timeout = max(30.0, min(240.0, c.budget.left() - 200))
    cmd = [sys.executable, "-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        c.report.notes.append(f"device tests: stopped after {timeout:.0f}s; the rest did not run")
    (c.work / "cuda_tests.log").write_text(out)
    reasons = dict(re.findall(r"^SKIPPED \[\d+\] (\S+?):\d+: (.*)$", out, re.M))
    found = re.findall(r"^tests/test_cuda\.py::(\S+) (PASSED|FAILED|SKIPPED|ERROR)", out, re.M)
    for test, outcome in found:
        result = outcome.lower()
        if outcome == "SKIPPED":
            result = "skipped: " + next(iter(reasons.values()), "")
        c.report.add("device tests", test=test, result=result)
    if not found:
        tail = " | ".join(out.strip().splitlines()[-3:])
        c.report.add("device tests", test="tests/test_cuda.py", result=f"did not run: {tail}")
    counts = {o: sum(1 for _, x in found if x == o) for o in ("PASSED", "FAILED", "ERROR", "SKIPPED")}
    summary = ", ".join(f"{n} {o.lower()}" for o, n in counts.items() if n)
    c.report.notes.append(f"device tests: {summary or 'none ran'}; log {c.work / 'cuda_tests.log'}")


# ----------------------------------------------------------------------------------- trainer speed


def speed_unit(c: Check, shape: tuple[int, int], mode: str, compiled: bool | str) -> None:
    """One model (mode, shape, eager or compiled) stepped by each optimizer in turn. ``compiled`` may
    name a torch.compile mode instead: "reduce-overhead" replays CUDA graphs (AdamW only)."""
    name = f"{mode}-{shape[0]}x{shape[1]}-{compiled}"
    if compiled:
        torch._dynamo.reset()  # a fresh cache: no recompile limit carried over from the last model
    trainer = started_trainer(c.base_overrides(shape, mode, compiled is True, name))
    if isinstance(compiled, str):
        trainer.train_model = torch.compile(trainer.model, mode=compiled)
    try:
        for opt in OPTIMIZERS if not isinstance(compiled, str) else ("adamw",):
            use_optimizer(trainer, opt)
            if c.cuda:
                torch.cuda.reset_peak_memory_stats(c.device)
            first = seconds_per_step(trainer, 1)  # a compiled model compiles here, SOAP runs eigh here
            for _ in range(c.sizes.warmup - 1):
                trainer.train_step()
            sec = seconds_per_step(trainer, c.sizes.steps)
            tps = trainer.tokens_per_step / sec
            mfu = trainer.fpt * tps / trainer.peak if trainer.peak and trainer.fpt else None
            mem = torch.cuda.max_memory_allocated(c.device) / 2**30 if c.cuda else None
            c.report.add(
                "speed",
                mode=mode,
                shape=f"{shape[0]}x{shape[1]}",
                compiled=compiled,
                optimizer=opt,
                ms_per_step=sec * 1e3,
                tokens_per_s=tps,
                mfu=mfu,
                first_step_s=first,
                peak_gib=mem,
            )
            if c.cuda and mode == "bqbv" and shape == c.sizes.shapes[0] and not isinstance(compiled, str):
                syncs_unit(c, trainer, opt, compiled)
    finally:
        close(trainer)
        del trainer
        gc.collect()
        if c.cuda:
            torch.cuda.empty_cache()


def syncs_unit(c: Check, trainer, opt: str, compiled: bool) -> None:
    """Host syncs per step, as the optimizer runs (10 steps: one SOAP refresh), then with the trainer's
    default sync_interval = 1 for AdamW, and ECD's clamp policy, which needs none."""
    where = "compiled" if compiled else "eager"
    c.report.add("host syncs", setting=f"{opt}, {where}", per_step=host_syncs_per_step(trainer, 10))
    if opt == "adamw":
        train = trainer.cfg.train
        trainer.cfg.train = type(train)(**{**vars(train), "sync_interval": 1})
        c.report.add(
            "host syncs", setting=f"adamw, {where}, train.sync_interval=1", per_step=host_syncs_per_step(trainer, 5)
        )
        trainer.cfg.train = train
    if opt == "ecd":
        use_optimizer(trainer, "ecd", on_low_loss="clamp")
        seconds_per_step(trainer, 1)
        c.report.add("host syncs", setting=f"ecd on_low_loss=clamp, {where}", per_step=host_syncs_per_step(trainer, 10))


def part_speed(c: Check) -> None:
    """The compiled target rows first (bqbv and symmetric at the large shape), then the eager grid, then
    the other compiled rows, each only while its estimated time fits before the later parts' share."""
    reserve = sum(LATE_PARTS_S[x] for x in c.parts if x in LATE_PARTS_S)
    big, small = c.sizes.shapes[-1], c.sizes.shapes[0]
    compiled = [(big, "bqbv"), (big, "symmetric"), (small, "bqbv"), (small, "symmetric"), (big, "bq"), (small, "bq")]
    if not c.sizes.compiled:
        c.report.notes.append("speed: compiled rows skipped (--quick; inductor's first compile takes minutes on a CPU)")
        compiled = []
    elif c.cuda and not has_triton():
        c.report.notes.append("speed: compiled rows skipped, triton is not installed")
        compiled = []
    eager = [(shape, mode) for shape in c.sizes.shapes for mode in MODES]
    plan = [(u, True, 0.0) for u in compiled[:2]] + [(u, False, reserve) for u in eager]
    plan += [(u, True, reserve) for u in compiled[2:]]
    if c.cuda and compiled:  # whether CUDA graphs pay where launches dominate: the small shape
        plan.append(((small, "bqbv"), "reduce-overhead", reserve))
    estimate = {False: 20.0, True: 150.0, "reduce-overhead": 90.0}  # seconds a unit takes; then as measured
    for (shape, mode), how, keep in plan:
        label = f"{'eager' if how is False else 'compiled' if how is True else how} {mode} {shape[0]}x{shape[1]}"
        if not c.budget.allows(estimate[how], keep):
            c.report.notes.append(f"speed: {label} not run, {c.budget.left():.0f}s left")
            continue
        t = time.monotonic()
        speed_unit(c, shape, mode, how)
        estimate[how] = 1.2 * (time.monotonic() - t)
    c.skip_without_cuda("host syncs", "counted with CUDA's sync debug mode")


def has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------------- optimizer steps


def gpt_with_grads(c: Check) -> GPT:
    T = c.sizes.shapes[-1][1]
    if c.cuda and not c.args.quick:
        cfg = GPTConfig(vocab_size=50257, block_size=T, n_layer=12, n_head=12, n_embd=768)
    else:
        cfg = GPTConfig(vocab_size=512, block_size=T, n_layer=2, n_head=2, n_embd=128)
    model = GPT(cfg).to(c.device)
    g = torch.Generator(device=c.device).manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g, device=c.device) * 1e-3
    return model


def step_seconds(c: Check, fn, reps: int) -> float:
    synchronize(c.device)
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    synchronize(c.device)
    return (time.perf_counter() - t) / reps


def part_optim(c: Check) -> None:
    """Each optimizer's step alone on fixed gradients, against fused AdamW, with its host syncs; and
    where SOAP's time goes."""
    import optim

    model = gpt_with_grads(c)
    loss = torch.tensor(5.0, device=c.device)
    variants = {
        "adamw": ("adamw", {}),
        "sgdm": ("sgdm", {}),
        "ecd": ("ecd", {}),
        "ecd on_low_loss=clamp": ("ecd", {"on_low_loss": "clamp"}),
        "soap (no refresh)": ("soap", {"precondition_frequency": 10**9}),
    }
    reps = 10 if c.cuda else 2
    times: dict[str, float] = {}
    soap = None
    for label, (name, options) in variants.items():
        cfg = optim.config(name, **options)
        opt = optim.build_optimizer(optim.param_groups(model, cfg), cfg)
        step = (lambda o=opt: o.step(loss=loss)) if getattr(opt, "requires_loss", False) else opt.step
        step()  # state allocated; SOAP's first basis
        times[label] = step_seconds(c, step, reps)
        with count_host_syncs() as syncs:
            step()
        syncs_per_step = float(len(syncs)) if c.cuda else None
        c.report.add("optimizer step", optimizer=label, ms=times[label] * 1e3, syncs=syncs_per_step)
        if name == "soap":
            soap = opt
        else:
            del opt
    pairs = [(soap.state[p], _matrix(p.grad).float()) for p in model.parameters() if _has_sides(soap.state[p])]
    parts = {
        "Gram updates (G G^T, G^T G)": lambda: [SOAP._grams(s, g, 0.95) for s, g in pairs],
        "rotations (project, project back)": lambda: [SOAP._project_back(s, SOAP._project(s, g)) for s, g in pairs],
        "refresh (power step + QR, every 10)": lambda: [SOAP._refresh(s) for s, _ in pairs],
        "first basis (eigh, once)": lambda: [SOAP._first_basis(s) for s, _ in pairs],
    }
    part_ms = {}
    for label, fn in parts.items():
        part_ms[label] = step_seconds(c, fn, 1 if "once" in label else reps) * 1e3
        c.report.add("soap step", part=label, ms=part_ms[label])
    rest = times["soap (no refresh)"] * 1e3 - part_ms["Gram updates (G G^T, G^T G)"]
    rest -= part_ms["rotations (project, project back)"]
    c.report.add("soap step", part="the rest of a plain step (Adam's moments, foreach)", ms=rest)
    refresh = part_ms["refresh (power step + QR, every 10)"] / 1e3
    times["soap (refresh every 10)"] = times["soap (no refresh)"] + refresh / 10
    c.report.add("optimizer step", optimizer="soap (refresh every 10)", ms=times["soap (refresh every 10)"] * 1e3)
    for row in c.report.rows("optimizer step"):
        row["x_adamw"] = row["ms"] / (times["adamw"] * 1e3)


# ----------------------------------------------------------------------------------- DDP


def part_ddp(c: Check) -> None:
    """A short run of train.py under torchrun: 2 processes with 2 GPUs, else 1."""
    nproc = min(2, torch.cuda.device_count()) if c.cuda else 1
    shape = c.sizes.shapes[0]
    steps = 20 if c.cuda and not c.args.quick else 4
    args = c.base_overrides(shape, "bqbv", False, "ddp")
    args += [f"--train.max_steps={steps}", "--train.log_interval=10", "--eval.interval=0", "--eval.tokens=16384"]
    args += ["--eval.sample_tokens=0", "--train.progress=false", "--run.overwrite=true"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "train.py"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t = time.monotonic()
    proc = subprocess.run(cmd + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    wall = time.monotonic() - t
    (c.work / "ddp.log").write_text(proc.stdout + proc.stderr)
    metrics = c.work / "runs" / "ddp" / "metrics.jsonl"
    logged = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
    last = next((x for x in reversed(logged) if "tok_per_s" in x), {})
    c.report.add(
        "ddp",
        processes=nproc,
        backend="nccl" if c.cuda else "gloo",
        exit_code=proc.returncode,
        steps=steps,
        tokens_per_s=last.get("tok_per_s"),
        mfu=last.get("mfu"),
        val_loss=next((x["val_loss"] for x in reversed(logged) if "val_loss" in x), None),
        wall_s=wall,
    )
    if proc.returncode:
        c.report.notes.append(f"ddp: exit {proc.returncode}; see {c.work / 'ddp.log'}")


# ----------------------------------------------------------------------------------- generation


def tokens_per_second(c: Check, fn, new_tokens: int) -> tuple[float, torch.Tensor]:
    fn()  # warm-up
    synchronize(c.device)
    t = time.perf_counter()
    out = fn()
    synchronize(c.device)
    return new_tokens / (time.perf_counter() - t), out


def part_generate(c: Check) -> None:
    """Greedy generation from a 16-token prompt, batch 1, with and without the key/value cache."""
    model = gpt_with_grads(c).eval()
    n = c.sizes.gen_tokens
    prompt = torch.randint(0, 256, (1, 16), device=c.device)
    outs = {}
    for use_cache in (True, False):
        tps, outs[use_cache] = tokens_per_second(
            c, lambda u=use_cache: model.generate(prompt, n, temperature=0, use_cache=u), n
        )
        c.report.add("generation", model="GPT.generate", cache=use_cache, tokens_per_s=tps)
    c.report.notes.append(f"generation: GPT cached = uncached tokens: {torch.equal(outs[True], outs[False])}")
    try:
        from transformers import AutoModelForCausalLM

        from model.hf import export
    except ImportError:
        c.report.notes.append("generation: transformers is not installed; the export's row is skipped")
        return
    export(model.cpu(), c.work / "export")
    hf = AutoModelForCausalLM.from_pretrained(c.work / "export", trust_remote_code=True).to(c.device).eval()
    mask = torch.ones_like(prompt)
    for use_cache in (True, False):

        def run(u=use_cache):
            return hf.generate(prompt, attention_mask=mask, max_new_tokens=n, do_sample=False, use_cache=u)

        tps, out = tokens_per_second(c, run, n)
        c.report.add("generation", model="exported (custom HF code)", cache=use_cache, tokens_per_s=tps)
        c.report.notes.append(
            f"generation: export, use_cache={use_cache}, = GPT tokens: {torch.equal(out, outs[True])}"
        )


# ----------------------------------------------------------------------------------- the table


def derived(c: Check) -> None:
    """Ratios and targets from the rows measured in this one process."""
    rows = c.report.rows("speed")

    def tps(mode: str, shape: str, compiled: bool | str, opt: str = "adamw") -> float | None:
        for r in rows:
            if (r["mode"], r["shape"], r["compiled"], r["optimizer"]) == (mode, shape, compiled, opt):
                return r["tokens_per_s"]
        return None

    shapes = [f"{B}x{T}" for B, T in c.sizes.shapes]
    for compiled in (False, True):
        where = "compiled" if compiled else "eager"
        for shape in shapes:
            for opt in OPTIMIZERS:
                a, b = tps("bqbv", shape, compiled, opt), tps("symmetric", shape, compiled, opt)
                if a and b:
                    target = ">= 0.98" if compiled and shape == shapes[-1] and opt == "adamw" else ""
                    c.report.add(
                        "ratios", what=f"bqbv/symmetric tok/s, {shape}, {where}, {opt}", value=a / b, target=target
                    )
        for mode in MODES:
            small, big = tps(mode, shapes[0], compiled), tps(mode, shapes[-1], compiled)
            if small and big:
                c.report.add(
                    "ratios", what=f"tok/s {shapes[0]} / {shapes[-1]}, {mode}, {where}, adamw", value=small / big
                )
    for r in rows:
        if (r["mode"], r["shape"], r["compiled"], r["optimizer"]) == ("bqbv", shapes[-1], True, "adamw") and r["mfu"]:
            c.report.add("ratios", what=f"MFU bqbv, {shapes[-1]}, compiled, adamw", value=r["mfu"], target=">= 0.50")
    graphs, plain = tps("bqbv", shapes[0], "reduce-overhead"), tps("bqbv", shapes[0], True)
    if graphs and plain:
        c.report.add("ratios", what=f"tok/s CUDA graphs / compiled, bqbv, {shapes[0]}, adamw", value=graphs / plain)
    steps = {r["optimizer"]: r for r in c.report.rows("optimizer step")}
    if "ecd" in steps:
        c.report.add("ratios", what="ECD step / fused AdamW step", value=steps["ecd"]["x_adamw"], target="<= 0.6")
    half_million_step(c, shapes[-1], steps)


def half_million_step(c: Check, shape: str, steps: dict[str, dict]) -> None:
    """SOAP's whole step over AdamW's at 0.5M tokens: A micro-batches of 16x1024 (forward and backward,
    the AdamW step's time in the speed part less AdamW's step alone) plus each optimizer's step."""
    compiled = any(r["compiled"] is True for r in c.report.rows("speed"))
    for r in c.report.rows("speed"):
        if (r["mode"], r["shape"], r["compiled"], r["optimizer"]) == ("bqbv", shape, compiled, "adamw"):
            if "adamw" not in steps or "soap (refresh every 10)" not in steps:
                return
            micro = r["ms_per_step"] - steps["adamw"]["ms"]
            A = c.sizes.accum_for_half_million
            soap = A * micro + steps["soap (refresh every 10)"]["ms"]
            adamw = A * micro + steps["adamw"]["ms"]
            where = "compiled" if compiled else "eager"
            c.report.add(
                "ratios",
                what=f"SOAP/AdamW whole step, {A} x {shape} bqbv {where} (derived: {micro:.1f} ms a micro-batch)",
                value=soap / adamw,
                target="<= 1.3",
            )


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def table(report: Report) -> str:
    lines = []
    order = [x for x in SECTIONS if x in report.sections] + [x for x in report.sections if x not in SECTIONS]
    for section, rows in ((x, report.sections[x]) for x in order):
        lines.append(f"== {section} ==")
        keys = list(dict.fromkeys(k for r in rows for k in r))
        cells = [[fmt(r.get(k)) for k in keys] for r in rows]
        widths = [max(len(k), *(len(row[i]) for row in cells)) for i, k in enumerate(keys)]
        lines.append("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
        lines.append("")
    lines.append("== notes ==")
    lines += report.notes
    lines.append("part times: " + ", ".join(f"{k} {v:.0f}s" for k, v in report.part_seconds.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="toy sizes and eager only, on any device")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--budget", type=float, default=400.0, help="seconds for the parts; a hard stop 60 s later")
    p.add_argument("--out", default=os.environ.get("OUT", ""), help="where results.json goes (default: $OUT)")
    args = p.parse_args(argv)
    parts = [x for x in args.parts.split(",") if x]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        print(f"error: unknown part(s) {', '.join(unknown)}; choose from {','.join(PARTS)}", file=sys.stderr)
        return 2
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    sizes = Sizes.pick(cuda, args.quick)
    B, T = sizes.shapes[-1]
    synthetic_shards(work / "shards", tokens=max(64 * B * T, 1 << 20))
    c = Check(args, device, sizes, Budget(args.budget), work, [x for x in PARTS if x in parts])
    c.report.notes.append(f"sizes: {c.sizes.label}; shapes {c.sizes.shapes}; {c.sizes.steps} timed steps each")
    if not cuda:
        c.report.notes.append("on a CPU the speed numbers only show that the script runs: toy sizes, few steps")

    def out_of_time(signum, frame):
        raise OutOfTime

    previous = signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(int(args.budget + 60))  # the hard stop: a part still running then is cut short
    try:
        for name in c.parts:
            t = time.monotonic()
            try:
                globals()[f"part_{name}"](c)
            except OutOfTime:
                raise
            except Exception as e:  # one failing part must not cost the others' numbers
                c.report.notes.append(f"{name}: FAILED {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                traceback.print_exc()
            c.report.part_seconds[name] = time.monotonic() - t
    except OutOfTime:
        c.report.notes.append(f"stopped at the hard limit ({args.budget + 60:.0f}s): later rows are missing")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    derived(c)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "results.json").write_text(json.dumps(vars(c.report), indent=1, default=str) + "\n")
    print(table(c.report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
