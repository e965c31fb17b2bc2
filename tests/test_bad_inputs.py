"""Every bad input a user can give is one `error:` line naming the problem and the fix, a non-zero exit,
no traceback, and leaves every file that existed before byte-identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import train
from eval import hf, sample

from helpers import CONFIGS, QUIET, ROOT, args, child_env, one_line_error, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory) -> Path:
    """A finished tiny run that every bad command below must leave alone."""
    root = tmp_path_factory.mktemp("runs")
    assert train.main(args(data_dir, root, "done", steps=2)) == 0
    return root


BAD_TRAIN = [
    (["--train.batch_size=0"], "train.batch_size must be >= 1"),
    (["--optim.lr=nan"], "optim.lr must be >= 0, got nan"),
    (["--optim.lr=-1"], "optim.lr must be >= 0"),
    (["--model.n_layer=0"], "model.n_layer must be >= 1"),
    (["--model.block_size=0"], "model.block_size must be >= 1"),
    (["--model.dropout=1.5"], "model.dropout must be in [0, 1)"),
    (["--optim.adamw.betas=[0.9]"], "optim.adamw.betas must be two numbers"),
    (["--train.log_interval=0"], "train.log_interval must be >= 1"),
    (["--train.max_steps=-1"], "train.max_steps must be >= 1"),
    (["--train.max_tokens=-5"], "train.max_tokens must be >= 0"),
    (["--eval.interval=-5"], "eval.interval must be >= 0"),
    (["--run.threads=-1"], "run.threads must be >= 0"),
    (["--run.name="], "run.name must name a folder"),
    (["--run.name=../elsewhere"], "run.name must name a folder"),
    (["--train.grad_accum=0"], "train.grad_accum must be >= 1"),
    (["--optim.schedule=warmup"], "unknown optim.schedule 'warmup'"),
    (["--run.device=gpu"], "unknown run.device 'gpu'"),
    (["--train.max_steps=5", "--train.max_tokens=100"], "sets both train.max_steps and train.max_tokens"),
    (["--optim.learning_rate=0.1"], "did you mean 'optim.lr'"),
    (["--optim.optimizer=sgdm"], "did you mean 'optim.name'"),
    (["--model.context_length=64"], "did you mean 'model.block_size'"),
    (["--run.dir=/proc/nope"], "cannot create run dir"),
    (["--run.init_from=/no/such/ckpt.pt"], "not found"),
]


@pytest.mark.parametrize("extra,needle", BAD_TRAIN, ids=[" ".join(e) for e, _ in BAD_TRAIN])
def test_bad_training_input_is_one_line_and_changes_nothing(extra, needle, data_dir, finished, capsys):
    before = snapshot(finished)
    base = args(data_dir, finished, "new", steps=2)
    if "--train.max_tokens=-5" in extra:  # alone: with a max_steps beside it the pair is the first mistake
        base = [a for a in base if not a.startswith("--train.max_steps")]
    assert train.main([*base, *extra]) == 2
    assert needle in one_line_error(capsys.readouterr().err)
    assert snapshot(finished) == before
    assert not (finished / "new").exists()  # a failed start leaves no run dir behind


def test_a_run_dir_that_is_a_file_is_refused(data_dir, tmp_path, capsys):
    (tmp_path / "taken").write_text("mine")
    assert train.main(args(data_dir, tmp_path, "taken", steps=2)) == 2
    assert "is a file" in one_line_error(capsys.readouterr().err)
    assert (tmp_path / "taken").read_text() == "mine"


def test_a_failed_start_leaves_nothing_that_blocks_the_retry(data_dir, tmp_path, capsys):
    """A start that fails its checks writes nothing, so the same command with the mistake fixed runs."""
    assert train.main(args(data_dir, tmp_path, "r", "--optim.schedule=nope", steps=2)) == 2
    capsys.readouterr()
    assert not (tmp_path / "r").exists()
    assert train.main(args(data_dir, tmp_path, "r", steps=2)) == 0


@pytest.mark.parametrize(
    "text,needle",
    [
        ('inherit = "self.toml"\n', "inherits it back"),
        ("inherit = 5\n", "inherit must be the path of another config file"),
        ('inherit = "other.toml"\n', "inherits it back"),
    ],
)
def test_config_inheritance_mistakes(text, needle, tmp_path, capsys):
    (tmp_path / "self.toml").write_text(text)
    (tmp_path / "other.toml").write_text('inherit = "self.toml"\n')
    assert train.main([str(tmp_path / "self.toml"), f"--run.dir={tmp_path}"]) == 2
    assert needle in one_line_error(capsys.readouterr().err)


def test_the_command_line_wins_over_the_files_length_of_run():
    from configs import load_config

    paper = load_config(CONFIGS / "paper/prelu.toml", ["--train.max_steps=2"])
    assert (paper.train.max_steps, paper.train.max_tokens) == (2, 0)
    assert load_config(CONFIGS / "paper/prelu.toml").train.max_tokens == 500_000_000


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--top_k", "-5"], "argument --top_k/--top-k: must be >= 0, got -5"),  # every integer flag
        (["--temperature", "-1"], "--top_k and --temperature >= 0"),
        (["--tokens", "0"], "--tokens and --samples must be >= 1"),
    ],
)
def test_bad_sampling_flags(flags, needle, finished, capsys):
    assert sample.main([str(finished / "done"), *flags, "--device", "cpu"]) == 2
    assert needle in one_line_error(capsys.readouterr().err)


def test_import_refuses_a_file_without_reading_it(tmp_path, capsys):
    bait = tmp_path / "model.bin"
    bait.write_bytes(b"not a checkpoint")
    assert hf.main(["import", str(bait), str(tmp_path / "run")]) == 2
    assert "is a file; pass a folder written by save_pretrained" in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_export_refuses_an_occupied_folder_and_the_run_dir_itself(finished, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"mine": true}')
    before = snapshot(finished, mine)
    assert hf.main(["export", str(finished / "done"), str(mine)]) == 2
    assert "not an empty folder" in one_line_error(capsys.readouterr().err)
    assert hf.main(["export", str(finished / "done"), str(finished / "done")]) == 2
    assert "inside the run dir" in one_line_error(capsys.readouterr().err)
    assert snapshot(finished, mine) == before
    assert hf.main(["export", str(finished / "done"), str(mine), "--overwrite"]) == 0
    assert json.loads((mine / "config.json").read_text()).get("mine") is None


# ------------------------------------------------------------------------------------ one owner


def test_a_live_run_owns_its_run_dir_and_a_dead_ones_lock_is_taken_over(data_dir, tmp_path, capsys):
    from trainer.rundir import LOCK, process_start

    run_dir = tmp_path / "owned"
    assert train.main(args(data_dir, tmp_path, "owned", steps=2)) == 0
    assert not (run_dir / LOCK).exists()  # released at the end
    capsys.readouterr()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = {"host": os.uname().nodename, "pid": sleeper.pid, "started": process_start(sleeper.pid)}
        (run_dir / LOCK).write_text(json.dumps({**owner, "since": "now"}))
        before = snapshot(run_dir)
        assert train.main(args(data_dir, tmp_path, "owned", "--run.resume=true", steps=4)) == 2
        assert f"is in use by pid {sleeper.pid}" in one_line_error(capsys.readouterr().err)
        assert snapshot(run_dir) == before
    finally:
        sleeper.kill()
        sleeper.wait()
    assert train.main(args(data_dir, tmp_path, "owned", "--run.resume=true", steps=4)) == 0  # the owner is gone
    assert "was left by a run that is gone" in capsys.readouterr().out
    assert not (run_dir / LOCK).exists()


def test_two_runs_started_together_into_one_run_dir_do_not_both_run(data_dir, tmp_path):
    """Two processes race for one run dir: exactly one trains it, the other says so in one line."""
    argv = [sys.executable, "train.py", *args(data_dir, tmp_path, "race", steps=30)]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    procs = [subprocess.Popen(argv, cwd=ROOT, env=child_env(), **pipes) for _ in (0, 1)]
    results = [(p.returncode, p.communicate(timeout=300)[1]) for p in procs]
    results = [(p.returncode, err) for p, (_, err) in zip(procs, results)]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    err = next(err for code, err in results if code == 2)
    assert "in use by" in one_line_error(err) or "already holds a run" in one_line_error(err)


# ------------------------------------------------------------------------------------ config.toml


@pytest.mark.parametrize("prompt", ['Q: what?\nA:', 'tab\there "quoted" \\back', "ünïcode ∑ \x01 \x7f", ""])
def test_the_resolved_config_is_valid_toml_for_any_string(prompt, data_dir, tmp_path):
    from configs import load_config, to_dict

    assert train.main([*args(data_dir, tmp_path, "s", steps=1), f"--eval.sample_prompt={prompt}"]) == 0
    again = load_config(tmp_path / "s" / "config.toml")
    assert again.eval.sample_prompt == prompt
    assert to_dict(again)["eval"] == to_dict(load_config(tmp_path / "s" / "config.toml"))["eval"]


def test_a_run_reruns_from_its_own_config(data_dir, tmp_path):
    assert train.main([*args(data_dir, tmp_path, "a", steps=2), "--eval.sample_prompt=Q:\n"]) == 0
    again = [str(tmp_path / "a" / "config.toml"), "--run.name=b", *QUIET]
    assert train.main(again) == 0
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["steps"] == 2
