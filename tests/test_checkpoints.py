"""Checkpoint files: a kill at any point of a write, weights-only loads, pruning, the resumed metrics log."""

import json
import os
from pathlib import Path

import pytest
import torch

import checkpoints
import train
from trainer import MetricsLog, read_jsonl

from helpers import args

pytestmark = pytest.mark.usefixtures("one_thread")


class Killed(BaseException):
    """Stands for SIGKILL at one point of a checkpoint write."""


def test_a_kill_at_any_point_of_a_checkpoint_write_leaves_a_good_checkpoint(tmp_path, monkeypatch):
    """Interrupt save_checkpoint at each of its file operations (torch.save leaves half a file);
    whatever is left on disk, the next start finds the previous or the new checkpoint, verified."""
    payload = {"model": {"w": torch.arange(1000.0)}, "val_loss": None}
    real = {"save": torch.save, "replace": os.replace, "unlink": Path.unlink, "write_text": Path.write_text}
    owner = {"save": torch, "replace": os, "unlink": Path, "write_text": Path}
    trace = {"armed": False, "ops": 0, "kill_at": 0}

    def traced(kind):
        def op(*a, **k):
            if trace["armed"]:
                trace["ops"] += 1
                if trace["ops"] == trace["kill_at"]:
                    if kind == "save":
                        real["save"](*a, **k)
                        Path(a[1]).write_bytes(Path(a[1]).read_bytes()[:700])
                    raise Killed
            return real[kind](*a, **k)

        return op

    for kind in real:
        monkeypatch.setattr(owner[kind], kind, traced(kind))

    def write_third(run_dir: Path, kill_at: int) -> None:
        run_dir.mkdir()
        for step in (1, 2):
            checkpoints.save_checkpoint(run_dir, step, {**payload, "step": step}, keep=2)
        trace.update(armed=True, ops=0, kill_at=kill_at)
        try:
            checkpoints.save_checkpoint(run_dir, 3, {**payload, "step": 3}, keep=2)
        finally:
            trace["armed"] = False

    write_third(tmp_path / "whole", kill_at=0)
    n_ops = trace["ops"]
    assert n_ops >= 5  # the save, the sidecar, two renames, pruning
    for kill_at in range(1, n_ops + 1):
        run_dir = tmp_path / f"kill{kill_at}"
        with pytest.raises(Killed):
            write_third(run_dir, kill_at)
        checkpoints.remove_partial_writes(run_dir)  # what the next start does first
        path, state = checkpoints.latest_good_checkpoint(run_dir, warn=pytest.fail)
        assert state["step"] in (2, 3) and path == checkpoints.checkpoint_path(run_dir, state["step"])
        assert not list(run_dir.glob("*.tmp"))


def test_checkpoints_load_with_weights_only_and_without_wrapper_prefixes(data_dir, tmp_path):
    assert train.main(args(data_dir, tmp_path, "a", steps=2)) == 0
    path = checkpoints.checkpoint_path(tmp_path / "a", 2)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "config", "rng", "step"} <= raw.keys() and raw["step"] == 2
    # a torch.compile'd (or DDP-wrapped) model's state_dict carries prefixes; loading strips them
    model = torch.nn.Sequential(torch.nn.Linear(3, 3))
    compiled = torch.compile(model)
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    model.load_state_dict(checkpoints.strip_wrapper_prefixes(compiled.state_dict()))
    compiled.load_state_dict({"_orig_mod." + k: v for k, v in model.state_dict().items()})
    # a checkpoint written from a compiled model resumes into the bare one (and vice versa: the trainer
    # always loads into the bare module, which the compiled wrapper shares)
    raw["model"] = {"_orig_mod." + k: v for k, v in raw["model"].items()}
    foreign = tmp_path / "foreign.pt"
    torch.save(raw, foreign)
    assert train.main(args(data_dir, tmp_path, "b", f"--run.checkpoint={foreign}", steps=3)) == 0


def test_pruning_keeps_the_newest_and_the_best(tmp_path):
    for step, val in [(1, 3.0), (2, 1.0), (3, None), (4, 2.0), (5, None)]:
        checkpoints.save_checkpoint(tmp_path, step, {"model": {}, "val_loss": val}, keep=2)
    assert [checkpoints.checkpoint_step(p) for p in checkpoints.list_checkpoints(tmp_path)] == [2, 4, 5]


def test_a_resumed_metrics_log_drops_lines_past_the_checkpoint_and_a_line_cut_by_a_kill(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "train_loss": 1.0 / (s + 1)}) for s in range(6)]
    path.write_text("\n".join(lines) + "\n" + lines[-1][:9])  # the kill cut the last line short
    log = MetricsLog(path, resume_step=3, enabled=True)
    log.log({"step": 4, "train_loss": 0.5})
    log.close()
    assert [r["step"] for r in read_jsonl(path)] == [0, 1, 2, 3, 4]
    assert path.read_text().endswith("\n")
