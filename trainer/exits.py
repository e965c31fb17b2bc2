"""How a training process ends: its exit codes, the errors behind them, and the exit itself."""

from __future__ import annotations

import os
import signal
import sys
import threading

USER_ERROR_EXIT = 2  # a problem the user can fix; one line on stderr
PREEMPTED_EXIT = 3  # SIGTERM/SIGINT: checkpoint written, resume with --run.resume=true
NONFINITE_EXIT = 4  # the loss became NaN/inf and the policy said stop; the last good checkpoint is kept
DESYNC_EXIT = 5  # parameters differ across ranks: a bug or a hardware fault, never silently trained on
CHECKS_FAILED_EXIT = 6  # a small task's run finished, but a theory check in its summary failed


class NonFiniteLoss(Exception):
    """The loss, the gradients or the parameters became NaN/inf and the policy says stop."""


class RanksDiverged(Exception):
    """Parameters differ across ranks: a bug or a hardware fault."""


def ignore_stop_signals() -> None:
    """Training is over: a SIGTERM/SIGINT now would only turn this process's exit code into a kill."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)


def exit_process(code: int) -> None:
    """End a process that ran distributed without interpreter finalization; others exit normally.

    torch keeps a gloo process group alive past ``destroy_process_group`` once DDP has used it, so its
    worker threads outlive the run. One that still drops a finished collective when the interpreter
    finalizes must take the GIL, and CPython ends such a thread with ``pthread_exit``, which libstdc++
    turns into ``std::terminate``: a SIGABRT, and a failed launch, after a run that had ended well.
    By now every file is written and closed, so skipping finalization loses nothing.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:  # one process: setup_context made no process group
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
