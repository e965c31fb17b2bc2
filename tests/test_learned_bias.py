"""Learned attention biases (``symmetry.learned = true``), the control for the draws' randomness, and the
trainer-level checks of both architecture switches (learned biases, rotary positions): resume, two
processes against one with accumulation, export of a trained run."""

import copy
import json
import subprocess

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2LMHeadModel

import optim
import train
from configs import SymmetryConfig
from eval.alignment import main as alignment_main
from eval.alignment import query_directions
from eval.hf import main as hf_main
from eval.run import load_run
from model import GPT, BiasDraws, GPTConfig, draw_biases
from model.hf import export, from_gpt2

from helpers import (
    DRIVER,
    ROOT,
    args,
    assert_close_losses,
    assert_same_params,
    child_env,
    final_params,
    losses,
    one_line_error,
    torchrun,
)

pytestmark = pytest.mark.usefixtures("one_thread")
V = 50


def tiny(mode: str = "bqbv", position: str = "learned", mlp: str = "prelu", **sym) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(
        vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=16, mlp=mlp, position=position,
        symmetry=SymmetryConfig(mode=mode, **sym),
    )
    return GPT(cfg).eval()


def tokens() -> torch.Tensor:
    return torch.randint(0, V, (3, 12), generator=torch.Generator().manual_seed(1))


def move_off_init(model: GPT) -> GPT:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("mode, per_head", [("bq", False), ("bqbv", True), ("bv", False)])
def test_learned_biases_are_attention_parameters_started_at_the_means(mode, per_head):
    model = tiny(mode, learned=True, per_head=per_head, q_mean=0.3, v_mean=-0.2)
    streams = {"bq": ["q"], "bqbv": ["q", "v"], "bv": ["v"]}[mode]
    shape = (2, 8) if per_head else (8,)
    for block in model.transformer.h:
        attn = block.attn
        for name in "qv":
            assert hasattr(attn, f"{name}_bias") == (name in streams)
        for name in streams:
            p = getattr(attn, f"{name}_bias")
            assert isinstance(p, torch.nn.Parameter) and p.shape == shape
            assert torch.equal(p, torch.full(shape, {"q": 0.3, "v": -0.2}[name]))
        linear_weights = {id(m.weight) for m in attn.modules() if isinstance(m, torch.nn.Linear)}
        assert not any(id(getattr(attn, f"{n}_bias")) in linear_weights for n in streams)
    assert not model.bias_spec.draws_anything  # nothing drawn: the trainer passes no biases
    assert BiasDraws(model.bias_spec, 0, "cpu")(3) is None and draw_biases(model.bias_spec, 0, 3) is None
    assert not any(name.startswith("mean_b") for name, _ in model.named_buffers())


def test_learned_biases_start_at_the_width_scaled_means_under_width_scaling():
    model = tiny("bq", learned=True, scale="width")
    want = model.bias_spec.means()["q"]
    assert want.max() < 0.5  # width 16: scaled down from the written 0.5
    assert all(torch.equal(b.attn.q_bias, want) for b in model.transformer.h)


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_learned_biases_sit_where_drawn_ones_are_added(position):
    """A learned model computes what the drawn model computes when handed the learned values as its draw
    (after the rotation with rope), in the fused path and in the plain formulas."""
    learned = move_off_init(tiny("bqbv", position, learned=True, per_head=True)).double()
    drawn = tiny("bqbv", position, per_head=True).double()
    state = learned.state_dict()
    drawn.load_state_dict({k: v for k, v in state.items() if not k.endswith(("q_bias", "v_bias"))})
    biases = {n: torch.stack([getattr(b.attn, f"{n}_bias") for b in learned.transformer.h]) for n in "qv"}
    x = tokens()
    with torch.no_grad():
        want = drawn(x, biases=biases)[0][..., :V]
        for reference in (False, True):
            assert (learned(x, reference=reference)[0][..., :V] - want).abs().max() < 1e-12
        assert (drawn(x)[0][..., :V] - want).abs().max() > 1e-3  # the drawn model's means are other values


@pytest.mark.parametrize("per_head", [False, True])
def test_a_learned_bias_is_the_projection_bias_reparametrised(per_head):
    """With learned positions the learned query bias b and c_attn's bias enter only as their sum, so b's
    gradient is the projection bias gradient summed over the heads that share b. With rope b comes after
    the rotation and is not: its gradient differs."""
    for position in ("learned", "rope"):
        model = move_off_init(tiny("bq", position, learned=True, per_head=per_head)).double()
        x = tokens()
        model(x, x)[1].backward()
        attn = model.transformer.h[1].attn
        projection = attn.c_attn.bias.grad[:16].view(2, 8)  # the query slice, per head
        summed = projection if per_head else projection.sum(0)
        gap = (attn.q_bias.grad - summed).abs().max()
        assert gap < 1e-12 if position == "learned" else gap > 1e-4


def test_the_means_alone_train_as_gpt2_with_its_projection_biases_started_at_the_means():
    """Drawn biases with every std 0 under AdamW are, step for step, a symmetric GPT whose query and value
    projection biases start at the means: the mean moves only the start, not the loss landscape."""
    zero = dict(q_std_min=0.0, q_std_max=0.0, v_std=0.0, q_mean=0.5, v_mean=0.3)
    means, plain = tiny("bqbv", **zero).double().train(), tiny("symmetric").double().train()
    plain.load_state_dict(means.state_dict())
    with torch.no_grad():
        for block in plain.transformer.h:
            block.attn.c_attn.bias[:16] += 0.5  # the query slice (q | k | v, 16 each)
            block.attn.c_attn.bias[32:] += 0.3  # the value slice
    draws = BiasDraws(means.bias_spec, 0, "cpu")
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.0) for m in (means, plain)]
    for step in range(4):
        x = torch.randint(0, V, (3, 12), generator=torch.Generator().manual_seed(step))
        pair = []
        for model, opt, biases in ((means, opts[0], draws(step)), (plain, opts[1], None)):
            opt.zero_grad()
            loss = model(x, x, {n: b.double() for n, b in biases.items()} if biases else None)[1]
            loss.backward()
            opt.step()
            pair.append(loss.item())
        assert abs(pair[0] - pair[1]) < 1e-10
    assert abs(pair[0] - plain(x, x)[1].item()) > 1e-3  # the steps moved the model


def random_orthogonal(n: int, seed: int = 2) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


@torch.no_grad()
def rotate_query_key(model: GPT, head: int, R: torch.Tensor, shift: torch.Tensor) -> None:
    """Layer 1, one head: W_q -> R W_q, W_k -> R W_k, b_k -> R b_k and b_q -> R (b_q + shift) - shift."""
    lin = model.transformer.h[1].attn.c_attn
    q, k = slice(head * 8, head * 8 + 8), slice(16 + head * 8, 16 + head * 8 + 8)
    lin.weight[q], lin.weight[k] = R @ lin.weight[q], R @ lin.weight[k]
    lin.bias[q], lin.bias[k] = R @ (lin.bias[q] + shift) - shift, R @ lin.bias[k]


def test_what_keeps_and_what_breaks_the_query_rotation():
    """The identities docs/science.md states. A learned bias b keeps the rotation symmetry (the projection
    bias takes R(b_q + b) - b), and so does the fixed mean μ. With a draw μ + ε the rotated model is the
    original with the noise turned by Rᵀ: only a noise distribution that R changes breaks the symmetry."""
    R, x = random_orthogonal(8), tokens()
    learned = move_off_init(tiny("bq", learned=True, per_head=True)).double()
    before = learned(x)[0][..., :V]
    rotate_query_key(learned, 0, R, learned.transformer.h[1].attn.q_bias[0].detach())
    assert (learned(x)[0][..., :V] - before).abs().max() < 1e-12

    drawn = move_off_init(tiny("bq", per_head=True)).double()
    rotated = copy.deepcopy(drawn)
    mean = torch.full((8,), 0.5, dtype=torch.float64)
    rotate_query_key(rotated, 0, R, mean)
    assert (rotated(x)[0][..., :V] - drawn(x)[0][..., :V]).abs().max() < 1e-12  # the means: kept
    draw = {"q": draw_biases(drawn.bias_spec, seed=1, micro_index=2)["q"].double()}
    turned = {"q": draw["q"].clone()}
    turned["q"][1, 0] = mean + R.T @ (draw["q"][1, 0] - mean)  # layer 1, head 0: the noise turned by Rᵀ
    with_draw = rotated(x, biases=draw)[0][..., :V]
    assert (with_draw - drawn(x, biases=draw)[0][..., :V]).abs().max() > 1e-4  # this draw: another function
    assert (with_draw - drawn(x, biases=turned)[0][..., :V]).abs().max() < 1e-12  # ... the original's with Rᵀε


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_compiled_learned_forward_has_no_graph_break_and_the_biases_get_gradients(position):
    # backend="eager" traces with dynamo as inductor would, without code generation (see test_model.py)
    model, x = move_off_init(tiny("bqbv", position, learned=True)), tokens()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    loss = compiled(x, x)[1]
    torch.testing.assert_close(loss, model(x, x)[1], atol=1e-6, rtol=0)
    loss.backward()
    assert all(b.attn.q_bias.grad.abs().max() > 0 and b.attn.v_bias.grad.abs().max() > 0 for b in model.transformer.h)


def test_per_head_learned_biases_take_no_weight_decay_under_matrices():
    model = tiny("bqbv", learned=True, per_head=True)
    learned = {id(b.attn.q_bias) for b in model.transformer.h} | {id(b.attn.v_bias) for b in model.transformer.h}
    for decay, decayed in (("matrices", False), ("matrices_and_embeddings", False), ("all", True)):
        cfg = optim.config("adamw", weight_decay=0.1)
        cfg.decay = decay
        groups = optim.param_groups(model, cfg)
        in_decay = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
        assert (learned <= in_decay) == decayed and (learned & in_decay == set()) != decayed
    assert id(model.transformer.h[0].attn.c_attn.weight) in in_decay


def test_the_alignment_direction_of_a_learned_run_is_its_learned_query_bias():
    model = move_off_init(tiny("bq", learned=True, per_head=True))
    learned = torch.stack([b.attn.q_bias for b in model.transformer.h]).detach()
    torch.testing.assert_close(query_directions(model, "bq"), learned / learned.norm(dim=-1, keepdim=True))
    assert query_directions(model, "draw").shape == learned.shape  # the paper's null: a draw around the means


@pytest.mark.parametrize("mlp, position", [("gelu", "learned"), ("prelu", "learned"), ("gelu", "rope")])
def test_learned_biases_fold_into_an_export_that_loads_back_equal(tmp_path, mlp, position):
    model = move_off_init(tiny("bqbv", position, mlp, learned=True, per_head=True))
    x = tokens()
    with torch.no_grad():
        ours = model(x)[0][..., :V]
    kind = export(model, tmp_path, eot=V - 1)
    assert kind == ("gpt2" if (mlp, position) == ("gelu", "learned") else "custom")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=kind == "custom").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours, atol=1e-5, rtol=0)
        if kind == "gpt2":  # a plain GPT-2, so it imports back as one
            assert isinstance(hf, GPT2LMHeadModel)
            torch.testing.assert_close(from_gpt2(hf)(x)[0][..., :V], ours, atol=1e-5, rtol=0)
    assert model.config.symmetry.learned and hasattr(model.transformer.h[0].attn, "q_bias")  # a copy was folded


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--symmetry.mode=symmetric"], "symmetry.learned=true needs biases to learn"),
        (["--symmetry.k_bias=true"], "symmetry.k_bias cannot be learned"),
        (["--symmetry.q_std_max=0.3"], "symmetry.q_std_max has no effect with symmetry.learned=true"),
        (["--symmetry.v_std=0"], "symmetry.v_std has no effect with symmetry.learned=true"),
    ],
)
def test_learned_settings_that_would_be_ignored_are_one_line_errors(flags, message, data_dir, tmp_path, capsys):
    assert train.main(args(data_dir, tmp_path, "bad", "--symmetry.learned=true", *flags)) == 2
    assert message in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "bad").exists()


SWITCHES = {"learned": ["--symmetry.learned=true"], "rope": ["--model.position=rope"]}
CKPT = ["--train.checkpoint_interval=4", "--train.keep_checkpoints=2"]


@pytest.mark.parametrize("switch", SWITCHES)
def test_switch_trains_resumes_exactly_and_exports(switch, data_dir, tmp_path, capsys):
    """From the quickstart config by name; a branch from step 4 logs the same losses and ends with the same
    weights; the trained run exports with the CLI and the export gives the run's logits."""
    assert train.main(args(data_dir, tmp_path, "ref", *SWITCHES[switch], *CKPT)) == 0
    ref = tmp_path / "ref"
    step4 = sorted(ref.glob("ckpt_*4.pt"))[0]
    assert train.main(args(data_dir, tmp_path, "branch", *SWITCHES[switch], *CKPT, f"--run.checkpoint={step4}")) == 0
    assert losses(tmp_path / "branch") == losses(ref)
    assert_same_params(final_params(tmp_path / "branch"), final_params(ref))
    params = final_params(ref)
    if switch == "learned":  # the biases moved off their start
        assert (params["transformer.h.0.attn.q_bias"] - 0.5).abs().max() > 1e-4
    else:
        assert not any("wpe" in k for k in params)
        capsys.readouterr()  # the alignment analysis reads the position embedding a rope model has not
        assert alignment_main([str(ref), "--out", str(tmp_path / "alignment")]) == 2
        assert "has rotary positions" in one_line_error(capsys.readouterr().err)
    capsys.readouterr()
    assert hf_main(["export", str(ref), str(tmp_path / "hf")]) == 0
    run = load_run(ref)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=True).eval()
    x = torch.randint(0, 257, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, run.model(x)[0][..., :257], atol=1e-5, rtol=0)


@pytest.mark.parametrize("switch", SWITCHES)
def test_the_gpt_symmetries_task_refuses_the_switches(switch, tmp_path, capsys):
    cfg = str(ROOT / "configs" / "small_tasks" / "gpt_symmetries.toml")
    assert train.main([cfg, f"--run.dir={tmp_path}", "--symmetry.mode=bq", *SWITCHES[switch]]) == 2
    assert "gpt_symmetries checks the laws of the GPT" in one_line_error(capsys.readouterr().err)


def test_switches_under_two_processes_match_one_process_with_accumulation_two(data_dir, tmp_path):
    plan = {name: {"argv": args(data_dir, tmp_path / "ddp", name, *flags, steps=4)} for name, flags in SWITCHES.items()}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    out = subprocess.run(
        torchrun(str(DRIVER), str(tmp_path / "plan.json"), str(tmp_path)),
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    for rank in (0, 1):
        assert json.loads((tmp_path / f"codes_rank{rank}.json").read_text()) == {name: 0 for name in SWITCHES}
    for name, flags in SWITCHES.items():
        assert train.main(args(data_dir, tmp_path / "one", name, *flags, "--train.grad_accum=2", steps=4)) == 0
        assert_close_losses(losses(tmp_path / "one" / name), losses(tmp_path / "ddp" / name), atol=1e-5)
        assert_same_params(final_params(tmp_path / "one" / name), final_params(tmp_path / "ddp" / name), atol=1e-5)
