"""Compare runs: cells of seeds with their mean and 95% interval, the effect of symmetry breaking, plots.

    python -m eval.report runs/adamw_bqbv_s0 runs/adamw_symmetric_s0 ... --out reports/compare

Per run: final and best validation loss (summary.json, or metrics.jsonl for an unfinished run), the
logic scores when the run dir holds a logic.json (written by python -m eval.logic), tokens and wall time.

Runs form **cells** by everything that differs between them except the seed: the flattened config.toml
of every run is compared key by key (an optimizer's own table only among runs of that optimizer), and
the keys whose values differ, apart from bookkeeping (names, paths, seeds, logging), name the cells.
A cell's numbers are the mean over its runs and a 95% Student-t interval, mean ± t(0.975, n−1)·s/√n.

The **effect of symmetry breaking** compares each cell whose symmetry.mode is not symmetric with the
cell that differs from it in the mode alone, paired by seed (the same seed gives both the same
initialisation and data order): the mean of the per-seed differences and its t interval. A negative
effect on the loss means the biases helped.

Writes DIR/report.md, DIR/report.json (every number of the tables), DIR/val_loss.png (each cell's
mean curve over its seeds, the band spanning their minimum and maximum), DIR/effects.png when there
are effects, and DIR/logic.png when any run has a logic.json.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from configs import MODES, ArgumentParser, UserError, command
from eval.output import check_folder_target, staged_folder
from progress import progress_bar

# Keys that never tell cells apart: where a run lives and how it reports, not what it computes.
BOOKKEEPING = {
    "run.name",
    "run.dir",
    "run.seed",
    "run.resume",
    "run.checkpoint",
    "run.overwrite",
    "run.device",
    "run.threads",
    "run.wandb",
    "run.wandb_project",
    "train.progress",
    "train.log_interval",
    "train.checkpoint_interval",
    "train.keep_checkpoints",
    "train.peak_flops",
    "eval.sample_tokens",
    "eval.sample_prompt",
    "eval.logic",
    "eval.logic_n",
}
AXES = ("optim.name", "symmetry.mode")  # always in a cell's label


@functools.cache
def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p > 0.5) of Student's t with ``df`` degrees of freedom: the density integrated
    by Simpson's rule from 0 and the CDF inverted by bisection (accurate to about 1e-9)."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(t: float, n: int = 2000) -> float:
        h = t / n
        f = [math.exp(log_c - (df + 1) / 2 * math.log1p((i * h) ** 2 / df)) for i in range(n + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        hi *= 2
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Estimate:
    """A mean over n values and its 95% t interval (no interval for n = 1)."""

    mean: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Estimate | None:
        vals = [v for v in values if v is not None and math.isfinite(v)]
        if not vals:
            return None
        m = float(np.mean(vals))
        if len(vals) == 1:
            return cls(m, math.nan, math.nan, 1)
        half = t_quantile(0.975, len(vals) - 1) * float(np.std(vals, ddof=1)) / math.sqrt(len(vals))
        return cls(m, m - half, m + half, len(vals))

    def excludes_zero(self) -> bool:
        return self.n > 1 and (self.lo > 0 or self.hi < 0)

    def format(self, spec: str) -> str:
        if self.n == 1:
            return format(self.mean, spec)
        return f"{format(self.mean, spec)} [{format(self.lo, spec)}, {format(self.hi, spec)}]"

    def to_json(self) -> dict[str, float]:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi, "n": self.n}


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = tuple(value) if isinstance(value, list) else value
    return out


@dataclass
class RunRecord:
    run_dir: Path
    config: dict[str, Any]  # config.toml, flattened to dotted keys
    final_val: float | None
    best_val: float | None
    tokens: int | None
    wall_s: float | None
    curve: list[tuple[int, float]] = field(default_factory=list)  # (tokens, val_loss)
    logic: dict[str, Any] | None = None  # logic.json as written by eval.logic

    @property
    def optimizer(self) -> str:
        return self.config.get("optim.name", "?")

    @property
    def mode(self) -> str:
        return self.config.get("symmetry.mode", "?")

    @property
    def seed(self) -> int:
        return self.config.get("run.seed", 0)

    def logic_score(self, key: str) -> float | None:
        return None if self.logic is None else self.logic.get("summary", {}).get(key)


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a kill mid-write
    return out


def read_run(run_dir: str | Path) -> RunRecord:
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.toml"
    if not cfg_path.is_file():
        raise UserError(f"'{run_dir}' has no config.toml; pass run dirs written by train.py")
    metrics = read_metrics(run_dir / "metrics.jsonl")
    curve = [(int(r.get("tokens", 0)), float(r["val_loss"])) for r in metrics if r.get("val_loss") is not None]
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    vals = [v for _, v in curve]
    logic_path = run_dir / "logic.json"
    return RunRecord(
        run_dir=run_dir,
        config=flatten(tomllib.loads(cfg_path.read_text())),
        final_val=summary.get("final_val_loss", vals[-1] if vals else None),
        best_val=summary.get("best_val_loss", min(vals) if vals else None),
        tokens=summary.get("tokens", max((int(r.get("tokens", 0)) for r in metrics), default=None)),
        wall_s=summary.get("wall_s"),
        curve=curve,
        logic=json.loads(logic_path.read_text()) if logic_path.exists() else None,
    )


def defining_keys(records: list[RunRecord]) -> list[str]:
    """The config keys whose values differ between runs, bookkeeping aside. A key of an optimizer's own
    table (optim.<name>.<knob>) is compared among the runs of that optimizer only."""
    keys = sorted({k for r in records for k in r.config} - BOOKKEEPING)
    out = []
    for key in keys:
        parts = key.split(".")
        among = records
        if parts[0] == "optim" and len(parts) == 3:
            among = [r for r in records if r.optimizer == parts[1]]
        if len({repr(r.config.get(key)) for r in among}) > 1:
            out.append(key)
    return out


@dataclass
class Cell:
    key: tuple  # the values of the defining keys
    label: str
    runs: list[RunRecord]

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    def estimate(self, value) -> Estimate | None:
        return Estimate.of([value(r) for r in self.runs])


def _mode_rank(mode: str) -> int:
    return MODES.index(mode) if mode in MODES else len(MODES)


def cells(records: list[RunRecord]) -> list[Cell]:
    """Runs grouped by the values of their defining keys, ordered by optimizer, then mode, then the rest."""
    keys = [k for k in AXES if k in defining_keys(records)]
    keys += [k for k in defining_keys(records) if k not in AXES]
    grouped: dict[tuple, list[RunRecord]] = {}
    for r in sorted(records, key=lambda r: (r.seed, str(r.run_dir))):
        grouped.setdefault(tuple(r.config.get(k) for k in keys), []).append(r)

    def label(run: RunRecord) -> str:
        extra = [f"{k}={run.config.get(k)}" for k in keys if k not in AXES]
        return " · ".join([run.optimizer, run.mode, *extra])

    def order(item: tuple[tuple, list[RunRecord]]) -> tuple:
        run = item[1][0]
        return (run.optimizer, _mode_rank(run.mode), label(run))

    return [Cell(k, label(runs[0]), runs) for k, runs in sorted(grouped.items(), key=order)]


@dataclass
class Effect:
    cell: Cell  # the cell with biases
    baseline: Cell  # the same cell in symmetric mode
    final: Estimate | None
    best: Estimate | None
    seeds: list[int]


def effects(groups: list[Cell]) -> list[Effect]:
    """For every cell with a mode other than symmetric whose symmetric twin exists: the paired differences."""
    out = []

    def rest(c: Cell) -> tuple:
        r = c.runs[0]
        return (r.optimizer, tuple((k, v) for k, v in sorted(r.config.items()) if k not in BOOKKEEPING | set(AXES)))

    symmetric = {rest(c): c for c in groups if c.runs[0].mode == "symmetric"}
    for c in groups:
        base = symmetric.get(rest(c))
        if c.runs[0].mode == "symmetric" or base is None:
            continue
        ours, theirs = {r.seed: r for r in c.runs}, {r.seed: r for r in base.runs}
        seeds = sorted(set(ours) & set(theirs))
        if seeds:
            final = _paired([ours[s].final_val for s in seeds], [theirs[s].final_val for s in seeds])
            best = _paired([ours[s].best_val for s in seeds], [theirs[s].best_val for s in seeds])
            out.append(Effect(c, base, final, best, seeds))
    return out


def _paired(a: list[float | None], b: list[float | None]) -> Estimate | None:
    return Estimate.of([x - y for x, y in zip(a, b) if x is not None and y is not None])


SCORES = (  # header, value of a run, format: the numbers of a cell
    ("final val loss", lambda r: r.final_val, ".4f"),
    ("best val loss", lambda r: r.best_val, ".4f"),
    ("logic top-1", lambda r: r.logic_score("logic_top1"), ".3f"),
    ("logic top-5", lambda r: r.logic_score("logic_top5"), ".3f"),
    ("logic loss (paper)", lambda r: r.logic_score("logic_loss"), ".3f"),
)


def _cell(e: Estimate | None, spec: str) -> str:
    return "–" if e is None else e.format(spec)


def _fmt(v: float | None, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def markdown_tables(groups: list[Cell], found: list[Effect]) -> str:
    head = ["cell", "seeds"] + [s[0] for s in SCORES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in groups:
        row = [c.label, ",".join(map(str, c.seeds))] + [_cell(c.estimate(get), spec) for _, get, spec in SCORES]
        lines.append("| " + " | ".join(row) + " |")
    if found:
        head = ["cell", "vs", "paired seeds", "Δ final val loss", "Δ best val loss", "interval clear of 0"]
        lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for e in found:
            clear = "yes" if e.final is not None and e.final.excludes_zero() else "no"
            row = [e.cell.label, e.baseline.label, ",".join(map(str, e.seeds)), _cell(e.final, "+.4f")]
            lines.append("| " + " | ".join(row + [_cell(e.best, "+.4f"), clear]) + " |")
    head = ["cell", "seed", "run", "final val loss", "best val loss", "logic top-1", "tokens", "wall (s)"]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in groups:
        for r in c.runs:
            row = [c.label, str(r.seed), r.run_dir.name, _fmt(r.final_val, ".4f"), _fmt(r.best_val, ".4f")]
            row += [_fmt(r.logic_score("logic_top1"), ".3f"), _fmt(r.tokens, ",.0f"), _fmt(r.wall_s, ".0f")]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def report_json(groups: list[Cell], found: list[Effect]) -> dict[str, Any]:
    def est(e: Estimate | None) -> dict | None:
        return None if e is None else e.to_json()

    return {
        "cells": [
            {
                "label": c.label,
                "optimizer": c.runs[0].optimizer,
                "mode": c.runs[0].mode,
                "seeds": c.seeds,
                "runs": [str(r.run_dir) for r in c.runs],
                **{name: est(c.estimate(get)) for name, get, _ in SCORES},
            }
            for c in groups
        ],
        "effects": [
            {"cell": e.cell.label, "vs": e.baseline.label, "seeds": e.seeds, "final_val_loss": est(e.final)}
            | {"best_val_loss": est(e.best)}
            for e in found
        ],
    }


def logic_category_scores(run: RunRecord) -> dict[str, float]:
    """Each category's headline number: top-1 for answer categories, the perplexity ratio for pairs."""
    cats = (run.logic or {}).get("categories", {})
    return {c: s["top1"] if "top1" in s else s["ppl_ratio"] for c, s in cats.items()}


def mean_curve(runs: list[RunRecord]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(tokens, mean, min, max) over the runs at the token counts every run logged."""
    curves = [dict(r.curve) for r in runs if r.curve]
    if not curves:
        return None
    xs = sorted(set.intersection(*(set(c) for c in curves)))
    if not xs:
        return None
    ys = np.array([[c[x] for x in xs] for c in curves])
    return np.array(xs), ys.mean(0), ys.min(0), ys.max(0)


def plot(groups: list[Cell], found: list[Effect], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {c.label: plt.cm.tab20(i % 20) for i, c in enumerate(groups)}
    styles = {m: s for m, s in zip(MODES, ["-", "--", ":", "-."])}
    written = []
    fig, ax = plt.subplots(figsize=(8, 5))
    for c in groups:
        curve = mean_curve(c.runs)
        if curve is None:
            continue
        x, mean, lo, hi = curve
        ax.plot(x, mean, styles.get(c.runs[0].mode, "-"), color=colors[c.label], label=f"{c.label} (n={len(c.runs)})")
        if len(c.runs) > 1:
            ax.fill_between(x, lo, hi, color=colors[c.label], alpha=0.15, lw=0)
    ax.set_xlabel("tokens")
    ax.set_ylabel("validation loss")
    ax.set_title("validation loss: mean over seeds, band from their min to max")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    finals = [r.final_val for c in groups for r in c.runs if r.final_val is not None]
    if finals:  # the first evaluations (ln V at init) would flatten the part the comparison is about
        ax.set_ylim(min(finals) - 0.1, max(finals) + 0.6)
    path = out / "val_loss.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    written.append(path)

    if found:
        fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(found) + 2), 4))
        xs = np.arange(len(found))
        means = [e.final.mean if e.final else math.nan for e in found]
        err = [[m - e.final.lo, e.final.hi - m] if e.final and e.final.n > 1 else [0, 0] for m, e in zip(means, found)]
        ax.bar(xs, means, yerr=np.array(err).T, color=[colors[e.cell.label] for e in found], capsize=3)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(xs, [e.cell.label for e in found], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("Δ final val loss vs symmetric")
        ax.set_title("effect of symmetry breaking (paired by seed; 95% t interval)")
        ax.grid(axis="y", alpha=0.3)
        path = out / "effects.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    with_logic = [(c, [r for r in c.runs if r.logic]) for c in groups]
    with_logic = [(c, runs) for c, runs in with_logic if runs]
    if with_logic:
        kinds: dict[str, bool] = {}  # category -> is an answer category
        for _, runs in with_logic:
            for r in runs:
                for name, s in r.logic.get("categories", {}).items():
                    kinds[name] = "top1" in s
        panels = [[n for n, a in kinds.items() if a], [n for n, a in kinds.items() if not a]]
        widths = [max(1, len(panels[0])), max(1, len(panels[1]))]
        fig, axes = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": widths})
        width = 0.8 / len(with_logic)
        for j, (c, runs) in enumerate(with_logic):
            scores = [logic_category_scores(r) for r in runs]
            for ax, names in zip(axes, panels):
                ests = [Estimate.of([s.get(n) for s in scores]) for n in names]
                mean = [e.mean if e else math.nan for e in ests]
                err = [[e.mean - e.lo, e.hi - e.mean] if e and e.n > 1 else [0, 0] for e in ests]
                xs = np.arange(len(names)) + j * width
                ax.bar(xs, mean, width, yerr=np.array(err).T if names else None, color=colors[c.label],
                       label=f"{c.label} (n={len(runs)})")  # fmt: skip
        for ax, names, label in zip(axes, panels, ("top-1", "perplexity ratio")):
            ax.set_xticks(np.arange(len(names)) + width * (len(with_logic) - 1) / 2, names, rotation=30)
            ax.set_ylabel(label)
            ax.grid(axis="y", alpha=0.3)
        axes[0].set_ylim(0, 1)
        axes[1].axhline(1.0, color="k", lw=0.8)
        axes[0].legend(fontsize=6)
        fig.suptitle("logic suite by category (mean over seeds; bars: 95% t interval)")
        path = out / "logic.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def build_report(run_dirs: list[str | Path], out: str | Path, title: str = "Run comparison") -> Path:
    """Read the runs, write report.md, report.json and the plots into ``out``; returns the markdown's path."""
    if not run_dirs:
        raise UserError("no run dirs given; pass one or more folders written by train.py")
    refuse_duplicates(run_dirs)
    out = Path(out)
    check_folder_target(out, "--out")
    records = [read_run(d) for d in progress_bar(run_dirs, desc="reading runs", unit="run", leave=False)]
    groups = cells(records)
    found = effects(groups)
    with staged_folder(out, "--out") as stage:
        pngs = plot(groups, found, stage)
        (stage / "report.json").write_text(json.dumps(report_json(groups, found), indent=2) + "\n")
        md = [f"# {title}", "", markdown_tables(groups, found), ""]
        md += [f"![{p.stem}]({p.name})" for p in pngs]
        (stage / "report.md").write_text("\n".join(md) + "\n")
    return out / "report.md"


def refuse_duplicates(run_dirs: list[str | Path]) -> None:
    """Each run once: a run given twice (by two paths or symlinks to one folder) would count as two seeds."""
    seen: dict[Path, str | Path] = {}
    for d in run_dirs:
        real = Path(d).resolve()
        if real in seen and str(seen[real]) == str(d):
            raise UserError(f"run dir '{d}' is given twice; pass each run once")
        if real in seen:
            raise UserError(f"run dirs '{seen[real]}' and '{d}' are one run ('{real}'); pass each run once")
        seen[real] = d


@command
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description="Cells of seeds with 95% intervals, symmetry-breaking effects, plots.")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", required=True, help="folder for report.md, report.json and the PNGs")
    args = p.parse_args(argv)
    path = build_report(args.run_dirs, args.out)
    print(path.read_text().split("\n\n")[1])
    print(f"wrote {path} and its plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
