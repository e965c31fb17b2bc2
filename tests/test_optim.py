"""The optimizer registry, parameter groups, the shipped configs, and each optimizer in the trainer."""

import json
from pathlib import Path

import pytest
import torch

import optim
import train
from configs import CONFIG_DIR, OptimConfig, UserError, load_config
from model import GPT, GPTConfig

from helpers import QUIET, TINY_GPT

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


@pytest.mark.parametrize("name", sorted(QUICK))
def test_lowers_the_quickstart_loss(tmp_path, name):
    args = [f"--run.dir={tmp_path}", "--run.name=x", f"--optim.name={name}", "--train.max_steps=30", *TINY]
    assert train.main(args + QUICK[name]) == 0
    summary = json.loads((tmp_path / "x" / "summary.json").read_text())
    assert summary["steps"] == 30
    assert summary["final_val_loss"] < summary["initial_val_loss"] - 0.5


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.rglob("*.toml")), ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_shipped_config_loads(path: Path):
    load_config(path)


def test_paper_configs_hold_the_papers_settings():
    paper = {p.stem: load_config(p) for p in (CONFIG_DIR / "paper").glob("*.toml") if p.stem != "base"}
    assert sorted(paper) == ["adamw", "ecd", "sgdm", "soap"]
    for cfg in paper.values():
        assert (cfg.model.preset, cfg.model.block_size, cfg.train.batch_size) == ("124M", 512, 8)
        assert cfg.train.grad_accum == 1 and cfg.train.max_tokens == 500_000_000
        assert cfg.optim.schedule == "constant" and cfg.optim.warmup_steps == 0
    a, s, so, e = (optim.settings(paper[n].optim) for n in ("adamw", "sgdm", "soap", "ecd"))
    assert (a.lr, a.weight_decay, a.betas) == (1e-4, 0.01, [0.9, 0.95])
    assert (s.lr, s.momentum, s.nesterov) == (0.03, 0.95, True)
    assert (so.lr, so.betas, so.weight_decay, so.precondition_frequency) == (3e-4, [0.95, 0.95], 0.01, 10)
    assert (e.lr, e.eta, e.f0, e.nu) == (1.0, 100.0, 2.0, 0.0)


def test_modern_configs_take_half_a_million_tokens_per_step():
    for path in CONFIG_DIR.glob("gpt2-124m*.toml"):
        cfg = load_config(path)
        assert cfg.train.batch_size * cfg.model.block_size * cfg.train.grad_accum == 524_288
        assert cfg.optim.schedule == "cosine" and cfg.optim.warmup_steps > 0


def test_builders_honour_the_config():
    model = torch.nn.Linear(4, 4)
    cfg = optim.config("soap", lr=0.5, precondition_frequency=3, max_precond_dim=2)
    opt = optim.build_optimizer(optim.param_groups(model, cfg), cfg)
    g = opt.param_groups[0]
    assert (g["lr"], g["base_lr"], g["precondition_frequency"], g["max_precond_dim"]) == (0.5, 0.5, 3, 2)
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
