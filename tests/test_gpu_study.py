"""bench/gpu_study.py on the CPU at toy size: the corpus, the small tasks, the cells and the paired table,
end to end; the pairing against a by-hand computation; and its usage errors."""

import json
import math
import statistics
import sys
import time

import pytest
import torch

from helpers import ROOT, bench_module, one_line_error


def test_tiny_study_runs_end_to_end_and_prints_the_paired_table_last(tmp_path, capsys, one_thread):
    study = bench_module("gpu_study")
    assert study.main(["--tiny", "--cpu", "--tokenizer=byte", f"--out={tmp_path}", f"--work={tmp_path / 'work'}"]) == 0
    out = capsys.readouterr().out.rstrip().splitlines()
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["corpus"] == {"documents": study.TINY_DOCS, "tokenizer": "byte"}
    checks = {(r["task"], r["check"]): r["passed"] for r in results["small_tasks"]}
    assert {task for task, _ in checks} == set(study.SMALL_TASKS)
    # the exact discrete laws hold at any run length, so they pass even cut to a few steps
    laws = [passed for (task, check), passed in checks.items() if task == "conservation_laws" and check.endswith("law")]
    assert len(laws) == 3 and all(laws)
    cells = results["cells"]
    assert {(c["optimizer"], c["mode"]) for c in cells} == {(o, m) for o in study.OPTIMIZERS for m in study.MODES}
    assert all(c["steps"] == study.TINY_STEPS and set(c["val_loss"]) == {"0", "10", "20"} for c in cells)
    paired = [(r["optimizer"], r["step"]) for r in results["paired"]]
    assert paired == [(o, s) for o in ("sgdm", "ecd") for s in (0, 10, 20)]
    title = out.index("== paired by seed: validation loss, bq - symmetric (negative: bq helps) ==")
    assert len(out) == title + 2 + 6  # title, header, one row per optimizer and validation: the table is last
    for row, line in zip(results["paired"], out[title + 2 :]):
        values = {c["mode"]: c["val_loss"][str(row["step"])] for c in cells if c["optimizer"] == row["optimizer"]}
        assert line.split()[:2] == [row["optimizer"], str(row["step"])]
        assert row["bq - symmetric"]["mean"] == pytest.approx(values["bq"] - values["symmetric"], abs=1e-12)


def test_pairing_by_seed_equals_a_computation_by_hand():
    study = bench_module("gpu_study")
    gen = torch.Generator().manual_seed(0)
    loss = {(o, m, s): {0: 5.0, 1000: 4.0 + torch.rand(1, generator=gen).item()} for o in ("sgdm", "ecd")
            for m in ("symmetric", "bq") for s in (1, 2, 3)}
    loss[("sgdm", "bq", 3)] = {0: 5.0}  # a cell stopped before its first validation: step 1000 is not paired
    records = [{"optimizer": o, "mode": m, "seed": s, "val_loss": v} for (o, m, s), v in loss.items()]
    rows = {(r["optimizer"], r["step"]): r for r in study.paired_rows(records)}
    assert set(rows) == {("sgdm", 0), ("ecd", 0), ("ecd", 1000)}
    d = [loss[("ecd", "bq", s)][1000] - loss[("ecd", "symmetric", s)][1000] for s in (1, 2, 3)]
    half = 4.302652729911275 * statistics.stdev(d) / math.sqrt(3)  # t(0.975, 2), from a table
    effect = rows[("ecd", 1000)]["bq - symmetric"]
    assert effect.n == 3 and effect.mean == pytest.approx(statistics.mean(d), abs=1e-12)
    assert (effect.lo, effect.hi) == pytest.approx((statistics.mean(d) - half, statistics.mean(d) + half), abs=1e-7)


def test_cells_run_in_waves_that_share_the_time_and_stop_at_the_end_of_their_share(tmp_path, monkeypatch):
    """Four cells two at a time: each wave gets half the time and is stopped by SIGTERM at its end
    (stand-in cells that sleep, so the test takes seconds, not a training run)."""
    study = bench_module("gpu_study")
    monkeypatch.setattr(study, "STOP_GRACE_S", 1.0)
    monkeypatch.setattr(study, "TABLE_RESERVE_S", 0.0)
    sleeper = "import pathlib, sys, time; pathlib.Path(sys.argv[1]).touch(); time.sleep(120)"
    monkeypatch.setattr(study, "cell_command", lambda s, o, m, x: [sys.executable, "-c", sleeper, tmp_path / o / m])
    for opt in study.OPTIMIZERS:
        (tmp_path / opt).mkdir()
    start = time.monotonic()
    s = study.Study("cpu", True, [1], 10, 2, tmp_path, start + 9.0)
    study.run_cells(s)
    share = (9.0 - 2 * 1.0) / 2  # (time left - one grace between the waves) over two waves
    assert time.monotonic() - start >= 2 * share
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("*/*")) == sorted(
        f"{o}/{m}" for o in study.OPTIMIZERS for m in study.MODES
    )  # every cell started
    stopped = [n for n in s.notes if n.startswith("stopped at the end of their time")]
    assert stopped == [
        "stopped at the end of their time: sgdm-symmetric-s1, sgdm-bq-s1",
        "stopped at the end of their time: ecd-symmetric-s1, ecd-bq-s1",
    ]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tiny", "--cpu", "--seeds=1,x"], "--seeds must be integers"),
        (["--tiny", "--cpu", "--budget=0"], "--budget > 0"),
        (["--tiny", "--cpu", "--tokenizer=nope"], "--tokenizer"),
        (["--tiny", "--cpu", f"--work={ROOT}"], "is not empty"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(argv, message, capsys):
    assert bench_module("gpu_study").main(argv) == 2
    assert message in one_line_error(capsys.readouterr().err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_asks_for_a_gpu_or_cpu(capsys):
    assert bench_module("gpu_study").main(["--tiny"]) == 2
    assert "no CUDA device" in one_line_error(capsys.readouterr().err)
