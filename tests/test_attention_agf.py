"""In-context linear regression by an attention-only linear transformer, against Alternating Gradient Flows:
the attention layer against its closed form x_q^T Gamma h, the empirical AGF levels against the population
formula, then short trainer runs, each check passed by the run it is derived for and failed by a run it
must reject (equal eigenvalues, a large init, too few steps)."""

import numpy as np
import pytest
import torch

from configs import UserError
from small_tasks.attention import icl_theory as th
from small_tasks.attention.in_context import LinearAttention
from trainer import Trainer

from helpers import train_config

CONFIG = "small_tasks/attention_linear_icl.toml"
# two components (lambda^2 = 1, 0.25) from init 0.1: AGF puts the drops at steps 43 and 244 (run seed 0)
FAST = [
    "--task.spectrum=[1.0,0.5]",
    "--task.heads=2",
    "--task.context=16",
    "--task.n=128",
    "--task.init_scale=0.1",
    "--train.max_steps=350",
    "--train.log_interval=350",
]


def run_task(tmp_path, *overrides):
    """A run through the trainer; returns (summary, task)."""
    args = [f"--run.dir={tmp_path}", "--run.name=t", "--train.progress=false", "--run.threads=1", *FAST, *overrides]
    trainer = Trainer(train_config(CONFIG, args))
    return trainer.run(), trainer.task


def test_attention_is_the_gamma_form_and_the_quadratic():
    """The heads' linear attention equals x_q^T Gamma h, and its loss the Quadratic's loss at that Gamma."""
    gen = torch.Generator().manual_seed(0)
    n, ctx, d, heads = 5, 7, 3, 4
    x, y = torch.randn(n, ctx, d, generator=gen, dtype=torch.float64), torch.randn(n, ctx, generator=gen).double()
    xq, yq = torch.randn(n, d, generator=gen, dtype=torch.float64), torch.randn(n, generator=gen).double()
    wv, wq, wk = (torch.randn(*s, generator=gen, dtype=torch.float64) for s in ((heads,), (heads, d), (heads, d)))
    model = LinearAttention(wv, wq, wk)
    loop = torch.stack(
        [
            sum(
                wv[h] * (wq[h] @ xq[s]) * sum((wk[h] @ x[s, m]) * y[s, m] for m in range(ctx)) / ctx
                for h in range(heads)
            )
            for s in range(n)
        ]
    )
    out = model(x, y, xq).detach()
    torch.testing.assert_close(out, loop, rtol=1e-12, atol=1e-12)
    gamma = model.gamma().detach()
    torch.testing.assert_close(out, torch.einsum("ni,ij,nj->n", xq, gamma, th.context_features(x, y)))
    quad = th.Quadratic.from_data(xq, th.context_features(x, y), yq)
    assert quad.loss(gamma.numpy()) == pytest.approx(float(0.5 * (out - yq).square().mean()), rel=1e-12)


def test_empirical_levels_approach_the_population_formula():
    """On a large sample the rank-j minima of the empirical loss come close to the closed form (each learned
    component removes lambda_i^3 / (2 H_ii)), keep the components in descending eigenvalue order, and a
    rank-j minimum beats a rank-j matrix on the wrong components."""
    rng = np.random.default_rng(0)
    lam, n, ctx = np.array([1.0, 0.6, 0.3]), 20000, 8
    w = rng.standard_normal((n, 3))
    x, xq = rng.standard_normal((n, ctx, 3)) * np.sqrt(lam), rng.standard_normal((n, 3)) * np.sqrt(lam)
    y, yq = torch.tensor(np.einsum("nci,ni->nc", x, w)), torch.tensor(np.einsum("ni,ni->n", xq, w))
    quad = th.Quadratic.from_data(torch.tensor(xq), th.context_features(torch.tensor(x), y), yq)
    levels, minima = quad.levels()
    population = th.population_levels(list(lam), ctx)
    np.testing.assert_allclose(levels, population, rtol=0.05)
    assert all(a > b for a, b in zip(levels[:-1], levels[1:]))
    assert np.argmax(np.abs(np.diag(minima[1]))) == 0  # the first component is the largest eigenvalue's
    wrong = np.zeros((3, 3))
    wrong[2, 2] = minima[-1][2, 2]
    assert quad.loss(wrong) > levels[1] + 0.1 * (levels[0] - levels[1])
    assert th.predicted_order([0.5, 1.0, 0.5]) == [[1], [0, 2]]


def test_run_passes_and_short_or_misread_runs_fail(tmp_path):
    """The staircase run passes every check; the same run cut short fails each (a level, a drop and a
    component missing); its drops read against AGF's events for another init fail the times."""
    summary, task = run_task(tmp_path)
    checks = summary["checks"]
    assert {k: c["kind"] for k, c in checks.items()} == dict.fromkeys(
        ("order", "plateau_levels", "drop_times"), "prediction"
    )
    assert all(c["passed"] for c in checks.values()), checks
    drops = summary["observed"]["drop_steps"]
    assert drops[0] < 0.5 * drops[1]  # a staircase: the second drop well after the first
    # too few steps: stopped halfway between the drops, the run holds one drop, not two
    n = int(drops[0] + 0.5 * (drops[1] - drops[0]))
    loss = task.trace_numpy()[:n]
    steps = np.arange(n, dtype=float)
    assert not task.order_check(task.learned_fractions(n - 1))["passed"]
    assert not task.plateau_check(steps, loss)["passed"]
    assert not task.time_check([drops[0], None])["passed"]
    # drops AGF puts within the time tolerance of each other are one group: no ordered pair left to check
    task.theory["drop_steps"], saved = [drops[0], 1.05 * drops[0]], task.theory["drop_steps"]
    assert task.resolved_order() == [[0, 1]] and not task.order_check(task.learned_fractions(350))["passed"]
    task.theory["drop_steps"] = saved
    # AGF's events for a 1.5x larger init come about 1.5x sooner: the run's drops do not match them
    task.theory["drop_steps"] = [round(s / 1.5) for s in task.theory["drop_steps"]]
    assert not task.time_check(drops)["passed"]


def test_equal_eigenvalues_give_no_ordered_staircase(tmp_path):
    """Equal eigenvalues: AGF predicts a tie, so no ordered staircase, and the order check fails; read as if
    the spectrum were distinct (0 before 1, or 1 before 0, drops far apart), the run learns its components
    together and fails either reading."""
    summary, task = run_task(tmp_path, "--task.spectrum=[0.75,0.75]", "--train.max_steps=200")
    assert task.theory["order"] == [[0, 1]]
    assert not summary["checks"]["order"]["passed"]
    task.theory["drop_steps"] = [50, 150]
    full = np.diag(np.diag(task.minima[-1]))
    for first, second in ((0, 1), (1, 0)):
        # the prediction of a distinct spectrum: one component at rank 1, both at rank 2
        one = np.zeros_like(full)
        one[first, first] = full[first, first]
        task.theory["order"], task.minima = [[first], [second]], [np.zeros_like(full), one, full]
        out = task.order_check(task.learned_fractions(200))
        assert not out["passed"] and "in order" not in out["pairs"][0], out


def test_a_large_init_has_no_plateaus(tmp_path):
    """From init 0.5 the run starts past the saddles: no plateau at AGF's levels, no ordered staircase."""
    summary, _ = run_task(tmp_path, "--task.init_scale=0.5", "--train.max_steps=100")
    assert not summary["checks"]["plateau_levels"]["passed"]
    assert not summary["checks"]["order"]["passed"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("--task.heads=1", "cannot learn 2 components"),
        ("--task.spectrum=[1.0,-0.5]", "eigenvalues > 0"),
        ("--task.init_scale=0", "init_scale must be > 0"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path, override, message):
    with pytest.raises(UserError, match=message):
        run_task(tmp_path, override)
