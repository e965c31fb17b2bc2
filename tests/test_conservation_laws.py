"""Conservation laws of SGD (small_tasks/toolkit/noether.py) against plain torch.optim.SGD loops, in float64."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from configs import UserError, load_config
from small_tasks.sgd.conservation_laws import SymmetricNet, law_checks, linear_charges, quadratic_charges
from small_tasks.toolkit import noether
from small_tasks.toolkit.records import SGDSettings
from trainer import Trainer

EXACT = 1e-10  # float64 round-off accumulated over a few hundred steps


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: one thread is far faster


def train_loop(lr, wd, momentum, steps=300, batch=16, seed=0, lrs=None):
    """torch.optim.SGD on random mini-batches (at ``lrs[n]`` for step n, if given); the charges after
    every step, the squared steps and the gradients' squares."""
    gen = torch.Generator().manual_seed(seed)
    model = SymmetricNet(6, 8, 10, 4, gen)
    x = torch.randn(128, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (128,), generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd, foreach=True)

    def snapshot():
        lin = linear_charges(model.w_out, model.b_out)
        quad = quadratic_charges(model.w_in, model.w_hidden, model.w_out)
        return {k: v.detach().clone() for k, v in {**lin, **quad}.items()}

    trace, kinetic, grads = [snapshot()], [], []
    for n in range(steps):
        if lrs is not None:
            opt.param_groups[0]["lr"] = lrs[n]
        idx = torch.randint(0, 128, (batch,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        before = [p.detach().clone() for p in (model.w_in, model.w_hidden, model.w_out)]
        grads.append(quadratic_charges(model.w_in.grad, model.w_hidden.grad, model.w_out.grad))
        opt.step()
        after = [p.detach() for p in (model.w_in, model.w_hidden, model.w_out)]
        kinetic.append(quadratic_charges(*(a - b for a, b in zip(after, before))))
        trace.append(snapshot())

    def stack(rows, key):
        return np.stack([r[key].numpy() for r in rows])

    keys = trace[0].keys()
    return (
        {k: stack(trace, k) for k in keys},
        {k: stack(kinetic, k) for k in ("scale", "rescale")},
        {k: stack(grads, k) for k in ("scale", "rescale")},
    )


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_laws_are_exact_for_torch_sgd(momentum):
    lr, wd = 0.1, 0.05
    trace, kinetic, _ = train_loop(lr, wd, momentum)
    n = len(kinetic["scale"])
    for key in ("translation_weight", "translation_bias"):
        pred = noether.linear_charge(trace[key][0], np.full(n, lr), wd, momentum)
        assert noether.relative_error(trace[key], pred, np.abs(trace[key]).max()) < EXACT
    for key in ("scale", "rescale"):
        pred = noether.quadratic_charge(trace[key][0], kinetic[key], np.full(n, lr), wd, momentum)
        assert noether.relative_error(trace[key], pred, np.abs(trace[key]).max()) < EXACT
    # the charges really move: the laws are not trivially satisfied by constants
    assert np.ptp(trace["scale"]) > 0.05 * trace["scale"][0]


def test_laws_hold_under_a_learning_rate_schedule():
    """A warmup then cosine decay: the laws with each step's lr (the buffer's carry-over rescaled by
    lr_n / lr_{n-1}) stay exact."""
    steps = 200
    lrs = 0.1 * np.minimum((np.arange(steps) + 1) / 20, 0.5 * (1 + np.cos(np.pi * np.arange(steps) / steps)))
    trace, kinetic, _ = train_loop(0.1, 0.05, 0.9, steps=steps, lrs=lrs)
    pred = noether.linear_charge(trace["translation_weight"][0], lrs, 0.05, 0.9)
    assert noether.relative_error(trace["translation_weight"], pred, np.abs(trace["translation_weight"]).max()) < EXACT
    pred = noether.quadratic_charge(trace["rescale"][0], kinetic["rescale"], lrs, 0.05, 0.9)
    assert noether.relative_error(trace["rescale"], pred, np.abs(trace["rescale"]).max()) < EXACT
    constant = noether.quadratic_charge(trace["rescale"][0], kinetic["rescale"], np.full(steps, 0.1), 0.05, 0.9)
    assert noether.relative_error(trace["rescale"], constant, np.abs(trace["rescale"]).max()) > 1e-3


def test_plain_sgd_gradient_form_and_its_closed_form_translation():
    lr, wd = 0.1, 0.05
    trace, _, grads = train_loop(lr, wd, 0.0)
    n = len(grads["scale"])
    for key in ("scale", "rescale"):
        pred = noether.quadratic_charge_sgd(trace[key][0], grads[key], np.full(n, lr), wd)
        assert noether.relative_error(trace[key], pred, np.abs(trace[key]).max()) < EXACT
    closed = trace["translation_bias"][0] * (1 - lr * wd) ** np.arange(n + 1)
    assert noether.relative_error(trace["translation_bias"], closed) < EXACT


def test_momentum_law_rejects_plain_sgd_and_vice_versa():
    lr, wd = 0.1, 0.05
    plain, plain_k, _ = train_loop(lr, wd, 0.0)
    heavy, heavy_k, _ = train_loop(lr, wd, 0.9)
    n = len(plain_k["scale"])
    wrong = noether.linear_charge(plain["translation_bias"][0], np.full(n, lr), wd, 0.9)
    assert noether.relative_error(plain["translation_bias"], wrong) > 1e-2
    wrong = noether.quadratic_charge(plain["scale"][0], plain_k["scale"], np.full(n, lr), wd, 0.9)
    assert noether.relative_error(plain["scale"], wrong) > 1e-2
    wrong = noether.quadratic_charge(heavy["rescale"][0], heavy_k["rescale"], np.full(n, lr), wd, 0.0)
    assert noether.relative_error(heavy["rescale"], wrong, np.abs(heavy["rescale"]).max()) > 1e-2


def test_continuous_oscillator_tracks_the_discrete_law():
    """Underdamped (momentum 0.9, omega > gamma) and overdamped (plain SGD): the modified equation
    matches the exact recursion to O(lr) relative; a wrong momentum does not."""
    lr, wd = 0.1, 0.5
    for momentum in (0.9, 0.0):
        exact = noether.linear_charge(1.0, np.full(400, lr), wd, momentum)
        cont = noether.linear_charge_continuous(1.0, 400, lr, wd, momentum)
        assert noether.relative_error(cont, exact, 1.0) < 0.01
    assert noether.frequency(lr, wd, 0.9) > noether.damping(lr, 0.9)  # oscillates
    exact = noether.linear_charge(1.0, np.full(400, lr), wd, 0.9)
    assert np.sum(np.diff(np.sign(exact)) != 0) >= 4
    wrong = noether.linear_charge_continuous(1.0, 400, lr, wd, 0.0)
    assert noether.relative_error(wrong, exact, 1.0) > 0.2


def test_continuous_scale_law_on_a_run():
    lr, wd = 0.05, 0.5
    for momentum in (0.9, 0.0):
        trace, kinetic, _ = train_loop(lr, wd, momentum, steps=400)
        cont = noether.quadratic_charge_continuous(trace["scale"][0], kinetic["scale"], lr, wd, momentum)
        err = noether.relative_error(trace["scale"], cont, np.abs(trace["scale"]).max())
        assert err < 0.02


def test_second_order_with_constant_drive_has_its_fixed_point():
    """q* = drive / (lr kappa): a check of the recursion's coefficients independent of any run."""
    q = noether.second_order(0.0, np.full(5000, 0.1), 0.2, 0.9, np.full(5000, 0.01))
    assert q[-1] == pytest.approx(0.01 / (0.1 * 0.2), rel=1e-9)


# ---- the Task, through the trainer ----


EXACT_CHECKS = ["translation_law", "scale_law", "rescale_law"]
OSCILLATOR_CHECKS = ["translation_oscillator", "scale_oscillator", "rescale_oscillator"]


def run_task(tmp_path, *overrides, name="t"):
    args = [f"--run.dir={tmp_path}", f"--run.name={name}", "--train.progress=false", "--run.threads=1", *overrides]
    trainer = Trainer(load_config("configs/small_tasks/conservation_laws.toml", args))
    return trainer.run(), trainer


def failed(summary):
    return sorted(k for k, v in summary["checks"].items() if not v["passed"])


def test_reference_run_passes_every_law_and_plots_them(tmp_path):
    # lr 0.1, weight decay 0.2: 300 steps are enough for the scale group's equilibrium (tests/test_law_predictions.py)
    s, _ = run_task(tmp_path, "--train.max_steps=300", "--optim.lr=0.1", "--optim.sgdm.weight_decay=0.2")
    assert failed(s) == []
    assert set(EXACT_CHECKS + OSCILLATOR_CHECKS) <= set(s["checks"])
    assert {"scale_law_gradient_form", "rescale_law_gradient_form"} <= set(s["checks"])
    for plot in ("translation", "scale", "rescale", "effective_lr"):
        assert (tmp_path / "t" / f"{plot}.png").stat().st_size > 0


def test_momentum_run_oscillates_and_passes(tmp_path):
    s, trainer = run_task(
        tmp_path,
        "--train.max_steps=300",
        "--optim.sgdm.momentum=0.9",
        "--optim.sgdm.weight_decay=0.5",
        "--optim.lr=0.2",
    )
    # the exact laws and oscillators hold; the drive-free decay of the rescale charge does not (lr omega ~ 0.5,
    # and momentum amplifies the kinetic drive it neglects): a prediction outside its regime
    assert failed(s) == ["rescale_decay"]
    assert "scale_law_gradient_form" not in s["checks"]  # plain SGD's form only
    bias = trainer.task.records(300)["translation_bias"]
    assert np.sum(np.diff(np.sign(bias)) != 0) >= 4  # underdamped: omega > gamma


def test_laws_reject_runs_they_were_not_derived_for(tmp_path):
    """The momentum law against a plain-SGD run, the plain law against a momentum run, and a wrong
    weight decay: each exact law fails (a constant learning rate, so the oscillators are checked too)."""
    plain, t_plain = run_task(tmp_path, "--train.max_steps=200", name="plain")
    heavy, t_heavy = run_task(tmp_path, "--train.max_steps=200", "--optim.sgdm.momentum=0.9", name="heavy")
    rec_plain, rec_heavy = t_plain.task.records(200), t_heavy.task.records(200)
    lrs = np.full(200, 0.05)
    wd = t_plain.task.wd
    wrong = law_checks(rec_plain, SGDSettings(lrs, 0.9), wd)["checks"]
    assert not any(wrong[k]["passed"] for k in EXACT_CHECKS + OSCILLATOR_CHECKS)
    wrong = law_checks(rec_heavy, SGDSettings(lrs, 0.0), wd)["checks"]
    assert not any(wrong[k]["passed"] for k in EXACT_CHECKS)
    wrong = law_checks(rec_plain, SGDSettings(lrs, 0.0), {k: 2 * v for k, v in wd.items()})["checks"]
    assert not any(wrong[k]["passed"] for k in EXACT_CHECKS)
    right = law_checks(rec_heavy, SGDSettings(lrs, 0.9), wd)["checks"]
    assert all(right[k]["passed"] for k in EXACT_CHECKS + OSCILLATOR_CHECKS)


def test_outside_the_assumptions_checks_fail_with_a_reason(tmp_path):
    s, _ = run_task(
        tmp_path, "--train.max_steps=200", "--optim.sgdm.momentum=0.9", "--optim.sgdm.nesterov=true", name="nesterov"
    )
    assert set(EXACT_CHECKS) <= set(failed(s))
    assert "heavy-ball" in " ".join(s["checks"]["scale_law"]["notes"])
    # lr * omega ~ 0.9: far outside the continuous approximation, while the exact laws still hold
    s, _ = run_task(
        tmp_path,
        "--train.max_steps=200",
        "--optim.sgdm.momentum=0.9",
        "--optim.sgdm.weight_decay=3",
        "--optim.lr=0.3",
        name="stiff",
    )
    assert not set(EXACT_CHECKS) & set(failed(s)) and "scale_oscillator" in failed(s)


def test_schedule_and_full_batch_keep_the_exact_laws(tmp_path):
    s, _ = run_task(
        tmp_path,
        "--train.max_steps=200",
        "--optim.schedule=cosine",
        "--optim.warmup_steps=20",
        "--optim.sgdm.momentum=0.5",
        "--optim.decay=matrices",
        "--task.batch_size=0",
    )
    assert failed(s) == [] and not set(OSCILLATOR_CHECKS) & set(s["checks"])  # no oscillator for a schedule


def test_without_weight_decay_the_effective_lr_falls(tmp_path):
    s, trainer = run_task(tmp_path, "--train.max_steps=300", "--optim.sgdm.weight_decay=0", "--optim.lr=0.5")
    assert failed(s) == []
    scale = trainer.task.records(300)["scale"]
    assert scale[0] / scale[-1] < 0.8  # lr / |W_in|^2, the step on the sphere, ends below 0.8 of its start


def test_resumed_run_keeps_the_whole_record(tmp_path):
    common = ["--optim.sgdm.momentum=0.9", "--train.checkpoint_interval=100"]
    whole, _ = run_task(tmp_path, "--train.max_steps=200", *common, name="whole")
    run_task(tmp_path, "--train.max_steps=100", *common, name="split")
    resumed, _ = run_task(tmp_path, "--train.max_steps=200", "--run.resume=true", *common, name="split")
    assert not set(EXACT_CHECKS) & set(failed(resumed)) and failed(resumed) == failed(whole)
    assert resumed["observed"] == whole["observed"]


# ---- the same laws on the GPT (small_tasks/sgd/gpt_symmetries.py) ----

GPT_FAST = [
    "--model.n_layer=2",
    "--model.n_embd=32",
    "--model.n_head=2",
    "--model.block_size=32",
    "--train.max_steps=30",
    "--train.batch_size=4",
    "--eval.tokens=1024",
]


def run_gpt(tmp_path, data_dir, *overrides, name="g"):
    args = [f"--run.dir={tmp_path}", f"--run.name={name}", "--train.progress=false", "--run.threads=1"]
    trainer = Trainer(
        load_config(
            "configs/small_tasks/gpt_symmetries.toml", [*args, f"--data.path={data_dir}", *GPT_FAST, *overrides]
        )
    )
    return trainer.run(), trainer


# 30 steps of heavy ball at lr 0.1, weight decay 0.01 predict a charge decay of only 0.38, below the 0.5 the
# decay predictions need to tell it from a conserved charge: they fail here by design (passing runs of
# them are in tests/test_law_predictions.py)
GPT_DECAY = ["qk_charge_decay", "vo_charge_decay"]


def test_symmetric_gpt_follows_every_law(tmp_path, data_dir):
    s, trainer = run_gpt(tmp_path, data_dir)
    assert failed(s) == GPT_DECAY
    assert all(s["checks"][k]["predicted_decay"] < 0.5 for k in GPT_DECAY)
    assert set(s["checks"]) == {
        "translation_law",
        "residual_scale_law",
        "qk_charge_law",
        "qk_angular_momentum",
        "vo_charge_law",
        "vo_angular_momentum",
        *GPT_DECAY,
    }
    for plot in ("translation", "residual_scale", "qk_charge", "vo_charge", "angular_momentum"):
        assert (tmp_path / "g" / f"{plot}.png").stat().st_size > 0
    # the same records judged as if bQ and bV had broken the attention symmetries: those checks fail
    checks, _, _ = trainer.task.analyse({"qk": True, "vo": True})
    assert not any(checks[k]["passed"] for k in checks if k.endswith("_broken_by_bias"))


def test_bq_and_bv_break_exactly_the_attention_groups(tmp_path, data_dir):
    s, trainer = run_gpt(tmp_path, data_dir, "--symmetry.mode=bqbv")
    assert failed(s) == []
    assert {"qk_charge_broken_by_bias", "vo_angular_momentum_broken_by_bias"} <= set(s["checks"])
    assert s["checks"]["translation_law"]["passed"] and s["checks"]["residual_scale_law"]["passed"]
    # the symmetric laws fed the biased run fail
    checks, _, _ = trainer.task.analyse({"qk": False, "vo": False})
    symmetric_laws = ("qk_charge_law", "qk_angular_momentum", "vo_charge_law", "vo_angular_momentum")
    assert not any(checks[k]["passed"] for k in symmetric_laws)
    s, _ = run_gpt(tmp_path, data_dir, "--symmetry.mode=bq", name="bq")
    assert failed(s) == ["vo_charge_decay"] and "qk_charge_decay" not in s["checks"]  # no decay predicted where broken
    assert s["checks"]["vo_charge_law"]["passed"] and "qk_charge_broken_by_bias" in s["checks"]


def test_gpt_outside_the_assumptions(tmp_path, data_dir):
    # the model's own layer-norm eps breaks the residual scale symmetry (slightly, but far above round-off)
    s, _ = run_gpt(tmp_path, data_dir, "--task.layernorm_eps=1e-5", name="eps")
    assert failed(s) == sorted(["residual_scale_law", *GPT_DECAY]) and s["checks"]["residual_scale_law"]["notes"]
    # weight decay on the matrices only: the residual writers' group mixes decayed and undecayed tensors
    s, _ = run_gpt(tmp_path, data_dir, "--optim.decay=matrices", name="decay")
    assert "residual_scale_law" in failed(s)


def test_gpt_laws_reject_nesterov_momentum(tmp_path, data_dir):
    """The laws are for heavy ball: Nesterov's look-ahead step breaks every one of them, translation and
    the angular momenta included, and the checks say why."""
    s, _ = run_gpt(tmp_path, data_dir, "--optim.sgdm.nesterov=true", name="nesterov")
    assert failed(s) == sorted(s["checks"]) and len(s["checks"]) == 8
    assert "heavy-ball" in " ".join(s["checks"]["translation_law"]["notes"])


def test_gpt_symmetries_does_not_resume(tmp_path, data_dir):
    with pytest.raises(UserError, match="start the run afresh"):
        run_gpt(tmp_path, data_dir, "--run.resume=true", name="again")


@pytest.mark.parametrize(
    ("override", "message"),
    [("--task.batch_size=999", "task.batch_size must be in"), ("--task.width=1", "task.width must be >= 2")],
)
def test_bad_task_values_are_one_line_errors(tmp_path, override, message):
    with pytest.raises(UserError, match=message):
        run_task(tmp_path, override)
