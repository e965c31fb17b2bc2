"""Plots written into a run dir: the loss staircase with its predicted plateaus, the power over time."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


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
    for j, level in enumerate(lv for lv in levels if lv > 0):
        ax.axhline(level, color="tab:red", ls="--", lw=0.8, label="predicted plateaus" if j == 0 else None)
    for j, t in enumerate(predicted_drops or []):
        ax.axvline(t, color="tab:blue", ls=":", lw=0.9, label="predicted drops" if j == 0 else None)
    ax.set_xscale("log")
    ax.set_yscale("log")
    positive = loss[keep][loss[keep] > 0]
    if len(positive):
        ax.set_ylim(max(positive.min(), min(lv for lv in levels if lv > 0) * 1e-3) * 0.5, positive.max() * 2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
