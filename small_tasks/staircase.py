"""Reading a staircase loss curve: its plateaus, its drop times, and the checks against a prediction.

Plateaus are found without looking at the prediction: on a log-spaced grid of steps, a point is flat
when the loss changes by less than ``flat_tol`` (relative) between its neighbours; each run of at
least ``min_len`` flat points is one plateau, its level the median loss there. Each predicted level is
then compared with the closest observed plateau.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tasks import check

__all__ = ["check", "drop_steps", "find_plateaus", "learn_steps", "loss_trace", "match_levels", "match_plateaus"]


def loss_trace(trace: np.ndarray | None, history: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, loss): the per-step trace where this process recorded it (all of it unless resumed),
    the logged ``train_loss`` records before that. A record at step s holds the loss of step s - 1."""
    recs = [(r["step"] - 1, r["train_loss"]) for r in history if "train_loss" in r]
    known = np.isfinite(trace) if trace is not None else np.zeros(0, dtype=bool)
    first = int(np.argmax(known)) if known.any() else 1 << 62
    early = [(s, v) for s, v in recs if s < first]
    steps = np.array([s for s, _ in early] + list(np.nonzero(known)[0]), dtype=float)
    loss = np.array([v for _, v in early] + (list(trace[known]) if known.any() else []), dtype=float)
    return steps, loss


def find_plateaus(
    steps: np.ndarray, loss: np.ndarray, points: int = 400, flat_tol: float = 0.01, min_len: int = 4
) -> list[dict[str, float]]:
    """Flat stretches of the curve: [{"start", "end", "level"}], in time order."""
    if len(steps) < 3:
        return []
    grid = np.unique(np.geomspace(max(steps[0], 1), steps[-1], points).round())
    idx = np.clip(np.searchsorted(steps, grid), 0, len(steps) - 1)
    idx = np.unique(idx)
    vals = loss[idx]
    flat = np.zeros(len(idx), dtype=bool)
    flat[1:-1] = np.abs(vals[2:] - vals[:-2]) <= flat_tol * np.abs(vals[1:-1])
    out, i = [], 0
    while i < len(idx):
        if not flat[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(idx) and flat[j + 1]:
            j += 1
        if j - i + 1 >= min_len:
            out.append(
                {
                    "start": float(steps[idx[i]]),
                    "end": float(steps[idx[j]]),
                    "level": float(np.median(loss[idx[i] : idx[j] + 1])),
                }
            )
        i = j + 1
    return out


def match_levels(predicted: list[float], plateaus: list[dict], tol: float) -> dict[str, Any]:
    """Each non-zero predicted level against its closest observed plateau, relative error <= tol."""
    observed, errors = [], []
    for level in predicted:
        if level <= 0:
            continue
        if not plateaus:
            observed.append(None)
            errors.append(float("inf"))
            continue
        best = min(plateaus, key=lambda p: abs(p["level"] - level) / level)
        observed.append(round(best["level"], 6))
        errors.append(abs(best["level"] - level) / level)
    return {
        "passed": bool(errors and max(errors) <= tol),
        "expected": [round(float(v), 6) for v in predicted if v > 0],
        "observed": observed,
        "max_rel_error": round(max(errors), 5) if errors else None,
    }


def match_plateaus(plateaus: list[dict], predicted: list[float], tol: float) -> dict[str, Any]:
    """The converse: each observed plateau against its closest predicted level (a zero level matches a
    plateau below ``tol`` times the smallest non-zero level)."""
    floor = tol * min(v for v in predicted if v > 0)
    observed, errors = [], []
    for p in plateaus:
        level = min(predicted, key=lambda v: abs(p["level"] - v))
        err = abs(p["level"] - level) / level if level > 0 else (0.0 if p["level"] <= floor else float("inf"))
        observed.append(round(p["level"], 6))
        errors.append(err)
    return {
        "passed": bool(errors and max(errors) <= tol),
        "expected": "each plateau within 2% of a predicted level",
        "observed": observed,
        "max_rel_error": round(max(errors), 5) if errors else None,
    }


def drop_steps(steps: np.ndarray, loss: np.ndarray, levels: list[float]) -> list[float | None]:
    """First step at which the loss falls below the midpoint of each pair of consecutive levels."""
    out = []
    for hi, lo in zip(levels[:-1], levels[1:]):
        below = np.nonzero(loss < 0.5 * (hi + lo))[0]
        out.append(float(steps[below[0]]) if len(below) else None)
    return out


def learn_steps(steps: np.ndarray, residual: np.ndarray, target: np.ndarray, frac: float = 0.5) -> list[float | None]:
    """Per component: the first step its residual power falls below ``frac`` of its target power."""
    out = []
    for c in range(residual.shape[1]):
        below = np.nonzero(residual[:, c] < frac * target[c])[0]
        out.append(float(steps[below[0]]) if len(below) else None)
    return out
