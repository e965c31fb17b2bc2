"""The grid tool on tiny grids: the table, the effects and the plots; skipping, resuming; the cluster scripts."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from eval import grid
from eval.report import t_quantile

from helpers import CONFIGS, ROOT, TINY_GPT, child_env, one_line_error

T975_DF1 = 12.706204736174707  # Student's t, 97.5% quantile, one degree of freedom (tables)


def tiny(data_dir, *extra: str) -> list[str]:
    """configs/grid/cpu.toml shrunk to a few milliseconds a step on the synthetic shards."""
    return [
        f"--data.path={data_dir}",
        *TINY_GPT,
        "--train.batch_size=4",
        "--train.max_steps=4",
        "--eval.interval=2",
        "--eval.tokens=1024",
        *extra,
    ]


def grid_args(out, optimizers: str, modes: str, seeds: str, *rest: str) -> list[str]:
    cpu = str(CONFIGS / "grid" / "cpu.toml")
    return [cpu, f"--optimizers={optimizers}", f"--modes={modes}", f"--seeds={seeds}", "--out", str(out), *rest]


@pytest.fixture(scope="module")
def small_grid(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("grid")
    argv = grid_args(out, "adamw,sgdm", "symmetric,bqbv", "0,1", "--jobs", "2", "--logic_n", "0", *tiny(data_dir))
    assert grid.main(argv) == 0
    return out, argv


def summary(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_a_tiny_grid_writes_every_cell_the_table_the_effects_and_the_plots(small_grid):
    out, _ = small_grid
    names = sorted(p.name for p in (out / "runs").iterdir())
    assert names == sorted(f"{o}-{m}-s{s}" for o in ("adamw", "sgdm") for m in ("symmetric", "bqbv") for s in (0, 1))
    assert all(summary(out / "runs" / name)["completed"] for name in names)
    md = (out / "report.md").read_text()
    table = [line.split(" | ") for line in md.splitlines() if line.startswith("| ")]
    rows = {cols[0][2:]: " | ".join(cols) for cols in table if cols[1] == "0,1"}  # the cells: label, seeds, ...
    assert set(rows) == {"adamw · symmetric", "adamw · bqbv", "sgdm · symmetric", "sgdm · bqbv"}
    finals = [summary(out / "runs" / f"adamw-bqbv-s{s}")["final_val_loss"] for s in (0, 1)]
    mean, half = np.mean(finals), T975_DF1 * np.std(finals, ddof=1) / math.sqrt(2)
    assert f"{mean:.4f} [{mean - half:.4f}, {mean + half:.4f}]" in rows["adamw · bqbv"]
    effects = json.loads((out / "report.json").read_text())["effects"]
    assert [(e["cell"], e["vs"]) for e in effects] == [
        ("adamw · bqbv", "adamw · symmetric"),
        ("sgdm · bqbv", "sgdm · symmetric"),
    ]
    for e in effects:  # the mean of the per-seed differences: the same seed, the same init and data order
        opt = e["cell"].split(" · ")[0]
        diffs = [
            summary(out / "runs" / f"{opt}-bqbv-s{s}")["final_val_loss"]
            - summary(out / "runs" / f"{opt}-symmetric-s{s}")["final_val_loss"]
            for s in (0, 1)
        ]
        half = T975_DF1 * np.std(diffs, ddof=1) / math.sqrt(2)
        got = e["final_val_loss"]
        assert got["n"] == 2 and got["mean"] == pytest.approx(np.mean(diffs), abs=1e-12)
        assert (got["lo"], got["hi"]) == pytest.approx((np.mean(diffs) - half, np.mean(diffs) + half), abs=1e-9)
    for png in ("val_loss.png", "effects.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        assert f"]({png})" in md


def test_a_rerun_skips_finished_cells_and_a_changed_setting_is_refused(small_grid, capsys):
    out, argv = small_grid
    logs = {p.name: p.read_text() for p in (out / "logs").iterdir()}
    assert grid.main(argv) == 0
    assert "8 cells, 8 already done, 0 to run" in capsys.readouterr().out
    assert {p.name: p.read_text() for p in (out / "logs").iterdir()} == logs  # nothing ran again
    assert grid.main([*argv, "--train.max_steps=5"]) == 2
    err = one_line_error(capsys.readouterr().err)
    assert "ran with train.max_steps = 4, this grid asks for 5; use another --out" in err


def test_a_killed_grid_resumes_without_redoing_finished_cells(tmp_path, data_dir, capsys):
    argv = grid_args(tmp_path, "adamw", "symmetric", "0,1")
    argv += tiny(data_dir, "--train.max_steps=200", "--train.checkpoint_interval=10", "--eval.interval=0")
    cmd = [sys.executable, "-m", "eval.grid", *argv, "--logic_n", "0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, start_new_session=True)
    second = tmp_path / "runs" / "adamw-symmetric-s1"
    deadline = time.time() + 120
    while not list(second.glob("ckpt_*.json")):  # the first cell is done; the second one has a checkpoint
        assert proc.poll() is None and time.time() < deadline, "the grid ended before it could be killed"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the grid and its running cell, without a chance to clean up
    proc.wait()
    first = tmp_path / "runs" / "adamw-symmetric-s0"
    assert summary(first)["completed"] and not (second / "summary.json").exists()
    done_at = (first / "summary.json").stat().st_mtime_ns
    assert grid.main([*argv, "--logic_n", "2"]) == 0  # now with the logic suite, which neither cell has
    assert "2 cells, 0 already done, 2 to run" in capsys.readouterr().out
    assert (first / "summary.json").stat().st_mtime_ns == done_at  # trained once: only scored now
    commands = [line.split()[4] for line in (tmp_path / "logs" / "adamw-symmetric-s0.log").read_text().splitlines()
                if line.startswith("$ ")]  # fmt: skip
    assert commands == ["train", "logic"]
    log = (tmp_path / "logs" / "adamw-symmetric-s1.log").read_text()
    assert log.count(" train ") == 2 and "resuming from" in log and " logic " in log
    assert summary(second)["completed"] and summary(second)["steps"] == 200
    assert all(json.loads((r / "logic.json").read_text())["meta"]["n"] == 2 for r in (first, second))


def test_the_slurm_script_runs_a_cell_and_the_report_follows(tmp_path, data_dir, capsys):
    argv = grid_args(tmp_path, "adamw", "symmetric,bqbv", "0", "--logic_n", "2", *tiny(data_dir))
    assert grid.main([*argv, "--emit", "slurm"]) == 0
    script = tmp_path / "grid.slurm"
    assert "#SBATCH --array=0-1" in script.read_text()
    env = child_env(PYTHON=sys.executable, SLURM_ARRAY_TASK_ID="1")
    run = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert summary(tmp_path / "runs" / "adamw-bqbv-s0")["completed"]
    assert (tmp_path / "runs" / "adamw-bqbv-s0" / "logic.json").exists()
    assert not (tmp_path / "runs" / "adamw-symmetric-s0").exists()  # task 1 is the second cell only
    other = subprocess.run(["bash", str(script)], env={**env, "SLURM_ARRAY_TASK_ID": "2"}, capture_output=True)
    assert other.returncode == 2
    capsys.readouterr()
    assert grid.main([*argv, "--report_only"]) == 0
    assert "1 of 2 cells" in capsys.readouterr().out and (tmp_path / "report.md").exists()


def test_the_torchrun_script_runs_the_grid_end_to_end(tmp_path, data_dir):
    argv = grid_args(tmp_path, "sgdm", "bq", "3", "--logic_n", "0", *tiny(data_dir))
    assert grid.main([*argv, "--emit", "torchrun"]) == 0
    script = tmp_path / "grid.sh"
    env = child_env(PYTHON=sys.executable, NPROC="1")
    run = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert summary(tmp_path / "runs" / "sgdm-bq-s3")["completed"]
    assert "sgdm · bq" in (tmp_path / "report.md").read_text()


def test_t_quantile_matches_tables():
    table = {1: 12.706204736, 2: 4.302652730, 4: 2.776445105, 9: 2.262157163, 30: 2.042272456}
    for df, want in table.items():
        assert t_quantile(0.975, df) == pytest.approx(want, abs=1e-8)


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--modes=symmetric,bx"], "unknown symmetry mode 'bx' in --modes"),
        (["--optim.name=sgdm"], "--optim.name is set by the grid for each cell; use --optimizers"),
        (["--run.seed=3"], "--run.seed is set by the grid for each cell; use --seeds"),
        (["--optim.ecd.eta=5"], "sets a knob of optimizer 'ecd', which is not in --optimizers"),
        (["--seeds=0,x"], "--seeds must be comma-separated integers"),
        (["--optimizers=adamw,adam"], "unknown optimizer 'adam'"),
        (["--train.max_stepz=3"], "unknown config key 'train.max_stepz'"),
    ],
)
def test_user_errors_are_one_line(tmp_path, capsys, extra, needle):
    argv = grid_args(tmp_path, "adamw", "symmetric", "0")
    flags = {a.split("=")[0] for a in extra}
    argv = [a for a in argv if a.split("=")[0] not in flags] + extra
    assert grid.main(argv) == 2
    assert needle in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()  # checked before anything ran
