"""Rotary positions (``model.position = "rope"``): the forward against RoPE written with explicit rotation
matrices, the symmetry biases after the rotation, cached generation, compile, export and config errors."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

import train
from configs import SymmetryConfig, UserError
from model import GPT, GPTConfig, draw_biases
from model.hf import export, to_gpt2

from helpers import args, one_line_error

V = 50


def tiny(mode: str = "bqbv", fraction: float = 0.5, base: float = 100.0, mlp: str = "prelu", **sym) -> GPT:
    """A rope GPT moved off its init (so projection biases and norms matter). A small base turns the
    pairs fast, so every rotated pair sees angles beyond 2π within the 16 positions."""
    torch.manual_seed(0)
    cfg = GPTConfig(
        vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=16, mlp=mlp, position="rope",
        rope_fraction=fraction, rope_base=base, symmetry=SymmetryConfig(mode=mode, **sym),
    )
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def tokens(T: int = 16) -> torch.Tensor:
    return torch.randint(0, V, (3, T), generator=torch.Generator().manual_seed(1))


def rotation(position: int, head_dim: int, dims: int, base: float) -> torch.Tensor:
    """The (head_dim, head_dim) matrix RoPE applies at ``position``: coordinate i turns with i + dims/2 by
    the angle position · base^(-2i/dims) for i < dims/2; the coordinates from dims on stay."""
    R = torch.eye(head_dim, dtype=torch.float64)
    half = dims // 2
    for i in range(half):
        angle = position * base ** (-2 * i / dims)
        c, s = math.cos(angle), math.sin(angle)
        R[i, i], R[i, i + half], R[i + half, i], R[i + half, i + half] = c, -s, s, c
    return R


def forward_by_hand(model: GPT, x: torch.Tensor, biases: dict, bias_first: bool = False) -> torch.Tensor:
    """The rope GPT in float64 with per-position rotation matrices and attention as explicit sums; the
    biases are added after the rotation (or before it, with ``bias_first``: what the model must not do).
    LayerNorm and MLP are the model's own modules (their forward is checked by hand in test_model.py)."""
    cfg, tr = model.config, model.transformer
    B, T = x.shape
    C, H, D = cfg.n_embd, cfg.n_head, cfg.head_dim
    R = torch.stack([rotation(p, D, cfg.rope_dims, cfg.rope_base) for p in range(T)])  # (T, D, D)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    h = tr.wte(x)  # no position embedding: positions enter through the rotation only
    for i, block in enumerate(tr.h):
        a = block.ln_1(h)
        q, k, v = (a @ block.attn.c_attn.weight.T + block.attn.c_attn.bias).view(B, T, 3, H, D).unbind(2)
        bq, bk, bv = (biases[n][i] if n in biases else torch.zeros(D, dtype=torch.float64) for n in "qkv")
        if bias_first:
            q, k = q + bq, k + bk
        q, k = torch.einsum("tde,bthe->bthd", R, q), torch.einsum("tde,bthe->bthd", R, k)
        if not bias_first:
            q, k = q + bq, k + bk
        scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(D)
        att = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        y = torch.einsum("bhts,bshd->bthd", att, v + bv).reshape(B, T, C)
        h = h + block.attn.c_proj(y)
        h = h + block.mlp(block.ln_2(h))
    return tr.ln_f(h) @ tr.wte.weight.T


@pytest.mark.parametrize(
    "mode, fraction, sym",
    [("bqbv", 0.5, {}), ("bq", 1.0, {"per_head": True}), ("bv", 0.75, {}), ("symmetric", 0.5, {}),
     ("bqbv", 0.5, {"k_bias": True})],
)
def test_rope_forward_equals_explicit_rotation_matrices_with_biases_after_the_rotation(mode, fraction, sym):
    model = tiny(mode, fraction, **sym).double()
    assert model.config.rope_dims == {0.5: 4, 0.75: 6, 1.0: 8}[fraction]
    biases = draw_biases(model.bias_spec, seed=3, micro_index=5) or {}
    biases = {n: b.double() for n, b in biases.items()}
    x = tokens()
    with torch.no_grad():
        want = forward_by_hand(model, x, biases)[..., :V]
        for reference in (False, True):  # the fused path and the plain formulas
            assert (model(x, biases=biases, reference=reference)[0][..., :V] - want).abs().max() < 1e-6
        if "q" in biases:  # the order matters: a query bias before the rotation is another model
            assert (forward_by_hand(model, x, biases, bias_first=True)[..., :V] - want).abs().max() > 1e-3


def test_rope_replaces_the_position_embedding_and_learned_stays_the_default():
    assert GPTConfig().position == "learned" and "transformer.wpe.weight" in GPT(GPTConfig(n_layer=1)).state_dict()
    model = tiny()
    state = model.state_dict()
    assert not any("wpe" in k or "rope" in k for k in state)  # the cos/sin tables are rebuilt, not saved
    assert model.num_params() == model.num_params(non_embedding=False)


@torch.no_grad()
def test_cached_generation_uses_the_right_positions():
    model = tiny()
    prompt = tokens()[:2, :5]
    # the cached forward runs each token at its offset: logits equal the whole sequence's
    cache = model.new_cache()
    steps = [model(prompt[:, :3], cache=cache)[0]] + [model(prompt[:, t : t + 1], cache=cache)[0] for t in (3, 4)]
    torch.testing.assert_close(torch.cat(steps, 1)[..., :V], model(prompt)[0][..., :V], atol=1e-6, rtol=0)
    # 20 new tokens: past block_size 16 the window slides, and the cache is left
    greedy = model.generate(prompt, 20, temperature=0)
    assert torch.equal(greedy, model.generate(prompt, 20, temperature=0, use_cache=False))
    torch.manual_seed(7)
    sampled = model.generate(prompt, 20, temperature=1.0, top_k=10)
    torch.manual_seed(7)
    assert torch.equal(sampled, model.generate(prompt, 20, temperature=1.0, top_k=10, use_cache=False))


def test_compiled_rope_forward_has_no_graph_break():
    # backend="eager" traces with dynamo as inductor would, without code generation (see test_model.py)
    model, x = tiny(), tokens()
    biases = draw_biases(model.bias_spec, seed=0, micro_index=0)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x, x, biases)[1], model(x, x, biases)[1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("mlp, mode", [("prelu", "bqbv"), ("gelu", "bq"), ("gelu_exact", "bv")])
def test_rope_exports_with_the_custom_code_and_loads_back_equal(tmp_path, mlp, mode):
    model = tiny(mode, mlp=mlp, k_bias=mode == "bq")  # a key bias after the rotation cancels: dropped
    x = tokens()
    with torch.no_grad():
        ours = model(x)[0][..., :V]
    assert export(model, tmp_path, eot=V - 1) == "custom"  # even a GELU model: stock GPT-2 has no rope
    assert (tmp_path / "rope.py").exists() and (tmp_path / "modeling_symbreak.py").exists()
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours, atol=1e-5, rtol=0)
        # left padding: positions count from the first real token, as ours do for the unpadded row
        batch, mask = torch.tensor([[5, 6, 7, 8], [V - 1, V - 1, 9, 10]]), torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
        padded = hf(batch, attention_mask=mask).logits
        torch.testing.assert_close(padded[1, 2:], model(torch.tensor([[9, 10]]))[0][0, :, :V], atol=1e-5, rtol=0)
    prompt = x[:1, :4]
    ours_gen = model.generate(prompt, 8, temperature=0)
    theirs = hf.generate(prompt, max_new_tokens=8, do_sample=False, attention_mask=torch.ones_like(prompt))
    assert torch.equal(ours_gen, theirs)
    assert model.config.symmetry.mode == mode  # the export folded a copy
    with pytest.raises(UserError, match="rope model needs the custom code"):
        to_gpt2(tiny(mode, mlp="gelu"))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--model.rope_fraction=0.25"], "model.rope_fraction applies only with model.position=rope"),
        (["--model.rope_base=500"], "model.rope_base applies only with model.position=rope"),
        (["--model.position=rope", "--model.rope_fraction=0.05"], "rotates no pair of dimensions"),
        (["--model.position=rope", "--model.rope_fraction=1.5"], "model.rope_fraction must be in (0, 1]"),
        (["--model.position=alibi"], "unknown model.position 'alibi'; use one of: learned, rope"),
    ],
)
def test_rope_settings_that_cannot_apply_are_one_line_errors(flags, message, data_dir, tmp_path, capsys):
    assert train.main(args(data_dir, tmp_path, "bad", *flags)) == 2
    assert message in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "bad").exists()
