"""Conservation laws of SGD (small_tasks/noether.py) against plain torch.optim.SGD loops, in float64."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from small_tasks import noether
from small_tasks.conservation_laws import SymmetricNet, linear_charges, quadratic_charges

EXACT = 1e-10  # float64 round-off accumulated over a few hundred steps


def train_loop(lr, wd, momentum, steps=300, batch=16, seed=0):
    """torch.optim.SGD on random mini-batches; the charges after every step, the squared steps and gradients."""
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
    for _ in range(steps):
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
        pred = noether.linear_charge(trace[key][0], n, lr, wd, momentum)
        assert noether.relative_error(trace[key], pred, np.abs(trace[key]).max()) < EXACT
    for key in ("scale", "rescale"):
        pred = noether.quadratic_charge(trace[key][0], kinetic[key], lr, wd, momentum)
        assert noether.relative_error(trace[key], pred, np.abs(trace[key]).max()) < EXACT
    # the charges really move: the laws are not trivially satisfied by constants
    assert np.ptp(trace["scale"]) > 0.05 * trace["scale"][0]


def test_plain_sgd_gradient_form_and_its_closed_form_translation():
    lr, wd = 0.1, 0.05
    trace, _, grads = train_loop(lr, wd, 0.0)
    n = len(grads["scale"])
    for key in ("scale", "rescale"):
        pred = noether.quadratic_charge_sgd(trace[key][0], grads[key], lr, wd)
        assert noether.relative_error(trace[key], pred, np.abs(trace[key]).max()) < EXACT
    closed = trace["translation_bias"][0] * (1 - lr * wd) ** np.arange(n + 1)
    assert noether.relative_error(trace["translation_bias"], closed) < EXACT


def test_momentum_law_rejects_plain_sgd_and_vice_versa():
    lr, wd = 0.1, 0.05
    plain, plain_k, _ = train_loop(lr, wd, 0.0)
    heavy, heavy_k, _ = train_loop(lr, wd, 0.9)
    n = len(plain_k["scale"])
    wrong = noether.linear_charge(plain["translation_bias"][0], n, lr, wd, 0.9)
    assert noether.relative_error(plain["translation_bias"], wrong) > 1e-2
    wrong = noether.quadratic_charge(plain["scale"][0], plain_k["scale"], lr, wd, 0.9)
    assert noether.relative_error(plain["scale"], wrong) > 1e-2
    wrong = noether.quadratic_charge(heavy["rescale"][0], heavy_k["rescale"], lr, wd, 0.0)
    assert noether.relative_error(heavy["rescale"], wrong, np.abs(heavy["rescale"]).max()) > 1e-2


def test_continuous_oscillator_tracks_the_discrete_law():
    """Underdamped (momentum 0.9, omega > gamma) and overdamped (plain SGD): the modified equation
    matches the exact recursion to O(lr) relative; a wrong momentum does not."""
    lr, wd = 0.1, 0.5
    for momentum in (0.9, 0.0):
        exact = noether.linear_charge(1.0, 400, lr, wd, momentum)
        cont = noether.linear_charge_continuous(1.0, 400, lr, wd, momentum)
        assert noether.relative_error(cont, exact, 1.0) < 0.01
    assert noether.frequency(lr, wd, 0.9) > noether.damping(lr, 0.9)  # oscillates
    exact = noether.linear_charge(1.0, 400, lr, wd, 0.9)
    assert np.sum(np.diff(np.sign(exact)) != 0) >= 4
    wrong = noether.linear_charge_continuous(1.0, 400, lr, wd, 0.0)
    assert noether.relative_error(wrong, exact, 1.0) > 0.2


def test_continuous_scale_law_on_a_run():
    lr, wd = 0.05, 0.5
    for momentum in (0.9, 0.0):
        trace, kinetic, _ = train_loop(lr, wd, momentum, steps=400)
        cont = noether.quadratic_charge_continuous(trace["scale"][0], kinetic["scale"], lr, wd, momentum)
        err = noether.relative_error(trace["scale"], cont, np.abs(trace["scale"]).max())
        print(momentum, err)
        assert err < 0.02


def test_second_order_with_constant_drive_has_its_fixed_point():
    """q* = drive / (lr kappa): a check of the recursion's coefficients independent of any run."""
    q = noether.second_order(0.0, 5000, 0.1, 0.2, 0.9, np.full(5000, 0.01))
    assert q[-1] == pytest.approx(0.01 / (0.1 * 0.2), rel=1e-9)
