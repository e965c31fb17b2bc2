"""Figures written into a run dir by the small tasks: simulation solid, theory dashed, one colour per curve.

- ``plot_loss``, ``plot_spectrum``: the loss staircase with its predicted plateaus and drops, the power
  of each component over time (group composition, AGF);
- ``plot_law``, ``plot_series``: a recorded quantity against its exact law and continuous approximation,
  with the residual (the SGD laws); several named curves on one set of axes;
- ``plot_panels``, ``plot_sweeps``, ``plot_families``, ``plot_boundaries``: simulation against closed form
  panel by panel, one scalar per setting of a sweep, families of runs, decision boundaries (the linear
  networks and the margin).

Every figure ends in ``finish``; a task that draws its own figure imports ``plt`` and ``finish`` from here,
which also gives the non-interactive backend that run dirs need.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def finish(fig: plt.Figure, path: Path, title: str = "", dpi: int = 110) -> None:
    """The one way a figure ends: an optional overall title, a tight layout, ``dpi`` (110; at most 100 for a
    figure shipped in docs/img), closed."""
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def mark_predictions(ax: Any, levels: list[float], drops: list[float] | None, level_label: str) -> None:
    """Log-log axes with the predicted nonzero levels (dashed) and drop steps (dotted), each labelled once."""
    for j, level in enumerate(lv for lv in levels if lv > 0):
        ax.axhline(level, color="tab:red", ls="--", lw=0.8, label=level_label if j == 0 else None)
    for j, t in enumerate(drops or []):
        ax.axvline(t, color="tab:blue", ls=":", lw=0.9, label="predicted drops" if j == 0 else None)
    ax.set_xscale("log")
    ax.set_yscale("log")


def plot_loss(
    path: Path,
    steps: np.ndarray,
    loss: np.ndarray,
    levels: list[float],
    predicted_drops: list[float] | None = None,
    title: str = "",
    predicted_curve: tuple[list[float], list[float]] | None = None,
) -> None:
    """The loss on log-log axes, the predicted plateaus (dashed) and drop steps (dotted); ``predicted_curve``
    (event steps, the levels before the first and after each event) is drawn as a step function."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    keep = steps > 0
    ax.plot(steps[keep], loss[keep], color="k", lw=1.5, label="training loss")
    if predicted_curve is not None:
        at, lv = predicted_curve
        xs = [max(float(steps[keep][0]), 1.0), *at, float(steps[-1])]
        ax.step(xs, [*lv, lv[-1]], where="post", color="tab:orange", lw=1.2, ls="-", label="AGF prediction")
    mark_predictions(ax, levels, predicted_drops, "predicted plateaus")
    positive = loss[keep][loss[keep] > 0]
    if len(positive):
        ax.set_ylim(max(positive.min(), min(lv for lv in levels if lv > 0) * 1e-3) * 0.5, positive.max() * 2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    finish(fig, path)


def plot_spectrum(
    path: Path, steps: np.ndarray, power: np.ndarray, target: np.ndarray, labels: list[str], title: str = ""
) -> None:
    """Output power per component (columns of ``power``) against step, targets dashed."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    colors = plt.cm.viridis(np.linspace(0, 0.9, power.shape[1]))
    keep = steps > 0
    for c in range(power.shape[1]):
        ax.plot(steps[keep], power[keep, c], color=colors[c], lw=1.5, label=labels[c])
        ax.axhline(target[c], color=colors[c], ls="--", lw=0.7)
    ax.set_xscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("output power")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    finish(fig, path)


def plot_law(
    path: Path,
    steps: np.ndarray,
    observed: np.ndarray,
    exact: np.ndarray,
    continuous: np.ndarray | None,
    title: str,
    ylabel: str,
    scale: float,
    labels: list[str] | None = None,
) -> None:
    """Top: the run (solid), the exact law (dashed), the continuous approximation (dotted), one colour
    per column; bottom: |run - exact law| / ``scale`` (the size of the charge's terms) on a log scale,
    floored at 1e-17, so float64 round-off shows as the floor."""
    observed, exact = observed.reshape(len(steps), -1), exact.reshape(len(steps), -1)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 5.0), sharex=True, height_ratios=[3, 1.4])
    colors = plt.cm.viridis(np.linspace(0, 0.85, observed.shape[1]))
    for c in range(observed.shape[1]):
        name = labels[c] if labels else None
        top.plot(steps, observed[:, c], color=colors[c], lw=1.6, label=f"run {name}" if name else "run")
        top.plot(steps, exact[:, c], color="k", lw=0.9, ls="--", label="exact law" if c == 0 else None)
        if continuous is not None:
            cont = continuous.reshape(len(steps), -1)
            top.plot(steps, cont[:, c], color="tab:red", lw=0.9, ls=":", label="oscillator" if c == 0 else None)
    top.set_ylabel(ylabel)
    top.set_title(title, fontsize=9)
    top.legend(fontsize=7, ncol=2)
    residual = np.abs(observed - exact).max(axis=1) / scale
    bottom.semilogy(steps, np.maximum(residual, 1e-17), color="k", lw=1.0)
    bottom.set_ylabel("|run - law| / size")
    bottom.set_xlabel("step")
    finish(fig, path)


def plot_series(
    path: Path, x: np.ndarray, series: dict[str, np.ndarray], title: str, xlabel: str, ylabel: str, logy: bool = False
) -> None:
    """Several named curves on one set of axes (the style key: a name ending in 'theory' is dashed)."""
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    for name, y in series.items():
        theory = "theory" in name
        ax.plot(x, y, lw=1.0 if theory else 1.6, ls="--" if theory else "-", color="k" if theory else None, label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    finish(fig, path)


@dataclass
class Panel:
    title: str
    x: np.ndarray  # simulation abscissa
    y: np.ndarray  # (len(x), curves)
    x_theory: np.ndarray
    y_theory: np.ndarray  # (len(x_theory), curves)
    xlabel: str
    ylabel: str
    labels: list[str] = field(default_factory=list)
    logx: bool = False
    logy: bool = False
    theory_label: str = "theory"


def plot_panels(path: Path, panels: list[Panel], title: str = "", columns: int = 2) -> None:
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.4 * rows), squeeze=False)
    for ax, p in zip(axes.flat, panels):
        y, yt = np.atleast_2d(p.y.T).T, np.atleast_2d(p.y_theory.T).T
        colors = plt.cm.viridis(np.linspace(0, 0.85, max(y.shape[1], 1)))
        for c in range(y.shape[1]):
            label = p.labels[c] if c < len(p.labels) else None
            ax.plot(p.x, y[:, c], color=colors[c], lw=1.6, label=label)
            ax.plot(p.x_theory, yt[:, c], color="k", ls="--", lw=0.9, label=p.theory_label if c == 0 else None)
        ax.set_xscale("log" if p.logx else "linear")
        ax.set_yscale("log" if p.logy else "linear")
        ax.set_title(p.title, fontsize=9)
        ax.set_xlabel(p.xlabel)
        ax.set_ylabel(p.ylabel)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    finish(fig, path, title)


@dataclass
class SweepPanel:
    """One scalar per setting of a sweep: theory as open circles joined dashed, simulation as crosses."""

    title: str
    x: np.ndarray
    theory: np.ndarray
    observed: np.ndarray
    xlabel: str
    ylabel: str


def plot_sweeps(path: Path, panels: list[SweepPanel], title: str = "") -> None:
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.4), squeeze=False)
    for ax, p in zip(axes.flat, panels):
        order = np.argsort(p.x)
        ax.plot(p.x[order], p.theory[order], "o--", color="k", mfc="none", lw=0.9, label="theory")
        ax.plot(p.x[order], p.observed[order], "x", color="tab:red", ms=8, label="simulation")
        ax.set_xlabel(p.xlabel)
        ax.set_ylabel(p.ylabel)
        ax.set_title(p.title, fontsize=9)
        ax.legend(fontsize=7)
    finish(fig, path, title)


def plot_families(
    path: Path, x: np.ndarray, families: dict[str, np.ndarray], xlabel: str, ylabel: str, title: str = ""
) -> None:
    """Several runs (columns of each array) per family, one colour per family, against a log-scaled x."""
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    colors = plt.cm.viridis(np.linspace(0, 0.85, len(families)))
    for color, (label, curves) in zip(colors, families.items()):
        for c in range(curves.shape[1]):
            ax.plot(x, curves[:, c], color=color, lw=0.9, alpha=0.7, label=label if c == 0 else None)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    finish(fig, path)


def plot_boundaries(
    path: Path, x: np.ndarray, y: np.ndarray, lines: dict[str, tuple[np.ndarray, str]], title: str = ""
) -> None:
    """2-D labelled points and the decision boundaries beta . x = 0 of linear classifiers through the origin."""
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.scatter(*x[y > 0].T, marker="+", color="tab:blue", label="y = +1")
    ax.scatter(*x[y < 0].T, marker="_", color="tab:red", label="y = -1")
    reach = 1.1 * np.abs(x).max()
    colors = plt.cm.viridis(np.linspace(0, 0.85, len(lines)))
    for color, (label, (beta, style)) in zip(colors, lines.items()):
        normal = beta / np.linalg.norm(beta)
        along = np.array([-normal[1], normal[0]]) * reach
        ax.plot([-along[0], along[0]], [-along[1], along[1]], style, color=color, lw=1.4, label=label)
    ax.set_xlim(-reach, reach)
    ax.set_ylim(-reach, reach)
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    finish(fig, path)
