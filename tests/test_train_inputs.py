"""Training's start-up and run end every problem a user (or a full disk) can cause with one `error:` line,
exit code 2 and no traceback; what was saved before stays, no lock is left behind, and the run continues
once the problem is gone."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import checkpoints
import configs
import train
from trainer import Hook, Trainer
from trainer.init_from import adopt_source_architecture
from trainer.rundir import LOCK, RunLock

from helpers import QUIET, ROOT, args, assert_same_params, child_env, final_params, losses, one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")

DISK_FULL = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def files(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def refused(argv: list[str], capsys, hooks: tuple[Hook, ...] = ()) -> str:
    """``train.main(argv)`` must end with exit code 2 and one error line, returned."""
    assert train.main(argv, hooks=hooks) == 2
    return one_line_error(capsys.readouterr().err)


# ------------------------------------------------------------------------------------ values refused at load

BAD_VALUES = [
    (["--run.seed=-1"], "run.seed must be in [0, 4294967295], got -1"),
    ([f"--run.seed={2**70}"], f"got {2**70}"),
    (["--symmetry.q_std_min=0.2", "--symmetry.q_std_max=0.1"], "symmetry.q_std_min (0.2) is above symmetry.q_std_max"),
    (["--run.name=a\nb"], "run.name must name a folder inside run.dir"),
    (["--run.name=tab\there"], "run.name must name a folder inside run.dir"),
    (["--run.name=nested/run"], "no '/'"),
    (["--run.name=back\\slash"], "run.name must name a folder inside run.dir"),
    (["--run.name=.."], "run.name must name a folder inside run.dir"),
    (["--run.resume=true", "--run.overwrite=true"], "run.overwrite=true and run.resume=true contradict"),
    (["--run.device=cuda:x"], "unknown run.device 'cuda:x'"),
]


@pytest.mark.parametrize("extra,needle", BAD_VALUES, ids=[repr(e) for e, _ in BAD_VALUES])
def test_a_bad_value_is_refused_before_anything_is_written(extra, needle, data_dir, tmp_path, capsys):
    line = refused([*args(data_dir, tmp_path, "r", steps=1), *extra], capsys)
    assert needle in line
    assert list(tmp_path.iterdir()) == []


def test_the_same_values_are_refused_in_a_config_file(tmp_path, capsys):
    (tmp_path / "c.toml").write_text("[run]\nresume = true\noverwrite = true\n")
    assert "run.overwrite=true and run.resume=true" in refused([str(tmp_path / "c.toml")], capsys)


def test_a_binary_config_file_is_one_line(tmp_path, capsys):
    binary = tmp_path / "model.toml"
    binary.write_bytes(b"\x80\x04\x95 not text \xff\xfe")
    assert "is not UTF-8 text (byte 0)" in refused([str(binary), f"--run.dir={tmp_path}"], capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")
def test_a_gpu_that_is_not_there_is_one_line(data_dir, tmp_path, capsys):
    line = refused([*args(data_dir, tmp_path, "r", steps=1), "--run.device=cuda"], capsys)
    assert "--run.device=cuda asks for a GPU but no GPU is visible" in line and "--run.device=cpu" in line
    with pytest.raises(configs.UserError, match="--device=cuda:1 asks for a GPU"):
        configs.resolve_device("cuda:1")
    assert not (tmp_path / "r").exists()


def test_a_model_too_large_to_allocate_names_its_size(data_dir, tmp_path, capsys):
    """The attention's first matrix alone would need 48 GiB: the error says which sizes and how to shrink."""
    big = ["--model.n_embd=65536", "--model.n_head=1", "--model.n_layer=3", "--model.block_size=8"]
    line = refused([*args(data_dir, tmp_path, "big", steps=1), *big], capsys)
    assert "does not fit in the memory of cpu" in line and "model.n_layer=3 and model.n_embd=65536" in line
    assert "lower model.n_embd or model.n_layer" in line
    assert not (tmp_path / "big").exists()  # the run dir it made is gone again, lock and all


class OutOfMemoryAt(Hook):
    """The device runs out of memory in a step's forward pass, as a too large batch does on a GPU."""

    def __init__(self, step: int):
        self.step = step

    def on_loss(self, trainer, step: int, micro: int, loss: torch.Tensor) -> torch.Tensor:
        if step == self.step:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return loss


def test_running_out_of_memory_in_a_step_says_to_lower_the_batch(data_dir, tmp_path, capsys):
    line = refused(args(data_dir, tmp_path, "oom", "--train.checkpoint_interval=2"), capsys, (OutOfMemoryAt(3),))
    assert "the run stopped at step 2 (out of memory on cpu)" in line and "lower train.batch_size" in line
    assert "ckpt_00000002.pt (step 2) is kept" in line and not (tmp_path / "oom" / LOCK).exists()


# ------------------------------------------------------------------------------------ a full disk


class DiskFull(Hook):
    """From the step ``at`` on, every metrics line fails to write, as on a full disk."""

    def __init__(self, at: int):
        self.at = at

    def after_step(self, trainer, step: int) -> None:
        if step == self.at:
            trainer.logs.metrics.file = FullFile(trainer.logs.metrics.file)


class FullFile:
    def __init__(self, file):
        self.file = file

    def write(self, text: str) -> int:
        raise DISK_FULL

    def close(self) -> None:
        self.file.close()

    @property
    def closed(self) -> bool:
        return self.file.closed


def checkpoint_steps(run_dir: Path) -> list[int]:
    return [checkpoints.checkpoint_step(p) for p in checkpoints.list_checkpoints(run_dir)]


def test_a_full_disk_mid_run_keeps_the_last_checkpoint_and_the_run_resumes(data_dir, tmp_path, capsys):
    every = ["--train.checkpoint_interval=2", "--train.keep_checkpoints=0"]
    assert train.main(args(data_dir, tmp_path, "ref", *every)) == 0
    capsys.readouterr()
    run = tmp_path / "full"
    line = refused(args(data_dir, tmp_path, "full", *every), capsys, hooks=(DiskFull(at=5),))
    assert "No space left on device" in line and "metrics.jsonl" in line
    assert f"the last good checkpoint {run / 'ckpt_00000004.pt'} (step 4) is kept" in line
    assert "continue with --run.resume=true" in line
    assert checkpoint_steps(run) == [2, 4] and not (run / LOCK).exists()
    checkpoints.load_checkpoint(checkpoints.checkpoint_path(run, 4))  # whole: its sha256 matches
    assert train.main(args(data_dir, tmp_path, "full", *every, "--run.resume=true")) == 0  # space freed
    assert losses(run) == losses(tmp_path / "ref")
    assert_same_params(final_params(run), final_params(tmp_path / "ref"))


def test_a_checkpoint_that_cannot_be_written_leaves_the_one_before(data_dir, tmp_path, capsys, monkeypatch):
    """torch.save reports a full disk as a RuntimeError after writing part of the file."""
    every = ["--train.checkpoint_interval=2", "--train.keep_checkpoints=1"]
    real_save = torch.save

    def save(obj, f, *a, **k):
        if str(f).endswith("ckpt_00000004.pt.tmp"):
            Path(f).write_bytes(b"PK\x03\x04 partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    run = tmp_path / "ck"
    line = refused(args(data_dir, tmp_path, "ck", *every), capsys)
    assert f"cannot write checkpoint '{run / 'ckpt_00000004.pt'}' (the write failed with" in line
    assert "ckpt_00000002.pt (step 2) is kept" in line
    assert checkpoint_steps(run) == [2] and not list(run.glob("*.tmp")) and not (run / LOCK).exists()
    monkeypatch.setattr(torch, "save", real_save)
    assert train.main(args(data_dir, tmp_path, "ck", *every, "--run.resume=true")) == 0
    assert checkpoint_steps(run) == [8]


def test_a_full_disk_at_the_start_leaves_no_lock_and_no_half_written_file(data_dir, tmp_path, capsys, monkeypatch):
    real = Path.write_text

    def write_text(self, *a, **k):
        if self.name.startswith("config.toml"):
            raise DISK_FULL
        return real(self, *a, **k)

    assert train.main(args(data_dir, tmp_path, "s", steps=2)) == 0
    capsys.readouterr()
    before = files(tmp_path / "s")
    monkeypatch.setattr(Path, "write_text", write_text)
    line = refused(args(data_dir, tmp_path, "s", "--run.resume=true", steps=4), capsys)
    assert "No space left on device" in line and "ckpt_00000002.pt (step 2) is kept" in line
    assert files(tmp_path / "s") == before  # config.toml, metrics and checkpoint as they were
    line = refused(args(data_dir, tmp_path, "fresh", steps=2), capsys)
    assert "at step 0" in line and "no checkpoint was written yet" in line
    assert not (tmp_path / "fresh" / LOCK).exists()
    monkeypatch.setattr(Path, "write_text", real)
    assert train.main(args(data_dir, tmp_path, "fresh", "--run.resume=true", steps=2)) == 0  # as the line says


def test_a_read_only_output_folder_is_one_line_and_changes_nothing(data_dir, tmp_path, capsys, monkeypatch):
    """As on a read-only mount (tests run as root here, so permission bits would not stop a write)."""
    assert train.main(args(data_dir, tmp_path, "ro", steps=2)) == 0
    capsys.readouterr()
    before = files(tmp_path)
    real_open, real_mkdir = os.open, Path.mkdir
    read_only = OSError(errno.EROFS, os.strerror(errno.EROFS))

    def no_create(path, flags, *a, **k):
        if flags & os.O_CREAT and Path(path).is_relative_to(tmp_path):
            raise read_only
        return real_open(path, flags, *a, **k)

    def no_mkdir(self, *a, **k):
        if self.is_relative_to(tmp_path) and not self.exists():
            raise read_only
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(os, "open", no_create)
    monkeypatch.setattr(Path, "mkdir", no_mkdir)
    line = refused(args(data_dir, tmp_path, "ro", "--run.resume=true", steps=4), capsys)
    assert f"cannot write in run dir '{tmp_path / 'ro'}' (Read-only file system)" in line
    line = refused(args(data_dir, tmp_path, "new", steps=2), capsys)
    assert f"cannot create run dir '{tmp_path / 'new'}' (Read-only file system)" in line
    assert files(tmp_path) == before


def test_a_lock_that_cannot_be_written_is_not_left_behind(tmp_path, monkeypatch):
    class Full:
        def __init__(self, fd, mode):
            os.close(fd)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, text):
            raise DISK_FULL

    monkeypatch.setattr(os, "fdopen", Full)
    with pytest.raises(configs.UserError, match="No space left on device"):
        RunLock(tmp_path / "new").acquire(print)
    assert not (tmp_path / "new").exists()


def test_an_unreadable_metrics_log_is_kept_and_the_resume_refused(data_dir, tmp_path, capsys):
    assert train.main(args(data_dir, tmp_path, "m", steps=2)) == 0
    capsys.readouterr()
    metrics = tmp_path / "m" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    for damage in ["\x00\xff binary", "not json"]:
        text = "\n".join([lines[0], damage, *lines[1:]]) + "\n"
        metrics.write_bytes(text.encode("latin-1"))
        before = files(tmp_path / "m")
        line = refused(args(data_dir, tmp_path, "m", "--run.resume=true", steps=4), capsys)
        assert f"'{metrics}' is unreadable" in line and "move it aside and resume again" in line
        assert files(tmp_path / "m") == before and not (tmp_path / "m" / LOCK).exists()
    metrics.rename(tmp_path / "m" / "metrics.old")
    assert train.main(args(data_dir, tmp_path, "m", "--run.resume=true", steps=4)) == 0
    assert min(r["step"] for r in map(json.loads, metrics.read_text().splitlines())) > 2


# ------------------------------------------------------------------------------------ advice a user can follow


def test_a_tokenizer_mismatch_says_where_the_setting_came_from(data_dir, tmp_path, capsys):
    config = tmp_path / "gpt2.toml"
    config.write_text('[data]\ntokenizer = "gpt2"\n')
    line = refused([str(config), *args(data_dir, tmp_path, "t", steps=1)], capsys)
    assert f"data.tokenizer is gpt2 (set in '{config}')" in line and "pass --data.tokenizer=byte" in line
    line = refused([*args(data_dir, tmp_path, "t", steps=1), "--data.tokenizer=gpt2"], capsys)
    assert "(set on the command line)" in line


@pytest.mark.parametrize(
    "before,now,fix",
    [
        ((1, 1), (1, 2), "resume with 1 process and --train.grad_accum=1"),
        ((2, 2), (1, 3), "1 process and --train.grad_accum=4 or 2 processes and --train.grad_accum=2 or 4 pro"),
        ((8, 1), (1, 3), "1 process and --train.grad_accum=8 or 2 processes and --train.grad_accum=4 or 4 pro"),
        ((1, 4), (1, 2), "pass --train.grad_accum=2"),
    ],
)
def test_resume_on_another_number_of_processes_gives_advice_that_can_be_followed(before, now, fix, tmp_path):
    (accum, world), (new_accum, new_world) = before, now
    cfg = configs.load_config(None, [f"--train.grad_accum={new_accum}"])
    old = configs.to_dict(configs.load_config(None, [f"--train.grad_accum={accum}"]))
    state = {k: 0 for k in checkpoints.RESUME_KEYS} | {"config": old, "world_size": world}
    with pytest.raises(configs.UserError) as e:
        checkpoints.check_resumable(state, cfg, new_world, tmp_path / "ckpt.pt")
    assert f"the product must stay {accum * world}: " in str(e.value) and fix in str(e.value)


# ------------------------------------------------------------------------------------ run.init_from


@pytest.fixture
def imported_gpt2(tmp_path) -> Path:
    """A run dir made by `eval.hf import` from a tiny GPT-2 built here (byte vocabulary, offline)."""
    transformers = pytest.importorskip("transformers")
    from eval import hf

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=257, n_positions=32, n_layer=2, n_head=2, n_embd=16)
    )
    model.save_pretrained(tmp_path / "hf")
    assert hf.main(["import", str(tmp_path / "hf"), str(tmp_path / "gpt2"), "--tokenizer", "byte"]) == 0
    return tmp_path / "gpt2"


def test_init_from_an_imported_gpt2_takes_its_architecture(imported_gpt2, data_dir, tmp_path, capsys):
    """The default config's [model] is not a choice the user made: the source's is taken, and training
    starts from exactly its weights."""
    own = [f"--data.path={data_dir}", f"--run.dir={tmp_path}", "--train.max_steps=2", "--train.batch_size=2"]
    own += ["--eval.tokens=512", *QUIET]
    assert train.main([*own, "--run.name=ft", f"--run.init_from={imported_gpt2}"]) == 0
    assert f"[model] taken from {imported_gpt2 / 'config.toml'}" in capsys.readouterr().out
    written = configs.load_config(tmp_path / "ft" / "config.toml")
    assert (written.model.n_layer, written.model.n_embd, written.model.mlp) == (2, 16, "gelu")

    trainer = Trainer(configs.load_config(None, [*own, "--run.name=start", f"--run.init_from={imported_gpt2}"]))
    try:
        assert trainer.setup()  # the model as the first step would find it
        imported = checkpoints.load_checkpoint(checkpoints.list_checkpoints(imported_gpt2)[-1])["model"]
        assert_same_params(trainer.model.state_dict(), imported)
    finally:
        trainer.logs.close()
        trainer.lock.release()

    # with no data chosen either, the source's tokenizer comes along (the default config names none)
    adopted, said = adopt_source_architecture(configs.load_config(None, [f"--run.init_from={imported_gpt2}"]))
    assert adopted.data.tokenizer == "byte" and "[model] and data.tokenizer = byte taken" in said

    line = refused([*own, "--run.name=mine", f"--run.init_from={imported_gpt2}", "--model.n_layer=3"], capsys)
    assert "holds weights of another architecture than [model] (set by you: model.n_layer)" in line
    assert f"python train.py {imported_gpt2 / 'config.toml'} --run.name=NEW" in line
    assert not (tmp_path / "mine").exists()


# ------------------------------------------------------------------------------------ as a real process


def test_a_refused_start_is_one_line_from_the_command_too(tmp_path):
    """The same promise outside pytest: the process's stderr and exit code."""
    argv = [sys.executable, "train.py", f"--run.dir={tmp_path}", "--run.seed=-1"]
    proc = subprocess.run(argv, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "run.seed must be in" in one_line_error(proc.stderr)
