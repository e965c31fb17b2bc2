"""Muon (optim/muon.py): the Newton-Schulz iteration, the full update against a float64 transcription, which
parameters it takes, its state through a checkpoint, and runs through the trainer."""

import io
import json
import math

import pytest
import torch
import torch.nn as nn

import checkpoints
import optim
import train
from configs import CONFIG_DIR, OptimConfig, UserError, load_config
from eval import grid
from model import GPT, GPTConfig
from optim.muon import orthogonalize

from helpers import BYTE_QUICKSTART, QUIET, TINY_GPT, args, assert_same_params, final_params, losses, one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")

A, B, C = 3.4445, -4.7750, 2.0315  # the quintic's coefficients


def ns_reference(g: torch.Tensor, steps: int) -> torch.Tensor:
    """The quintic Newton-Schulz iteration in float64: X = G/(‖G‖_F + 1e-7) on the wide side of G, then
    X ← a·X + (b·X Xᵀ + c·(X Xᵀ)²)·X."""
    x = g.double()
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = A * x + (B * gram + C * gram @ gram) @ x
    return x.T if tall else x


def scalar_iteration(s: torch.Tensor, steps: int) -> torch.Tensor:
    for _ in range(steps):
        s = A * s + B * s**3 + C * s**5
    return s


@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (32, 32)])
def test_newton_schulz_is_the_quintic_iteration_and_nears_the_polar_factor(shape):
    g = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(sum(shape)))
    ref = ns_reference(g, 5)
    torch.testing.assert_close(orthogonalize(g, 5), ref, rtol=0, atol=1e-12)
    fp32 = orthogonalize(g.float(), 5)
    assert fp32.dtype == torch.float32
    torch.testing.assert_close(fp32.double(), ref, rtol=0, atol=2e-5)

    # a matrix polynomial: the same singular vectors, each singular value s/‖G‖_F sent through p⁵
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    mapped = scalar_iteration(s / (g.norm() + 1e-7), 5)
    torch.testing.assert_close(ref, u @ torch.diag(mapped) @ vh, rtol=0, atol=1e-10)
    # five steps put every singular value above 0.3% of ‖G‖_F into [0.68, 1.21]: O is U Vᵀ within that band
    held = s / g.norm() > 3e-3
    assert held[: min(shape) // 2].all()
    assert ((mapped[held] > 0.68) & (mapped[held] < 1.21)).all()
    if held.all():  # (the square draw has a near-zero singular value, which five steps cannot lift)
        assert torch.linalg.matrix_norm(ref - u @ vh, ord=2) < 0.32
    # more steps do not converge to 1: the iteration trades exactness for a steep start
    assert (scalar_iteration(torch.linspace(0.05, 1, 50, dtype=torch.float64), 50) - 1).abs().max() > 0.1


def test_newton_schulz_in_bf16_stays_in_the_band():
    """On CUDA the iteration runs in bf16; here on CPU the same code path, against the float64 one."""
    g = torch.randn(48, 96, generator=torch.Generator().manual_seed(3))
    low = orthogonalize(g, 5, torch.bfloat16)
    assert low.dtype == torch.float32
    s = torch.linalg.svdvals(low.double())
    assert s.min() > 0.6 and s.max() < 1.3
    assert (low.double() - ns_reference(g, 5)).abs().max() < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_cuda_the_step_runs_the_iteration_in_bf16_close_to_the_cpu_step():
    """The same step on CUDA (bf16 iteration) and on CPU (fp32): the block matrices' updates agree to bf16's
    rounding, and the CUDA step repeats bit for bit (what keeps DDP ranks identical)."""
    updates = {}
    for device in ("cpu", "cuda", "cuda"):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=64)).to(device)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        cfg = optim.config("muon")
        opt = optim.build_optimizer(optim.param_groups(model, cfg), cfg)
        idx = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1)).to(device)
        model(idx, idx)[1].backward()
        opt.step()
        step = {n: (p.detach() - before[n]).double().cpu() for n, p in model.named_parameters()
                if ".c_" in n and n.endswith(".weight")}
        if device in updates:
            assert all(torch.equal(step[n], updates[device][n]) for n in step)
        updates[device] = step
    for n, cpu in updates["cpu"].items():
        cuda = updates["cuda"][n]
        assert (cuda - cpu).norm() < 0.05 * cpu.norm(), n


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(6)
        self.up = nn.Linear(6, 10)  # tall weight, 10 x 6: scaled by √(10/6)
        self.down = nn.Linear(10, 6, bias=False)  # wide, 6 x 10: scale 1
        self.gain = nn.Parameter(torch.ones(2, 3))  # 2-D but no nn.Linear weight: AdamW's, like a learned bias

    def forward(self, x):
        return x + self.down(torch.tanh(self.up(self.norm(x)))) * self.gain.reshape(-1)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(6, 4)

    def forward(self, idx):
        x = self.emb(idx)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def net_and_data(steps: int):
    torch.manual_seed(0)
    model = Net().double()
    g = torch.Generator().manual_seed(1)
    data = [(torch.randint(0, 11, (8,), generator=g), torch.randn(8, 4, generator=g)) for _ in range(steps)]
    return model, [(x, y.double()) for x, y in data]


def grads_of(model, x, y) -> dict[str, torch.Tensor]:
    model.zero_grad()
    ((model(x) - y) ** 2).mean().backward()
    return {n: p.grad for n, p in model.named_parameters()}


MUON = {"lr": 0.05, "weight_decay": 0.3, "adamw_lr": 0.01, "adamw_betas": [0.8, 0.9], "adamw_eps": 1e-6,
        "adamw_weight_decay": 0.2, "ns_steps": 4}


@pytest.mark.parametrize("momentum,nesterov", [(0.9, True), (0.8, False), (0.0, True)])
def test_steps_equal_a_float64_transcription(momentum, nesterov):
    """Six steps under a changing learning-rate multiplier (as the trainer sets it), decay on every
    parameter: Muon with momentum, Nesterov, decoupled decay and shape scaling on the blocks' Linear
    weights; AdamW on the embedding, head, norms, biases and the 2-D gains."""
    model, data = net_and_data(6)
    o = {**MUON, "momentum": momentum, "nesterov": nesterov}
    cfg = OptimConfig(name="muon", decay="all", sections={"muon": o})
    opt = optim.build_optimizer(optim.param_groups(model, cfg), cfg)
    muon = {f"blocks.{i}.{m}.weight" for i in (0, 1) for m in ("up", "down")}
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    buf = {n: torch.zeros_like(t) for n, t in theta.items()}
    m1 = {n: torch.zeros_like(t) for n, t in theta.items()}
    m2 = {n: torch.zeros_like(t) for n, t in theta.items()}
    b1, b2 = o["adamw_betas"]
    twin = net_and_data(0)[0]
    for t, ((x, y), mult) in enumerate(zip(data, [0.2, 1.0, 0.7, 1.3, 0.5, 0.1]), start=1):
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * mult
        grads_of(model, x, y)
        opt.step()
        with torch.no_grad():
            for n, p in twin.named_parameters():
                p.copy_(theta[n])
        for n, g in grads_of(twin, x, y).items():
            if n in muon:
                lr = o["lr"] * mult
                buf[n] = momentum * buf[n] + g
                u = g + momentum * buf[n] if nesterov else buf[n]
                rows, cols = g.shape
                step = math.sqrt(max(1.0, rows / cols)) * ns_reference(u, o["ns_steps"])
                theta[n] = theta[n] * (1 - lr * o["weight_decay"]) - lr * step
            else:
                lr = o["adamw_lr"] * mult
                m1[n] = b1 * m1[n] + (1 - b1) * g
                m2[n] = b2 * m2[n] + (1 - b2) * g * g
                step = (m1[n] / (1 - b1**t)) / ((m2[n] / (1 - b2**t)).sqrt() + o["adamw_eps"])
                theta[n] = theta[n] * (1 - lr * o["adamw_weight_decay"]) - lr * step
    for n, p in model.named_parameters():
        assert (p - theta[n]).abs().max() < 1e-10, n


def test_state_through_a_checkpoint_continues_exactly():
    """Both sides' state (Muon's buffers, AdamW's moments and step counts) survives torch.save and a
    weights-only load into a fresh optimizer, whose AdamW side then runs on the loaded state."""
    model, data = net_and_data(6)
    twin = net_and_data(0)[0]
    cfg = optim.config("muon", **MUON)
    opt = optim.build_optimizer(optim.param_groups(model, cfg), cfg)
    for x, y in data[:3]:
        grads_of(model, x, y)
        opt.step()
    twin.load_state_dict(model.state_dict())
    saved = io.BytesIO()
    torch.save(opt.state_dict(), saved)
    saved.seek(0)
    again = optim.build_optimizer(optim.param_groups(twin, cfg), cfg)
    again.load_state_dict(torch.load(saved, weights_only=True))
    assert again.adamw.state is again.state  # the AdamW side runs on the loaded groups and state
    assert [id(g) for g in again.adamw.param_groups] == [id(g) for g in again.param_groups if not g["muon"]]
    for x, y in data[3:]:
        for net, o in ((model, opt), (twin, again)):
            grads_of(net, x, y)
            o.step()
    for (n, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(p, q), n


def test_muon_takes_the_linear_weights_of_the_blocks_and_adamw_the_rest():
    tiny = ["--model.n_layer=2", "--model.n_embd=16", "--model.n_head=2", "--model.block_size=16"]
    learned = ["--symmetry.learned=true", "--symmetry.per_head=true"]  # q_bias, v_bias: [n_head, head_dim]
    model = GPT.from_config(load_config(None, [*tiny, *learned]), 64)
    names = {id(p): n for n, p in model.named_parameters()}
    cfg = OptimConfig(name="muon", decay="all", sections={"muon": {"lr": 0.03, "adamw_lr": 0.002}})
    groups = optim.param_groups(model, cfg)
    muon = {names[id(p)] for g in groups if g["muon"] for p in g["params"]}
    want = {f"transformer.h.{i}.{m}.weight" for i in (0, 1) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                                                          "mlp.c_proj")}
    assert muon == want
    adamw = {names[id(p)] for g in groups if not g["muon"] for p in g["params"]}
    assert adamw == set(names.values()) - want
    assert "transformer.wte.weight" in adamw  # with the output head tied to it
    assert model.transformer.h[0].attn.q_bias.shape == (2, 8) and "transformer.h.1.attn.v_bias" in adamw
    assert groups[0]["muon"] and all(g["lr"] == 0.03 for g in groups if g["muon"])
    assert all(g["lr"] == 0.002 and g["weight_decay"] == 0.1 for g in groups if not g["muon"])  # decay = all
    opt = optim.build_optimizer(groups, cfg)
    assert [g["base_lr"] for g in opt.param_groups] == [0.03, 0.002]
    default = optim.param_groups(model, optim.config("muon", weight_decay=0.5))  # optim.decay = matrices
    assert {(g["muon"], g["weight_decay"]) for g in default} == {(True, 0.5), (False, 0.0)}


def test_a_model_without_block_matrices_is_refused_in_one_line(tmp_path, capsys):
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    cfg = optim.config("muon")
    with pytest.raises(UserError, match="use adamw"):
        optim.build_optimizer(optim.param_groups(net, cfg), cfg)
    config = str(CONFIG_DIR / "small_tasks" / "diagonal_linear.toml")
    argv = [config, f"--run.dir={tmp_path}", "--run.name=d", "--optim.name=muon", "--train.progress=false"]
    assert train.main(argv) == 2
    assert "has none; use adamw" in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "d").exists()


def test_the_grid_takes_muon_cells_from_the_cpu_grid_config(tmp_path):
    """eval.grid's optimizer axis: a muon cell runs cpu.toml's [optim.muon], and an override of that table
    reaches the muon cells only."""
    overrides = ["--optim.muon.lr=0.05", "--optim.adamw.lr=0.1"]
    cells = grid.plan(CONFIG_DIR / "grid" / "cpu.toml", ["adamw", "muon"], ["bqbv"], [0], tmp_path, overrides)
    (adamw_cell, adamw_cfg), (muon_cell, muon_cfg) = cells
    assert muon_cell.name == "muon-bqbv-s0" and muon_cfg["optim.name"] == "muon"
    assert muon_cfg["optim.muon.lr"] == 0.05 and muon_cfg["optim.muon.adamw_lr"] == 3e-4
    assert muon_cfg["optim.decay"] == "all" and muon_cfg["optim.muon.adamw_weight_decay"] == 0.01
    assert adamw_cfg["optim.adamw.lr"] == 0.1 and not any(k.startswith("optim.muon") for k in adamw_cfg)


@pytest.mark.parametrize(
    "override,needle",
    [
        ("--optim.muon.momentum=1.0", "optim.muon.momentum must be in [0, 1)"),
        ("--optim.muon.ns_steps=0", "optim.muon.ns_steps must be >= 1"),
        ("--optim.muon.adamw_betas=[0.9]", "optim.muon.adamw_betas must be two numbers"),
        ("--optim.adamw_lr=0.1", "belongs in [optim.muon]"),
    ],
)
def test_bad_muon_settings_are_one_line_errors(override, needle):
    with pytest.raises(UserError) as e:
        optim.resolve(load_config(None, ["--optim.name=muon", override]))
    assert needle in str(e.value)



@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_resume_is_exact_under_every_schedule(schedule, data_dir, tmp_path):
    """Both sides follow the schedule (the logged lr is Muon's), and a run continued from the step-4
    checkpoint (into another run dir) continues bit for bit."""
    extra = ["--optim.name=muon", f"--optim.schedule={schedule}", "--optim.warmup_steps=2",
             "--optim.min_lr_ratio=0.1", "--train.checkpoint_interval=4"]
    assert train.main(args(data_dir, tmp_path, "ref", *extra)) == 0
    cfg = load_config(None, extra)
    lr = optim.settings(cfg.optim).lr
    logged = [r for r in map(json.loads, (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()) if "lr" in r]
    for r in logged:  # the lr in the record is the one its step used
        assert r["lr"] == pytest.approx(lr * optim.lr_multiplier(r["step"] - 1, cfg.optim, 8), rel=1e-12)
    src = checkpoints.checkpoint_path(tmp_path / "ref", 4)
    assert train.main(args(data_dir, tmp_path, "branch", *extra, f"--run.checkpoint={src}")) == 0
    assert losses(tmp_path / "branch") == losses(tmp_path / "ref")
    assert_same_params(final_params(tmp_path / "branch"), final_params(tmp_path / "ref"))


def test_lowers_the_quickstart_loss(tmp_path):
    tiny = [*TINY_GPT, *QUIET, "--model.n_layer=2", "--train.batch_size=8", "--eval.tokens=4096",
            "--eval.interval=0", "--optim.warmup_steps=0"]
    argv = [BYTE_QUICKSTART, f"--run.dir={tmp_path}", "--run.name=x", "--optim.name=muon", "--train.max_steps=30"]
    argv += tiny
    assert train.main(argv) == 0
    summary = json.loads((tmp_path / "x" / "summary.json").read_text())
    assert summary["final_val_loss"] < summary["initial_val_loss"] - 0.5
