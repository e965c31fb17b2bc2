"""ECD against a float64 transcription of its equations (docs/science.md, section 1; docs/optimizers.md),
and its contracts."""

import io
import math

import pytest
import torch
import torch.nn as nn

from configs import OptimConfig, UserError
from optim import lr_multiplier
from optim.ecd import ECD, LowLossError
from seed_keys import draw_key


def tiny_mlp(dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3)).to(dtype)


def data(dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 6, generator=g, dtype=dtype), torch.randn(32, 3, generator=g, dtype=dtype)


def groups(model: nn.Module, wd: float) -> list[dict]:
    mats = [p for p in model.parameters() if p.dim() == 2]
    vecs = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": mats, "weight_decay": wd}, {"params": vecs, "weight_decay": 0.0}]


def run_ecd(model, steps, **kw) -> tuple[list[torch.Tensor], ECD]:
    """The optimizer as the trainer drives it; returns θ (in group order) after every step."""
    x, y = data(next(model.parameters()).dtype)
    wd = kw.pop("weight_decay", 0.0)
    opt = ECD(groups(model, wd), **kw)
    trajectory = []
    for _ in range(steps):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step(loss=loss.detach())
        trajectory.append(torch.cat([p.detach().reshape(-1).clone() for p in opt.params]))
    return trajectory, opt


def reference_trajectory(model, steps, lr, eta, f0, nu, weight_decay, seed, per_tensor=False) -> list[torch.Tensor]:
    """Steps 1-5 written out literally on one float64 vector θ (v·g per tensor if ``per_tensor``)."""
    x, y, wd = *data(), weight_decay
    params = [p for g in groups(model, wd) for p in g["params"]]
    shapes, sizes = [p.shape for p in params], [p.numel() for p in params]
    decay = torch.cat([torch.full((p.numel(),), wd if p.dim() == 2 else 0.0, dtype=torch.float64) for p in params])
    theta = torch.cat([p.detach().reshape(-1) for p in params]).double().clone()
    d = theta.numel()
    dt, nu_ = lr / math.sqrt(eta), nu / math.sqrt(d)

    def loss_and_grad(th):
        th = th.clone().requires_grad_(True)
        ws = [t.view(s) for t, s in zip(th.split(sizes), shapes)]
        w1, w2, b1, b2 = ws  # group order: matrices first, then biases
        loss = ((torch.tanh(x @ w1.T + b1) @ w2.T + b2 - y) ** 2).mean()
        (grad,) = torch.autograd.grad(loss, th)
        return loss.detach() + 0.5 * (decay * th.detach() ** 2).sum(), grad + decay * th.detach()

    v, out = None, []
    for k in range(steps):
        F, g = loss_and_grad(theta)
        if k == 0:
            v = -g / g.norm()  # 1.
        v = v / v.norm()  # 2.
        c = 0.5 * dt * eta * d / ((d - 1) * (F - f0))
        if per_tensor:
            dots = [a @ b for a, b in zip(v.split(sizes), g.split(sizes))]
            v = torch.cat([a - c * (b - a * s) for a, b, s in zip(v.split(sizes), g.split(sizes), dots)])
        else:
            v = v - c * (g - v * (v @ g))  # 3.
        theta = theta + dt * v  # 4.
        if nu > 0:  # 5.
            gen = torch.Generator().manual_seed(draw_key(seed, k, 0))
            u = v / v.norm() + nu_ * torch.randn(d, generator=gen, dtype=torch.float64)
            v = v.norm() * u / u.norm()
        out.append(theta)
    return out


@pytest.mark.parametrize("nu", [0.0, 0.5])
@pytest.mark.parametrize("per_tensor", [False, True])
def test_trajectory_equals_float64_reference(nu, per_tensor):
    settings = dict(lr=0.3, eta=4.0, f0=-0.5, nu=nu, weight_decay=0.05)
    ours, _ = run_ecd(tiny_mlp(), 25, per_tensor=per_tensor, noise_seed=7, **settings)
    ref = reference_trajectory(tiny_mlp(), 25, seed=7, per_tensor=per_tensor, **settings)
    for k, (a, b) in enumerate(zip(ours, ref)):
        assert (a - b).abs().max() < 1e-10, f"step {k + 1}"
    assert (ours[-1] - ours[0]).norm() > 0.5  # the run really moved


def test_per_tensor_switch_changes_the_trajectory():
    settings = dict(lr=0.3, eta=4.0, f0=-0.5)
    joint, _ = run_ecd(tiny_mlp(), 5, **settings)
    split, _ = run_ecd(tiny_mlp(), 5, per_tensor=True, **settings)
    assert (joint[-1] - split[-1]).abs().max() > 1e-4


@pytest.mark.parametrize("nu", [0.0, 0.3])
def test_velocity_has_unit_norm_after_every_step(nu):
    model = tiny_mlp(torch.float32)
    x, y = data(torch.float32)
    opt = ECD(model.parameters(), lr=0.5, eta=2.0, f0=-1.0, nu=nu)
    for _ in range(20):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step(loss=loss.detach())
        assert abs(opt.velocity.double().norm().item() - 1.0) < 1e-5


def test_lowers_the_loss_of_a_small_regression():
    x, y = data()
    model = tiny_mlp()
    opt = ECD(model.parameters(), lr=0.3, eta=100.0, f0=0.0)
    losses = []
    for _ in range(100):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step(loss=loss.detach())
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_resume_through_torch_save_is_exact():
    settings = dict(lr=0.3, eta=4.0, f0=-0.5, nu=0.5, noise_seed=3, weight_decay=0.05)
    x, y = data()

    def advance(model, opt, n):
        for _ in range(n):
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            opt.step(loss=loss.detach())

    def make(model):
        kw = dict(settings)
        return ECD(groups(model, kw.pop("weight_decay")), **kw)

    model = tiny_mlp()
    opt = make(model)
    advance(model, opt, 6)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buf)
    advance(model, opt, 6)

    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed = tiny_mlp()
    resumed.load_state_dict(saved["model"])
    opt2 = make(resumed)
    opt2.load_state_dict(saved["optim"])
    advance(resumed, opt2, 6)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(opt.velocity, opt2.velocity) and opt2.steps == 12


def test_the_schedule_sets_the_time_step():
    """On the first step v is −g/‖g‖ and the projected force vanishes, so ‖Δθ‖ = lr/√η exactly."""
    cfg = OptimConfig(lr=0.8, warmup_steps=4, schedule="cosine")
    x, y = data()
    for step in (0, 2):
        model = tiny_mlp()
        opt = ECD(model.parameters(), lr=cfg.lr, eta=4.0, f0=-0.5)
        for g in opt.param_groups:  # what the trainer does before every step
            g["lr"] = cfg.lr * lr_multiplier(step, cfg, max_steps=100)
        before = torch.cat([p.detach().reshape(-1).clone() for p in opt.params])
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step(loss=loss.detach())
        after = torch.cat([p.detach().reshape(-1) for p in opt.params])
        expected = cfg.lr * (step + 1) / 4 / math.sqrt(4.0)
        assert abs((after - before).norm().item() - expected) < 1e-12


def one_step(policy: str, loss_value: float) -> tuple[ECD, bool]:
    model = tiny_mlp()
    x, y = data()
    opt = ECD(model.parameters(), lr=0.3, eta=4.0, f0=2.0, on_low_loss=policy)
    before = [p.detach().clone() for p in model.parameters()]
    loss = ((model(x) - y) ** 2).mean()
    loss.backward()
    opt.step(loss=torch.tensor(loss_value, dtype=torch.float64))
    moved = any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    return opt, moved


def test_loss_below_f0_raises_a_clear_error_before_moving_anything():
    model = tiny_mlp()
    before = [p.detach().clone() for p in model.parameters()]
    x, y = data()
    opt = ECD(model.parameters(), lr=0.3, eta=4.0, f0=2.0)
    ((model(x) - y) ** 2).mean().backward()
    with pytest.raises(LowLossError, match="optim.ecd.f0"):
        opt.step(loss=torch.tensor(1.5, dtype=torch.float64))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert issubclass(LowLossError, UserError)


def test_skip_policy_skips_and_says_why():
    """The optimizer gives the reason; the trainer prints it with the step's number (tests/test_faults.py)."""
    opt, moved = one_step("skip", 1.9)
    assert not moved and opt.skipped == 1 and opt.steps == 0
    assert "at or below F0 = 2.0" in opt.skip_reason


def test_clamp_policy_steps_and_reports(capsys):
    opt, moved = one_step("clamp", 1.9)
    assert moved and opt.steps == 1 and int(opt.low_loss_steps) == 1
    opt.state_dict()  # a checkpoint reports clamped steps
    assert "clamped" in capsys.readouterr().err


def test_unknown_policy_and_unequal_group_lrs_are_user_errors():
    model = tiny_mlp()
    with pytest.raises(UserError, match="on_low_loss"):
        ECD(model.parameters(), on_low_loss="ignore")
    gs = groups(model, 0.0)
    gs[1]["lr"] = 0.1
    opt = ECD(gs, lr=0.3, f0=-1.0)
    x, y = data()
    loss = ((model(x) - y) ** 2).mean()
    loss.backward()
    with pytest.raises(UserError, match="same lr"):
        opt.step(loss=loss.detach())
