"""Plots of simulation against theory on the same axes: simulation solid, theory dashed, one colour per curve."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


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
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
