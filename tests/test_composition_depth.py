"""The deeper composers' staircase (small_tasks/composition/depth.py) and the width sweep over models: a run
in the theory's regime passes each check, and a run outside it (too few steps, another spectrum, a large
initialization; widths that double with k) fails it."""

import numpy as np
import pytest

from configs import load_config
from eval import width_sweep
from small_tasks.composition import depth, groups
from small_tasks.toolkit import staircase
from trainer import CHECKS_FAILED_EXIT, Trainer

CFG = "configs/small_tasks/composition_depth_staircase.toml"
# the RNN at k = 3 (125 sequences) at 5x the shipped learning rate: the staircase in a few hundred steps
FAST = ["--task.k=3", "--task.width=20", "--optim.per_neuron.lr=0.05", "--train.max_steps=1500"]
DEPTH_CHECKS = {
    "depth_plateau_levels",
    "depth_plateaus_are_predicted_levels",
    "depth_learned_in_predicted_order",
    "depth_drops_at_predicted_steps",
}


def train(tmp_path, name, *overrides):
    args = [f"--run.dir={tmp_path}", f"--run.name={name}", "--train.progress=false", "--run.threads=1"]
    trainer = Trainer(load_config(CFG, [*args, *overrides]))
    return trainer, trainer.run()


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    """The fast RNN run, and its per-class residual of the composition of all k (steps, residual, learned)."""
    trainer, summary = train(tmp_path_factory.mktemp("depth"), "fast", *FAST)
    task = trainer.task
    resid = task.class_trace.double().cpu().numpy()
    steps = np.arange(len(resid), dtype=float)
    learned = staircase.learning_steps(steps, resid, np.array(task.class_powers()) / task.group.order)
    return task, summary, steps, resid, learned


def failed(summary):
    return {name for name, c in summary["checks"].items() if not c["passed"]}


def test_rnn_staircase_passes_every_check(fast_run):
    """C5's default template: levels 3 -> 1 -> 0, f1 first, drops at (k - 1) t_c of the pairwise block."""
    task, summary, *_ = fast_run
    pred = summary["prediction"]
    assert pred["levels"] == pytest.approx([3.0, 1.0, 0.0])
    assert pred["order"] == [["f1+f4"], ["f2+f3"]]
    assert pred["output_shares"] == [0.5]
    assert DEPTH_CHECKS | {"reaches_zero_loss"} <= set(summary["checks"])
    assert not failed(summary), summary["checks"]
    assert all(summary["checks"][name]["kind"] == "prediction" for name in DEPTH_CHECKS)


def test_rnn_staircase_fails_when_too_short(fast_run):
    """The same run cut before the second class is learned: its level 1.0 is reached, but 0 and the order
    f1 then f2 are not (f2 never half learned)."""
    task, summary, steps, resid, learned = fast_run
    cut = int(summary["prediction"]["drop_steps"]["f2+f3"] * 0.9)
    short = staircase.learning_steps(steps[:cut], resid[:cut], np.array(task.class_powers()) / task.group.order)
    pred, order = task.depth_prediction()
    labels = [task.class_label(c) for c in range(len(task.classes))]
    checks = depth.checks(pred, order, labels, steps[:cut], resid[:cut].sum(1), short)
    assert not checks["depth_learned_in_predicted_order"]["passed"]
    assert not checks["depth_drops_at_predicted_steps"]["passed"]  # a class that never starts
    cut = int(summary["prediction"]["drop_steps"]["f1+f4"] * 0.9)  # before the first drop: no level 1.0
    checks = depth.checks(pred, order, labels, steps[:cut], resid[:cut].sum(1), learned)
    assert not checks["depth_plateau_levels"]["passed"]


def judged(task, powers, steps, resid, learned):
    """The run's checks against the prediction for another template of the same group (spectrum ``powers``)."""
    template = groups.template_from_powers(task.group, powers, 0, "random")
    labels = [task.class_label(c) for c in range(len(task.classes))]
    cp = [sum(powers[i] for i in cls) for cls in task.classes]
    pred, order = depth.predict(task.group, template, cp, labels, "rnn", 3, 1e-5, -1.0, 0.05)
    checks = depth.checks(pred, order, labels, steps, resid.sum(1), learned)
    return pred, {name for name, c in checks.items() if not c["passed"]}


def test_rnn_staircase_fails_against_another_spectrum(fast_run):
    """The run judged by the prediction for other spectra: the reversed one (f2 strong: the order f2, f1,
    which the run reverses; its levels 3 -> 1 -> 0 are the run's), and [0, 5, 4, 4, 5] (levels 3.6 -> 1.6,
    where the run sits at 3.0 and 1.0)."""
    task, summary, steps, resid, learned = fast_run
    pred, bad = judged(task, [0.0, 2.5, 5.0, 5.0, 2.5], steps, resid, learned)
    assert pred["order"] == [["f2+f3"], ["f1+f4"]]
    assert "depth_learned_in_predicted_order" in bad
    pred, bad = judged(task, [0.0, 5.0, 4.0, 4.0, 5.0], steps, resid, learned)
    assert pred["levels"] == pytest.approx([3.6, 1.6, 0.0])
    assert {"depth_plateau_levels", "depth_plateaus_are_predicted_levels"} <= bad


def test_rnn_drops_fail_outside_small_initialization(tmp_path):
    """Init 0.1: the first drop comes well off the small-init escape step, so the drop check fails."""
    _, summary = train(tmp_path, "big", *FAST[:-1], "--task.init_scale=0.1", "--train.max_steps=200")
    assert "depth_drops_at_predicted_steps" in failed(summary), summary["checks"]["depth_drops_at_predicted_steps"]


def test_deep_model_shares_and_first_drop():
    """The deep model at k = 8: layers of 4, 2 and 1 outputs of 7; the first drop sums t_c / w_l."""
    assert depth.output_shares("deep", 8) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    times = depth.first_drop_times(np.array([1.0]), "deep", 8, np.exp(-3.0), -1.0)
    assert times[0] == pytest.approx(1.0 * (7 / 4 + 7 / 2 + 7))  # ln(1/theta0) / (3 U) = 1


def test_width_checks_of_the_deeper_models():
    """Flat widths pass the deeper models' checks; widths that double with k (the two-layer network's)
    fail the sub-exponential one and pass the exponential one; a span of k under 2 decides nothing."""
    flat = width_sweep.checks({2: 9, 4: 10, 8: 12}, 5, "rnn")
    assert all(c["passed"] for c in flat.values()), flat
    doubling = {2: 9, 3: 18, 4: 36}
    assert not width_sweep.checks(doubling, 5, "deep")["width_subexponential"]["passed"]
    assert width_sweep.checks(doubling, 5, "mlp")["width_grows_exponentially"]["passed"]
    assert width_sweep.width_slope(doubling) == pytest.approx(1.0)
    # half a doubling per element is the threshold: just above it fails
    assert not width_sweep.checks({2: 9, 4: 19}, 5, "rnn")["width_subexponential"]["passed"]
    assert not width_sweep.checks({2: 9, 3: 9}, 5, "rnn")["width_subexponential"]["passed"]  # span 1
    assert not width_sweep.checks({2: 9, 4: None}, 5, "rnn")["width_within_bound"]["passed"]


def test_width_sweep_models_and_errors(capsys):
    """The deep model needs two powers of two among --ks (a one-line error, exit 2); an RNN grid stopping at
    width 1 composes nothing and fails its checks (exit 6)."""
    assert width_sweep.main(["--models", "deep", "--ks", "2", "3"]) == 2
    assert "error: --models deep needs two --ks" in capsys.readouterr().err
    assert width_sweep.main(["--known", "mlp:2"]) == 2  # widths measured before: MODEL:K=W,K=W
    assert "error: --known 'mlp:2' is not MODEL:K=W" in capsys.readouterr().err
    assert width_sweep.main(["--known", "mlp:2=9,3=18,4=36", "rnn:2=9,4=36"]) == CHECKS_FAILED_EXIT  # trains nothing
    assert "check rnn_width_subexponential: FAIL" in capsys.readouterr().out
    argv = ["--group", "C3", "--models", "rnn", "--ks", "2", "3", "--widths", "1", "--seeds", "1", "--steps", "20"]
    assert width_sweep.main(argv) == CHECKS_FAILED_EXIT
    out = capsys.readouterr().out
    assert "check rnn_width_within_bound: FAIL" in out and "check rnn_width_subexponential: FAIL" in out
