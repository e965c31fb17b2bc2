"""The attention mechanism task: the layer against a loop-by-loop reference, the reduced model against the
layer, the saddle's growth rate against a direct integration, then short runs through the trainer, each
check passed by the run it is derived for and failed by a run it must reject."""

import math

import numpy as np
import pytest
import torch

from configs import SymmetryConfig, UserError
from model.symmetry import BiasSpec, draw_biases
from runtime import Context
from small_tasks.attention import theory as th
from small_tasks.attention.mechanism import AttentionEnsemble, AttentionMechanismTask
from trainer import Trainer

from helpers import run_config, train_config

CONFIG = "small_tasks/attention_mechanism.toml"
# linear attention at lr 1: the first feature escapes within 400 steps from alpha = 1e-4
FAST = [
    "--task.attention=linear",
    "--task.init_scales=[1e-2,1e-3,1e-4]",
    "--task.n=64",
    "--optim.lr=1.0",
    "--train.max_steps=400",
    "--train.log_interval=400",
]


def reference_outputs(wq, wk, values, tokens, bq, bv, attention):
    """One copy of the layer written out per head, query and key."""
    heads, dh, _ = wq.shape
    n, t = tokens.shape
    out = torch.zeros(n, t, values.shape[1], dtype=torch.float64)
    for s in range(n):
        for h in range(heads):
            for i in range(t):
                q = wq[h][:, tokens[s, i]] + bq[h]
                logits = torch.stack([q @ wk[h][:, tokens[s, j]] / math.sqrt(dh) for j in range(t)])
                weights = torch.softmax(logits, 0) if attention == "softmax" else (1 + logits) / t
                out[s, i] += sum(weights[j] * (values[tokens[s, j]] + bv[h]) for j in range(t)) / heads
    return out


@pytest.mark.parametrize("attention", th.ATTENTIONS)
def test_layer_matches_reference_and_reduced_model(attention):
    gen = torch.Generator().manual_seed(0)
    k, heads, dh, v, n, t = 2, 2, 3, 5, 3, 4
    wq = torch.randn(k, heads, dh, v, generator=gen, dtype=torch.float64)
    wk = torch.randn(k, heads, dh, v, generator=gen, dtype=torch.float64)
    values = torch.randn(v, dh, generator=gen, dtype=torch.float64)
    tokens = torch.randint(0, v, (n, t), generator=gen)
    model = AttentionEnsemble(wq, wk, values, attention)
    with torch.no_grad():
        model.bias.copy_(torch.randn(k, dh, generator=gen, dtype=torch.float64))
    spec = BiasSpec(SymmetryConfig(mode="bqbv", per_head=True), 1, heads, dh)
    biases = draw_biases(spec, 3, 7)
    out = model(tokens, biases)
    bq, bv = biases["q"][0].double(), biases["v"][0].double()
    for c in range(k):
        ref = reference_outputs(wq[c], wk[c], values, tokens, bq, bv, attention) + model.bias[c]
        torch.testing.assert_close(out[c], ref, rtol=1e-12, atol=1e-12)
    # the reduced model: logits c W_Q^T W_K plus the query bias's query-independent row c (W_K^T bQ)
    y = torch.randn(n, t, dh, generator=gen, dtype=torch.float64)
    plain = AttentionEnsemble(wq, wk, values, attention)
    zero_v = {"q": biases["q"]}
    lam = (wq[0].transpose(-1, -2) @ wk[0] + (wk[0].transpose(-1, -2) @ bq[:, :, None])[:, None, :, 0]) / math.sqrt(dh)
    got = th.reduced_loss(lam, tokens, values, torch.zeros(dh, dtype=torch.float64), y, attention)
    want = 0.5 * (plain(tokens, zero_v)[0] - y).square().sum(-1).mean()
    torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)


def test_saddle_rate_matches_direct_integration():
    """From tiny balanced factors, the leading logit grows as exp(2 c s_1 t / H): measured by small-step
    gradient descent on the reduced model through the factors, against escape_rate."""
    gen = torch.Generator().manual_seed(1)
    heads, dh, v, n, t = 2, 4, 6, 64, 6
    tokens = torch.randint(0, v, (n, t), generator=gen)
    values = torch.randn(v, dh, generator=gen, dtype=torch.float64)
    teacher = torch.randn(1, v, v, generator=gen, dtype=torch.float64)
    y = (th.attend(teacher[:, tokens[:, :, None], tokens[:, None, :]], "softmax") @ values[tokens]).mean(0)
    _, g = th.first_plateau(tokens, values, y, "softmax")
    rate = th.escape_rate(g, dh, heads)
    bias = th.best_bias(tokens, values, y, heads, "softmax")
    wq = (1e-6 * torch.randn(heads, dh, v, generator=gen, dtype=torch.float64)).requires_grad_()
    wk = (1e-6 * torch.randn(heads, dh, v, generator=gen, dtype=torch.float64)).requires_grad_()
    lr, steps, norms = 0.5, 600, []  # logits stay below 1e-4: the linear regime around the saddle
    for _ in range(steps):
        lam = wq.transpose(-1, -2) @ wk / math.sqrt(dh)
        loss = th.reduced_loss(lam, tokens, values, bias, y, "softmax")
        gq, gk = torch.autograd.grad(loss, (wq, wk))
        with torch.no_grad():
            wq -= lr * gq
            wk -= lr * gk
        norms.append(float(lam.detach().norm()))
    # the slope of ln|logits| over the second half (the leading mode dominates by then)
    measured = (math.log(norms[-1]) - math.log(norms[steps // 2])) / (lr * (steps - 1 - steps // 2))
    assert measured == pytest.approx(2 * rate, rel=0.02)


def run_task(tmp_path, *overrides):
    """A run through the trainer; returns (summary, task)."""
    args = [f"--run.dir={tmp_path}", "--run.name=t", "--train.progress=false", "--run.threads=1", *FAST, *overrides]
    trainer = Trainer(train_config(CONFIG, args))
    return trainer.run(), trainer.task


def test_symmetric_run_passes_and_wrong_readings_fail(tmp_path):
    summary, task = run_task(tmp_path)
    checks = summary["checks"]
    assert checks["rotation_charge"]["passed"] and checks["rotation_charge"]["observed"] < 1e-12
    assert checks["escape_time"]["passed"]
    assert {n: c["kind"] for n, c in checks.items()} == {
        "rotation_charge": "implementation", "escape_time": "prediction", "plateau_levels": "prediction"
    }
    assert all(e is not None for e in summary["observed"]["escape_steps"])
    # the same escapes read as a run whose saddle bQ removes fail: the slope is the saddle's
    task.spec = BiasSpec(SymmetryConfig(mode="bq"), 1, task.tc.heads, task.tc.head_dim)
    assert task.saddle_removed() and not task.escape_check(summary["observed"]["escape_steps"])["passed"]
    # and the conserved charge read as one that bQ breaks fails
    assert not task.charge_check(400)["passed"]


def test_bq_run_passes_and_fails_the_symmetric_reading(tmp_path):
    summary, task = run_task(tmp_path, "--symmetry.mode=bq")
    checks = summary["checks"]
    assert checks["rotation_charge"]["passed"] and checks["rotation_charge"]["observed"] > 1e-6
    assert checks["escape_time"]["passed"], checks["escape_time"]
    assert "plateau_levels" not in checks
    symmetric = BiasSpec(SymmetryConfig(mode="symmetric"), 1, task.tc.heads, task.tc.head_dim)
    task.spec = symmetric
    assert not task.charge_check(400)["passed"]
    assert not task.escape_check(summary["observed"]["escape_steps"])["passed"]


def test_adam_breaks_the_law_and_a_short_run_never_escapes(tmp_path):
    summary = run_config(tmp_path, CONFIG, *FAST, "--optim.name=adamw", "--optim.lr=1e-3", "--train.max_steps=50")
    assert not summary["checks"]["rotation_charge"]["passed"]
    assert not summary["checks"]["escape_time"]["passed"]


def test_plateau_check_fails_without_a_plateau(tmp_path):
    """A large init starts past the saddle: no first plateau to find at AGF's level."""
    out = run_config(tmp_path, CONFIG, *FAST, "--task.init_scales=[1.0,0.5,0.3]", "--train.max_steps=100")
    assert not out["checks"]["plateau_levels"]["passed"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("--task.init_scales=[1e-2,1e-3]", "at least three"),
        ("--task.attention=relu", "unknown task.attention"),
        ("--symmetry.k_bias=true", "remove symmetry.learned"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path, override, message):
    with pytest.raises(UserError, match=message):
        run_config(tmp_path, CONFIG, *FAST, override)


def test_first_order_rate_vanishes_without_a_query_independent_component():
    gen = torch.Generator().manual_seed(2)
    g = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    mu = torch.full((4,), 0.5, dtype=torch.float64)
    assert th.first_order_rate(g, mu, 4, 2) > 0
    assert th.first_order_rate(g - g.mean(0), mu, 4, 2) == pytest.approx(0.0, abs=1e-15)
    assert th.first_order_rate(g, torch.zeros(4, dtype=torch.float64), 4, 2) == 0.0
    assert np.isfinite(th.saddle_slope(g, 4, 2, 1.0))


def test_balanced_control_has_no_query_independent_drive():
    """Balanced sequences make G^T 1 = 0 for linear attention: bQ then leaves the saddle in place; the same
    teacher on unbalanced sequences keeps a query-independent drive, and bQ removes it."""
    control = "small_tasks/attention_control_no_qi.toml"
    small = ["--task.n=32", "--run.threads=1"]
    task = AttentionMechanismTask(train_config(control, small), Context(torch.device("cpu")))
    assert task.theory["query_independent_drive"] < 1e-12 and not task.saddle_removed()
    cfg = train_config(control, [*small, "--task.balanced=false"])
    unbalanced = AttentionMechanismTask(cfg, Context(torch.device("cpu")))
    assert unbalanced.theory["query_independent_drive"] > 0.01 and unbalanced.saddle_removed()


@pytest.mark.parametrize("control", ["attention_control_no_qi.toml", "attention_control_bq_mean0.toml"])
def test_control_runs_pass_their_checks(tmp_path, control):
    """No query-independent gradient: bQ leaves the saddle's slope; bQ of mean 0: its noise seeds the saddle."""
    out = run_config(tmp_path, f"small_tasks/{control}", *FAST)
    assert all(c["passed"] for c in out["checks"].values()), out["checks"]
    assert out["checks"]["rotation_charge"]["observed"] > 1e-6  # broken by bQ in both


def test_a_resumed_run_reports_what_the_whole_run_reports(tmp_path):
    """The per-step losses and charges travel in the checkpoint, so the checks see the steps before a resume."""
    whole = run_config(tmp_path / "whole", CONFIG, *FAST, "--train.max_steps=300")
    run_config(tmp_path / "parts", CONFIG, *FAST, "--train.max_steps=150")
    resumed = run_config(tmp_path / "parts", CONFIG, *FAST, "--train.max_steps=300", "--run.resume=true")
    assert resumed["observed"]["escape_steps"] == whole["observed"]["escape_steps"]
    for name, c in whole["checks"].items():
        assert resumed["checks"][name]["passed"] == c["passed"]
    assert resumed["checks"]["rotation_charge"]["observed"] < 1e-12
