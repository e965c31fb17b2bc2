"""Distributed training and fault tolerance: world-size invariance, exact resume, preemption, checkpoints.

Process launches are the expensive part (torch's import, the launcher's start-up), so they are few:
three torchrun launches (a SIGTERM to one rank, a SIGKILL of the whole group, then one driver launch
that runs every 2-process scenario) and three single-process subprocesses (SIGKILL, SIGTERM, SIGINT).
Everything else runs in this process through ``train.main``. Per-optimizer coverage comes from
``optim.names()``, so an optimizer added to the registry is tested without new code here.
"""

import importlib.util
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import checkpoints
import configs
import optim
import train
from data.shards import write_shard

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "torchrun_driver.py"
TINY = [
    "--model.n_layer=1",
    "--model.n_embd=32",
    "--model.n_head=2",
    "--model.block_size=32",
    "--train.batch_size=4",
    "--train.log_interval=1",
    "--train.progress=false",
    "--eval.interval=4",
    "--eval.tokens=2048",
    "--eval.sample_tokens=0",
]
STEPS = 8  # in-process runs
KILL_STEPS = 60  # runs that get killed: caught by step KILL_STEPS // 4, with room to spare


def missing_module(name: str) -> str | None:
    """The module a registered optimizer lives in, when that module does not exist (yet)."""
    target = optim.LAZY.get(name)
    module = target.split(":")[0] if target else None
    return module if module and importlib.util.find_spec(module) is None else None


def optimizer_args(name: str) -> list[str]:
    """Skip an optimizer whose module has not been written yet; it is covered once it lands."""
    if missing_module(name):
        pytest.skip(f"optimizer '{name}' is registered but {missing_module(name)} does not exist yet")
    return [f"--optim.name={name}"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; with more, a busy machine turns each op into a wait.
    Child processes get the same count, since CPU kernels may round differently with another one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A learnable byte stream (each token mostly fixed by the previous one), built in milliseconds."""
    folder = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)

    def chain(n: int) -> np.ndarray:
        noise = rng.integers(0, 4, n)
        x = np.zeros(n, dtype=np.int64)
        for i in range(1, n):
            x[i] = (x[i - 1] * 5 + 3 + noise[i]) % 256
        return x

    write_shard(folder / "synth_train_000000.bin", chain(40_000), 257)
    write_shard(folder / "synth_val_000000.bin", chain(8_192), 257)
    (folder / "meta.json").write_text(json.dumps({"tokenizer": "byte", "vocab_size": 257, "eot": 256}))
    return folder


def args(data_dir: Path, root: Path, name: str, *extra: str, steps: int = STEPS) -> list[str]:
    run = [f"--data.path={data_dir}", f"--run.dir={root}", f"--run.name={name}", f"--train.max_steps={steps}"]
    return [*TINY, *run, *extra]


def losses(run_dir: Path) -> dict[tuple[int, str], float]:
    """Every logged train and validation loss by (step, kind); each must appear once."""
    out: dict[tuple[int, str], float] = {}
    for rec in train.read_jsonl(run_dir / "metrics.jsonl"):
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


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------------------------
# Checkpoint files (no training)
# --------------------------------------------------------------------------------------------


class Killed(BaseException):
    """Stands for SIGKILL at one point of a checkpoint write."""


def test_a_kill_at_any_point_of_a_checkpoint_write_leaves_a_good_checkpoint(tmp_path, monkeypatch):
    """Interrupt save_checkpoint at each of its file operations (torch.save leaves half a file);
    whatever is left on disk, the next start finds the previous or the new checkpoint, verified."""
    payload = {"model": {"w": torch.arange(1000.0)}, "val_loss": None}
    real = {"save": torch.save, "replace": os.replace, "unlink": Path.unlink, "write_text": Path.write_text}
    owner = {"save": torch, "replace": os, "unlink": Path, "write_text": Path}
    trace = {"armed": False, "ops": 0, "kill_at": 0}

    def traced(kind):
        def op(*a, **k):
            if trace["armed"]:
                trace["ops"] += 1
                if trace["ops"] == trace["kill_at"]:
                    if kind == "save":
                        real["save"](*a, **k)
                        Path(a[1]).write_bytes(Path(a[1]).read_bytes()[:700])
                    raise Killed
            return real[kind](*a, **k)

        return op

    for kind in real:
        monkeypatch.setattr(owner[kind], kind, traced(kind))

    def write_third(run_dir: Path, kill_at: int) -> None:
        run_dir.mkdir()
        for step in (1, 2):
            checkpoints.save_checkpoint(run_dir, step, {**payload, "step": step}, keep=2)
        trace.update(armed=True, ops=0, kill_at=kill_at)
        try:
            checkpoints.save_checkpoint(run_dir, 3, {**payload, "step": 3}, keep=2)
        finally:
            trace["armed"] = False

    write_third(tmp_path / "whole", kill_at=0)
    n_ops = trace["ops"]
    assert n_ops >= 5  # the save, the sidecar, two renames, pruning
    for kill_at in range(1, n_ops + 1):
        run_dir = tmp_path / f"kill{kill_at}"
        with pytest.raises(Killed):
            write_third(run_dir, kill_at)
        checkpoints.remove_partial_writes(run_dir)  # what the next start does first
        path, state = checkpoints.latest_good_checkpoint(run_dir, warn=pytest.fail)
        assert state["step"] in (2, 3) and path == checkpoints.checkpoint_path(run_dir, state["step"])
        assert not list(run_dir.glob("*.tmp"))


def test_checkpoints_load_with_weights_only_and_without_wrapper_prefixes(data_dir, tmp_path):
    assert train.main(args(data_dir, tmp_path, "a", steps=2)) == 0
    path = checkpoints.checkpoint_path(tmp_path / "a", 2)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "config", "rng", "step"} <= raw.keys() and raw["step"] == 2
    # a torch.compile'd (or DDP-wrapped) model's state_dict carries prefixes; loading strips them
    model = torch.nn.Sequential(torch.nn.Linear(3, 3))
    compiled = torch.compile(model)
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    model.load_state_dict(checkpoints.strip_wrapper_prefixes(compiled.state_dict()))
    compiled.load_state_dict({"_orig_mod." + k: v for k, v in model.state_dict().items()})
    # a checkpoint written from a compiled model resumes into the bare one (and vice versa: the trainer
    # always loads into the bare module, which the compiled wrapper shares)
    raw["model"] = {"_orig_mod." + k: v for k, v in raw["model"].items()}
    foreign = tmp_path / "foreign.pt"
    torch.save(raw, foreign)
    assert train.main(args(data_dir, tmp_path, "b", f"--run.checkpoint={foreign}", steps=3)) == 0


def test_pruning_keeps_the_newest_and_the_best(tmp_path):
    for step, val in [(1, 3.0), (2, 1.0), (3, None), (4, 2.0), (5, None)]:
        checkpoints.save_checkpoint(tmp_path, step, {"model": {}, "val_loss": val}, keep=2)
    assert [checkpoints.checkpoint_step(p) for p in checkpoints.list_checkpoints(tmp_path)] == [2, 4, 5]


def test_a_resumed_metrics_log_drops_lines_past_the_checkpoint_and_a_line_cut_by_a_kill(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "train_loss": 1.0 / (s + 1)}) for s in range(6)]
    path.write_text("\n".join(lines) + "\n" + lines[-1][:9])  # the kill cut the last line short
    log = train.MetricsLog(path, resume_step=3, enabled=True)
    log.log({"step": 4, "train_loss": 0.5})
    log.close()
    assert [r["step"] for r in train.read_jsonl(path)] == [0, 1, 2, 3, 4]
    assert path.read_text().endswith("\n")


# --------------------------------------------------------------------------------------------
# In-process runs, for every registered optimizer
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("opt", optim.names())
def test_resume_is_exact_and_damaged_checkpoints_fall_back(opt, data_dir, tmp_path, capsys):
    extra = [*optimizer_args(opt), "--train.checkpoint_interval=2", "--train.keep_checkpoints=3"]
    assert train.main(args(data_dir, tmp_path, "ref", *extra)) == 0
    ref = tmp_path / "ref"
    want, want_params = losses(ref), final_params(ref)
    assert [checkpoints.checkpoint_step(p) for p in checkpoints.list_checkpoints(ref)] == [4, 6, 8]
    capsys.readouterr()

    # the latest checkpoint truncated: a warning, the one before it, and the same losses from there
    shutil.copytree(ref, tmp_path / "trunc")
    last = checkpoints.checkpoint_path(tmp_path / "trunc", 8)
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    assert train.main(args(data_dir, tmp_path, "trunc", *extra, "--run.resume=true")) == 0
    out = capsys.readouterr().out
    assert "does not match the sha256" in out and "falling back" in out and "at step 6" in out
    assert losses(tmp_path / "trunc") == want
    assert_same_params(final_params(tmp_path / "trunc"), want_params)
    assert (tmp_path / "trunc" / "ckpt_00000008.pt.superseded").exists()  # set aside, not deleted

    # an explicit checkpoint from another run dir: the branch logs steps 0-4 from there, then its own
    src = checkpoints.checkpoint_path(ref, 4)
    assert train.main(args(data_dir, tmp_path, "branch", *extra, f"--run.checkpoint={src}")) == 0
    assert losses(tmp_path / "branch") == want
    assert_same_params(final_params(tmp_path / "branch"), want_params)
    capsys.readouterr()

    # every checkpoint damaged: a clear error, and nothing in the run dir is touched
    shutil.copytree(ref, tmp_path / "broken")
    for p in checkpoints.list_checkpoints(tmp_path / "broken"):
        corrupt(p)
    before = sorted(p.name for p in (tmp_path / "broken").iterdir())
    assert train.main(args(data_dir, tmp_path, "broken", *extra, "--run.resume=true")) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "every checkpoint" in line and "damaged" in line
    assert sorted(p.name for p in (tmp_path / "broken").iterdir()) == before


@pytest.mark.parametrize("opt", optim.names())
def test_nonfinite_loss_stops_or_skips_and_never_overwrites_a_good_checkpoint(
    opt, data_dir, tmp_path, capsys, monkeypatch
):
    extra = [*optimizer_args(opt), "--train.checkpoint_interval=2", "--train.keep_checkpoints=0"]
    assert train.main(args(data_dir, tmp_path, "ref", *extra)) == 0
    capsys.readouterr()

    monkeypatch.setenv(train.FAULT_ENV, "nan@5")
    assert train.main(args(data_dir, tmp_path, "stop", *extra)) == train.NONFINITE_EXIT
    line = one_line_error(capsys.readouterr().err)
    assert "non-finite loss nan at step 5" in line and "ckpt_00000004.pt" in line
    run = tmp_path / "stop"
    assert [checkpoints.checkpoint_step(p) for p in checkpoints.list_checkpoints(run)] == [2, 4]
    assert_same_params(
        checkpoints.load_checkpoint(checkpoints.checkpoint_path(run, 4))["model"],
        checkpoints.load_checkpoint(checkpoints.checkpoint_path(tmp_path / "ref", 4))["model"],
    )
    assert max(step for step, _ in losses(run)) == 4
    monkeypatch.delenv(train.FAULT_ENV)
    assert train.main(args(data_dir, tmp_path, "stop", *extra, "--run.resume=true")) == 0
    assert losses(run) == losses(tmp_path / "ref")

    monkeypatch.setenv(train.FAULT_ENV, "nan@3")
    skip = [*extra, "--train.on_nonfinite=skip", "--train.max_skips=1"]
    assert train.main(args(data_dir, tmp_path, "skip", *skip)) == 0
    assert "step skipped (1/1)" in capsys.readouterr().out
    records = train.read_jsonl(tmp_path / "skip" / "metrics.jsonl")
    assert [r["step"] for r in records if "skipped" in r] == [3]
    assert all(np.isfinite(r["train_loss"]) for r in records if "train_loss" in r)
    assert json.loads((tmp_path / "skip" / "summary.json").read_text())["skipped_steps"] == 1
    assert (
        train.main(args(data_dir, tmp_path, "noskip", *extra, "--train.on_nonfinite=skip", "--train.max_skips=0"))
        == train.NONFINITE_EXIT
    )


@pytest.mark.parametrize("opt", optim.names())
def test_fewer_host_syncs_change_nothing_but_the_syncs(opt, data_dir, tmp_path):
    """train.sync_interval > 1 skips the per-step checks, not the per-step loss an optimizer may need."""
    extra = [*optimizer_args(opt), "--train.log_interval=4"]
    assert train.main(args(data_dir, tmp_path, "every", *extra)) == 0
    assert train.main(args(data_dir, tmp_path, "fewer", *extra, "--train.sync_interval=3")) == 0
    assert losses(tmp_path / "fewer") == losses(tmp_path / "every")
    assert_same_params(final_params(tmp_path / "fewer"), final_params(tmp_path / "every"))


def test_a_distributed_process_exits_with_its_code_and_its_output_flushed():
    """exit_process skips interpreter finalization after a distributed run: nothing printed may be lost."""
    code = "import sys, train; print('last', end=''); "
    code += "print('words', end='', file=sys.stderr); train.exit_process(5)"
    env = child_env(WORLD_SIZE="2")  # one rank of a launch
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert (out.returncode, out.stdout, out.stderr) == (5, "last", "words")


def test_user_errors_are_one_line_and_keep_the_run(data_dir, tmp_path, capsys):
    assert train.main(args(data_dir, tmp_path, "a", steps=2)) == 0
    capsys.readouterr()
    saved = {str(p): p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}

    assert train.main(args(data_dir, tmp_path, "a", steps=2)) == 2
    assert "already holds a run" in one_line_error(capsys.readouterr().err)
    changed = ["--run.resume=true", "--optim.lr=0.1", "--model.n_embd=64", "--train.grad_accum=2"]
    assert train.main(args(data_dir, tmp_path, "a", *changed, steps=4)) == 2
    line = one_line_error(capsys.readouterr().err)
    lr = configs.load_config().optim.lr  # the run kept the default config's learning rate
    assert f"optim.lr: {lr} -> 0.1" in line and "model.n_embd: 32 -> 64" in line
    assert train.main(args(data_dir, tmp_path, "a", "--run.resume=true", "--train.grad_accum=2", steps=4)) == 2
    assert "grad_accum x processes = 1x1" in one_line_error(capsys.readouterr().err)
    missing = tmp_path / "nope.pt"
    assert train.main(args(data_dir, tmp_path, "a", f"--run.checkpoint={missing}", steps=4)) == 2
    assert "not found" in one_line_error(capsys.readouterr().err)
    weights = tmp_path / "weights.pt"  # what a weights-only export holds
    torch.save({"model": final_params(tmp_path / "a"), "config": {}}, weights)
    assert train.main(args(data_dir, tmp_path, "a", f"--run.checkpoint={weights}", steps=4)) == 2
    assert "no training state" in one_line_error(capsys.readouterr().err)
    assert {str(p): p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()} == saved

    assert train.main(args(data_dir, tmp_path, "a", "--run.overwrite=true", steps=2)) == 0
    # a finished run asked to resume has nothing to do and changes nothing
    assert train.main(args(data_dir, tmp_path, "a", "--run.resume=true", steps=2)) == 0
    assert "already finished 2 steps" in capsys.readouterr().out


def test_the_closing_sample_and_the_evaluations_do_not_disturb_training(data_dir, tmp_path, capsys):
    """A run stopped at step 4, which printed a sample at its end, continues exactly like a run that never
    stopped (a constant schedule, so that the first run's shorter max_steps does not change the LR)."""
    extra = ["--optim.schedule=constant", "--optim.warmup_steps=0"]
    assert train.main(args(data_dir, tmp_path, "ref", *extra)) == 0
    first = args(data_dir, tmp_path, "run", *extra, "--eval.sample_tokens=16", "--eval.interval=1", steps=4)
    assert train.main(first) == 0
    assert "sample:" in capsys.readouterr().out
    assert train.main(args(data_dir, tmp_path, "run", *extra, "--run.resume=true")) == 0
    want = {k: v for k, v in losses(tmp_path / "ref").items() if k[1] == "train_loss" or k[0] % 4 == 0}
    assert {k: v for k, v in losses(tmp_path / "run").items() if k in want} == want
    assert_same_params(final_params(tmp_path / "run"), final_params(tmp_path / "ref"))

    from eval.run import load_run

    loaded = load_run(tmp_path / "run")
    before = torch.get_rng_state()
    train.sample_text(loaded.model, loaded.tokenizer, "The ", 8, seed=5)
    assert torch.equal(torch.get_rng_state(), before)


# --------------------------------------------------------------------------------------------
# Real processes: signals, SIGKILL, torchrun
# --------------------------------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", train.FAULT_ENV)}
    env["OMP_NUM_THREADS"] = "1"  # as in this process (see one_thread)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return {**env, **extra}


def wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 120) -> None:
    """Until rank 0 has logged ``step`` (polled: the kill lands wherever the run happens to be)."""
    metrics, deadline = run_dir / "metrics.jsonl", time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"the run ended (code {proc.returncode}) before step {step}:\n{out}")
        if metrics.exists() and any(r.get("step", 0) >= step for r in train.read_jsonl(metrics)):
            return
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"no step {step} within {timeout}s")


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


@pytest.fixture(scope="module")
def single_reference(data_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("single")
    extra = ["--train.checkpoint_interval=1", "--train.keep_checkpoints=2"]
    assert train.main(args(data_dir, root, "ref", *extra, steps=KILL_STEPS)) == 0
    return root / "ref"


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM", "SIGINT"])
def test_single_process_killed_or_preempted_resumes_exactly(sig, data_dir, single_reference, tmp_path):
    """A checkpoint every step, so a SIGKILL often lands inside a checkpoint write."""
    extra = ["--train.checkpoint_interval=1", "--train.keep_checkpoints=2"]
    run_args = args(data_dir, tmp_path, "run", *extra, steps=KILL_STEPS)
    proc = launch([sys.executable, "train.py", *run_args])
    wait_for_step(proc, tmp_path / "run", random.Random(sig).randint(3, KILL_STEPS // 4))
    os.killpg(proc.pid, getattr(signal, sig))
    out = proc.communicate(timeout=120)[0]
    if sig == "SIGKILL":
        assert proc.returncode == -signal.SIGKILL
    else:  # the step finished, a checkpoint at it, a documented exit code, and no traceback
        assert proc.returncode == train.PREEMPTED_EXIT, out
        assert f"stopped by {sig}" in out and "Traceback" not in out
        stopped_at = checkpoints.checkpoint_step(checkpoints.list_checkpoints(tmp_path / "run")[-1])
        assert max(step for step, _ in losses(tmp_path / "run")) == stopped_at
    assert train.main([*run_args, "--run.resume=true"]) == 0
    assert losses(tmp_path / "run") == losses(single_reference)
    assert_same_params(final_params(tmp_path / "run"), final_params(single_reference))


@pytest.fixture(scope="module")
def ddp(data_dir, tmp_path_factory) -> dict:
    """Every 2-process scenario, in three torchrun launches:

    1. SIGTERM to rank 1 alone mid-run: both ranks must stop after the same step, checkpoint, exit 3;
    2. SIGKILL of the launcher and its workers mid-run (a lost node);
    3. one driver launch: the 2-process reference for every optimizer, the resume of (1), an injected NaN
       and an injected desync.
    """
    root = tmp_path_factory.mktemp("ddp")
    extra = ["--train.checkpoint_interval=2", "--train.keep_checkpoints=2"]
    result: dict = {"root": root, "extra": extra}

    proc = launch(torchrun("train.py", *args(data_dir, root, "term", *extra, steps=KILL_STEPS)))
    wait_for_step(proc, root / "term", 5)
    rank1 = [pid for pid in worker_pids(proc.pid) if environ(pid).get("RANK") == "1"]
    assert len(rank1) == 1
    os.kill(rank1[0], signal.SIGTERM)
    result["term_out"] = proc.communicate(timeout=120)[0]
    result["term_ckpt"] = checkpoints.checkpoint_step(checkpoints.list_checkpoints(root / "term")[-1])
    result["term_steps"] = max(step for step, _ in losses(root / "term"))

    proc = launch(torchrun("train.py", *args(data_dir, root, "kill", *extra, steps=KILL_STEPS)))
    wait_for_step(proc, root / "kill", random.Random(0).randint(3, KILL_STEPS // 4))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)

    plan = {}
    for name in [n for n in optim.names() if not missing_module(n)]:
        plan[f"ref-{name}"] = {
            "argv": args(data_dir, root, f"ref-{name}", f"--optim.name={name}", *extra, steps=KILL_STEPS)
        }
    plan["term-resume"] = {"argv": [*args(data_dir, root, "term", *extra, steps=KILL_STEPS), "--run.resume=true"]}
    plan["nan-stop"] = {"argv": args(data_dir, root, "nan-stop", *extra), "fault": "nan@3"}
    plan["desync"] = {"argv": args(data_dir, root, "desync", *extra), "fault": "desync@2"}
    (root / "plan.json").write_text(json.dumps(plan))
    out = subprocess.run(
        torchrun(str(DRIVER), str(root / "plan.json"), str(root)),
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    result["codes"] = [json.loads((root / f"codes_rank{r}.json").read_text()) for r in (0, 1)]
    result["driver_out"] = out.stdout + out.stderr
    return result


def worker_pids(launcher: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == launcher:
            pids.append(int(stat.parent.name))
    return pids


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


@pytest.mark.parametrize("opt", optim.names())
def test_two_processes_match_one_process_with_accumulation_two(opt, ddp, data_dir, tmp_path):
    optimizer_args(opt)
    root, extra = ddp["root"], ddp["extra"]
    assert all(codes[f"ref-{opt}"] == 0 for codes in ddp["codes"]), ddp["driver_out"]
    one = args(data_dir, tmp_path, "w1", f"--optim.name={opt}", *extra, "--train.grad_accum=2", steps=KILL_STEPS)
    assert train.main(one) == 0
    assert_close_losses(losses(tmp_path / "w1"), losses(root / f"ref-{opt}"), atol=1e-5)
    assert_same_params(final_params(tmp_path / "w1"), final_params(root / f"ref-{opt}"), atol=1e-5)


def test_accelerate_launch_trains_like_torchrun(ddp, data_dir, tmp_path):
    """accelerate's multi-GPU launcher runs torchrun underneath; on CPUs the trainer takes gloo as it does."""
    if importlib.util.find_spec("accelerate") is None:
        pytest.skip("accelerate is not installed (pip install accelerate)")
    launcher = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu"]
    launcher += ["--num_processes=2", "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no", "train.py"]
    cmd = [*launcher, *args(data_dir, tmp_path, "accel", *ddp["extra"], steps=KILL_STEPS)]
    out = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "2 process(es) on cpu" in out.stdout, out.stdout + out.stderr
    assert losses(tmp_path / "accel") == losses(ddp["root"] / "ref-adamw")


def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step_and_resumes_exactly(ddp):
    root = ddp["root"]
    assert ddp["term_ckpt"] == ddp["term_steps"], ddp["term_out"]  # the checkpoint is at the last logged step
    # rank 0 (the one that prints) stopped because rank 1 was signalled
    assert f"stopped by a signal on another rank after step {ddp['term_ckpt']}" in ddp["term_out"]
    # torchrun's failure report lists each rank's exit code
    codes = dict(re.findall(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s*exitcode\s*:\s*(-?\d+)", ddp["term_out"]))
    assert codes == {"0": "3", "1": "3"}, ddp["term_out"]
    assert all(codes["term-resume"] == 0 for codes in ddp["codes"])
    assert losses(root / "term") == losses(root / "ref-adamw")
    assert_same_params(final_params(root / "term"), final_params(root / "ref-adamw"))


def test_sigkilled_two_process_run_resumes_in_one_process_with_accumulation_two(ddp, data_dir, tmp_path):
    root, extra = ddp["root"], ddp["extra"]
    run_args = args(data_dir, root, "kill", *extra, "--train.grad_accum=2", "--run.resume=true", steps=KILL_STEPS)
    assert train.main(run_args) == 0
    assert_close_losses(losses(root / "kill"), losses(root / "ref-adamw"), atol=1e-5)
    assert_same_params(final_params(root / "kill"), final_params(root / "ref-adamw"), atol=1e-5)


def test_nan_on_one_rank_stops_every_rank_and_a_desync_is_caught(ddp):
    root = ddp["root"]
    assert [codes["nan-stop"] for codes in ddp["codes"]] == [train.NONFINITE_EXIT] * 2
    assert [checkpoints.checkpoint_step(p) for p in checkpoints.list_checkpoints(root / "nan-stop")] == [2]
    checkpoints.load_checkpoint(checkpoints.checkpoint_path(root / "nan-stop", 2))  # verifies its sha256
    assert [codes["desync"] for codes in ddp["codes"]] == [train.DESYNC_EXIT] * 2
    assert "parameters differ across ranks after step 2" in ddp["driver_out"]
