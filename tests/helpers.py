"""What several test files share: tiny-run settings, run helpers, assertions and the fault hook.

Paths are anchored to the repository root, never to the working directory.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import checkpoints
import train
from trainer import Hook, Trainer, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# The GPT-2 ranks for the gpt2 tests: GPT2_BPE_FILE, else the copy the CI checkout keeps beside the repo.
GPT2_RANKS = Path(os.environ.get("GPT2_BPE_FILE") or ROOT.parent / "shared" / "assets" / "gpt2.tiktoken")


def gpt2_ranks() -> Path:
    """The GPT-2 ranks file, or a skip that says how to provide one (offline, nothing downloads)."""
    if not GPT2_RANKS.is_file():
        pytest.skip(f"no GPT-2 ranks file at {GPT2_RANKS}: set GPT2_BPE_FILE to a gpt2.tiktoken (see docs/data.md)")
    return GPT2_RANKS

# The quickstart on bytes: tests train on it rather than on configs/quickstart.toml, whose BPE would be
# trained first (tests/test_quickstart_bpe.py covers that one).
BYTE_QUICKSTART = str(CONFIGS / "quickstart-byte.toml")
# A GPT small enough that a step takes milliseconds; quiet: no progress bar, no closing sample.
TINY_GPT = ["--model.n_layer=1", "--model.n_embd=32", "--model.n_head=2", "--model.block_size=32"]
QUIET = ["--train.progress=false", "--eval.sample_tokens=0"]


def run_train(root: Path, name: str, *args: str) -> dict:
    """``train.main`` into ``root/name``; it must succeed. Returns the run's summary."""
    assert train.main([f"--run.dir={root}", f"--run.name={name}", *args]) == 0
    return json.loads((Path(root) / name / "summary.json").read_text())


def run_config(root: Path, config: str, *overrides: str) -> dict:
    """A config of configs/ run by the Trainer in this process (one thread, no progress bar)."""
    args = [f"--run.dir={root}", "--run.name=t", "--train.progress=false", "--run.threads=1", *overrides]
    return Trainer(train_config(config, args)).run()


def train_config(config: str, args: list[str]):
    from configs import load_config

    return load_config(CONFIGS / config, args)


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def snapshot(*roots: Path) -> dict[str, bytes]:
    """Every file under ``roots`` with its bytes: equal before and after, nothing was changed or added."""
    return {str(p): p.read_bytes() for root in roots if root.exists() for p in root.rglob("*") if p.is_file()}


def losses(run_dir: Path) -> dict[tuple[int, str], float]:
    """Every logged train and validation loss by (step, kind); each must appear once."""
    out: dict[tuple[int, str], float] = {}
    for rec in read_jsonl(run_dir / "metrics.jsonl"):
        for kind in ("train_loss", "val_loss"):
            if kind in rec:
                assert (rec["step"], kind) not in out, f"step {rec['step']} {kind} logged twice in {run_dir}"
                out[rec["step"], kind] = rec[kind]
    return out


def final_params(run_dir: Path) -> dict[str, torch.Tensor]:
    return checkpoints.load_checkpoint(checkpoints.list_checkpoints(run_dir)[-1])["model"]


def assert_same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=f"parameter {k}")


def assert_close_losses(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max(abs(a[k] - b[k]) for k in a)
    assert worst <= atol, f"losses differ by up to {worst:.3g}"


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


class Fault(Hook):
    """An injected fault: "nan@STEP" turns rank 0's loss at STEP into NaN; "desync@STEP" perturbs the last
    rank's parameters after STEP."""

    def __init__(self, spec: str):
        self.kind, _, at = spec.partition("@")
        assert self.kind in ("nan", "desync") and at.isdigit(), spec
        self.step = int(at)

    def on_loss(self, trainer, step: int, micro: int, loss: torch.Tensor) -> torch.Tensor:
        if self.kind == "nan" and step == self.step and trainer.ctx.is_main and micro == 0:
            return loss * math.nan
        return loss

    def after_step(self, trainer, step: int) -> None:
        ctx = trainer.ctx
        if self.kind == "desync" and step == self.step and ctx.rank == ctx.world_size - 1:
            with torch.no_grad():
                next(trainer.model.parameters()).add_(1e-3)


class StopAt(Hook):
    """Asks the trainer to stop after ``step``, as a SIGTERM would (read at the next step's sync)."""

    def __init__(self, step: int):
        self.step = step

    def after_step(self, trainer, step: int) -> None:
        if step == self.step:
            trainer.stop_signal = signal.SIGTERM


# ----------------------------------------------------------------------------------- child processes


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"  # as in this process (see the one_thread fixture)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return {**env, **extra}


def launch(cmd: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=child_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a SIGKILL takes the launcher and its workers
    )


def torchrun(*argv: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *argv]


def wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 120) -> None:
    """Until rank 0 has logged ``step`` (polled: the kill lands wherever the run happens to be)."""
    metrics, deadline = run_dir / "metrics.jsonl", time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"the run ended (code {proc.returncode}) before step {step}:\n{out}")
        if metrics.exists() and any(r.get("step", 0) >= step for r in read_jsonl(metrics)):
            return
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"no step {step} within {timeout}s")


# ----------------------------------------------------------------------------------- runs on synthetic data

DRIVER = ROOT / "tests" / "torchrun_driver.py"
STEPS = 8  # in-process runs
KILL_STEPS = 60  # runs that get killed: caught by step KILL_STEPS // 4, with room to spare
RUN = [
    *TINY_GPT,
    "--train.batch_size=4",
    "--train.log_interval=1",
    "--eval.interval=4",
    "--eval.tokens=2048",
    *QUIET,
]


def args(data_dir: Path, root: Path, name: str, *extra: str, steps: int = STEPS) -> list[str]:
    """A tiny run of ``steps`` steps on the synthetic shards (the ``data_dir`` fixture)."""
    run = [f"--data.path={data_dir}", f"--run.dir={root}", f"--run.name={name}", f"--train.max_steps={steps}"]
    return [*RUN, *run, *extra]


def bench_module(name: str):
    """bench/<name>.py imported as the module ``name`` (bench/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
