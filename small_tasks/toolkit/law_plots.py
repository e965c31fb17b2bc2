"""Plots for the SGD-law tasks: the recorded quantity, the theory on the same axes, and the residual.

Importing ``plt`` from here gives the non-interactive backend that run dirs need."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
