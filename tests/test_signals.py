"""Single processes killed (SIGKILL) or preempted (SIGTERM, SIGINT) resume exactly; a distributed
process's exit keeps its code and output."""

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import checkpoints
import train
from trainer import PREEMPTED_EXIT

from helpers import KILL_STEPS, ROOT, args, assert_same_params, child_env, final_params, launch, losses, wait_for_step

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_distributed_process_exits_with_its_code_and_its_output_flushed():
    """exit_process skips interpreter finalization after a distributed run: nothing printed may be lost."""
    code = "import sys, trainer; print('last', end=''); "
    code += "print('words', end='', file=sys.stderr); trainer.exit_process(5)"
    env = child_env(WORLD_SIZE="2")  # one rank of a launch
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert (out.returncode, out.stdout, out.stderr) == (5, "last", "words")


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
        assert proc.returncode == PREEMPTED_EXIT, out
        assert f"stopped by {sig}" in out and "Traceback" not in out
        stopped_at = checkpoints.checkpoint_step(checkpoints.list_checkpoints(tmp_path / "run")[-1])
        assert max(step for step, _ in losses(tmp_path / "run")) == stopped_at
    assert train.main([*run_args, "--run.resume=true"]) == 0
    assert losses(tmp_path / "run") == losses(single_reference)
    assert_same_params(final_params(tmp_path / "run"), final_params(single_reference))
