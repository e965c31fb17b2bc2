"""A run dir has one owner: the lock that says which process writes it, and the rules for starting in it.

The lock is ``<run dir>/.lock``, created exclusively by rank 0 with its host, pid and process start
time. A second run (or a resume while the first is alive) is refused with one line; a lock whose process
is gone (killed, crashed) is taken over, since only a live process can own a run dir. The start time tells
a live owner from a new process that reused its pid.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from checkpoints import list_checkpoints
from configs import UserError, what_is

LOCK = ".lock"


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), or None where it cannot be read."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def alive(owner: dict) -> bool | None:
    """Whether the lock's process still runs: None when it runs on another host (it cannot be seen)."""
    if owner.get("host") != socket.gethostname():
        return None
    pid = int(owner.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = owner.get("started")
    return started is None or process_start(pid) in (None, started)


class RunLock:
    def __init__(self, run_dir: Path):
        self.run_dir, self.path = run_dir, run_dir / LOCK
        self.created_dir = False
        self.held = False

    def acquire(self, say) -> None:
        """Own the run dir, creating it if needed; refuses one that a live process owns."""
        self.created_dir = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a file, or a symlink to nothing
            what = what_is(self.run_dir)
            raise UserError(f"run dir '{self.run_dir}' {what}; choose another --run.dir or --run.name") from None
        except NotADirectoryError:
            raise UserError(f"run dir '{self.run_dir}' is a file; choose another --run.dir or --run.name") from None
        except OSError as e:
            msg = f"cannot create run dir '{self.run_dir}' ({e.strerror}); choose another --run.dir"
            raise UserError(msg) from None
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": process_start(os.getpid())}
        me["since"] = time.strftime("%Y-%m-%d %H:%M:%S")
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self.take_over_if_stale(say)
                continue
            except OSError as e:
                msg = f"cannot write in run dir '{self.run_dir}' ({e.strerror}); fix its permissions"
                raise UserError(msg) from None
            self.held = True  # the file is ours from here: release() removes it on every way out
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps(me) + "\n")
            except OSError as e:  # a full disk: the lock must not outlive this failed start
                self.release()
                raise UserError(f"cannot write in run dir '{self.run_dir}' ({e.strerror}); free disk space") from None
            return
        raise UserError(f"another run took '{self.path}' just now; wait for it or choose another --run.name")

    def take_over_if_stale(self, say) -> None:
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            owner = {}
        state = alive(owner) if owner else False
        if state is False:
            say(f"warning: '{self.path}' was left by a run that is gone (pid {owner.get('pid', '?')}); taking it over")
            self.path.unlink(missing_ok=True)
            return
        where = f"pid {owner.get('pid')} on {owner.get('host')}, since {owner.get('since')}"
        if state is None:
            raise UserError(
                f"run dir '{self.run_dir}' is locked by {where}, another host; if that run is over, delete "
                f"{self.path} and start again"
            )
        raise UserError(f"run dir '{self.run_dir}' is in use by {where}; wait for it or choose another --run.name")

    def release(self) -> None:
        """Give the run dir up; one this run created and left empty (a failed start) goes too."""
        if not self.held:
            return
        self.held = False
        try:
            self.path.unlink(missing_ok=True)
        except OSError:  # the run dir itself went away or became read-only: nothing left to give up
            pass
        if self.created_dir:
            try:
                self.run_dir.rmdir()  # only if empty
            except OSError:
                pass


def check_start(run_dir: Path, resuming: bool, overwrite: bool) -> bool:
    """May a run start in ``run_dir``? True when it holds a run that ``overwrite`` will replace."""
    occupied = bool(list_checkpoints(run_dir)) or (run_dir / "metrics.jsonl").exists()
    if occupied and not resuming and not overwrite:
        raise UserError(
            f"run dir '{run_dir}' already holds a run; pass --run.resume=true to continue it, "
            "--run.overwrite=true to replace it, or choose another --run.name"
        )
    return occupied and overwrite and not resuming


def clear_run(run_dir: Path) -> None:
    """What a replaced run leaves: its checkpoints, metrics and summary (other files stay)."""
    for p in [*run_dir.glob("ckpt_*"), *(run_dir / f for f in ("metrics.jsonl", "summary.json", "wandb_id.txt"))]:
        p.unlink(missing_ok=True)
