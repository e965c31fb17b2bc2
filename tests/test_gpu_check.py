"""bench/gpu_check.py on the CPU: every part that can run here runs at toy sizes, the GPU-only ones
say why they are skipped, and the table and results.json come out."""

import json
import math

import pytest

from helpers import bench_module


@pytest.fixture(scope="module")
def quick(tmp_path_factory, one_thread):
    """One quick run of the in-process parts (the device tests and DDP spawn processes: see below)."""
    out = tmp_path_factory.mktemp("gpu_check")
    assert bench_module("gpu_check").main(["--quick", "--parts=env,speed,optim,generate", f"--out={out}"]) == 0
    return json.loads((out / "results.json").read_text())


def test_the_speed_grid_runs_every_mode_shape_and_optimizer(quick):
    rows = quick["sections"]["speed"]
    grid = {(r["mode"], r["shape"], r["optimizer"]) for r in rows}
    assert len(rows) == len(grid) == 3 * 2 * 4
    assert all(r["tokens_per_s"] > 0 and math.isfinite(r["tokens_per_s"]) and not r["compiled"] for r in rows)
    assert any("compiled rows skipped" in n for n in quick["notes"])
    ratios = {r["what"] for r in quick["sections"]["ratios"]}
    assert "ECD step / fused AdamW step" in ratios and any(w.startswith("SOAP/AdamW whole step") for w in ratios)


def test_gpu_only_parts_say_why_they_are_skipped(quick):
    (syncs,) = quick["sections"]["host syncs"]
    assert syncs["result"] == "skipped: no CUDA device on this machine"
    env = {r["item"]: r["value"] for r in quick["sections"]["environment"]}
    assert "every GPU part is skipped" in env["device"]


def test_optimizer_steps_and_generation_are_reported(quick):
    steps = {r["optimizer"]: r for r in quick["sections"]["optimizer step"]}
    assert steps["adamw"]["x_adamw"] == 1.0 and {"sgdm", "ecd", "soap (refresh every 10)"} <= set(steps)
    assert {r["part"] for r in quick["sections"]["soap step"]} >= {"first basis (eigh, once)"}
    gen = quick["sections"]["generation"]
    assert len(gen) == 4 and all(r["tokens_per_s"] > 0 for r in gen)
    assert sum("tokens: True" in n for n in quick["notes"]) == 3  # cached = uncached, for both models


def test_device_tests_and_ddp_parts_run_on_cpu(tmp_path, capsys):
    assert bench_module("gpu_check").main(["--quick", "--parts=tests,ddp", f"--out={tmp_path}"]) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    tests = report["sections"]["device tests"]
    assert len(tests) >= 10 and all(r["result"].startswith("skipped: needs a CUDA GPU") for r in tests)
    (ddp,) = report["sections"]["ddp"]
    assert ddp["exit_code"] == 0 and ddp["backend"] == "gloo" and ddp["tokens_per_s"] > 0
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith("part times: ")  # the table is last
