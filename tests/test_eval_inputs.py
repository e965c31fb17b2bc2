"""The evaluation tools' bad inputs: each is one `error:` line naming the real cause and the fix, exit code
2, no traceback, and every file that existed before is byte-identical after (nothing half-written)."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

import train
from eval import alignment, hf, logic, report, sample

from helpers import args, one_line_error, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory) -> Path:
    """Two finished tiny runs of different models, which no bad command below may change."""
    root = tmp_path_factory.mktemp("runs")
    assert train.main(args(data_dir, root, "a", steps=2)) == 0
    assert train.main(args(data_dir, root, "b", "--model.n_layer=2", steps=2)) == 0
    return root


def refused(tool, argv: list[str], capsys, *roots: Path) -> str:
    """Run ``tool.main(argv)``: it must exit 2 with one error line and leave every file under ``roots``
    as it was. Returns the line."""
    before = snapshot(*roots)
    assert tool.main(argv) == 2
    line = one_line_error(capsys.readouterr().err)
    assert snapshot(*roots) == before
    return line


def writable_anyway(folder: Path) -> bool:
    """Whether this process writes into a folder without write permission (root does)."""
    try:
        (folder / ".probe").write_text("")
    except PermissionError:
        return False
    (folder / ".probe").unlink()
    return True


# ------------------------------------------------------------------------------------ --out


def test_logic_out_naming_a_folder_or_a_path_under_a_file(runs, tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    argv = [str(runs / "a"), "--n", "1", "--device", "cpu", "--out"]
    line = refused(logic, [*argv, str(folder)], capsys, runs, tmp_path)
    assert f"--out '{folder}' is a folder; pass the path of the file to write" in line
    (tmp_path / "notes").write_text("mine")
    under = tmp_path / "notes" / "logic.json"
    line = refused(logic, [*argv, str(under)], capsys, runs, tmp_path)
    assert f"cannot be created: '{tmp_path / 'notes'}' is a file" in line


@pytest.mark.parametrize("tool", [report, alignment], ids=["report", "alignment"])
def test_a_folder_out_that_is_a_file_or_a_broken_symlink(tool, runs, tmp_path, capsys):
    mine = tmp_path / "report.md"
    mine.write_text("mine")
    line = refused(tool, [str(runs / "a"), "--out", str(mine)], capsys, runs, tmp_path)
    assert f"--out '{mine}' is a file, not a folder" in line
    link = tmp_path / "gone"
    link.symlink_to(tmp_path / "nowhere")
    line = refused(tool, [str(runs / "a"), "--out", str(link)], capsys, runs, tmp_path)
    assert f"is a symlink to '{tmp_path / 'nowhere'}', which does not exist, not a folder" in line


@pytest.mark.parametrize("tool", ["logic", "report", "alignment", "export"])
def test_a_read_only_output_folder(tool, runs, tmp_path, monkeypatch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if writable_anyway(locked):  # root: the permission check is told what a read-only file system says
            access = os.access
            monkeypatch.setattr(os, "access", lambda p, mode: access(p, mode) and Path(p) != locked)
        argv = {
            "logic": (logic, [str(runs / "a"), "--n", "1", "--out", str(locked / "l.json"), "--device", "cpu"]),
            "report": (report, [str(runs / "a"), "--out", str(locked / "r")]),
            "alignment": (alignment, [str(runs / "a"), "--out", str(locked), "--device", "cpu"]),
            "export": (hf, ["export", str(runs / "a"), str(locked / "e")]),
        }
        module, command = argv[tool]
        line = refused(module, command, capsys, runs, tmp_path)
        assert f"'{locked}' is read-only" in line
    finally:
        locked.chmod(0o755)


# ------------------------------------------------------------------------------------ a full disk


def fill_the_disk(monkeypatch) -> None:
    """The tokenizer files of an export hit a full disk after the weights were written."""

    def save_hf(tok, out_dir, max_length=None):
        (Path(out_dir) / "tokenizer.json").write_text("{")  # what a write cut short leaves
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(hf, "save_hf", save_hf)


def test_an_export_that_runs_out_of_disk_leaves_no_partial_output(runs, tmp_path, monkeypatch, capsys):
    fill_the_disk(monkeypatch)
    out = tmp_path / "export"
    line = refused(hf, ["export", str(runs / "a"), str(out)], capsys, runs, tmp_path)
    assert f"no space left on the device writing '{out}'; nothing was written; free disk space" in line
    assert not out.exists()


def test_an_overwriting_export_that_runs_out_of_disk_keeps_the_earlier_export(runs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "export"
    assert hf.main(["export", str(runs / "a"), str(out)]) == 0
    capsys.readouterr()
    fill_the_disk(monkeypatch)
    line = refused(hf, ["export", str(runs / "b"), str(out), "--overwrite"], capsys, runs, tmp_path)
    assert f"what '{out}' held is as it was" in line
    assert json.loads((out / "symbreak.json").read_text())["run_dir"] == str(runs / "a")


def test_an_overwriting_export_replaces_every_file_of_the_earlier_one(runs, tmp_path, capsys):
    out = tmp_path / "export"
    out.mkdir()
    (out / "stale.bin").write_text("from before")
    assert hf.main(["export", str(runs / "a"), str(out), "--overwrite"]) == 0
    assert not (out / "stale.bin").exists() and (out / "config.json").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".partial")]


# ------------------------------------------------------------------------------------ flags and runs


def test_a_negative_freq_tokens(runs, tmp_path, capsys):
    argv = [str(runs / "a"), "--out", str(tmp_path / "al"), "--device", "cpu", "--freq_tokens"]
    assert "--freq-tokens: must be >= 0, got -5" in refused(alignment, [*argv, "-5"], capsys, runs, tmp_path)
    assert "--freq_tokens must be >= 1" in refused(alignment, [*argv, "0"], capsys, runs, tmp_path)
    assert not (tmp_path / "al").exists()


def test_a_logic_batch_of_no_sequences(runs, capsys):
    line = refused(logic, [str(runs / "a"), "--n", "1", "--device", "cpu", "--batch_size", "0"], capsys, runs)
    assert "--batch_size must be at least 1, got 0" in line


def test_report_refuses_a_run_given_twice_by_any_path(runs, tmp_path, capsys):
    out = str(tmp_path / "rep")
    line = refused(report, [str(runs / "a"), str(runs / "b"), str(runs / "a"), "--out", out], capsys, runs, tmp_path)
    assert f"run dir '{runs / 'a'}' is given twice; pass each run once" in line
    alias = tmp_path / "alias"
    alias.symlink_to(runs / "a")
    line = refused(report, [str(runs / "a"), str(alias), "--out", out], capsys, runs, tmp_path)
    assert f"run dirs '{runs / 'a'}' and '{alias}' are one run" in line
    dotted = f"{runs}/b/../a"
    assert f"'{dotted}' are one run" in refused(report, [str(runs / "a"), dotted, "--out", out], capsys, runs)
    assert not (tmp_path / "rep").exists()


def test_sample_refuses_a_checkpoint_of_another_model(runs, capsys):
    theirs = sorted((runs / "b").glob("ckpt_*.pt"))[-1]
    argv = [str(runs / "a"), "--checkpoint", str(theirs), "--tokens", "5", "--device", "cpu"]
    line = refused(sample, argv, capsys, runs)
    assert f"checkpoint '{theirs}' holds another model than run dir '{runs / 'a'}' (model.n_layer 2 vs 1)" in line
    assert f"pass it with its own run dir as RUN_DIR ({runs / 'b'})" in line
    ours = sorted((runs / "a").glob("ckpt_*.pt"))[-1]
    assert sample.main([str(runs / "a"), "--checkpoint", str(ours), "--tokens", "5", "--device", "cpu"]) == 0


def test_a_checkpoint_without_its_sha256_record_loads_with_a_warning(runs, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(runs / "a", run)
    ckpt = sorted(run.glob("ckpt_*.pt"))[-1]
    ckpt.with_suffix(".json").unlink()
    assert sample.main([str(run), "--tokens", "5", "--device", "cpu"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert err == [f"warning: {ckpt.stem}.json, the sha256 record of '{ckpt}', is missing; loading it unverified"]


def test_a_resume_from_a_checkpoint_without_its_record_says_so(data_dir, tmp_path, capsys):
    assert train.main(args(data_dir, tmp_path, "r", steps=2)) == 0
    ckpt = sorted((tmp_path / "r").glob("ckpt_*.pt"))[-1]
    ckpt.with_suffix(".json").unlink()
    capsys.readouterr()
    assert train.main(args(data_dir, tmp_path, "r", "--run.resume=true", steps=3)) == 0
    out = capsys.readouterr().out
    assert f"warning: {ckpt.stem}.json, the sha256 record of '{ckpt}', is missing; loading it unverified" in out


# ------------------------------------------------------------------------------------ the real cause


def test_error_lines_name_the_real_cause_of_a_bad_path(runs, tmp_path, capsys):
    a = runs / "a"
    base = ["--tokens", "5", "--device", "cpu"]
    assert f"checkpoint '{a}' is a folder" in refused(sample, [str(a), "--checkpoint", str(a), *base], capsys, runs)
    link = tmp_path / "ckpt.pt"
    link.symlink_to(tmp_path / "moved.pt")
    line = refused(sample, [str(a), "--checkpoint", str(link), *base], capsys, runs)
    assert f"checkpoint '{link}' is a symlink to '{tmp_path / 'moved.pt'}', which does not exist" in line
    record = sorted(a.glob("ckpt_*.json"))[-1]
    pt = record.with_suffix(".pt")
    line = refused(sample, [str(a), "--checkpoint", str(record), *base], capsys, runs)
    assert f"'{record}' is a checkpoint's integrity record, not the checkpoint; pass {pt}" in line
    run_link = tmp_path / "run"
    run_link.symlink_to(tmp_path / "deleted_run")
    line = refused(sample, [str(run_link), *base], capsys, runs)
    assert f"run dir '{run_link}' is a symlink to '{tmp_path / 'deleted_run'}', which does not exist" in line
    assert f"run dir '{a / 'config.toml'}' is a file" in refused(sample, [str(a / "config.toml"), *base], capsys, runs)


def test_training_into_a_run_dir_that_is_a_broken_symlink(data_dir, tmp_path, capsys):
    (tmp_path / "r").symlink_to(tmp_path / "elsewhere")
    assert train.main(args(data_dir, tmp_path, "r", steps=2)) == 2
    line = one_line_error(capsys.readouterr().err)
    assert f"run dir '{tmp_path / 'r'}' is a symlink to '{tmp_path / 'elsewhere'}', which does not exist" in line
