"""The conservation-law predictions (made from the setup alone) against runs that must pass and runs that must not:
the rescale charge's decay, the scale-invariant group's equilibrium and the translation law."""

import numpy as np
import pytest

from configs import UserError, load_config
from small_tasks.sgd.conservation_laws import DECAY_MIN_EFFECT, law_checks
from small_tasks.toolkit import noether
from small_tasks.toolkit.records import SGDSettings, decay_check
from trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

PREDICTIONS = ["translation_law", "rescale_decay", "scale_equilibrium"]
# lr 0.1 and weight decay 0.2: 300 steps reach the equilibrium (its second half spans 150 * 2 lr wd = 6
# relaxations; measured ratio 0.98), and the rescale charge's predicted decay reaches the floor (0.9)
LR, WD = 0.1, 0.2
FAST = ["--train.max_steps=300", f"--optim.lr={LR}", f"--optim.sgdm.weight_decay={WD}"]


def run_task(tmp_path, *overrides, name="t"):
    args = [f"--run.dir={tmp_path}", f"--run.name={name}", "--train.progress=false", "--run.threads=1", *overrides]
    trainer = Trainer(load_config("configs/small_tasks/conservation_laws.toml", args))
    return trainer.run(), trainer


def passed(checks, names=PREDICTIONS):
    """Pass or fail of each named check, from a summary or a dict of checks."""
    checks = checks.get("checks", checks)
    return {k: checks[k]["passed"] for k in names}


# ---- the predictions' formulas, without a run ----


def test_decay_factor_is_the_closed_form_without_momentum():
    lrs = np.full(50, 0.1)
    assert np.allclose(noether.decay_factor(lrs, 0.4, 0.0), (1 - 0.1 * 0.4) ** np.arange(51), rtol=1e-12, atol=0)
    # heavy ball overdamped: per step the slow root of r^2 - (1 + momentum - lr kappa) r + momentum = 0
    x, beta = 0.01 * 0.2, 0.9
    h = noether.decay_factor(np.full(400, 0.01), 0.2, beta)
    root = ((1 + beta - x) + np.sqrt((1 + beta - x) ** 2 - 4 * beta)) / 2
    assert h[-1] / h[-2] == pytest.approx(root, rel=1e-9)
    assert 1 - root > 10 * x  # momentum speeds the decay up: ~ lr kappa / (1 - momentum) once that is << 1 - momentum


def test_decay_check_passes_the_law_and_rejects_a_conserved_or_wrong_charge():
    lrs, wd = np.full(300, 0.05), 0.2
    q0 = np.array([1.0, -0.5, 0.3])
    exact = noether.decay_factor(lrs, 2 * wd, 0.0)[:, None] * q0
    assert decay_check(exact, lrs, wd, 0.0, 0.05, 0.1, 0.5)["passed"]
    # a conserved charge (the symmetry's law without weight decay) misses by the whole predicted decay
    constant = np.tile(q0, (301, 1))
    assert not decay_check(constant, lrs, wd, 0.0, 0.05, 0.1, 0.5)["passed"]
    # half the weight decay: the charge lags the prediction by far more than the tolerance
    slow = noether.decay_factor(lrs, wd, 0.0)[:, None] * q0
    assert not decay_check(slow, lrs, wd, 0.0, 0.05, 0.1, 0.5)["passed"]


def test_decay_check_demands_a_decay_it_can_see():
    """Too few steps for the decay to stand out: even the exact law fails, with the reason."""
    lrs, wd = np.full(20, 0.05), 0.2
    exact = noether.decay_factor(lrs, 2 * wd, 0.0)[:, None] * np.ones(2)
    out = decay_check(exact, lrs, wd, 0.0, 0.05, 0.1, DECAY_MIN_EFFECT)
    assert not out["passed"] and out["observed"] < 1e-12
    assert out["predicted_decay"] < DECAY_MIN_EFFECT and "train longer" in out["notes"][0]


def test_spherical_equilibrium_is_the_stationary_point_of_the_law():
    """Drive the exact quadratic law with K_n = r Q_n: Q is stationary only at r = 2 lr wd / (1 + momentum)."""
    lr, wd, beta = 0.05, 0.2, 0.9
    r = noether.spherical_equilibrium(lr, wd, beta)

    def final_growth(rate: float) -> float:
        q_prev = q = 1.0
        k_prev = 0.0
        for _ in range(2000):
            k = rate * q
            q_next = q + beta * (q - q_prev) - 2 * lr * wd * q + k + beta * k_prev
            q_prev, q, k_prev = q, q_next, k
        return q / q_prev

    assert final_growth(r) == pytest.approx(1.0, rel=1e-12)
    assert final_growth(1.1 * r) > 1 + 1e-4 and final_growth(0.9 * r) < 1 - 1e-4


# ---- on runs of the task ----


def test_reference_run_passes_every_prediction_and_tags_the_kinds(tmp_path):
    s, _ = run_task(tmp_path, *FAST)
    assert passed(s) == dict.fromkeys(PREDICTIONS, True)
    eq = s["checks"]["scale_equilibrium"]
    assert abs(eq["ratio"] - 1) <= 0.1 and eq["effective_lr_predicted"] == pytest.approx(np.sqrt(2 * LR * WD), rel=1e-3)
    assert s["checks"]["rescale_decay"]["predicted_decay"] >= DECAY_MIN_EFFECT
    kinds = {k: v["kind"] for k, v in s["checks"].items()}
    for name in ("scale_law", "rescale_law", "scale_law_gradient_form", "scale_oscillator", "rescale_oscillator"):
        assert kinds[name] == "implementation"
    for name in PREDICTIONS + ["translation_oscillator"]:
        assert kinds[name] == "prediction"


def test_predictions_reject_a_wrong_weight_decay(tmp_path):
    _, trainer = run_task(tmp_path, *FAST)
    rec, wd = trainer.task.records(300), trainer.task.wd
    lrs = np.full(300, LR)
    right = law_checks(rec, SGDSettings(lrs, 0.0), wd)["checks"]
    assert passed(right) == dict.fromkeys(PREDICTIONS, True)
    for factor in (0.5, 2.0):
        wrong = law_checks(rec, SGDSettings(lrs, 0.0), {k: factor * v for k, v in wd.items()})["checks"]
        assert not any(passed(wrong).values())
        ratio = wrong["scale_equilibrium"]["ratio"]
        assert abs(ratio - 1 / factor) < 0.1  # the run sits at its own weight decay's equilibrium


def test_predictions_reject_adam(tmp_path):
    adam = ["--optim.name=adamw", "--optim.lr=0.01", "--optim.adamw.weight_decay=0.2"]
    s, _ = run_task(tmp_path, "--train.max_steps=300", *adam)
    assert not any(passed(s).values())


def test_a_hidden_bias_breaks_the_rescale_prediction_only(tmp_path):
    """A fixed offset before the ReLU removes the rescale symmetry; scale and translation keep theirs."""
    s, _ = run_task(tmp_path, *FAST, "--task.hidden_bias=0.5", name="biased")
    assert passed(s) == {"translation_law": True, "rescale_decay": False, "scale_equilibrium": True}
    # not a near miss: the bias moves the charge ten times further from the prediction than the drive does
    unbroken, _ = run_task(tmp_path, *FAST, name="unbroken")
    assert s["checks"]["rescale_decay"]["observed"] > 10 * unbroken["checks"]["rescale_decay"]["observed"]


def test_layer_norm_eps_breaks_the_scale_prediction_only(tmp_path):
    s, _ = run_task(tmp_path, *FAST, "--task.layernorm_eps=0.1")
    assert passed(s) == {"translation_law": True, "rescale_decay": True, "scale_equilibrium": False}
    assert abs(s["checks"]["scale_equilibrium"]["ratio"] - 1) > 0.5


def test_equilibrium_rejects_a_run_that_has_not_reached_it(tmp_path):
    """At weight decay 0.05, 300 steps take |W_in|^2 only part of the way from 16 to its equilibrium near 1."""
    s, _ = run_task(tmp_path, "--train.max_steps=300")
    eq = s["checks"]["scale_equilibrium"]
    assert not eq["passed"] and eq["ratio"] < 0.5
    # the same run is judged too short by its window as well: one relaxation needs 1 / (2 lr wd) = 200 steps
    assert "train longer" in eq["notes"][0]


def test_decay_prediction_fails_outside_the_gradient_flow_limit(tmp_path):
    """Heavy ball at momentum 0.9 amplifies the dropped kinetic drive by ~1 / (1 - momentum)^2: at lr 0.05 the
    rescale charge no longer follows the drive-free decay, while the equilibrium prediction still holds."""
    s, _ = run_task(tmp_path, *FAST, "--optim.sgdm.momentum=0.9")
    assert passed(s) == {"translation_law": True, "rescale_decay": False, "scale_equilibrium": True}


def test_too_small_a_weight_decay_is_no_decay_to_see(tmp_path):
    s, _ = run_task(tmp_path, "--train.max_steps=300", "--optim.sgdm.weight_decay=0.002")
    check = s["checks"]["rescale_decay"]
    assert not check["passed"] and check["predicted_decay"] < DECAY_MIN_EFFECT


def test_without_weight_decay_neither_decay_nor_equilibrium_is_predicted(tmp_path):
    s, trainer = run_task(tmp_path, "--train.max_steps=300", "--optim.sgdm.weight_decay=0", "--optim.lr=0.5")
    assert not {"rescale_decay", "scale_equilibrium"} & set(s["checks"])
    assert s["checks"]["translation_law"]["passed"]
    assert (tmp_path / "t" / "effective_lr.png").stat().st_size > 0


# ---- the GL(head_dim) charges of the GPT's attention (small_tasks/sgd/gpt_symmetries.py) ----

GPT_FAST = [
    "--model.n_layer=2",
    "--model.n_embd=32",
    "--model.n_head=2",
    "--model.block_size=32",
    "--train.max_steps=60",
    "--train.batch_size=4",
    "--eval.tokens=1024",
]
# plain SGD at weight decay 0.1: 60 steps predict a decay of 1 - (1 - 2 lr wd)^60 = 0.70, past DECAY_MIN_EFFECT
GPT_PLAIN = ["--optim.sgdm.momentum=0", "--optim.sgdm.weight_decay=0.1"]
GPT_DECAY = ["qk_charge_decay", "vo_charge_decay"]


def run_gpt(tmp_path, data_dir, *overrides, name="g"):
    args = [f"--run.dir={tmp_path}", f"--run.name={name}", "--train.progress=false", "--run.threads=1"]
    config = load_config(
        "configs/small_tasks/gpt_symmetries.toml", [*args, f"--data.path={data_dir}", *GPT_FAST, *overrides]
    )
    trainer = Trainer(config)
    return trainer.run(), trainer


def test_gpt_attention_charges_decay_as_predicted(tmp_path, data_dir):
    s, trainer = run_gpt(tmp_path, data_dir, *GPT_PLAIN)
    assert passed(s, GPT_DECAY + ["translation_law"]) == dict.fromkeys(GPT_DECAY + ["translation_law"], True)
    assert all(s["checks"][k]["kind"] == "prediction" for k in GPT_DECAY + ["qk_angular_momentum", "translation_law"])
    assert all(s["checks"][k]["kind"] == "implementation" for k in ("qk_charge_law", "residual_scale_law"))
    assert s["checks"]["qk_charge_decay"]["predicted_decay"] == pytest.approx(1 - (1 - 2 * 0.1 * 0.1) ** 60, rel=1e-3)
    # the same records judged with a wrong weight decay: the decay predictions (and translation's) fail
    task = trainer.task
    for factor in (0.5, 2.0):
        task.decay = {k: factor * v for k, v in task.decay.items()}
        checks, _, _ = task.analyse({"qk": False, "vo": False})
        assert not any(passed(checks, GPT_DECAY + ["translation_law"]).values())
        task.decay = {k: v / factor for k, v in task.decay.items()}


def test_gpt_decay_predictions_reject_adam(tmp_path, data_dir):
    s, _ = run_gpt(tmp_path, data_dir, "--optim.name=adamw", "--optim.lr=0.01", "--optim.adamw.weight_decay=1.0")
    assert all(s["checks"][k]["predicted_decay"] >= DECAY_MIN_EFFECT for k in GPT_DECAY)  # a decay it can see
    assert not any(passed(s, GPT_DECAY).values())


def test_gpt_decay_is_not_predicted_for_a_broken_group(tmp_path, data_dir):
    s, _ = run_gpt(tmp_path, data_dir, *GPT_PLAIN, "--symmetry.mode=bqbv")
    assert not set(GPT_DECAY) & set(s["checks"])
    assert s["checks"]["vo_charge_broken_by_bias"]["passed"] and s["checks"]["translation_law"]["passed"]


def test_a_negative_layer_norm_eps_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="task.layernorm_eps must be >= 0"):
        run_task(tmp_path, "--task.layernorm_eps=-1")
