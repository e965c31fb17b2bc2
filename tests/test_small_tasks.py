"""Small tasks through the shared Trainer, in fast versions of the reference configs, plus their parts:
per-neuron SGD against a reference loop, models, config errors, and train.sync_interval."""

import json
import math
import signal

import numpy as np
import pytest
import torch

from configs import UserError, load_config
from optim.per_neuron import PerNeuronSGD
from small_tasks.models import DeepComposer, PowerMLP, QuadraticRNN, neuron_param_groups
from trainer import NonFiniteLoss, Trainer
from trainer.exits import PREEMPTED_EXIT
from trainer.loop import Hook

CFG = "configs/small_tasks/"


def run(tmp_path, config, *overrides):
    args = [f"--run.dir={tmp_path}", "--run.name=t", "--train.progress=false", "--run.threads=1", *overrides]
    summary = Trainer(load_config(CFG + config, args)).run()
    return summary


def assert_checks_pass(summary, names):
    for name in names:
        assert summary["checks"][name]["passed"], (name, summary["checks"][name])


def test_group_composition_fast(tmp_path):
    """C7 with C11's three strongest classes: plateaus within 2%, learned in order of power, loss to ~0."""
    s = run(
        tmp_path,
        "group_composition.toml",
        "--task.group=C7",
        "--task.powers=[0,12.5,10,7.5,7.5,10,12.5]",
        "--task.width=50",
        "--train.max_steps=1500",
    )
    assert s["prediction"]["levels"] == pytest.approx([60 / 7, 35 / 7, 15 / 7, 0])
    assert_checks_pass(s, ["plateau_levels", "learned_in_order_of_power", "reaches_zero_loss"])
    assert (tmp_path / "t" / "loss.png").stat().st_size > 0 and (tmp_path / "t" / "spectrum.png").exists()
    logged = [json.loads(line) for line in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in logged if "power" in r][-1]
    assert len(last["power"]) == 7 and last["step"] == s["steps"]
    assert sum(last["loss_by_irrep"]) == pytest.approx(s["final_val_loss"], rel=1e-3)  # the loss splits per irrep


def test_group_composition_c11_reference_staircase(tmp_path):
    """The reference C11 setup, cut at 6,000 steps (the last pair is learned by ~4,700): 75/11 ... 5/11 within
    2%, in descending order of power. The full 20,000-step run is configs/small_tasks/group_composition.toml."""
    s = run(tmp_path, "group_composition.toml", "--train.max_steps=6000")
    assert s["prediction"]["levels"] == pytest.approx([75 / 11, 50 / 11, 30 / 11, 15 / 11, 5 / 11, 0])
    assert_checks_pass(s, ["plateau_levels", "learned_in_order_of_power"])


def test_modular_addition_fast(tmp_path):
    """Frequencies 1 and 3 of the reference spectrum at 5x the learning rate (drop times scale as 1/lr)."""
    s = run(
        tmp_path,
        "modular_addition.toml",
        "--task.frequencies=[1,3]",
        "--task.spectrum=[10,5]",
        "--optim.lr=0.05",
        "--train.max_steps=6000",
    )
    assert s["prediction"]["levels"] == pytest.approx([0.625, 0.125, 0])
    assert [round(t) for t in s["prediction"]["drop_steps"]] == [153, 1222]
    assert_checks_pass(
        s,
        [
            "plateau_levels",
            "learned_in_order_of_power",
            "drops_after_lower_bounds",
            "drop_time_ratios",
            "reaches_zero_loss",
        ],
    )


def test_dihedral_fast(tmp_path):
    """D5 with two 2-dim irreps learns in order of power (lr 0.05 instead of 0.01)."""
    s = run(tmp_path, "dihedral.toml", "--optim.lr=0.05", "--train.max_steps=4000")
    assert s["checks"]["learned_in_order_of_power"]["observed"] == ["rot1", "rot2", "sign_s"]
    assert_checks_pass(s, ["plateau_levels", "learned_in_order_of_power", "reaches_zero_loss"])


def test_diagonal_linear_fast(tmp_path):
    """Reference setup at lr 1e-2 (AGF's times are in steps * lr): jumps within 25%, every plateau an AGF level."""
    s = run(tmp_path, "diagonal_linear.toml", "--optim.lr=0.01", "--train.max_steps=7500")
    assert_checks_pass(s, ["agf_jump_steps", "plateaus_are_agf_levels"])


def test_per_neuron_sgd_matches_a_reference_loop():
    torch.manual_seed(0)
    model = PowerMLP(6, 4, 3, 2, init_scale=0.5)
    ref = [p.detach().clone() for p in (model.W_in, model.W_out)]
    opt = PerNeuronSGD(neuron_param_groups(model), lr=0.1, momentum=0.9)
    bufs = [torch.zeros_like(p) for p in ref]
    x, y = torch.randn(10, 6), torch.randn(10, 3)
    for _ in range(5):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        grads = [model.W_in.grad.clone(), model.W_out.grad.clone()]
        opt.step()
        opt.zero_grad()
        for i in range(4):  # neuron i: row i of W_in, column i of W_out
            norm = math.sqrt(float(ref[0][i].square().sum() + ref[1][:, i].square().sum()))
            bufs[0][i] = 0.9 * bufs[0][i] + grads[0][i]
            bufs[1][:, i] = 0.9 * bufs[1][:, i] + grads[1][:, i]
            ref[0][i] -= 0.1 * norm ** (1 - 2) * bufs[0][i]
            ref[1][:, i] -= 0.1 * norm ** (1 - 2) * bufs[1][:, i]
        torch.testing.assert_close(model.W_in.detach(), ref[0])
        torch.testing.assert_close(model.W_out.detach(), ref[1])


def test_rnn_and_deep_compose_with_one_pair_block():
    torch.manual_seed(0)
    x = torch.randn(5, 4, 3)
    rnn = QuadraticRNN(3, 8, 4, init_scale=1.0)
    cell = rnn.cell
    h = x[:, 0]
    for t in range(1, 4):
        h = cell(torch.stack([h, x[:, t]], 1))
    torch.testing.assert_close(rnn(x), h)
    deep = DeepComposer(3, 8, 4, init_scale=1.0)
    a, b = deep.layers
    left, right = a(x[:, :2]), a(x[:, 2:])
    torch.testing.assert_close(deep(x), b(torch.stack([left, right], 1)))
    with pytest.raises(UserError, match="power of two"):
        DeepComposer(3, 8, 3, init_scale=1.0)


@pytest.mark.parametrize("model", ["rnn", "deep"])
def test_deeper_models_run_through_the_trainer(tmp_path, model):
    s = run(
        tmp_path,
        "group_composition.toml",
        "--task.group=C3",
        "--task.powers=[]",
        "--task.k=4",
        f"--task.model={model}",
        "--task.width=16",
        "--train.max_steps=20",
    )
    assert s["steps"] == 20 and np.isfinite(s["final_val_loss"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--task.widht=3", "did you mean 'task.width'"),
        ("--task.group=Q3", "cannot read group"),
        ("--task.powers=[1,2]", "one power per irrep"),
        ("--task.template=flat", "powers or onehot"),
        ("--train.on_nonfinite=skip", "sync_interval"),
    ],
)
def test_config_errors_name_the_fix(tmp_path, override, message):
    with pytest.raises(UserError, match=message):
        run(tmp_path, "group_composition.toml", override, "--train.max_steps=2")


def test_sync_interval_changes_nothing_but_the_syncs(tmp_path):
    common = ["--task.group=C5", "--task.powers=[]", "--task.width=8", "--train.max_steps=60", "--optim.lr=0.01"]
    a = run(tmp_path / "a", "group_composition.toml", "--train.sync_interval=1", *common)
    b = run(tmp_path / "b", "group_composition.toml", "--train.sync_interval=50", *common)
    la = [json.loads(x) for x in (tmp_path / "a" / "t" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "b" / "t" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("train_loss") for r in la] == [r.get("train_loss") for r in lb]
    assert a["final_val_loss"] == b["final_val_loss"]


def test_sync_interval_still_stops_a_diverging_run(tmp_path):
    with pytest.raises(NonFiniteLoss):
        run(
            tmp_path,
            "group_composition.toml",
            "--task.group=C5",
            "--task.powers=[]",
            "--task.init_scale=10",
            "--optim.lr=100",
            "--train.sync_interval=7",
            "--train.log_interval=10",
            "--train.max_steps=100",
        )


def test_loss_trace_joins_logged_records_and_the_per_step_trace():
    from small_tasks.staircase import loss_trace

    trace = np.full(10, np.nan)
    trace[5:] = np.arange(5.0, 10.0)  # a run resumed at step 5 records only its own steps
    history = [{"step": 2, "train_loss": 1.0}, {"step": 4, "train_loss": 3.0}, {"step": 8, "train_loss": 7.0}]
    steps, loss = loss_trace(trace, history)
    assert steps.tolist() == [1, 3, 5, 6, 7, 8, 9] and loss.tolist() == [1, 3, 5, 6, 7, 8, 9]


def test_resumed_run_reaches_the_same_checks(tmp_path):
    common = ["--task.group=C5", "--task.powers=[]", "--task.width=16", "--train.log_interval=10"]
    whole = run(tmp_path / "a", "group_composition.toml", "--train.max_steps=800", *common)
    run(tmp_path / "b", "group_composition.toml", "--train.max_steps=400", *common)
    resumed = run(tmp_path / "b", "group_composition.toml", "--train.max_steps=800", "--run.resume=true", *common)
    assert whole["final_val_loss"] == resumed["final_val_loss"]
    assert whole["checks"]["plateau_levels"]["passed"] and resumed["checks"]["plateau_levels"]["passed"]
    assert whole["checks"]["learned_in_order_of_power"] == resumed["checks"]["learned_in_order_of_power"]


class StopAt(Hook):
    """Asks the trainer to stop after ``step``, as a SIGTERM would (read at the next step's sync)."""

    def __init__(self, step: int):
        self.step = step

    def after_step(self, trainer, step: int) -> None:
        if step == self.step:
            trainer.stop_signal = signal.SIGTERM


@pytest.mark.parametrize(
    "config, overrides",
    [
        ("lazy_rich.toml", ["--task.singular_values=[3,2]", "--optim.lr=2e-3", "--train.max_steps=600"]),
        ("quasi_homogeneous.toml", ["--train.max_steps=300", "--optim.lr=0.3"]),
        ("get_rich_quick_relu.toml", ["--task.instances=2", "--task.width=10", "--task.n=50", "--train.max_steps=200"]),
    ],
)
def test_records_kept_by_tasks_survive_a_preemption(tmp_path, config, overrides):
    """A run stopped midway and resumed reports what the uninterrupted run reports: the per-step and
    sampled records of the steps before the stop travel in the checkpoint."""
    common = [f"--run.dir={tmp_path}", "--train.progress=false", "--run.threads=1", "--train.sync_interval=1"]
    common += overrides
    whole = Trainer(load_config(CFG + config, [*common, "--run.name=whole"])).run()
    stopped = Trainer(load_config(CFG + config, [*common, "--run.name=cut"]), hooks=[StopAt(97)])
    stopped.run()
    assert stopped.exit_code == PREEMPTED_EXIT and stopped.state.step == 98
    resumed = Trainer(load_config(CFG + config, [*common, "--run.name=cut", "--run.resume=true"])).run()
    assert json.dumps(resumed["checks"], sort_keys=True) == json.dumps(whole["checks"], sort_keys=True)
