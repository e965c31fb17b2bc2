"""Reading staircases: the order check's ties, the joined traces, the converse level check."""

import numpy as np
import pytest

from small_tasks.toolkit import staircase


def marks(*triples):
    return [{"start": a, "half": b, "end": c} for a, b, c in triples]


def test_order_check_in_order_reversed_and_tied():
    labels = ["a", "b", "c"]
    ok = staircase.order_check([[0], [1], [2]], marks((10, 12, 14), (20, 22, 24), (30, 32, 34)), labels)
    assert ok["passed"] and ok["observed"] == ["a", "b", "c"]
    wrong = staircase.order_check([[0], [1]], marks((20, 22, 24), (10, 12, 14)), labels)
    assert not wrong["passed"] and "reversed" in wrong["pairs"][0]
    # b starts before a is half learned: the drops overlap, which the run does not resolve, whatever the order
    tie = staircase.order_check([[0], [1]], marks((10, 15, 20), (12, 16, 21)), labels)
    assert not tie["passed"] and "tie" in tie["pairs"][0]
    never = staircase.order_check([[0], [1]], marks((10, 12, 14), (20, None, None)), labels)
    assert not never["passed"] and "not learned" in never["pairs"][0]
    # members of one predicted group may drop together
    assert staircase.order_check([[0, 1], [2]], marks((10, 15, 20), (12, 16, 21), (30, 32, 34)), labels)["passed"]


def test_learning_steps_from_a_residual_trace():
    steps = np.arange(100.0)
    resid = np.stack([np.clip(1 - (steps - 20) / 10.5, 0, 1), np.ones(100)], axis=1) * [2.0, 1.0]
    got = staircase.learning_steps(steps, resid, np.array([2.0, 1.0]))
    assert got[0] == {"start": 22.0, "half": 26.0, "end": 30.0} and got[1] == {"start": None, "half": None, "end": None}


def test_joined_trace_fills_the_steps_before_a_resume_from_the_log():
    trace = np.full((10, 2), np.nan)
    trace[6:] = np.arange(12.0).reshape(6, 2)[2:]
    steps, values = staircase.joined_trace(trace, np.array([2.0, 4.0, 8.0]), np.array([[1, 1], [2, 2], [9, 9]]))
    assert steps.tolist() == [2, 4, 6, 7, 8, 9] and values[:2].tolist() == [[1, 1], [2, 2]]


def test_match_plateaus_flags_a_plateau_no_level_predicts():
    plateaus = [{"start": 1, "end": 9, "level": 4.0}, {"start": 20, "end": 40, "level": 2.5}]
    assert staircase.match_plateaus(plateaus[:1], [4.0, 2.0, 0.0], 0.02)["passed"]
    bad = staircase.match_plateaus(plateaus, [4.0, 2.0, 0.0], 0.02)
    assert not bad["passed"] and bad["max_rel_error"] == pytest.approx(0.25)


def test_min_plateau_length_is_what_find_plateaus_can_see():
    t = np.arange(1, 20001, dtype=float)
    for flat in (700, 3000):  # a level between two sharp drops lasting `flat` steps around step 10,000
        loss = 1 + 2 * (t < 10_000 - flat / 2) + 4 * (t < 10_000 + flat / 2)
        seen = any(abs(p["level"] - 5) < 0.01 for p in staircase.find_plateaus(t, loss))
        assert seen == (flat >= staircase.min_plateau_length(10_000, 20_000)), flat


def test_a_rounding_size_last_level_counts_as_fully_learned():
    """A fully fit target's last level computed as a residual (1.4e-14 here) is 0, not a level to find a
    plateau at; a small but real level (1e-6 of the largest) stays a level."""
    plateaus = [{"start": 10.0, "end": 50.0, "level": 22.0}, {"start": 60.0, "end": 90.0, "level": 0.5}]
    assert staircase.match_levels([22.0, 0.5, 1.4e-14], plateaus, 0.02)["passed"]
    assert staircase.match_plateaus(plateaus, [22.0, 0.5, 1.4e-14], 0.02)["passed"]
    assert not staircase.match_levels([22.0, 0.5, 22e-6], plateaus, 0.02)["passed"]
