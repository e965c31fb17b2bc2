"""A paired study of arms (optimizer, mode, settings): each arm's learning rate swept on seeds of its
own, then every arm trained at its chosen rate on the same evaluation seeds, and the comparisons the
study names reported as paired differences with their intervals and detection limits.

    python -m eval.study configs/grid/study-cpu.toml --out grids/study-cpu --jobs 2 [--report_only]

The study file (TOML) fixes everything before a run starts: the trainer config and the overrides all
runs share, the sweep seeds and the evaluation seeds, every arm with its rates, and the comparisons.
Its metrics are fixed too, by this module:

- **second-half loss**: the mean validation loss over the evaluations at steps >= max_steps / 2, the
  metric that picks each arm's rate (mean over the sweep seeds; a run whose loss became non-finite
  counts as +inf) and the study's primary outcome;
- **steps to the target loss**: the first step at which the validation loss reaches the target,
  interpolated linearly between evaluations; the target is the median over arms of the chosen sweep
  runs' final validation loss, decided after the sweep and before the evaluation runs, and stored in
  selection.json with the rates (a rerun reuses it, so the evaluation never moves its own target).

With ``extend_edges = N`` in [study], a sweep whose best rate is the lowest (highest) of an arm's rates
gets one more rate beyond that edge, a step as wide (in ratio) as the step to its neighbour, up to N
per side (OUT/extensions.json); the rates are chosen once no edge asks for another.

A comparison pairs two arms by evaluation seed (the same seed gives both the same initialisation, data
order and bias draws' stream) and reports the mean of the per-seed differences A − B with its 95% t
interval, the sign in each seed, and the study's detection limit for it: the interval's half-width (the
smallest mean difference this spread and number of seeds could have told from zero) and the difference
that would be detected in 80% of repeats, (t(0.975, n−1) + t(0.8, n−1))·s/√n.

Cells are eval.grid's cells, one grid folder per arm and rate (OUT/cells/<arm>/lr<rate>), so the study
resumes cell by cell like a grid; OUT/report.md, report.json and the plots are written at the end, or
by --report_only from whatever has finished.
"""

from __future__ import annotations

import json
import math
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import optim
from configs import MODES, ArgumentParser, UserError, command
from eval.grid import GridCell, Runner, check_overrides, plan, run_grid, state
from eval.output import check_folder_target, staged_folder
from eval.report import Estimate, read_metrics, t_quantile

SELECTION = "selection.json"
DIVERGED = "diverged.json"
EXTENSIONS = "extensions.json"


@dataclass(frozen=True)
class Arm:
    name: str
    optimizer: str
    mode: str
    lrs: tuple[float, ...]
    overrides: tuple[str, ...] = ()

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", self.name)


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    why: str = ""


@dataclass
class Study:
    path: Path
    config: Path
    overrides: list[str]
    seeds: list[int]
    sweep_seeds: list[int]
    arms: list[Arm]
    comparisons: list[Comparison]
    notes: str = ""
    max_steps: int = 0
    arm_by_name: dict[str, Arm] = field(default_factory=dict)
    extend_edges: int = 0  # rates added beyond an edge of the sweep where the best rate lies, per side


def _ints(value: Any, what: str) -> list[int]:
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and v >= 0 for v in value):
        raise UserError(f"{what} must be a non-empty list of integers >= 0")
    if len(set(value)) != len(value):
        raise UserError(f"{what} lists a seed twice")
    return value


def load_study(path: Path) -> Study:
    """The study file, checked: every arm's optimizer and mode known, rates positive, comparisons of
    arms that exist, sweep seeds apart from evaluation seeds."""
    if not path.is_file():
        raise UserError(f"no study file '{path}'; pass a .toml like configs/grid/study-cpu.toml")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"'{path}' is not valid TOML ({e}); fix the file") from None
    head = raw.get("study", {})
    config = (path.parent / str(head.get("config", ""))).resolve()
    if not head.get("config") or not config.is_file():
        raise UserError(
            f"[study] config in '{path}' must name a trainer config beside it; found '{head.get('config')}'"
        )
    seeds = _ints(head.get("seeds"), "[study] seeds")
    sweep = _ints(head.get("sweep_seeds"), "[study] sweep_seeds")
    if set(seeds) & set(sweep):
        raise UserError("[study] sweep_seeds and seeds share a seed; the rate must be chosen on other seeds")
    arms = []
    for i, a in enumerate(raw.get("arm", [])):
        name = a.get("name", f"arm {i}")
        if a.get("optimizer") not in optim.OPTIMIZERS:
            raise UserError(
                f"arm '{name}': optimizer '{a.get('optimizer')}' unknown; use one of {', '.join(optim.OPTIMIZERS)}"
            )
        if a.get("mode") not in MODES:
            raise UserError(f"arm '{name}': mode '{a.get('mode')}' unknown; use one of {', '.join(MODES)}")
        lrs = a.get("lrs")
        if (
            not isinstance(lrs, list)
            or not lrs
            or not all(isinstance(x, (int, float)) and 0 < x < math.inf for x in lrs)
        ):
            raise UserError(f"arm '{name}': lrs must be a non-empty list of positive numbers")
        arms.append(Arm(name, a["optimizer"], a["mode"], tuple(float(x) for x in lrs), tuple(a.get("overrides", []))))
    if not arms:
        raise UserError(f"'{path}' has no [[arm]]; add one table per arm")
    by_name = {a.name: a for a in arms}
    if len(by_name) != len(arms) or len({a.slug for a in arms}) != len(arms):
        raise UserError("two arms share a name; give each [[arm]] its own name")
    comparisons = []
    for c in raw.get("compare", []):
        for key in ("a", "b"):
            if c.get(key) not in by_name:
                raise UserError(f"[[compare]] names arm '{c.get(key)}', which no [[arm]] defines")
        comparisons.append(Comparison(c["a"], c["b"], c.get("why", "")))
    overrides = list(head.get("overrides", []))
    extend = head.get("extend_edges", 0)
    if not isinstance(extend, int) or isinstance(extend, bool) or extend < 0:
        raise UserError(f"[study] extend_edges must be an integer >= 0, got {extend!r}")
    study = Study(path, config, overrides, seeds, sweep, arms, comparisons, head.get("notes", ""), 0, by_name, extend)
    for arm in arms:
        check_overrides([*overrides, *arm.overrides], [arm.optimizer])
    study.max_steps = _grids(study, arms[0], arms[0].lrs[0], seeds[:1], Path("/nonexistent"))[0][1]["train.max_steps"]
    return study


def _grids(study: Study, arm: Arm, lr: float, seeds: list[int], out: Path) -> list[tuple[GridCell, dict]]:
    folder = out / "cells" / arm.slug / f"lr{lr:g}"
    return plan(study.config, [arm.optimizer], [arm.mode], seeds, folder, _overrides(study, arm, lr))


def _overrides(study: Study, arm: Arm, lr: float) -> list[str]:
    return [*study.overrides, *arm.overrides, f"--optim.{arm.optimizer}.lr={lr:g}"]


# ----------------------------------------------------------------------------------- running


class Cells:
    """Every cell of one phase with its runner, its expected config and what became of it."""

    def __init__(self, study: Study, out: Path):
        self.study, self.out = study, out
        self.diverged: dict[str, str] = _read_json(out / DIVERGED) or {}

    def phase(self, pairs: list[tuple[Arm, float]], seeds: list[int]) -> list[tuple[Runner, GridCell, dict]]:
        rows = []
        for arm, lr in pairs:
            runner = Runner(self.study.config, _overrides(self.study, arm, lr), logic_n=0)
            rows += [(runner, cell, expected) for cell, expected in _grids(self.study, arm, lr, seeds, self.out)]
        return rows

    def run(self, rows: list[tuple[Runner, GridCell, dict]], jobs: int, what: str) -> list[str]:
        """Train what has not finished (or diverged); returns the cells still unfinished."""
        pending = [
            (r, c, s) for r, c, e in rows if (s := state(c, e, 0)) != "done" and str(c.run_dir) not in self.diverged
        ]
        print(
            f"{what}: {len(rows)} cells, {len(rows) - len(pending)} done or diverged, {len(pending)} to run", flush=True
        )
        outcomes = run_grid(pending, jobs) if pending else {}
        for key, outcome in outcomes.items():
            if outcome == "diverged":
                self.diverged[key] = "non-finite loss"
        if self.diverged:
            (self.out / DIVERGED).write_text(json.dumps(self.diverged, indent=2, sort_keys=True) + "\n")
        return [c.name for _, c, _ in pending if outcomes.get(str(c.run_dir)) not in ("done", "diverged")]


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


# ----------------------------------------------------------------------------------- metrics


def val_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, validation loss) of every evaluation a run logged, in step order."""
    rows = {
        int(r["step"]): float(r["val_loss"])
        for r in read_metrics(run_dir / "metrics.jsonl")
        if r.get("val_loss") is not None
    }
    return sorted(rows.items())


def second_half_loss(curve: list[tuple[int, float]], max_steps: int) -> float | None:
    """The mean validation loss over the evaluations at steps >= max_steps / 2 (None before the run ends)."""
    if not curve or curve[-1][0] < max_steps:
        return None
    vals = [v for s, v in curve if s >= max_steps / 2]
    return float(np.mean(vals)) if all(math.isfinite(v) for v in vals) else math.inf


def steps_to(curve: list[tuple[int, float]], target: float) -> float | None:
    """The first step at which the loss reaches ``target``, interpolated linearly between the two
    evaluations around the crossing; None if it never does."""
    for i, (s, v) in enumerate(curve):
        if v <= target:
            if i == 0:
                return float(s)
            s0, v0 = curve[i - 1]
            return s0 + (s - s0) * (v0 - target) / (v0 - v)
    return None


def detection_limits(diffs: list[float]) -> tuple[float, float]:
    """(half-width of the 95% t interval, the difference detected in 80% of repeats) for paired
    differences; nan below two pairs."""
    n = len(diffs)
    if n < 2:
        return math.nan, math.nan
    se = float(np.std(diffs, ddof=1)) / math.sqrt(n)
    return t_quantile(0.975, n - 1) * se, (t_quantile(0.975, n - 1) + t_quantile(0.8, n - 1)) * se


# ----------------------------------------------------------------------------------- selection


def rates_of(arm: Arm, out: Path) -> list[float]:
    """The arm's rates: its own and those the sweep added beyond an edge (OUT/extensions.json)."""
    added = (_read_json(out / EXTENSIONS) or {}).get(arm.name, [])
    return sorted({*arm.lrs, *added})


def sweep_table(study: Study, arm: Arm, out: Path, cells: Cells) -> dict[float, dict[str, float]] | None:
    """Per rate: the mean second-half loss and final loss over the sweep seeds (+inf where a run
    diverged); None while a sweep cell of the arm has not finished."""
    table = {}
    for lr in rates_of(arm, out):
        scores, last = [], []
        for cell, _ in _grids(study, arm, lr, study.sweep_seeds, out):
            if str(cell.run_dir) in cells.diverged:
                scores.append(math.inf)
                continue
            curve = val_curve(cell.run_dir)
            score = second_half_loss(curve, study.max_steps)
            if score is None:
                return None
            scores.append(score)
            last.append(curve[-1][1])
        table[lr] = {"second_half": float(np.mean(scores)), "final": float(np.mean(last)) if last else math.inf}
    return table


def next_rate(arm: Arm, table: dict[float, dict[str, float]], extend_edges: int) -> float | None:
    """Where the best rate is the lowest (highest) of several and fewer than ``extend_edges`` rates were
    added on that side: one more rate beyond it, a step as wide (in ratio) as the step to its neighbour."""
    lrs = sorted(table)
    if len(lrs) < 2 or not extend_edges:
        return None
    best = min(lrs, key=lambda lr: table[lr]["second_half"])
    if not math.isfinite(table[best]["second_half"]):
        return None
    if best == lrs[0] and sum(lr < min(arm.lrs) for lr in lrs) < extend_edges:
        return lrs[0] ** 2 / lrs[1]
    if best == lrs[-1] and sum(lr > max(arm.lrs) for lr in lrs) < extend_edges:
        return lrs[-1] ** 2 / lrs[-2]
    return None


def extend_sweep(study: Study, out: Path, cells: Cells) -> int:
    """Add the next rate to every arm whose best lies on an edge of its finished sweep; returns how many."""
    added = _read_json(out / EXTENSIONS) or {}
    count = 0
    for arm in study.arms:
        table = sweep_table(study, arm, out, cells)
        lr = None if table is None else next_rate(arm, table, study.extend_edges)
        if lr is not None:
            added.setdefault(arm.name, []).append(float(f"{lr:.6g}"))
            count += 1
    if count:
        (out / EXTENSIONS).write_text(json.dumps(added, indent=2) + "\n")
    return count


def select(study: Study, out: Path, cells: Cells) -> dict[str, Any] | None:
    """Each arm's rate (the lowest mean second-half loss over the sweep seeds) and the target loss;
    None until every sweep cell has finished or diverged and no edge asks for another rate. Written
    once to selection.json and reused."""
    stored = _read_json(out / SELECTION)
    if stored is not None:
        return stored
    rates: dict[str, Any] = {}
    finals = []
    for arm in study.arms:
        table = sweep_table(study, arm, out, cells)
        if table is None or next_rate(arm, table, study.extend_edges) is not None:
            return None
        best = min(table, key=lambda lr: table[lr]["second_half"])
        edge = len(table) > 1 and best in (min(table), max(table))
        sweep = {f"{lr:g}": v for lr, v in table.items()}
        rates[arm.name] = {"lr": best, "at_edge_of_sweep": edge, "sweep": sweep}
        finals.append(table[best]["final"])
    target = float(np.median(finals))
    selection = {
        "rates": rates,
        "target_loss": target,
        "rule": "median over arms of the chosen sweep runs' final val loss",
    }
    (out / SELECTION).write_text(json.dumps(selection, indent=2) + "\n")
    return selection


# ----------------------------------------------------------------------------------- report


def arm_results(study: Study, out: Path, selection: dict[str, Any], cells: Cells) -> dict[str, dict[int, dict]]:
    """Per arm, per finished evaluation seed: its curve, second-half loss, final loss, steps to target."""
    results: dict[str, dict[int, dict]] = {}
    for arm in study.arms:
        lr = selection["rates"][arm.name]["lr"]
        mine = {}
        for cell, _ in _grids(study, arm, lr, study.seeds, out):
            if str(cell.run_dir) in cells.diverged:
                mine[cell.seed] = {
                    "curve": val_curve(cell.run_dir),
                    "second_half": math.inf,
                    "final": math.inf,
                    "steps_to": None,
                }
                continue
            curve = val_curve(cell.run_dir)
            score = second_half_loss(curve, study.max_steps)
            if score is None:
                continue
            mine[cell.seed] = {
                "curve": curve,
                "second_half": score,
                "final": curve[-1][1],
                "steps_to": steps_to(curve, selection["target_loss"]),
            }
        results[arm.name] = mine
    return results


def compare(c: Comparison, results: dict[str, dict[int, dict]]) -> dict[str, Any]:
    a, b = results[c.a], results[c.b]
    seeds = sorted(set(a) & set(b))
    diffs = [a[s]["second_half"] - b[s]["second_half"] for s in seeds]
    finite = [d for d in diffs if math.isfinite(d)]
    both = [s for s in seeds if a[s]["steps_to"] is not None and b[s]["steps_to"] is not None]
    step_diffs = [a[s]["steps_to"] - b[s]["steps_to"] for s in both]
    half, mde = detection_limits(finite)
    est = Estimate.of(finite)
    return {
        "a": c.a,
        "b": c.b,
        "why": c.why,
        "seeds": seeds,
        "delta_second_half": est.to_json() if est else None,
        "per_seed": dict(zip(seeds, diffs)),
        "clear_of_zero": bool(est and est.excludes_zero()),
        "detectable_95": half,
        "detectable_80_power": mde,
        "delta_steps_to_target": (Estimate.of(step_diffs).to_json() if step_diffs else None),
        "steps_pairs": len(both),
    }


def _est(d: dict | None, spec: str) -> str:
    if not d:
        return "-"
    e = Estimate(d["mean"], d["lo"], d["hi"], d["n"])
    return e.format(spec)


def markdown(study: Study, selection: dict[str, Any], results: dict[str, dict[int, dict]], comps: list[dict]) -> str:
    target = selection["target_loss"]
    lines = [
        f"# Study {study.path.stem}",
        "",
        study.notes.strip(),
        "",
        f"Evaluation seeds {study.seeds}, sweep seeds {study.sweep_seeds}, {study.max_steps} steps; target loss "
        f"{target:.4f} ({selection['rule']}).",
        "",
        "## Learning rates (sweep: mean second-half validation loss over the sweep seeds)",
        "",
        "| arm | lr → second-half loss | chosen | at the sweep's edge |",
        "|---|---|---|---|",
    ]
    for arm in study.arms:
        r = selection["rates"][arm.name]
        sweep = ", ".join(
            f"{lr}: {v['second_half']:.4f}" if math.isfinite(v["second_half"]) else f"{lr}: diverged"
            for lr, v in r["sweep"].items()
        )
        lines.append(f"| {arm.name} | {sweep} | {r['lr']:g} | {'yes' if r['at_edge_of_sweep'] else 'no'} |")
    lines += [
        "",
        "## Arms (mean over evaluation seeds, 95% t interval)",
        "",
        "| arm | lr | seeds | second-half loss | final loss | steps to target (reached) |",
        "|---|---|---|---|---|---|",
    ]
    for arm in study.arms:
        runs = results[arm.name]
        sh = Estimate.of([r["second_half"] for r in runs.values()])
        fin = Estimate.of([r["final"] for r in runs.values()])
        st = [r["steps_to"] for r in runs.values() if r["steps_to"] is not None]
        steps = f"{Estimate.of(st).format('.0f')} ({len(st)}/{len(runs)})" if st else f"- (0/{len(runs)})"
        lines.append(
            f"| {arm.name} | {selection['rates'][arm.name]['lr']:g} | {len(runs)} | "
            f"{sh.format('.4f') if sh else '-'} | {fin.format('.4f') if fin else '-'} | {steps} |"
        )
    lines += [
        "",
        "## Comparisons (A − B paired by seed; negative: A lower)",
        "",
        "| A | B | pairs | Δ second-half loss | clear of 0 | signs | detectable (95% / 80% power) "
        "| Δ steps to target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in comps:
        signs = "".join("−" if d < 0 else "+" for d in c["per_seed"].values())
        det = f"{c['detectable_95']:.4f} / {c['detectable_80_power']:.4f}" if math.isfinite(c["detectable_95"]) else "-"
        steps = f"{_est(c['delta_steps_to_target'], '+.0f')} ({c['steps_pairs']} pairs)"
        lines.append(
            f"| {c['a']} | {c['b']} | {len(c['seeds'])} | {_est(c['delta_second_half'], '+.4f')} | "
            f"{'yes' if c['clear_of_zero'] else 'no'} | {signs} | {det} | {steps} |"
        )
    return "\n".join(lines) + "\n"


def plot(study: Study, results: dict[str, dict[int, dict]], comps: list[dict], target: float, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    optimizers = list(dict.fromkeys(a.optimizer for a in study.arms))
    fig, axes = plt.subplots(1, len(optimizers), figsize=(4.2 * len(optimizers), 3.8), squeeze=False, sharey=True)
    for ax, opt in zip(axes[0], optimizers):
        for arm in (a for a in study.arms if a.optimizer == opt):
            curves = [r["curve"] for r in results[arm.name].values() if r["curve"]]
            if not curves:
                continue
            steps = sorted(set.intersection(*(set(s for s, _ in c) for c in curves)))
            mean = [np.mean([dict(c)[s] for c in curves]) for s in steps]
            ax.plot(steps, mean, label=f"{arm.name} (n={len(curves)})")
        ax.axhline(target, color="k", lw=0.6, ls=":")
        ax.set_title(opt)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # an optimizer none of whose arms has finished a seed yet
            ax.legend(fontsize=6)
    finals = [r["final"] for runs in results.values() for r in runs.values() if math.isfinite(r["final"])]
    if finals:
        axes[0][0].set_ylim(min(finals) - 0.05, max(finals) + 0.5)
    axes[0][0].set_ylabel("validation loss (mean over seeds)")
    path = out / "val_loss.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    written.append(path)

    shown = [c for c in comps if c["seeds"]]
    if shown:
        fig, ax = plt.subplots(figsize=(7, 0.45 * len(shown) + 1.2))
        for i, c in enumerate(shown):
            d = c["delta_second_half"]
            if d:
                ax.errorbar(
                    [d["mean"]],
                    [i],
                    xerr=[[d["mean"] - d["lo"]], [d["hi"] - d["mean"]]] if d["n"] > 1 else None,
                    fmt="o",
                    color="C0",
                    capsize=3,
                )
            ax.plot(
                [v for v in c["per_seed"].values() if math.isfinite(v)],
                [i] * sum(map(math.isfinite, c["per_seed"].values())),
                "x",
                color="C1",
                ms=4,
            )
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(range(len(shown)), [f"{c['a']} − {c['b']}" for c in shown], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("Δ second-half validation loss (o: mean, 95% t interval; x: seeds)")
        ax.grid(axis="x", alpha=0.3)
        path = out / "effects.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def write_report(study: Study, out: Path, selection: dict[str, Any], cells: Cells) -> Path:
    results = arm_results(study, out, selection, cells)
    comps = [compare(c, results) for c in study.comparisons]
    target = out / "report"
    check_folder_target(target, "--out")
    with staged_folder(target, "--out") as stage:
        pngs = plot(study, results, comps, selection["target_loss"], stage)
        data = {
            "selection": selection,
            "comparisons": comps,
            "arms": {
                k: {str(s): {x: y for x, y in r.items() if x != "curve"} for s, r in v.items()}
                for k, v in results.items()
            },
        }
        (stage / "report.json").write_text(json.dumps(data, indent=2) + "\n")
        md = (
            markdown(study, selection, results, comps) + "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in pngs) + "\n"
        )
        (stage / "report.md").write_text(md)
    return target / "report.md"


# ----------------------------------------------------------------------------------- main


@command
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(
        description="A paired study: each arm's rate swept, then all arms on the same seeds, then the report.",
        allow_abbrev=False,
    )
    p.add_argument("study", type=Path, help="the study file (.toml): [study], [[arm]], [[compare]]")
    p.add_argument("--out", required=True, type=Path, help="the study's folder: cells/, selection.json, report/")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="cells at a time (give each --run.threads=1 in the study's overrides on a CPU)",
    )
    p.add_argument("--report_only", action="store_true", help="only write the report of what has finished")
    args = p.parse_args(argv)
    if args.jobs < 1:
        raise UserError("--jobs must be >= 1")
    study = load_study(args.study)
    out = args.out.resolve()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{args.out}' is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)
    cells = Cells(study, out)
    unfinished: list[str] = []
    if not args.report_only:
        while True:  # each round adds a rate beyond every edge where an arm's best rate lies
            sweep = [(arm, lr) for arm in study.arms for lr in rates_of(arm, out)]
            unfinished = cells.run(cells.phase(sweep, study.sweep_seeds), args.jobs, "sweep")
            if unfinished or (_read_json(out / SELECTION) is not None) or not extend_sweep(study, out, cells):
                break
    selection = select(study, out, cells)
    if selection is None:
        print("the sweep has not finished: no rates chosen yet; rerun the command to continue")
        return 1
    if not args.report_only:
        chosen = [(arm, selection["rates"][arm.name]["lr"]) for arm in study.arms]
        print(
            "rates: "
            + ", ".join(f"{a.name} {lr:g}" for a, lr in chosen)
            + f"; target loss {selection['target_loss']:.4f}"
        )
        unfinished = cells.run(cells.phase(chosen, study.seeds), args.jobs, "evaluation")
    path = write_report(study, out, selection, cells)
    print(f"wrote {path}")
    if unfinished:
        print(f"{len(unfinished)} cell(s) did not finish: {', '.join(unfinished)}; rerun the command to continue")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
