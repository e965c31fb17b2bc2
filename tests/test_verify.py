"""eval.verify: pass rates over run and data seeds, for any small task; bad input is one line."""

import json

import pytest

import symbreak
from eval import verify

TINY = ["--task.group=C5", "--task.powers=[]", "--task.width=20", "--train.max_steps=150"]


def test_verify_counts_each_check_over_run_and_data_seeds(tmp_path, capsys):
    out = tmp_path / "rates.json"
    code = verify.main(["configs/small_tasks/group_composition.toml", "--seeds", "2", "--out", str(out), "--", *TINY])
    text = capsys.readouterr().out
    assert code == 0
    rates = json.loads(out.read_text())
    assert rates["data_seed_key"] == "template_seed"
    # run seeds 0, 1 at template seed 0, and template seeds 0, 1 at run seed 0: three distinct runs
    assert sorted((r["run_seed"], r["data_seed"]) for r in rates["runs"]) == [(0, 0), (0, 1), (1, 0)]
    # 150 steps: too few for the staircase, so the level and zero-loss checks fail every run
    assert "plateau_levels" in text and "0/2" in text
    assert all(not r["checks"]["reaches_zero_loss"]["passed"] for r in rates["runs"])
    assert "failed" in text and "run.seed=1 template_seed=0" in text


def test_verify_runs_any_small_task_through_symbreak(capsys):
    argv = ["verify", "configs/small_tasks/diagonal_linear.toml", "--seeds", "1", "--", "--train.max_steps=50"]
    assert symbreak.main(argv) == 0
    assert "data_seed seeds" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nope.toml"], "not found"),
        (["configs/small_tasks/group_composition.toml", "--seeds", "0"], "must be >= 1"),
        (["configs/quickstart.toml", "--seeds", "1"], "not a small task"),
        (["configs/small_tasks/group_composition.toml", "--", "--task.widht=3"], "did you mean"),
    ],
)
def test_verify_bad_input_is_one_line(argv, message, capsys):
    assert verify.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
