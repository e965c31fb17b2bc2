"""python -m data.prepare never replaces what is not a dataset, never touches anything beside its output,
survives two preparations at once, cleans up after itself, and reports a full disk in one line."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from configs import DataConfig
from data import prepare as prep
from data.dataset import open_dataset
from data.outdir import owned, partial_folder

from helpers import ROOT, child_env, one_line_error, snapshot


@pytest.fixture
def docs(tmp_path) -> Path:
    """Ten small text documents; the tests work in ``tmp_path/work``, so the listings below leave them out."""
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(10):
        (folder / f"doc{i}.txt").write_text(f"document {i}: the query and key biases break the symmetry.\n")
    (tmp_path / "work").mkdir()
    return folder


def prepare_cli(docs: Path, out: Path, *flags: str) -> int:
    return prep.main(["--source", f"files:{docs}", "--tokenizer", "byte", "--val_every", "5", "--workers", "1",
                      "--out", str(out), *flags])


def listing(folder: Path) -> list[str]:
    """Every name in ``folder``, hidden ones (a lock, a set-aside dataset) included."""
    return sorted(p.name for p in folder.iterdir())


# A plain progress line (progress.py) may come before the error: the preparation ran until the disk filled.
PROGRESS_LINE = re.compile(r"\[\d+:\d{2}(<[\d:?]+)?, .*/s")


def refused(capsys, code: int, *, before: dict, roots: tuple[Path, ...], names: list[str], work: Path) -> str:
    """The refusal's one line, after checking the exit code, that every file is byte-identical and that
    nothing was added beside them."""
    assert code == 2
    err = capsys.readouterr().err
    line = one_line_error("\n".join(x for x in err.splitlines() if not PROGRESS_LINE.search(x)))
    assert snapshot(*roots) == before
    assert listing(work) == names
    return line


def make_run_dir(folder: Path) -> None:
    folder.mkdir()
    (folder / "config.toml").write_text('[run]\nname = "mine"\n')
    (folder / "metrics.jsonl").write_text('{"step": 1, "train_loss": 5.0}\n')
    (folder / "ckpt_00000001.pt").write_bytes(b"weights")
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "meta.json").write_text("{}")


def test_overwrite_refuses_a_run_dir(docs, capsys):
    work = docs.parent / "work"
    run = work / "run"
    make_run_dir(run)
    before, names = snapshot(run), listing(work)
    for flags in (["--overwrite"], []):
        line = refused(capsys, prepare_cli(docs, run, *flags), before=before, roots=(run,), names=names, work=work)
        assert f"'{run}' holds a run: ckpt_00000001.pt, config.toml, metrics.jsonl and 1 more" in line
        assert "not a prepared dataset" in line and "choose another --out" in line


def test_overwrite_refuses_a_folder_of_other_files_and_a_file(docs, capsys):
    work = docs.parent / "work"
    mine = work / "mine"
    mine.mkdir()
    for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
        (mine / name).write_text(name)
    (work / "notes.txt").write_text("mine")
    before, names = snapshot(work), listing(work)
    line = refused(capsys, prepare_cli(docs, mine, "--overwrite"), before=before, roots=(work,), names=names, work=work)
    assert "holds other files: a.txt, b.txt, c.txt and 1 more, not a prepared dataset" in line
    line = refused(
        capsys, prepare_cli(docs, work / "notes.txt", "--overwrite"), before=before, roots=(work,), names=names,
        work=work,
    )
    assert "is a file; choose a folder" in line


def test_a_link_to_a_run_dir_is_refused_and_nothing_beside_its_target_is_touched(docs, capsys):
    work = docs.parent / "work"
    run = work / "run"
    make_run_dir(run)
    (work / "run.old").mkdir()  # a sibling with the name the old code set a replaced folder aside under
    (work / "run.old" / "keep.txt").write_text("keep")
    (work / "link").symlink_to(run)
    before, names = snapshot(work), listing(work)
    line = refused(
        capsys, prepare_cli(docs, work / "link", "--overwrite"), before=before, roots=(work,), names=names, work=work
    )
    assert f"'{work / 'link'}' holds a run" in line
    assert (work / "link").is_symlink() and (work / "link").resolve() == run


def test_overwrite_through_a_link_replaces_the_dataset_it_points_at_and_nothing_else(docs):
    work = docs.parent / "work"
    data = work / "real"
    assert prepare_cli(docs, data) == 0
    (data.parent / "real.old").mkdir()  # folders of the user's with the names a replacement could use
    (data.parent / "real.old" / "keep.txt").write_text("keep")
    (data.parent / "link.old").mkdir()
    (data.parent / "link.old" / "keep.txt").write_text("keep")
    (work / "link").symlink_to(data)
    theirs = snapshot(work / "real.old", work / "link.old")
    names = listing(work)
    (docs / "doc99.txt").write_text("one more document changes the dataset.\n")
    assert prepare_cli(docs, work / "link", "--overwrite") == 0
    assert (work / "link").is_symlink() and (work / "link").resolve() == data
    assert open_dataset(DataConfig(path=str(work / "link"))).meta["documents"] == {"train": 8, "val": 3}
    assert snapshot(work / "real.old", work / "link.old") == theirs
    assert listing(work) == names


def test_without_overwrite_a_dataset_is_kept_and_with_it_replaced(docs, capsys):
    work = docs.parent / "work"
    out = work / "out"
    assert prepare_cli(docs, out) == 0
    capsys.readouterr()
    before, names = snapshot(out), listing(work)
    line = refused(capsys, prepare_cli(docs, out), before=before, roots=(out,), names=names, work=work)
    assert "holds a dataset; pass --overwrite to replace it" in line
    assert prepare_cli(docs, out, "--overwrite") == 0
    assert listing(work) == names


@pytest.mark.parametrize(
    "error,needle,fix",
    [
        ((errno.ENOSPC, "No space left on device"), "no space left on device", "free space and rerun"),
        ((errno.EACCES, "Permission denied"), "permission denied", "make the folder writable, or choose another --out"),
    ],
    ids=["disk-full", "permission"],
)
@pytest.mark.parametrize("existing", [True, False], ids=["replacing", "new"])
def test_a_failed_write_is_one_line_and_keeps_what_was_there(error, needle, fix, existing, docs, monkeypatch, capsys):
    """The writer fails after writing part of a shard, as a full disk does: one line naming the file,
    what was kept and the fix; the old dataset (or no folder at all) and no partial files left."""
    work = docs.parent / "work"
    out = work / "out"
    if existing:
        assert prepare_cli(docs, out) == 0
    capsys.readouterr()
    before, names = snapshot(work), listing(work)
    real = prep.write_shard

    def full_disk(path, tokens, vocab_size):
        real(path, tokens[: len(tokens) // 2], vocab_size)
        raise OSError(*error)  # what a full disk (or a folder made read-only meanwhile) raises

    monkeypatch.setattr(prep, "write_shard", full_disk)
    line = refused(
        capsys, prepare_cli(docs, out, "--overwrite"), before=before, roots=(work,), names=names, work=work
    )
    assert f"error: {needle} while writing '{partial_folder(out)}/" in line and line.endswith(fix)
    assert (f"nothing was changed in '{out}'" if existing else f"'{out}' was not created") in line


def test_a_killed_preparations_leftovers_are_removed_and_never_taken_for_data(docs):
    """A SIGKILL leaves OUT.partial (and, in the instant of the swap, the set-aside old dataset): neither
    has meta.json, and the next preparation of OUT removes both."""
    work = docs.parent / "work"
    out = work / "out"
    assert prepare_cli(docs, out) == 0
    partial = partial_folder(out)
    partial.mkdir()
    (partial / "docs_train_000000.bin.tmp").write_bytes(b"half a shard")
    aside = work / ".out.old-k1ll3d"
    aside.mkdir()
    (aside / "meta.json").write_text("{}")
    assert prepare_cli(docs, out, "--overwrite") == 0
    assert listing(work) == ["out"]


# A preparation that writes its first shard and then hangs (until the test kills it).
HANGS = """
import sys, time
from data import prepare as prep
real = prep.write_shard
def write_then_hang(*a):
    real(*a)
    time.sleep(600)
prep.write_shard = write_then_hang
prep.main(sys.argv[1:])
"""


def test_a_sigkill_midway_keeps_the_old_dataset_and_its_lock_does_not_outlive_it(docs):
    work = docs.parent / "work"
    out = work / "out"
    assert prepare_cli(docs, out) == 0
    before = snapshot(out)
    flags = ["--source", f"files:{docs}", "--tokenizer", "byte", "--val_every", "5", "--workers", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-c", HANGS, *flags, "--out", str(out), "--overwrite"], cwd=ROOT, env=child_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        while not list(partial_folder(out).glob("*.bin")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        assert list(partial_folder(out).glob("*.bin")), "the preparation never wrote a shard"
    finally:
        proc.kill()
        proc.wait()
    assert snapshot(out) == before and open_dataset(DataConfig(path=str(out))).meta["documents"]["train"] == 8
    assert not (partial_folder(out) / "meta.json").exists()
    assert prepare_cli(docs, out, "--overwrite") == 0  # not blocked by the dead process's lock
    assert listing(work) == ["out"]


def test_something_else_under_the_partial_name_is_refused_not_deleted(docs, capsys):
    work = docs.parent / "work"
    out = work / "out"
    partial = partial_folder(out)
    partial.mkdir()
    (partial / "thesis.tex").write_text("mine")
    before, names = snapshot(work), listing(work)
    line = refused(capsys, prepare_cli(docs, out), before=before, roots=(work,), names=names, work=work)
    assert f"'{partial}' holds other files: thesis.tex" in line


def test_a_second_preparation_of_a_folder_in_use_stops_in_one_line(docs, capsys):
    work = docs.parent / "work"
    out = work / "out"
    assert prepare_cli(docs, out) == 0
    capsys.readouterr()
    with owned(out.resolve(), out, wait=False):  # as a preparation running in another process holds it
        before, names = snapshot(work), listing(work)
        line = refused(
            capsys, prepare_cli(docs, out, "--overwrite"), before=before, roots=(work,), names=names, work=work
        )
    assert f"'{out}' is being prepared by pid {os.getpid()} on " in line and "wait for it to finish" in line
    assert listing(work) == ["out"]  # the lock file goes with its holder


# A run's preparation of a slice of the built-in corpus (enough to take a while), started on a signal.
RACER = """
import itertools, sys, time
from pathlib import Path
import data.sources
from configs import DataConfig
from data.dataset import open_dataset

corpus = data.sources.documents
data.sources.documents = lambda: itertools.islice(corpus(), 300)
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.002)
print(open_dataset(DataConfig(root=sys.argv[1])).fingerprint())
"""


def test_two_runs_that_prepare_the_builtin_corpus_at_once_share_one_dataset(tmp_path):
    """As two runs of a grid on a fresh clone: both start preparing into one folder; one prepares it,
    the other waits and uses it. Both succeed, with the same dataset, and nothing is left beside it."""
    root, go = tmp_path / "prepared", tmp_path / "go"
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    procs = [
        subprocess.Popen([sys.executable, "-c", RACER, str(root), str(go)], cwd=ROOT, env=child_env(), **pipes)
        for _ in range(2)
    ]
    go.touch()
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    prints = [out.splitlines() for out, _ in results]
    assert all(lines[-1] == prints[0][-1] for lines in prints)  # one dataset's fingerprint
    assert sum("preparing the built-in corpus" in lines[0] for lines in prints) >= 1
    assert listing(root) == ["builtin-byte"]
    assert open_dataset(DataConfig(root=str(root))).meta["documents"]["val"] == 15
