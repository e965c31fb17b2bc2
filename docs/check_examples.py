"""Rerun the examples in the docs and compare what they print with what the docs show.

    python docs/check_examples.py [FILE.md ...]            # default: README.md and docs/*.md
    python docs/check_examples.py --update docs/data.md    # write what the commands print now

An example is a fenced code block whose lines start with ``$ `` (a command, run by bash from the
repository root) followed by what it printed. A block right after the comment ``<!-- setup -->`` is run
first and not compared (the runs the examples read); one after ``<!-- unchecked: why -->`` is skipped
(it needs a GPU, the network, or a signal sent by hand). What differs from run to run is masked before
comparing: durations, rates, progress bars, dates, blank lines. A line ``...`` in the docs stands for any number of
lines. Exit code 1, with a diff per example, when an example no longer prints what the docs say.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```")
MARK = re.compile(r"<!--\s*(setup|unchecked)\b[^>]*-->")
MASKS = [
    (re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}"), "<date>"),
    (re.compile(r"\b\d+:\d{2}(:\d{2})?\b"), "<clock>"),
    (re.compile(r"[\d.,]+\s?[kKMG]?\s?(tokens|tok|it|steps|step|batch|s/it)/s\b"), "<rate>"),
    (re.compile(r"\b\d+(\.\d+)?\s?(s|ms|min)\b"), "<time>"),
]
PROGRESS = re.compile(r"\d+%\||\[\d+:\d{2}(:\d{2})?(<[\d:?]+)?, ")  # a tqdm bar, with or without a total


@dataclass
class Example:
    path: Path
    line: int  # of the block's first line in the file
    kind: str  # "example" | "setup" | "unchecked"
    commands: list[tuple[str, list[str]]] = field(default_factory=list)  # (command, shown output)


def parse(path: Path) -> list[Example]:
    """The code blocks of ``path`` that hold ``$`` commands, with what each is shown to print."""
    lines = path.read_text().splitlines()
    out: list[Example] = []
    kind, i = "example", 0
    while i < len(lines):
        mark = MARK.search(lines[i])
        if mark:
            kind = mark.group(1)
        elif FENCE.match(lines[i]):
            j = i + 1
            while j < len(lines) and not FENCE.match(lines[j]):
                j += 1
            body = lines[i + 1 : j]
            if any(b.startswith("$ ") for b in body):
                ex = Example(path, i + 1, kind)
                for b in body:
                    if b.startswith("$ "):
                        ex.commands.append((b[2:], []))
                    elif ex.commands:
                        ex.commands[-1][1].append(b)
                out.append(ex)
            kind, i = "example", j
        elif lines[i].strip():
            kind = "example"  # a mark applies to the block right after it
        i += 1
    return out


def normalize(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        if PROGRESS.search(line) or not line.strip():  # blank lines carry nothing to compare
            continue
        for pattern, repl in MASKS:
            line = pattern.sub(repl, line)
        out.append(line.rstrip())
    while out and not out[-1]:
        out.pop()
    return out


def matches(shown: list[str], printed: list[str]) -> bool:
    """Whether ``printed`` is ``shown``, a ``...`` line in ``shown`` standing for any lines."""
    if not shown:
        return not printed
    if shown[0].strip() == "...":
        return any(matches(shown[1:], printed[k:]) for k in range(len(printed) + 1))
    return bool(printed) and shown[0] == printed[0] and matches(shown[1:], printed[1:])


def run(command: str, timeout: float) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(  # bytes: text mode would turn each \r into a line of its own
        ["bash", "-c", command], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout
    )
    printed = proc.stdout.decode("utf-8", errors="replace")
    # stdout and stderr interleaved, each line as a terminal leaves it: what its last \r leaves standing
    # (a line that only a progress bar or a cleared terminal line ever occupied is dropped)
    out = []
    for line in printed.replace("\r\n", "\n").split("\n"):
        parts = [p for p in line.split("\r") if p.strip()]
        if "\r" in line and not parts:
            continue
        text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", parts[-1] if parts else "")
        if not PROGRESS.search(text):
            out.append(text)
    return out


def check(path: Path, update: bool = False, timeout: float = 1800) -> list[str]:
    """Run every example of one file in order; the failures, as printable diffs."""
    failures, replacements = [], {}
    for ex in parse(path):
        if ex.kind == "unchecked":
            continue
        for command, shown in ex.commands:
            printed = run(command, timeout)
            if ex.kind == "setup":
                continue
            want, got = normalize(shown), normalize(printed)
            if not matches(want, got):
                diff = "\n".join(difflib.unified_diff(want, got, "shown", "printed", lineterm=""))
                failures.append(f"{path}:{ex.line}: $ {command}\n{diff}")
                replacements[(command, tuple(shown))] = [p for p in printed if p.strip()]
    if update and replacements:
        write_outputs(path, replacements)
    return failures


def write_outputs(path: Path, replacements: dict[tuple[str, tuple[str, ...]], list[str]]) -> None:
    """Put what the commands printed in place of what the docs showed."""
    lines, out, i = path.read_text().splitlines(), [], 0
    while i < len(lines):
        out.append(lines[i])
        if lines[i].startswith("$ "):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("$ ") and not FENCE.match(lines[j]):
                j += 1
            key = (lines[i][2:], tuple(lines[i + 1 : j]))
            out.extend(replacements.get(key, lines[i + 1 : j]))
            i = j
            continue
        i += 1
    path.write_text("\n".join(out) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", type=Path)
    p.add_argument("--update", action="store_true", help="write what the commands print into the files")
    args = p.parse_args(argv)
    files = args.files or [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    failures = [f for path in files for f in check(path, args.update)]
    for f in failures:
        print(f + "\n")
    print(f"{len(failures)} example(s) differ" if failures else "every example prints what the docs show")
    return 1 if failures and not args.update else 0


if __name__ == "__main__":
    sys.exit(main())
