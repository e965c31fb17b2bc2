"""The optimizer registry, parameter groups, the shipped configs, and each optimizer in the trainer."""

import dataclasses
import json
import tomllib
from pathlib import Path

import pytest
import torch

import optim
import train
from configs import CONFIG_DIR, OptimConfig, UserError, load_config
from eval.study import load_study
from model import GPT, GPTConfig

from helpers import BYTE_QUICKSTART, QUIET, TINY_GPT

TINY = [
    *TINY_GPT,
    *QUIET,
    "--model.n_layer=2",
    "--train.batch_size=8",
    "--eval.tokens=4096",
    "--eval.interval=0",
    "--train.log_interval=10",
    "--optim.warmup_steps=0",
]
# Settings in the spirit of the paper's, scaled to a byte-level model that starts at ln(257).
QUICK = {
    "soap": ["--optim.lr=1e-2", "--optim.soap.betas=[0.95,0.95]", "--optim.soap.weight_decay=0.01"],
    "ecd": ["--optim.lr=1.0", "--optim.ecd.eta=100", "--optim.ecd.f0=1.0", "--optim.ecd.weight_decay=0"]
    + ["--optim.grad_clip=0"],
}


def test_registry_names_the_four_optimizers_and_rejects_others():
    assert {"adamw", "sgdm", "soap", "ecd"} <= set(optim.names())
    with pytest.raises(UserError, match="optim.name"):
        optim.get_module("adam")


def test_weight_decay_goes_to_matrices_only():
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16))
    names = {id(p): n for n, p in model.named_parameters()}

    def decayed(cfg):
        gs = optim.param_groups(model, cfg)
        return {names[id(p)] for g in gs if g["weight_decay"] for p in g["params"]}

    plain = decayed(optim.config("adamw", weight_decay=0.1))
    assert plain == {n for n, p in model.named_parameters() if p.dim() == 2 and "wte" not in n and "wpe" not in n}
    assert not any("act" in n or "ln" in n or n.endswith(".bias") for n in plain)  # PReLU slopes, norms, biases
    with_emb = decayed(OptimConfig(decay="matrices_and_embeddings", sections={"adamw": {"weight_decay": 0.1}}))
    assert with_emb == plain | {"transformer.wte.weight", "transformer.wpe.weight"}
    total = sum(len(g["params"]) for g in optim.param_groups(model, OptimConfig()))
    assert total == len(list(model.parameters()))


def regression(steps: int):
    """A float64 model with every kind of parameter (matrices, biases, a norm) and its batches."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.LayerNorm(7), torch.nn.Tanh(), torch.nn.Linear(7, 2))
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 5, generator=g), torch.randn(16, 2, generator=g)) for _ in range(steps)]
    return model.double(), [(x.double(), y.double()) for x, y in data]


def grads_of(model, x, y) -> list[torch.Tensor]:
    model.zero_grad()
    ((model(x) - y) ** 2).mean().backward()
    return [p.grad for p in model.parameters()]


def test_decay_all_puts_every_parameter_under_weight_decay_as_the_paper_does():
    """The paper's optimizers take model.parameters() with one weight decay: AdamW with optim.decay=all
    equals AdamW written out in float64 with the decoupled decay on every parameter."""
    model, data = regression(8)
    cfg = OptimConfig(name="adamw", decay="all", sections={"adamw": {"lr": 0.01, "weight_decay": 0.3}})
    groups = optim.param_groups(model, cfg)
    assert len(groups) == 1 and len(groups[0]["params"]) == len(list(model.parameters()))
    opt = optim.build_optimizer(groups, cfg)
    theta = [p.detach().clone() for p in model.parameters()]
    m = [torch.zeros_like(t) for t in theta]
    v = [torch.zeros_like(t) for t in theta]
    b1, b2, lr, wd, eps = 0.9, 0.95, 0.01, 0.3, 1e-8
    twin = regression(0)[0]
    for t, (x, y) in enumerate(data, start=1):
        grads_of(model, x, y)
        opt.step()
        with torch.no_grad():
            for p, th in zip(twin.parameters(), theta):
                p.copy_(th)
        for i, g in enumerate(grads_of(twin, x, y)):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            step = (m[i] / (1 - b1**t)) / ((v[i] / (1 - b2**t)).sqrt() + eps)
            theta[i] = theta[i] * (1 - lr * wd) - lr * step
    for p, th in zip(model.parameters(), theta):
        assert (p - th).abs().max() < 1e-10
    matrices_only = optim.param_groups(model, dataclasses.replace(cfg, decay="matrices"))
    assert len(matrices_only) == 2  # the default leaves biases and the norm undecayed


def test_sgdm_initial_velocity_equals_a_float64_transcription():
    """The paper's GELU runs start SGD's momentum buffer at N(0, 0.1²), drawn from the global generator
    once the model exists; every step then is buf ← μ·buf + g, θ ← θ − lr·(g + μ·buf) (Nesterov)."""
    model, data = regression(10)
    cfg = optim.config("sgdm", lr=0.05, momentum=0.9, nesterov=True, initial_velocity_std=0.1)
    torch.manual_seed(7)
    opt = optim.build_optimizer([{"params": list(model.parameters()), "weight_decay": 0.0}], cfg)
    torch.manual_seed(7)
    buf = [0.1 * torch.randn(p.shape, dtype=p.dtype) for p in model.parameters()]
    theta = [p.detach().clone() for p in model.parameters()]
    twin = regression(0)[0]
    for x, y in data:
        grads_of(model, x, y)
        opt.step()
        with torch.no_grad():
            for p, th in zip(twin.parameters(), theta):
                p.copy_(th)
        for i, g in enumerate(grads_of(twin, x, y)):
            buf[i] = 0.9 * buf[i] + g
            theta[i] = theta[i] - 0.05 * (g + 0.9 * buf[i])
    for p, th in zip(model.parameters(), theta):
        assert (p - th).abs().max() < 1e-10
    still, data = regression(1)
    plain = optim.build_optimizer([{"params": list(still.parameters())}], optim.config("sgdm", lr=0.05))
    first = [g.clone() for g in grads_of(still, *data[0])]
    plain.step()  # without the switch the buffer starts at the first gradient
    assert all(torch.equal(plain.state[p]["momentum_buffer"], g) for p, g in zip(still.parameters(), first))
    with pytest.raises(UserError, match="momentum > 0"):
        optim.settings(optim.config("sgdm", momentum=0.0, initial_velocity_std=0.1))


@pytest.mark.parametrize("name", sorted(QUICK))
def test_lowers_the_quickstart_loss(tmp_path, name):
    args = [BYTE_QUICKSTART, f"--run.dir={tmp_path}", "--run.name=x", f"--optim.name={name}", "--train.max_steps=30"]
    args += TINY
    assert train.main(args + QUICK[name]) == 0
    summary = json.loads((tmp_path / "x" / "summary.json").read_text())
    assert summary["steps"] == 30
    assert summary["final_val_loss"] < summary["initial_val_loss"] - 0.5


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.rglob("*.toml")), ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_shipped_config_loads(path: Path):
    """A trainer config loads; a study file (a [study] table) loads as eval.study reads it, every arm's
    runs included."""
    if "study" in tomllib.loads(path.read_text()):
        study = load_study(path)
        assert study.arms and study.max_steps > 0
        return
    load_config(path)


def paper(name: str, optimizer: str):
    cfg = load_config(CONFIG_DIR / "paper" / f"{name}.toml", [f"--optim.name={optimizer}"])
    return cfg, optim.settings(cfg.optim)


def test_paper_configs_hold_the_papers_settings():
    """Each row of the paper's recipe (docs/grid.md), as its public code runs it."""
    for name in ("prelu", "gelu"):
        cfg, _ = paper(name, "adamw")
        assert (cfg.model.preset, cfg.model.block_size, cfg.train.batch_size) == ("124M", 512, 8)
        assert cfg.train.grad_accum == 1 and cfg.train.max_tokens == 500_000_000 and cfg.run.seed == 42
        assert cfg.optim.schedule == "constant" and cfg.optim.warmup_steps == 0
        assert cfg.optim.grad_clip == 0 and cfg.optim.decay == "all"  # no clipping; decay on every parameter
        s = cfg.symmetry
        assert (s.q_mean, s.q_std_min, s.q_std_max, s.v_std) == (0.5, 0.05, 0.15, 0.05)
        assert not s.per_head and not s.k_bias  # one draw per layer; the key bias cancels anyway
        assert cfg.eval.interval == 1000
        _, e = paper(name, "ecd")
        assert (e.lr, e.eta, e.f0, e.nu, e.weight_decay) == (1.0, 100.0, 2.0, 0.0, 0.0)
        assert e.per_tensor and e.on_low_loss == "skip"
        _, so = paper(name, "soap")
        assert (so.lr, so.betas, so.weight_decay, so.precondition_frequency) == (3e-4, [0.95, 0.95], 0.01, 10)
        assert so.original
        assert so.max_precond_dim == 10000 and so.eps == 1e-8
    prelu, gelu = load_config(CONFIG_DIR / "paper" / "prelu.toml"), load_config(CONFIG_DIR / "paper" / "gelu.toml")
    assert (prelu.model.mlp, prelu.symmetry.v_mean) == ("prelu", 0.0)  # as the published bQ+bV runs logged
    assert (gelu.model.mlp, gelu.symmetry.v_mean) == ("gelu_exact", 0.0)
    assert paper("prelu", "adamw")[1] == optim.adamw.Options(lr=1e-4, betas=[0.9, 0.95], eps=1e-8, weight_decay=0.01)
    assert paper("gelu", "adamw")[1] == optim.adamw.Options(lr=1e-4, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.0)
    assert paper("prelu", "sgdm")[1] == optim.sgdm.Options(lr=0.03, momentum=0.95, nesterov=True, weight_decay=0.0)
    assert paper("gelu", "sgdm")[1].initial_velocity_std == 0.1


def test_modern_configs_take_half_a_million_tokens_per_step():
    for path in CONFIG_DIR.glob("gpt2-124m*.toml"):
        cfg = load_config(path)
        assert cfg.train.batch_size * cfg.model.block_size * cfg.train.grad_accum == 524_288
        assert cfg.optim.schedule == "cosine" and cfg.optim.warmup_steps > 0


def test_builders_honour_the_config():
    model = torch.nn.Linear(4, 4)
    cfg = optim.config("soap", lr=0.5, precondition_frequency=3, max_precond_dim=2, original=True)
    opt = optim.build_optimizer(optim.param_groups(model, cfg), cfg)
    g = opt.param_groups[0]
    assert (g["lr"], g["base_lr"], g["precondition_frequency"], g["max_precond_dim"]) == (0.5, 0.5, 3, 2)
    assert g["original"]
    cfg = optim.config("ecd", lr=0.5, eta=9.0, f0=-1.0, nu=0.1, per_tensor=True, noise_seed=5)
    opt = optim.build_optimizer(optim.param_groups(model, cfg), cfg)
    assert (opt.eta, opt.f0, opt.nu, opt.per_tensor, opt.noise_seed) == (9.0, -1.0, 0.1, True, 5)
    assert opt.requires_loss


@pytest.mark.parametrize("name", ["soap", "ecd"])
def test_state_stays_fp32_under_bf16_autocast(name):
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16))
    cfg = optim.config(name, lr=1e-2, **({"f0": 0.0} if name == "ecd" else {}))
    opt = optim.build_optimizer(optim.param_groups(model, cfg), cfg)
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(idx, idx)[1]
    loss.backward()
    if getattr(opt, "requires_loss", False):
        opt.step(loss=loss.detach().float())
    else:
        opt.step()
    sd = opt.state_dict()
    tensors = [t for s in sd["state"].values() for t in s.values() if isinstance(t, torch.Tensor)]
    tensors += [t for t in sd.get("ecd", {}).values() if isinstance(t, torch.Tensor)]
    floats = [t for t in tensors if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float32 for t in floats)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())


def test_each_optimizer_has_its_own_defaults_and_the_lr_shortcut():
    cfg = load_config(None, ["--optim.name=ecd"])
    assert optim.settings(cfg.optim).lr == load_config().optim.sections["ecd"]["lr"]
    resolved = optim.resolve(load_config(None, ["--optim.name=sgdm", "--optim.lr=0.7"]))
    assert list(resolved.optim.sections) == ["sgdm"] and resolved.optim.sections["sgdm"]["lr"] == 0.7
    assert resolved.optim.lr == 0.0  # folded into the table: config.toml has one place for it
    assert optim.resolve(resolved).optim == resolved.optim  # a resolved config resolves to itself


def test_the_command_line_beats_the_file_and_a_disagreement_on_one_side_is_refused(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[optim]\nname = "adamw"\nlr = 0.002\n[optim.adamw]\nlr = 0.001\n')
    with pytest.raises(UserError, match="disagree"):
        optim.resolve(load_config(path))
    table = load_config(path, ["--optim.adamw.lr=0.005"])
    assert optim.settings(table.optim, table.from_cli).lr == 0.005  # the command line's table lr wins
    cli = load_config(None, ["--optim.lr=0.004"])
    assert optim.settings(cli.optim, cli.from_cli).lr == 0.004  # over the quickstart file's [optim.adamw] lr
    with pytest.raises(UserError, match="disagree"):
        optim.resolve(load_config(None, ["--optim.lr=0.004", "--optim.adamw.lr=0.003"]))


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--optim.eta=5"], "'optim.eta' belongs in [optim.ecd]"),
        (["--optim.betas=[0.9,0.9]"], "--optim.adamw.betas"),
        (["--optim.ecd.eta=5"], "optimizer 'ecd', but optim.name is 'adamw'"),
        (["--optim.name=ecd", "--optim.ecd.eta=-1"], "optim.ecd.eta must be a positive number"),
        (["--optim.name=sgdm", "--optim.sgdm.momentum=1.5"], "optim.sgdm.momentum must be in [0, 1)"),
        (["--optim.name=adamw", "--optim.adamw.etaa=1"], "unknown config key 'optim.adamw.etaa'"),
    ],
)
def test_misplaced_or_wrong_optimizer_knobs_are_one_line_errors(args, needle):
    with pytest.raises(UserError) as e:
        optim.resolve(load_config(None, args))
    assert needle in str(e.value)


def test_a_table_for_an_unknown_optimizer_is_refused(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[optim]\nname = "adamw"\n[optim.adam]\nlr = 0.1\n')
    with pytest.raises(UserError, match=r"unknown optimizer table \[optim.adam\]"):
        optim.resolve(load_config(path))


def test_a_checkpoint_from_before_the_optimizer_tables_loads_and_resumes(data_dir, tmp_path):
    """Stored configs once held every optimizer's knobs flat in [optim]; they upgrade on the way in."""
    import checkpoints
    from eval.run import load_run

    from helpers import args

    assert train.main(args(data_dir, tmp_path, "old", "--optim.name=sgdm", "--optim.lr=0.2", steps=2)) == 0
    path = checkpoints.list_checkpoints(tmp_path / "old")[-1]
    state = torch.load(path, weights_only=True)
    flat = {k: v for k, v in state["config"]["optim"].items() if not isinstance(v, dict)}
    state["config"]["optim"] = {
        **flat, "lr": 0.2, "momentum": 0.95, "nesterov": True, "weight_decay": 0.0, "betas": [0.9, 0.95],
        "eps": 1e-8, "eta": 100.0, "f0": 2.0, "decay_embeddings": False,
    }
    del state["config"]["optim"]["decay"]
    torch.save(state, path)
    checkpoints.sidecar(path).write_text(json.dumps({"step": 2, "sha256": checkpoints.sha256_file(path)}))
    loaded = load_run(tmp_path / "old")
    assert optim.settings(loaded.config.optim).lr == 0.2 and loaded.config.optim.name == "sgdm"
    resume = args(data_dir, tmp_path, "old", "--optim.name=sgdm", "--optim.lr=0.2", "--run.resume=true", steps=4)
    assert train.main(resume) == 0


def test_a_stored_config_from_before_a_knob_existed_takes_its_default():
    """A run from before SOAP's `original` or SGDM's `initial_velocity_std` ran what their defaults name."""
    up = optim.upgrade_config({"optim": {"name": "soap", "soap": {"lr": 0.1}}})
    assert up["optim"]["soap"]["lr"] == 0.1 and up["optim"]["soap"]["original"] is False
    up = optim.upgrade_config({"optim": {"name": "sgdm", "sgdm": {"momentum": 0.5}}})
    assert up["optim"]["sgdm"] == {**dataclasses.asdict(optim.sgdm.Options()), "momentum": 0.5}
