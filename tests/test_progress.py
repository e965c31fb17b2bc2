"""Progress bars: tqdm's bar on a terminal, plain lines every tenth of the way in a log file."""

from __future__ import annotations

import importlib.util
import io
import re
import sys

import pytest
from tqdm import tqdm

import progress
import train
from data import prepare as prep
from progress import PlainProgress, progress_bar

from helpers import ROOT, args

spec = importlib.util.spec_from_file_location("check_examples", ROOT / "docs" / "check_examples.py")
check_examples = importlib.util.module_from_spec(spec)
sys.modules["check_examples"] = check_examples  # its dataclasses look their module up there
spec.loader.exec_module(check_examples)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def expected_counts(updates: list[int], total: int, initial: int = 0) -> list[int]:
    """The reference: the count after each update that reaches a further tenth of ``total``, then the end
    count if that was not printed already."""
    out, n, reached = [], initial, initial * 10 // total
    for u in updates:
        n += u
        if n * 10 // total > reached:
            out.append(n)
            reached = n * 10 // total
    return out if out and out[-1] == n else [*out, n]


def counts(text: str, total: int) -> list[int]:
    return [int(line.split("/")[0].split()[-1]) for line in text.splitlines() if f"/{total} [" in line]


@pytest.mark.parametrize(
    "updates,total,initial",
    [([1] * 100, 100, 0), ([7] * 14 + [2], 100, 0), ([3] * 20, 73, 13), ([1] * 5, 1000, 0), ([5] * 4, 20, 0)],
    ids=["steps", "uneven", "resumed", "short", "coarse"],
)
def test_plain_lines_every_tenth_and_at_the_end(updates, total, initial):
    out = io.StringIO()
    with PlainProgress(total=total, initial=initial, desc="run", unit="step", file=out) as bar:
        for u in updates:
            bar.update(u)
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    assert counts(text, total) == expected_counts(updates, total, initial)
    assert all(line.startswith("run: ") and "step/s" in line for line in text.splitlines())


def test_iterating_prints_like_updating_and_keeps_every_item():
    out = io.StringIO()
    items = list(range(37))
    assert list(progress_bar(items, desc="batches", unit="batch", file=out, leave=False)) == items
    assert counts(out.getvalue(), 37) == expected_counts([1] * 37, 37)


def test_without_a_total_a_line_per_interval_and_one_at_the_end(monkeypatch):
    out = io.StringIO()
    with PlainProgress(desc="corpus", unit="tok", unit_scale=True, file=out) as bar:
        for _ in range(5):
            bar.update(1000)
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[0]]  # a fast run: only the end line
    assert out.getvalue().startswith("corpus: 5.00k [")
    monkeypatch.setattr(progress, "PLAIN_SECONDS", 0.0)
    out = io.StringIO()
    with PlainProgress(desc="corpus", unit="tok", file=out) as bar:
        for _ in range(3):
            bar.update(10)
    assert [line.split(" [")[0] for line in out.getvalue().splitlines()] == ["corpus: 10", "corpus: 20", "corpus: 30"]


def test_disabled_prints_nothing_and_postfix_and_write_as_tqdm(capsys):
    out = io.StringIO()
    with PlainProgress(total=10, file=out, disable=True) as bar:
        bar.update(10)
    assert out.getvalue() == ""
    bar = PlainProgress(total=4, desc="t", file=out)
    bar.set_postfix(tok_s="1,000", loss="2.5000", refresh=False)
    bar.write("a message")
    bar.update(4)
    bar.close()
    bar.close()
    assert out.getvalue().splitlines()[0].endswith(", loss=2.5000, tok_s=1,000]")  # sorted by name, as tqdm
    assert len(out.getvalue().splitlines()) == 1
    assert capsys.readouterr().out == "a message\n"


def test_a_terminal_gets_tqdms_own_bar_with_the_same_arguments():
    term = Terminal()
    bar = progress_bar(total=5, desc="run", unit="step", dynamic_ncols=True, mininterval=0.5, file=term)
    assert type(bar) is tqdm
    assert (bar.total, bar.desc, bar.unit, bar.mininterval) == (5, "run", "step", 0.5)
    bar.update(5)
    bar.close()
    assert "\r" in term.getvalue() and "100%|" in term.getvalue()
    assert type(progress_bar(total=5, file=io.StringIO())) is PlainProgress


def test_the_docs_checker_masks_plain_lines_as_it_masks_bars():
    out = io.StringIO()
    with PlainProgress(total=3, desc="run", unit="step", file=out) as bar:
        bar.update(3)
    with PlainProgress(desc="corpus", unit="tok", unit_scale=True, file=out) as bar:
        bar.update(12345)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and check_examples.normalize(lines) == []


def test_every_bar_is_made_by_progress_bar():
    """A bar made with tqdm directly would fill a log again: only progress.py may import tqdm."""
    found = [
        str(path.relative_to(ROOT))
        for path in ROOT.rglob("*.py")
        if not {"tests", "docs", "build"} & set(path.relative_to(ROOT).parts) and path.name != "progress.py"
        and not any(p.startswith(".") for p in path.relative_to(ROOT).parts)
        and re.search(r"^\s*(from tqdm|import tqdm)", path.read_text(), re.MULTILINE)
    ]
    assert not found, f"use progress.progress_bar instead of tqdm in: {found}"


def test_a_training_runs_log_gets_plain_lines(data_dir, tmp_path, capsys):
    """A run whose stderr is a file (here: captured) logs its progress as at most 11 plain lines."""
    assert train.main([*args(data_dir, tmp_path, "t", steps=20), "--train.progress=true"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("t: ")]
    assert counts(err, 20) == expected_counts([1] * 20, 20) and len(lines) == 10
    assert "loss=" in lines[-1]


def test_prepares_log_gets_one_plain_line(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("\n\n".join(f"document {i} of a small corpus" for i in range(20)))
    flags = ["--tokenizer", "byte", "--workers", "1", "--val_every", "5", "--doc_separator", "\\n\\n"]
    assert prep.main(["--source", f"files:{tmp_path / 'a.txt'}", *flags, "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and len(err.splitlines()) == 1 and err.startswith(f"files:{tmp_path / 'a.txt'} -> byte: ")
