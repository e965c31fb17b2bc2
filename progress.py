"""Progress bars that also read well in a log file.

On a terminal ``progress_bar`` is tqdm's bar, unchanged. Anywhere else (a log file, a pipe, a batch job's
output) a bar redrawn in place piles up as megabytes of carriage-return lines, so it prints a plain line
every tenth of the way and one at the end instead, with the same description, count and rate; without a
known total, a line every ``PLAIN_SECONDS``. Nothing of the project is imported here, so every layer (and
``python -m data.prepare``, which never loads torch) can use it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

from tqdm import tqdm

PLAIN_LINES = 10  # lines over a known total: one per tenth
PLAIN_SECONDS = 60.0  # without a total: one line a minute
# tqdm's "[elapsed<remaining, rate]" kept as it is, so tools that mask a bar's timings mask these lines too
PLAIN_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
PLAIN_FORMAT_NO_TOTAL = "{desc}: {n_fmt} [{elapsed}, {rate_fmt}{postfix}]"


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class PlainProgress:
    """The part of tqdm's interface the project uses (iterate, ``with``, ``update``, ``set_postfix``,
    ``write``, ``close``, ``n``, ``total``), printing plain lines instead of redrawing a bar.

    tqdm's other options (``leave``, ``dynamic_ncols``, ``mininterval``, ...) only shape a terminal's bar
    and are accepted and ignored.
    """

    def __init__(
        self,
        iterable: Iterable | None = None,
        desc: str = "",
        total: float | None = None,
        unit: str = "it",
        unit_scale: bool = False,
        initial: int = 0,
        disable: bool = False,
        file: IO[str] | None = None,
        **terminal_only: Any,
    ):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.desc, self.total, self.unit, self.unit_scale = iterable, desc, total, unit, unit_scale
        self.n = self.initial = initial
        self.disable = disable
        self.file = file or sys.stderr
        self.postfix = ""
        self.start = self.last_time = time.monotonic()
        self.printed_n = initial  # a resumed count starts where it was: that is no progress yet
        self.printed_part = self.part(initial)

    def part(self, n: float) -> int:
        """How many tenths of the total ``n`` has reached."""
        return int(n * PLAIN_LINES // self.total) if self.total else 0

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()  # as tqdm does: an exhausted iteration prints its last line

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        if self.disable:
            return
        if self.total:
            due = self.part(self.n) > self.printed_part
        else:
            due = time.monotonic() - self.last_time >= PLAIN_SECONDS
        if due:
            self.print_line()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        """As tqdm: ``key=value`` pairs after the rate (keyword arguments sorted by name); shown at the next line."""
        items = {**(ordered_dict or {}), **{k: kwargs[k] for k in sorted(kwargs)}}
        self.postfix = ", ".join(f"{k}={str(v).strip()}" for k, v in items.items())

    @staticmethod
    def write(s: str, file: IO[str] | None = None, end: str = "\n") -> None:
        """A message between progress lines (stdout by default, as tqdm.write)."""
        print(s, file=file or sys.stdout, end=end, flush=True)

    def close(self) -> None:
        if not self.disable and self.n != self.printed_n:
            self.print_line()
        self.disable = True  # closing twice, or an update after closing, prints nothing

    def print_line(self) -> None:
        now = time.monotonic()
        line = tqdm.format_meter(
            self.n,
            self.total or None,
            now - self.start,
            prefix=self.desc,
            unit=self.unit,
            unit_scale=self.unit_scale,
            postfix=self.postfix,
            bar_format=PLAIN_FORMAT if self.total else PLAIN_FORMAT_NO_TOTAL,
            initial=self.initial,
        )
        print(line, file=self.file, flush=True)
        self.printed_n, self.printed_part, self.last_time = self.n, self.part(self.n), now


ProgressBar = tqdm | PlainProgress


def progress_bar(iterable: Iterable | None = None, *, file: IO[str] | None = None, **kwargs: Any) -> ProgressBar:
    """tqdm's bar on a terminal; plain lines every tenth of the way (or minute) anywhere else.

    Takes tqdm's arguments; ``file`` defaults to stderr, as tqdm's does.
    """
    file = file or sys.stderr
    if is_terminal(file):
        return tqdm(iterable, file=file, **kwargs)
    return PlainProgress(iterable, file=file, **kwargs)
