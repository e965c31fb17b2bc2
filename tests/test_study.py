"""The study tool: each arm's rate chosen on its own seeds, paired evaluation seeds, the metrics fixed by
eval.study recomputed here from the runs' own metrics files, diverged rates, reruns, bad study files."""

import json
import math

import numpy as np
import pytest

from eval import study
from eval.report import t_quantile

from helpers import CONFIGS, TINY_GPT, one_line_error


def write_study(path, data_dir, arms: str, compare: str = "", seeds="[0, 1]", sweep="[7]") -> None:
    overrides = [f"--data.path={data_dir}", *TINY_GPT, "--train.batch_size=4", "--train.max_steps=4",
                 "--eval.interval=1", "--eval.tokens=1024", "--train.checkpoint_interval=0", "--run.threads=1"]
    path.write_text(
        f'[study]\nconfig = "{CONFIGS / "grid" / "cpu.toml"}"\nseeds = {seeds}\nsweep_seeds = {sweep}\n'
        "extend_edges = 1\n"
        f"overrides = {json.dumps(overrides)}\n\n{arms}\n{compare}\n"
    )


ARMS = """
[[arm]]
name = "sgdm/symmetric"
optimizer = "sgdm"
mode = "symmetric"
lrs = [0.01, 1e9]

[[arm]]
name = "sgdm/bqbv"
optimizer = "sgdm"
mode = "bqbv"
lrs = [0.01, 0.03]
"""
COMPARE = """
[[compare]]
a = "sgdm/bqbv"
b = "sgdm/symmetric"
"""


def curve(run_dir) -> dict[int, float]:
    """Validation losses by step, read here independently of eval.study."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["val_loss"] for r in rows if r.get("val_loss") is not None}


def first_sym(out) -> float:
    return second_half(cell(out, "sgdm/symmetric", "0.01", "symmetric", 7))


def second_half(run_dir, steps: int = 4) -> float:
    c = curve(run_dir)
    return float(np.mean([v for s, v in c.items() if s >= steps / 2]))


def cell(out, arm: str, lr: str, mode: str, seed: int):
    return out / "cells" / arm.replace("/", "-") / f"lr{lr}" / "runs" / f"sgdm-{mode}-s{seed}"


@pytest.fixture(scope="module")
def small_study(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("study")
    spec = root / "study.toml"
    write_study(spec, data_dir, ARMS, COMPARE)
    out = root / "out"
    assert study.main([str(spec), "--out", str(out), "--jobs", "2"]) == 0
    return spec, out


def test_rates_are_chosen_on_the_sweep_seed_and_a_diverged_rate_is_never_chosen(small_study):
    _, out = small_study
    selection = json.loads((out / "selection.json").read_text())
    diverged = json.loads((out / "diverged.json").read_text())
    assert list(diverged) == [str(cell(out, "sgdm/symmetric", "1e+09", "symmetric", 7))]
    assert selection["rates"]["sgdm/symmetric"]["lr"] == 0.01
    assert selection["rates"]["sgdm/symmetric"]["sweep"]["1e+09"]["second_half"] == math.inf
    # two rates: the best is always an edge, so the sweep added one rate beyond it (extend_edges = 1)
    extensions = json.loads((out / "extensions.json").read_text())
    assert extensions["sgdm/symmetric"] == [pytest.approx(0.01**2 / 1e9)]
    first = {lr: second_half(cell(out, "sgdm/bqbv", f"{lr:g}", "bqbv", 7)) for lr in (0.01, 0.03)}
    best, other = min(first, key=first.get), max(first, key=first.get)
    assert extensions["sgdm/bqbv"] == [pytest.approx(best**2 / other)]
    added = extensions["sgdm/bqbv"][0]
    every = {**first, added: second_half(cell(out, "sgdm/bqbv", f"{added:g}", "bqbv", 7))}
    assert selection["rates"]["sgdm/bqbv"]["lr"] == min(every, key=every.get)
    assert len(selection["rates"]["sgdm/bqbv"]["sweep"]) == 3
    # the target: the median over arms of the chosen sweep runs' final loss
    finals = [curve(cell(out, "sgdm/symmetric", "0.01", "symmetric", 7))[4]]
    finals.append(curve(cell(out, "sgdm/bqbv", f"{selection['rates']['sgdm/bqbv']['lr']:g}", "bqbv", 7))[4])
    assert selection["rates"]["sgdm/symmetric"]["sweep"]["1e-13"]["second_half"] > first_sym(out)
    assert selection["target_loss"] == pytest.approx(float(np.median(finals)), rel=1e-12)


def test_the_comparison_is_the_mean_of_per_seed_differences_with_its_t_interval(small_study):
    _, out = small_study
    report = json.loads((out / "report" / "report.json").read_text())
    lr = f"{report['selection']['rates']['sgdm/bqbv']['lr']:g}"
    diffs = [second_half(cell(out, "sgdm/bqbv", lr, "bqbv", s)) - second_half(cell(out, "sgdm/symmetric", "0.01",
             "symmetric", s)) for s in (0, 1)]
    (c,) = report["comparisons"]
    assert c["seeds"] == [0, 1]
    assert c["delta_second_half"]["mean"] == pytest.approx(np.mean(diffs), abs=1e-12)
    half = 12.706204736174707 * np.std(diffs, ddof=1) / math.sqrt(2)  # t(0.975, 1) from tables
    assert c["delta_second_half"]["hi"] - c["delta_second_half"]["mean"] == pytest.approx(half, rel=1e-6)
    assert c["detectable_95"] == pytest.approx(half, rel=1e-6)
    md = (out / "report" / "report.md").read_text()
    assert "| sgdm/bqbv | sgdm/symmetric | 2 |" in md and (out / "report" / "val_loss.png").exists()


def test_a_rerun_trains_nothing_and_keeps_its_selection(small_study, capsys):
    spec, out = small_study
    before = (out / "selection.json").read_text()
    assert study.main([str(spec), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sweep: 6 cells, 6 done or diverged, 0 to run" in printed
    assert "evaluation: 4 cells, 4 done or diverged, 0 to run" in printed
    assert (out / "selection.json").read_text() == before


def test_second_half_loss_and_steps_to_target_by_hand():
    c = [(0, 5.0), (50, 4.0), (100, 3.0), (150, 2.5), (200, 2.0)]
    assert study.second_half_loss(c, 200) == pytest.approx((3.0 + 2.5 + 2.0) / 3)
    assert study.second_half_loss(c[:-1], 200) is None  # not finished
    assert study.steps_to(c, 3.5) == pytest.approx(75.0)  # halfway between 4.0 at 50 and 3.0 at 100
    assert study.steps_to(c, 6.0) == 0.0
    assert study.steps_to(c, 1.0) is None
    d = [0.01, -0.02, 0.03, 0.0]
    se = np.std(d, ddof=1) / 2
    half, mde = study.detection_limits(d)
    assert half == pytest.approx(t_quantile(0.975, 3) * se)
    assert mde == pytest.approx((3.182446 + 0.978472) * se, rel=1e-5)  # t(0.975, 3) + t(0.8, 3), from tables
    assert all(math.isnan(x) for x in study.detection_limits([0.1]))


@pytest.mark.parametrize(
    "arms, compare, seeds, sweep, needle",
    [
        (ARMS.replace('optimizer = "sgdm"', 'optimizer = "sgd"', 1), "", "[0]", "[7]", "optimizer 'sgd' unknown"),
        (ARMS.replace('mode = "bqbv"', 'mode = "bqq"'), "", "[0]", "[7]", "mode 'bqq' unknown"),
        (ARMS.replace("lrs = [0.01, 0.03]", "lrs = [0.01, -1]"), "", "[0]", "[7]", "lrs must be a non-empty list"),
        (ARMS, COMPARE.replace('"sgdm/bqbv"', '"sgdm/bq"'), "[0]", "[7]", "names arm 'sgdm/bq', which no [[arm]]"),
        (ARMS, "", "[0, 7]", "[7]", "sweep_seeds and seeds share a seed"),
        (ARMS.replace("sgdm/bqbv", "sgdm/symmetric"), "", "[0]", "[7]", "two arms share a name"),
        ("", "", "[0]", "[7]", "has no [[arm]]"),
    ],
)
def test_a_bad_study_file_is_one_line_and_runs_nothing(tmp_path, data_dir, capsys, arms, compare, seeds, sweep, needle):
    spec = tmp_path / "study.toml"
    write_study(spec, data_dir, arms, compare, seeds, sweep)
    assert study.main([str(spec), "--out", str(tmp_path / "out")]) == 2
    assert needle in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_a_knob_of_another_optimizer_in_an_arm_is_refused(tmp_path, data_dir, capsys):
    spec = tmp_path / "study.toml"
    write_study(spec, data_dir, ARMS.replace("lrs = [0.01, 0.03]", 'lrs = [0.01]\noverrides = ["--optim.ecd.eta=5"]'))
    assert study.main([str(spec), "--out", str(tmp_path / "out")]) == 2
    assert "sets a knob of optimizer 'ecd'" in one_line_error(capsys.readouterr().err)
