"""The output folder of a preparation: one preparation at a time, never anything but a dataset replaced.

A preparation into OUT holds the lock ``.OUT.lock`` beside it (an advisory ``flock``, released by the kernel
when its process dies, so a lock is never stale), writes into ``OUT.partial``, and only once the dataset is
complete swaps it in for OUT. Under the lock no other preparation of OUT can be running, so a partial
folder found then was left by a killed one and is removed. ``--overwrite`` replaces only a prepared dataset
(``meta.json``, ``*.bin`` shards, a trained tokenizer): a run dir or any other folder is refused. Symlinks
are resolved first, so the folder replaced is the link's target and the link keeps pointing at it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from configs import UserError
from data.tokenizer import BPE_FILE_NAME

try:
    import fcntl
except ImportError:  # Windows has no flock: there, preparations into one folder must not overlap
    fcntl = None

DATASET_FILES = {"meta.json", BPE_FILE_NAME}  # with *.bin shards (and a crash's *.bin.tmp), a dataset's files
RUN_FILES = ("config.toml", "metrics.jsonl", "summary.json")  # what train.py writes first into a run dir
SHOWN = 3  # names quoted in a refusal
FIXES = {
    errno.ENOSPC: "free space and rerun",
    errno.EDQUOT: "free space (disk quota exceeded) and rerun",
    errno.EACCES: "make the folder writable, or choose another --out",
    errno.EPERM: "make the folder writable, or choose another --out",
    errno.EROFS: "choose an --out on a writable disk",
}


def is_dataset_file(path: Path) -> bool:
    name = path.name
    return path.is_file() and (name in DATASET_FILES or name.endswith(".bin") or name.endswith(".bin.tmp"))


def foreign_files(folder: Path) -> list[str]:
    """Names in ``folder`` that no prepared dataset holds, sorted; [] for a dataset or an empty folder."""
    return sorted(p.name for p in folder.iterdir() if not is_dataset_file(p))


def describe(names: list[str]) -> str:
    """What a folder of these (foreign) names looks like: 'a run: config.toml, metrics.jsonl'."""
    runs = [n for n in names if n in RUN_FILES or re.fullmatch(r"ckpt_\d+\.pt", n)]
    shown = (runs or names)[:SHOWN]
    more = len(names) - len(shown)
    return f"{'a run' if runs else 'other files'}: {', '.join(shown)}{f' and {more} more' if more > 0 else ''}"


def check_not_foreign(folder: Path, shown: Path | str) -> None:
    foreign = foreign_files(folder)
    if foreign:
        raise UserError(
            f"'{shown}' holds {describe(foreign)}, not a prepared dataset (meta.json, *.bin shards); "
            "data.prepare writes and replaces only datasets: choose another --out"
        )


def partial_folder(target: Path) -> Path:
    """Where a preparation of ``target`` writes until it is complete: nothing in ``target`` changes before."""
    return target.with_name(target.name + ".partial")


def leftovers(target: Path) -> list[Path]:
    """Folders a killed preparation of ``target`` can leave: its partial folder, and the old dataset set
    aside during the final swap."""
    old = re.compile(rf"\.{re.escape(target.name)}\.old-\w+")
    found = [p for p in target.parent.iterdir() if old.fullmatch(p.name)]
    partial = partial_folder(target)
    return [partial, *found] if partial.exists() or partial.is_symlink() else found


def sweep(target: Path) -> None:
    """Remove what a killed preparation left (called under the lock: its owner is gone). Only a real folder
    of dataset files is removed; anything else under those names is refused, never deleted."""
    for path in leftovers(target):
        if path.is_symlink() or not path.is_dir():
            raise UserError(f"'{path}' is in the way of the preparation of '{target}'; move it away and rerun")
        check_not_foreign(path, path)
        shutil.rmtree(path)


@contextlib.contextmanager
def owned(target: Path, shown: Path | str, wait: bool) -> Iterator[None]:
    """Hold ``target``'s preparation lock for the block. Another holder makes this wait (``wait``) or stop
    with one line naming it. The lock file is removed on release; a waiter that then holds a removed file
    opens the new one instead (otherwise two processes could each hold a different file)."""
    path = target.with_name(f".{target.name}.lock")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create '{target.parent}' ({e.strerror}); choose another --out") from None
    if fcntl is None:
        yield
        return
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot write in '{target.parent}' ({e.strerror}); choose another --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(
                f"'{shown}' is being prepared by {holder}; wait for it to finish (then use it), or choose another --out"
            ) from None
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # before the lock is released: see the retry above
        os.close(fd)


def start_output(target: Path, shown: Path | str, overwrite: bool) -> Path:
    """Check that ``target`` may be written (under the lock) and return an empty partial folder beside it."""
    if target.exists() and not target.is_dir():
        raise UserError(f"--out '{shown}' is a file; choose a folder")
    if target.is_dir():
        check_not_foreign(target, shown)
        if any(target.iterdir()) and not overwrite:
            raise UserError(f"'{shown}' holds a dataset; pass --overwrite to replace it, or choose another --out")
    sweep(target)
    tmp = partial_folder(target)
    try:
        tmp.mkdir()
    except OSError as e:
        raise UserError(f"cannot create '{tmp}' ({e.strerror}); choose another --out") from None
    return tmp


def finish_output(tmp: Path, target: Path) -> None:
    """Put the complete dataset in place of ``target``; an old one is set aside under a name only this
    preparation uses, and removed once the new one is in place."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old)  # onto the empty folder just made
    try:
        os.replace(tmp, target)
    except OSError:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old)


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Name ``path`` in an OSError from the block that names no file (a full disk fails a bare write())."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = str(path)
        raise


def write_failure(e: OSError, tmp: Path, shown: Path | str, existed: bool) -> str:
    """The one-line report of a failed preparation: what failed, that ``--out`` was left alone, the fix."""
    what = (e.strerror or str(e) or type(e).__name__).lower()
    if e.filename is not None:  # a file of the new dataset, or one outside it (the source's, the swap's)
        what += f" {'while writing' if Path(e.filename).is_relative_to(tmp) else 'at'} '{e.filename}'"
    kept = f"nothing was changed in '{shown}'" if existed else f"'{shown}' was not created"
    return f"{what}; {kept}; {FIXES.get(e.errno, 'fix the cause and rerun')}"
