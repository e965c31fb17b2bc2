"""Reading a staircase loss curve: its plateaus, its drop times, and the checks against a prediction.

Plateaus are found without looking at the prediction: on a log-spaced grid of steps, a point is flat
when the loss changes by less than ``flat_tol`` (relative) between its neighbours; each run of at
least ``min_len`` flat points is one plateau, its level the median loss there. Each predicted level is
then compared with the closest observed plateau (``match_levels``), and each observed plateau with the
closest predicted level (``match_plateaus``, the converse: a plateau the theory does not predict fails it).

Components learned in sequence (irreps, frequencies) are read from their own residual traces:
``learning_steps`` gives when each starts, is half and is nearly learned, and ``order_check`` compares
that with a predicted order, where two drops that overlap are a tie: not resolved by the run, not a pass.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from small_tasks.toolkit.base import check

__all__ = ["check", "drop_steps", "find_plateaus", "learn_steps", "loss_trace", "match_levels", "match_plateaus"]


ZERO_LEVEL = 1e-9  # a predicted level below this fraction of the largest one is a fully learned target: 0


def loss_trace(trace: np.ndarray | None, history: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, loss): the per-step trace where this process recorded it (all of it unless resumed),
    the logged ``train_loss`` records before that. A record at step s holds the loss of step s - 1."""
    recs = [(r["step"] - 1, r["train_loss"]) for r in history if "train_loss" in r]
    if trace is None:
        trace = np.zeros(0)
    return joined_trace(trace, np.array([s for s, _ in recs], dtype=float), np.array([v for _, v in recs]))


def joined_trace(trace: np.ndarray, log_steps: np.ndarray, logged: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A per-step trace (T,) or (T, C), NaN where this process did not record it (the steps before a
    resume), completed by the logged values at ``log_steps`` before its first recorded step."""
    known = np.isfinite(trace).all(axis=tuple(range(1, trace.ndim))) if len(trace) else np.zeros(0, dtype=bool)
    first = int(np.argmax(known)) if known.any() else 1 << 62
    early = log_steps < first
    steps = np.concatenate([log_steps[early], np.nonzero(known)[0]]).astype(float)
    values = np.concatenate([np.asarray(logged, dtype=float)[early].reshape(-1, *trace.shape[1:]), trace[known]])
    return steps, values


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


def min_plateau_length(t: float, t_end: float, points: int = 400, min_len: int = 4) -> float:
    """The shortest flat stretch around step t that ``find_plateaus`` (same ``points``, ``min_len``) is sure
    to see: min_len flat grid points and a neighbour on each side inside it, min_len + 2 spacings of its
    log grid wherever the grid falls, each about t * ln(t_end) / points."""
    return (min_len + 2) * t * math.log(max(t_end, 2.0)) / points


def zero_levels(predicted: list[float]) -> list[float]:
    """The predicted levels with rounding-size ones set to 0: a prediction that fits its target fully
    computes its last level as a residual, which comes out as 0 or as a few 1e-14 depending on the
    linear-algebra build; as a relative target such a level would ask for a plateau at 1e-14."""
    floor = ZERO_LEVEL * max((abs(v) for v in predicted), default=0.0)
    return [0.0 if v <= floor else float(v) for v in predicted]


def match_levels(predicted: list[float], plateaus: list[dict], tol: float) -> dict[str, Any]:
    """Each non-zero predicted level against its closest observed plateau, relative error <= tol."""
    observed, errors = [], []
    predicted = zero_levels(predicted)
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
    return check(
        bool(errors and max(errors) <= tol),
        [round(float(v), 6) for v in predicted if v > 0],
        observed,
        max_rel_error=round(max(errors), 5) if errors else None,
    )


def match_plateaus(plateaus: list[dict], predicted: list[float], tol: float) -> dict[str, Any]:
    """The converse: each observed plateau against its closest predicted level (a zero level matches a
    plateau below ``tol`` times the smallest non-zero level)."""
    predicted = zero_levels(predicted)
    floor = tol * min(v for v in predicted if v > 0)
    observed, errors = [], []
    for p in plateaus:
        level = min(predicted, key=lambda v: abs(p["level"] - v))
        err = abs(p["level"] - level) / level if level > 0 else (0.0 if p["level"] <= floor else float("inf"))
        observed.append(round(p["level"], 6))
        errors.append(err)
    return check(
        bool(errors and max(errors) <= tol),
        f"each plateau within {tol:.0%} of a level in {[round(float(v), 6) for v in predicted]}",
        observed,
        max_rel_error=round(max(errors), 5) if errors else None,
    )


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


LEARNING_MARKS = {"start": 0.9, "half": 0.5, "end": 0.1}  # fraction of a component's residual left


def learning_steps(steps: np.ndarray, residual: np.ndarray, target: np.ndarray) -> list[dict[str, float | None]]:
    """Per component: the first step with 90%, 50% and 10% of its target residual left (None: never)."""
    marks = {name: learn_steps(steps, residual, target, frac) for name, frac in LEARNING_MARKS.items()}
    return [{name: marks[name][c] for name in LEARNING_MARKS} for c in range(residual.shape[1])]


def order_check(predicted: list[list[int]], learned: list[dict], labels: list[str]) -> dict[str, Any]:
    """The components learned in the predicted order: groups in sequence, the members of a group (a tie in
    the prediction) together.

    For consecutive groups A then B, each a in A must be half learned before each b in B starts (10%
    learned): then the run resolves the order and it is right. If instead b is half learned before a
    starts, the order is wrong; if the drops overlap (neither), the run does not resolve the order: a
    tie, which fails, as does a component that is never half learned. So simultaneous drops (a large
    initialization, where there is no staircase) fail, however their indices happen to be ordered.
    """
    pairs, ok = [], True
    for a_grp, b_grp in zip(predicted[:-1], predicted[1:]):
        for a in a_grp:
            for b in b_grp:
                la, lb = learned[a], learned[b]
                if la["half"] is None or lb["half"] is None:
                    verdict = "not learned"
                elif lb["start"] is not None and la["half"] <= lb["start"]:
                    verdict = "in order"
                elif la["start"] is not None and lb["half"] <= la["start"]:
                    verdict = "reversed"
                else:
                    verdict = "tie (drops overlap): not resolved by this run"
                ok &= verdict == "in order"
                pairs.append(f"{labels[a]} before {labels[b]}: {verdict}")
    if len(predicted) == 1:
        ok = all(learned[c]["half"] is not None for c in predicted[0])
    observed = sorted(
        (c for grp in predicted for c in grp), key=lambda c: (learned[c]["half"] is None, learned[c]["half"] or 0.0)
    )
    return check(
        ok,
        [[labels[c] for c in grp] for grp in predicted],
        [labels[c] for c in observed],
        pairs=pairs,
        learned_at_step={labels[c]: learned[c] for grp in predicted for c in grp},
    )
