"""Two processes under torchrun (gloo): world-size invariance for every optimizer, accelerate's launcher,
a SIGTERM to one rank, a SIGKILL of the whole launch, and faults on one rank.

Process launches are the expensive part (torch's import, the launcher's start-up), so they are few:
two torchrun launches that get killed, then one driver launch that runs every 2-process scenario.
"""

import importlib.util
import json
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import checkpoints
import optim
import train
from trainer import DESYNC_EXIT, NONFINITE_EXIT

from helpers import (
    DRIVER,
    KILL_STEPS,
    ROOT,
    args,
    assert_close_losses,
    assert_same_params,
    child_env,
    final_params,
    launch,
    losses,
    torchrun,
    wait_for_step,
)

pytestmark = pytest.mark.usefixtures("one_thread")


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
    for name in optim.names():
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
    assert [codes["nan-stop"] for codes in ddp["codes"]] == [NONFINITE_EXIT] * 2
    assert [checkpoints.checkpoint_step(p) for p in checkpoints.list_checkpoints(root / "nan-stop")] == [2]
    checkpoints.load_checkpoint(checkpoints.checkpoint_path(root / "nan-stop", 2))  # verifies its sha256
    assert [codes["desync"] for codes in ddp["codes"]] == [DESYNC_EXIT] * 2
    assert "parameters differ across ranks after step 2" in ddp["driver_out"]
