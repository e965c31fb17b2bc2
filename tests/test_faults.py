"""Non-finite losses stop or skip without harming a checkpoint; fewer host syncs change nothing else."""

import json

import numpy as np
import pytest

import checkpoints
import optim
import train
from trainer import CHECKS_FAILED_EXIT, NONFINITE_EXIT, read_jsonl

from helpers import CONFIGS, Fault, args, assert_same_params, final_params, losses, one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("opt", optim.names())
def test_nonfinite_loss_stops_or_skips_and_never_overwrites_a_good_checkpoint(opt, data_dir, tmp_path, capsys):
    extra = [f"--optim.name={opt}", "--train.checkpoint_interval=2", "--train.keep_checkpoints=0"]
    assert train.main(args(data_dir, tmp_path, "ref", *extra)) == 0
    capsys.readouterr()

    assert train.main(args(data_dir, tmp_path, "stop", *extra), hooks=[Fault("nan@5")]) == NONFINITE_EXIT
    line = one_line_error(capsys.readouterr().err)
    assert "non-finite loss nan at step 5" in line and "ckpt_00000004.pt" in line
    run = tmp_path / "stop"
    assert [checkpoints.checkpoint_step(p) for p in checkpoints.list_checkpoints(run)] == [2, 4]
    assert_same_params(
        checkpoints.load_checkpoint(checkpoints.checkpoint_path(run, 4))["model"],
        checkpoints.load_checkpoint(checkpoints.checkpoint_path(tmp_path / "ref", 4))["model"],
    )
    assert max(step for step, _ in losses(run)) == 4
    assert train.main(args(data_dir, tmp_path, "stop", *extra, "--run.resume=true")) == 0
    assert losses(run) == losses(tmp_path / "ref")

    skip = [*extra, "--train.on_nonfinite=skip", "--train.max_skips=1"]
    assert train.main(args(data_dir, tmp_path, "skip", *skip), hooks=[Fault("nan@3")]) == 0
    assert "step skipped (1/1)" in capsys.readouterr().out
    records = read_jsonl(tmp_path / "skip" / "metrics.jsonl")
    assert [r["step"] for r in records if "skipped" in r] == [3]
    assert all(np.isfinite(r["train_loss"]) for r in records if "train_loss" in r)
    assert json.loads((tmp_path / "skip" / "summary.json").read_text())["skipped_steps"] == 1
    noskip = [*extra, "--train.on_nonfinite=skip", "--train.max_skips=0"]
    assert train.main(args(data_dir, tmp_path, "noskip", *noskip), hooks=[Fault("nan@3")]) == NONFINITE_EXIT


@pytest.mark.parametrize("opt", optim.names())
def test_fewer_host_syncs_change_nothing_but_the_syncs(opt, data_dir, tmp_path):
    """train.sync_interval > 1 skips the per-step checks, not the per-step loss an optimizer may need."""
    extra = [f"--optim.name={opt}", "--train.log_interval=4"]
    assert train.main(args(data_dir, tmp_path, "every", *extra)) == 0
    assert train.main(args(data_dir, tmp_path, "fewer", *extra, "--train.sync_interval=3")) == 0
    assert losses(tmp_path / "fewer") == losses(tmp_path / "every")
    assert_same_params(final_params(tmp_path / "fewer"), final_params(tmp_path / "every"))


def test_a_failed_theory_check_prints_fail_and_exits_with_its_own_code(tmp_path, capsys):
    """20 steps from small init learn nothing: the staircase checks must fail, and the exit code say so."""
    argv = [str(CONFIGS / "small_tasks/group_composition.toml"), f"--run.dir={tmp_path}", "--run.name=short"]
    argv += ["--task.group=C5", "--task.powers=[]", "--task.width=8", "--train.max_steps=20", "--train.progress=false"]
    assert train.main(argv) == CHECKS_FAILED_EXIT
    captured = capsys.readouterr()
    assert "check reaches_zero_loss: FAIL" in captured.out
    assert "check(s) failed" in one_line_error(captured.err)


def test_steps_the_optimizer_declines_are_reported_with_their_step_and_counted(data_dir, tmp_path, capsys):
    """ECD with on_low_loss=skip below F0: every step is declined; each warning names its own step and the
    summary counts them all (the run completes, having moved nothing)."""
    ecd = ["--optim.name=ecd", "--optim.ecd.f0=100", "--optim.ecd.on_low_loss=skip", "--train.log_interval=1"]
    assert train.main(args(data_dir, tmp_path, "declined", *ecd, steps=4)) == 0
    out = capsys.readouterr().out
    assert [f"warning: step {n} skipped ({n} so far)" in out for n in (1, 2, 3, 4)] == [True] * 4
    summary = json.loads((tmp_path / "declined" / "summary.json").read_text())
    assert summary["skipped_steps"] == 4 and summary["completed"] is True
    skipped = [r["step"] for r in read_jsonl(tmp_path / "declined" / "metrics.jsonl") if "skipped" in r]
    assert skipped == [1, 2, 3, 4]
