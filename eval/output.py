"""Where the evaluation tools write their results.

The destination is checked before the work starts (a folder where a file is expected, a file where a
folder is expected, a read-only place), so a mistake costs no evaluation. The results are then written
beside their destination and moved into place at the end, so that a write that fails (a full disk, a
folder made read-only meanwhile) removes its partial output and leaves what was there before unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from checkpoints import write_failure
from configs import UserError, what_is

# torch.save reports a full disk as a RuntimeError
WRITE_ERRORS: tuple[type[Exception], ...] = (OSError, RuntimeError)


def nearest_existing(path: Path) -> Path:
    """``path`` itself or the closest folder above it that exists (what a write there needs to create in)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and not path.is_symlink() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: Path, flag: str, folder: bool) -> None:
    """What a write of ``path`` creates its entries in (the folder itself, or a file's folder, or the
    closest one above that exists) is a writable folder."""
    where = nearest_existing(path if folder else path.parent)
    if not where.is_dir():
        raise UserError(f"{flag} '{path}' cannot be created: '{where}' {what_is(where)}; choose another {flag}")
    if not os.access(where, os.W_OK | os.X_OK):  # also false on a read-only file system, even for root
        raise UserError(
            f"{flag} '{path}' cannot be written: '{where}' is read-only; choose another {flag} or fix its permissions"
        )


def check_file_target(path: Path, flag: str) -> None:
    """Before the work: ``flag`` names a file to write (replacing one that is there)."""
    if path.is_dir():
        raise UserError(f"{flag} '{path}' is a folder; pass the path of the file to write, e.g. {path / 'out.json'}")
    check_writable(path, flag, folder=False)


def check_folder_target(path: Path, flag: str) -> None:
    """Before the work: ``flag`` names a folder to write into (created when missing)."""
    if (path.exists() and not path.is_dir()) or (path.is_symlink() and not path.exists()):
        raise UserError(f"{flag} '{path}' {what_is(path)}, not a folder; pass a folder's path")
    check_writable(path, flag, folder=True)


def failed_write(e: Exception, path: Path, flag: str, kept: str) -> UserError:
    """The error line of a write that failed: why, what was kept, and the fix."""
    # a full disk as an OSError, or as the text of a library's own error (safetensors, torch.save)
    if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or os.strerror(errno.ENOSPC) in str(e):
        return UserError(f"no space left on the device writing '{path}'; {kept}; free disk space and run again")
    return UserError(
        f"cannot write '{path}' ({write_failure(e, nearest_existing(path))}); {kept}; "
        f"free disk space or fix its permissions, or choose another {flag}"
    )


def write_file(path: Path, text: str, flag: str) -> None:
    """``text`` into ``path`` whole or not at all: written beside it, then renamed over it."""
    existed = path.exists()
    kept = f"'{path}' is as it was" if existed else "nothing was written"
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except WRITE_ERRORS as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise failed_write(e, path, flag, kept) from None


@contextlib.contextmanager
def staged_folder(
    out: Path, flag: str, replace: bool = False, errors: tuple[type[Exception], ...] = ()
) -> Iterator[Path]:
    """A fresh folder to write the results into; when the block ends they move into ``out`` (with
    ``replace``, instead of what ``out`` held). If a write fails (``WRITE_ERRORS`` and ``errors``), the
    staged files are removed, ``out`` is as it was, and a UserError says so."""
    created = not out.exists()
    held = not created and any(out.iterdir())
    kept = f"what '{out}' held is as it was" if held else "nothing was written"
    try:
        out.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".partial-", dir=out))
    except OSError as e:
        raise failed_write(e, out, flag, kept) from None
    try:
        yield stage
        if replace:
            for old in out.iterdir():
                if old != stage:
                    shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
        for f in stage.iterdir():
            os.replace(f, out / f.name)
    except (*WRITE_ERRORS, *errors) as e:
        raise failed_write(e, out, flag, kept) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if created and not any(out.iterdir()):
            out.rmdir()
