"""The run report: cells of seeds with t intervals, the paired effect of symmetry breaking, and cells made
by whatever differs between runs; on real tiny runs and on run dirs written by hand with known losses."""

import json
import math
import shutil

import numpy as np
import pytest

import optim
import train
from configs import load_config, to_dict, to_toml
from eval import logic, report

from helpers import BYTE_QUICKSTART, QUIET, TINY_GPT

TINY = [
    *TINY_GPT,
    *QUIET,
    "--train.batch_size=4",
    "--train.max_steps=4",
    "--train.log_interval=2",
    "--eval.interval=2",
    "--eval.tokens=1024",
]
T975 = {1: 12.706204736, 2: 4.302652730}  # Student's t, 97.5% quantiles (tables)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for seed in (1, 2):
        argv = [BYTE_QUICKSTART, f"--run.dir={root}", f"--run.name=s{seed}", f"--run.seed={seed}", *TINY]
        assert train.main(argv) == 0
    return [root / "s1", root / "s2"]


def summary(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_report_table_and_plots(runs, tmp_path):
    assert logic.main([str(runs[0]), "--n", "2", "--device", "cpu"]) == 0  # writes s1/logic.json
    path = report.build_report(runs, tmp_path / "rep")
    md = path.read_text()
    cell = next(line for line in md.splitlines() if line.startswith("| adamw · bqbv | 1,2 |"))
    finals = [summary(r)["final_val_loss"] for r in runs]
    mean, half = np.mean(finals), T975[1] * np.std(finals, ddof=1) / math.sqrt(2)
    assert f"| {mean:.4f} [{mean - half:.4f}, {mean + half:.4f}] |" in cell
    top1 = json.loads((runs[0] / "logic.json").read_text())["summary"]["logic_top1"]
    assert f"| {top1:.3f} |" in cell  # one run with a logic.json: its value, no interval
    rows = [line for line in md.splitlines() if line.startswith("| adamw · bqbv | 1 | s1 |")]
    assert len(rows) == 1 and f"{finals[0]:.4f}" in rows[0]
    for png in ("val_loss.png", "logic.png"):
        data = (tmp_path / "rep" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        assert f"]({png})" in md
    assert not (tmp_path / "rep" / "effects.png").exists()  # one mode: nothing to compare


def test_an_unfinished_run_reads_its_metrics(runs, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(runs[1], partial)
    (partial / "summary.json").unlink()
    rec = report.read_run(partial)
    vals = [json.loads(x)["val_loss"] for x in (partial / "metrics.jsonl").read_text().splitlines() if "val_loss" in x]
    assert rec.final_val == vals[-1] and rec.best_val == min(vals) and len(rec.curve) == len(vals) == 3
    assert rec.wall_s is None and rec.tokens == summary(runs[1])["tokens"]


def fake_run(root, name: str, final: float, *overrides: str):
    """A run dir as the trainer leaves it (config.toml, metrics.jsonl, summary.json), with a chosen loss."""
    cfg = optim.resolve(load_config(None, [f"--run.name={name}", *overrides]))
    run = root / name
    run.mkdir()
    (run / "config.toml").write_text(to_toml(to_dict(cfg)))
    curve = [(0, 5.5), (1000, final + 0.2), (2000, final)]
    lines = [json.dumps({"step": t // 1000, "tokens": t, "val_loss": v}) + "\n" for t, v in curve]
    (run / "metrics.jsonl").write_text("".join(lines))
    (run / "summary.json").write_text(json.dumps({"final_val_loss": final, "best_val_loss": final, "completed": True}))
    return run


def test_cells_follow_what_differs_and_the_effect_is_paired_by_seed(tmp_path):
    losses = {"symmetric": (3.0, 3.1, 3.2), "bq": (2.9, 3.05, 3.1)}
    dirs = [
        fake_run(tmp_path, f"{opt}-{mode}-s{seed}", losses[mode][seed] + (0.5 if opt == "sgdm" else 0.0),
                 f"--optim.name={opt}", f"--symmetry.mode={mode}", f"--run.seed={seed}")  # fmt: skip
        for opt in ("adamw", "sgdm")
        for mode in losses
        for seed in range(3)
    ]
    dirs.append(fake_run(tmp_path, "wide", 2.5, "--optim.name=adamw", "--symmetry.mode=bq", "--model.n_embd=256"))
    groups = report.cells([report.read_run(d) for d in dirs])
    labels = [c.label for c in groups]
    # optimizers carry different tables, which name no cell; the one wider model is a cell of its own
    assert labels == [
        "adamw · symmetric · model.n_embd=128",
        "adamw · bq · model.n_embd=128",
        "adamw · bq · model.n_embd=256",
        "sgdm · symmetric · model.n_embd=128",
        "sgdm · bq · model.n_embd=128",
    ]
    found = report.effects(groups)
    assert [(e.cell.label, e.baseline.label) for e in found] == [(labels[1], labels[0]), (labels[4], labels[3])]
    diffs = np.array(losses["bq"]) - np.array(losses["symmetric"])
    half = T975[2] * diffs.std(ddof=1) / math.sqrt(3)
    for e in found:
        assert e.seeds == [0, 1, 2] and e.final.n == 3
        want = (diffs.mean(), diffs.mean() - half, diffs.mean() + half)
        assert (e.final.mean, e.final.lo, e.final.hi) == pytest.approx(want)
        assert e.final.excludes_zero()  # -0.083 [-0.155, -0.012]
    path = report.build_report(dirs, tmp_path / "rep")
    md = path.read_text()
    assert f"| {diffs.mean():+.4f} [{diffs.mean() - half:+.4f}, {diffs.mean() + half:+.4f}] |" in md and "| yes |" in md
    assert (tmp_path / "rep" / "effects.png").exists()
    saved = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert saved["effects"][0]["final_val_loss"]["mean"] == pytest.approx(diffs.mean())


def test_report_cli_errors_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert report.main([str(tmp_path), "--out", str(tmp_path / "rep")]) == 2
    assert "no config.toml" in capsys.readouterr().err
