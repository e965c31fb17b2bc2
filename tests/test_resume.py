"""Resuming a run: exact continuation for every optimizer, damaged checkpoints, refused changes, and the
evaluations and closing sample leaving the training streams alone."""

import json
import shutil

import pytest
import torch

import checkpoints
import configs
import optim
import train
from eval.run import load_run
from eval.sample import sample_text

from helpers import args, assert_same_params, corrupt, final_params, losses, one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("opt", optim.names())
def test_resume_is_exact_and_damaged_checkpoints_fall_back(opt, data_dir, tmp_path, capsys):
    extra = [f"--optim.name={opt}", "--train.checkpoint_interval=2", "--train.keep_checkpoints=3"]
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


def test_user_errors_are_one_line_and_keep_the_run(data_dir, tmp_path, capsys):
    assert train.main(args(data_dir, tmp_path, "a", steps=2)) == 0
    capsys.readouterr()
    saved = {str(p): p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}

    assert train.main(args(data_dir, tmp_path, "a", steps=2)) == 2
    assert "already holds a run" in one_line_error(capsys.readouterr().err)
    changed = ["--run.resume=true", "--optim.lr=0.1", "--model.n_embd=64", "--train.grad_accum=2"]
    assert train.main(args(data_dir, tmp_path, "a", *changed, steps=4)) == 2
    line = one_line_error(capsys.readouterr().err)
    lr = optim.settings(configs.load_config().optim).lr  # the run kept the default config's learning rate
    assert f"optim.adamw.lr: {lr} -> 0.1" in line and "model.n_embd: 32 -> 64" in line
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


    loaded = load_run(tmp_path / "run")
    before = torch.get_rng_state()
    sample_text(loaded.model, loaded.tokenizer, "The ", 8, seed=5)
    assert torch.equal(torch.get_rng_state(), before)


def test_a_checkpoint_whose_biases_were_drawn_another_way_is_refused(data_dir, tmp_path, capsys):
    """A resume replays the bias draws of the steps to come; a checkpoint that records another draw
    function (or none: those written before the record) cannot continue exactly, so it is refused."""
    extra = ["--symmetry.mode=bqbv"]
    assert train.main(args(data_dir, tmp_path, "a", *extra, steps=2)) == 0
    path = checkpoints.list_checkpoints(tmp_path / "a")[-1]
    state = torch.load(path, weights_only=True)
    del state["task"]
    torch.save(state, path)
    checkpoints.sidecar(path).write_text(json.dumps({"step": 2, "sha256": checkpoints.sha256_file(path)}))
    capsys.readouterr()
    assert train.main(args(data_dir, tmp_path, "a", *extra, "--run.resume=true", steps=4)) == 2
    assert "--run.init_from" in one_line_error(capsys.readouterr().err)
    assert train.main(args(data_dir, tmp_path, "b", *extra, f"--run.init_from={path}", steps=2)) == 0
