"""Compare runs: a markdown table (optimizer x mode x seed) and plots.

    python -m eval.report runs/adamw_bqbv_s0 runs/adamw_symmetric_s0 ... --out reports/compare

Per run: final and best validation loss (summary.json, or metrics.jsonl for an unfinished run),
overall logic top-1/top-5 when the run dir holds a logic.json (written by python -m eval.logic),
tokens and wall time. Runs sharing optimizer and mode are a group; a group of two or more adds a
"mean ± std" row (sample standard deviation over its runs, normally its seeds).
Writes DIR/report.md, DIR/val_loss.png and, when any run has a logic.json, DIR/logic.png.
"""

from __future__ import annotations

import json
import math
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from configs import ArgumentParser, UserError, command
from eval.logic import ANSWER_CATEGORIES, PAIR_CATEGORIES


@dataclass
class RunRecord:
    run_dir: Path
    optimizer: str
    mode: str
    seed: int
    final_val: float | None
    best_val: float | None
    tokens: int | None
    wall_s: float | None
    curve: list[tuple[int, float]] = field(default_factory=list)  # (tokens, val_loss)
    logic: dict[str, Any] | None = None  # logic.json as written by eval.logic

    @property
    def group(self) -> tuple[str, str]:
        return self.optimizer, self.mode

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
    cfg = tomllib.loads(cfg_path.read_text())
    metrics = read_metrics(run_dir / "metrics.jsonl")
    curve = [(int(r.get("tokens", 0)), float(r["val_loss"])) for r in metrics if r.get("val_loss") is not None]
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    vals = [v for _, v in curve]
    logic_path = run_dir / "logic.json"
    return RunRecord(
        run_dir=run_dir,
        optimizer=cfg.get("optim", {}).get("name", "?"),
        mode=cfg.get("symmetry", {}).get("mode", "?"),
        seed=cfg.get("run", {}).get("seed", 0),
        final_val=summary.get("final_val_loss", vals[-1] if vals else None),
        best_val=summary.get("best_val_loss", min(vals) if vals else None),
        tokens=summary.get("tokens", max((int(r.get("tokens", 0)) for r in metrics), default=None)),
        wall_s=summary.get("wall_s"),
        curve=curve,
        logic=json.loads(logic_path.read_text()) if logic_path.exists() else None,
    )


def _fmt(v: float | None, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def _mean_std(values: list[float | None], spec: str) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "–"
    if len(vals) == 1:
        return format(vals[0], spec)
    return f"{format(float(np.mean(vals)), spec)} ± {format(float(np.std(vals, ddof=1)), spec)}"


COLUMNS = (  # header, value of a run, format
    ("final val loss", lambda r: r.final_val, ".4f"),
    ("best val loss", lambda r: r.best_val, ".4f"),
    ("logic top-1", lambda r: r.logic_score("logic_top1"), ".3f"),
    ("logic top-5", lambda r: r.logic_score("logic_top5"), ".3f"),
    ("tokens", lambda r: r.tokens, ",.0f"),
    ("wall (s)", lambda r: r.wall_s, ".0f"),
)


def groups(records: list[RunRecord]) -> dict[tuple[str, str], list[RunRecord]]:
    out: dict[tuple[str, str], list[RunRecord]] = {}
    for r in sorted(records, key=lambda r: (r.optimizer, r.mode, r.seed, str(r.run_dir))):
        out.setdefault(r.group, []).append(r)
    return out


def markdown_table(records: list[RunRecord]) -> str:
    head = ["optimizer", "mode", "seed", "run"] + [c[0] for c in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (opt, mode), runs in groups(records).items():
        for r in runs:
            cells = [opt, mode, str(r.seed), r.run_dir.name] + [_fmt(get(r), spec) for _, get, spec in COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
        if len(runs) > 1:
            cells = [opt, mode, f"mean ± std (n={len(runs)})", ""]
            cells += [_mean_std([get(r) for r in runs], spec) for _, get, spec in COLUMNS]
            lines.append("| " + " | ".join(f"**{c}**" if c else c for c in cells) + " |")
    return "\n".join(lines)


def logic_category_scores(run: RunRecord) -> dict[str, float]:
    """Each category's headline number: top-1 for answer categories, the perplexity ratio for pairs."""
    cats = (run.logic or {}).get("categories", {})
    return {c: s["top1"] if "top1" in s else s["ppl_ratio"] for c, s in cats.items()}


def plot(records: list[RunRecord], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped = groups(records)
    colors = {g: plt.cm.tab10(i % 10) for i, g in enumerate(grouped)}
    styles = ["-", "--", ":", "-."]
    written = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for g, runs in grouped.items():
        for i, r in enumerate(runs):
            if r.curve:
                x, y = zip(*r.curve)
                ax.plot(x, y, styles[i % len(styles)], color=colors[g], label=f"{g[0]} {g[1]} seed {r.seed}")
    ax.set_xlabel("tokens")
    ax.set_ylabel("validation loss")
    ax.set_title("validation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    path = out / "val_loss.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    written.append(path)

    with_logic = {g: [r for r in runs if r.logic] for g, runs in grouped.items()}
    with_logic = {g: runs for g, runs in with_logic.items() if runs}
    if with_logic:
        present = {c for runs in with_logic.values() for r in runs for c in logic_category_scores(r)}
        answer = [c for c in ANSWER_CATEGORIES if c in present]
        pairs = [c for c in PAIR_CATEGORIES if c in present]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [max(1, len(answer)), 2]})
        width = 0.8 / len(with_logic)
        for j, (g, runs) in enumerate(with_logic.items()):
            scores = [logic_category_scores(r) for r in runs]
            for ax, names in ((axes[0], answer), (axes[1], pairs)):
                vals = [[s[c] for s in scores if c in s] for c in names]
                mean = [float(np.mean(v)) if v else math.nan for v in vals]
                err = [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in vals]
                xs = np.arange(len(names)) + j * width
                ax.bar(xs, mean, width, yerr=err, color=colors[g], label=f"{g[0]} {g[1]} (n={len(runs)})")
        for ax, names, label in ((axes[0], answer, "top-1"), (axes[1], pairs, "perplexity ratio")):
            ax.set_xticks(np.arange(len(names)) + width * (len(with_logic) - 1) / 2, names, rotation=30)
            ax.set_ylabel(label)
            ax.grid(axis="y", alpha=0.3)
        axes[0].set_ylim(0, 1)
        axes[1].axhline(1.0, color="k", lw=0.8)
        axes[0].legend(fontsize=7)
        fig.suptitle("logic suite by category (mean over seeds; bars: std)")
        path = out / "logic.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def build_report(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Read the runs, write report.md and the plots into ``out``; returns the markdown's path."""
    if not run_dirs:
        raise UserError("no run dirs given; pass one or more folders written by train.py")
    records = [read_run(d) for d in tqdm(run_dirs, desc="reading runs", unit="run", file=sys.stderr, leave=False)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pngs = plot(records, out)
    md = ["# Run comparison", "", markdown_table(records), ""]
    md += [f"![{p.stem}]({p.name})" for p in pngs]
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path


@command
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description="Table and plots comparing runs (optimizer x mode x seed).")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", required=True, help="folder for report.md and the PNGs")
    args = p.parse_args(argv)
    path = build_report(args.run_dirs, args.out)
    print(path.read_text().split("\n\n")[1])
    print(f"wrote {path} and its plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
