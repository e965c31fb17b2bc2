"""The run report: table and plots from two tiny runs (same optimizer and mode, two seeds)."""

import json
import shutil

import numpy as np
import pytest

import train
from eval import logic, report

from helpers import QUIET, TINY_GPT

TINY = [
    *TINY_GPT,
    *QUIET,
    "--train.batch_size=4",
    "--train.max_steps=4",
    "--train.log_interval=2",
    "--eval.interval=2",
    "--eval.tokens=1024",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for seed in (1, 2):
        assert train.main([f"--run.dir={root}", f"--run.name=s{seed}", f"--run.seed={seed}", *TINY]) == 0
    return [root / "s1", root / "s2"]


def summary(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_report_table_and_plots(runs, tmp_path):
    assert logic.main([str(runs[0]), "--n", "2", "--device", "cpu"]) == 0  # writes s1/logic.json
    path = report.build_report(runs, tmp_path / "rep")
    md = path.read_text()
    rows = [line for line in md.splitlines() if line.startswith("| adamw")]
    assert len(rows) == 2 and "| s1 |" in rows[0] and "| s2 |" in rows[1]
    finals = [summary(r)["final_val_loss"] for r in runs]
    assert f"{finals[0]:.4f}" in rows[0] and f"{finals[1]:.4f}" in rows[1]
    top1 = json.loads((runs[0] / "logic.json").read_text())["summary"]["logic_top1"]
    assert f"| {top1:.3f} |" in rows[0] and "| – | – |" in rows[1]  # s2 has no logic.json
    mean_row = next(line for line in md.splitlines() if "mean ± std (n=2)" in line)
    want = f"{np.mean(finals):.4f} ± {np.std(finals, ddof=1):.4f}"
    assert want in mean_row
    for png in ("val_loss.png", "logic.png"):
        data = (tmp_path / "rep" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        assert f"]({png})" in md


def test_an_unfinished_run_reads_its_metrics(runs, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(runs[1], partial)
    (partial / "summary.json").unlink()
    rec = report.read_run(partial)
    vals = [json.loads(x)["val_loss"] for x in (partial / "metrics.jsonl").read_text().splitlines() if "val_loss" in x]
    assert rec.final_val == vals[-1] and rec.best_val == min(vals) and len(rec.curve) == len(vals) == 3
    assert rec.wall_s is None and rec.tokens == summary(runs[1])["tokens"]


def test_report_cli_errors_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert report.main([str(tmp_path), "--out", str(tmp_path / "rep")]) == 2
    assert "no config.toml" in capsys.readouterr().err
