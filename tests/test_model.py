"""The symmetry-breaking mechanism: what it breaks, what it leaves alone, and how it is drawn."""

import pytest
import torch

import model.symmetry
from configs import SymmetryConfig
from model import GPT, BiasDraws, GPTConfig, draw_biases
from model.symmetry import BiasSpec, reference_biases


def tiny(mode: str, **kw) -> GPT:
    torch.manual_seed(0)
    sym = SymmetryConfig(mode=mode, **kw)
    cfg = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, symmetry=sym)
    return GPT(cfg).double().eval()  # float64: invariances are checked far below float32 rounding


def tokens() -> torch.Tensor:
    return torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(1))


def random_orthogonal(n: int, seed: int = 2) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


@torch.no_grad()
def rotate_qk(model: GPT, layer: int, head: int, R: torch.Tensor) -> None:
    """W_q -> R W_q and W_k -> R W_k for one head (projection biases rotate along)."""
    lin, C, hd = model.transformer.h[layer].attn.c_attn, model.config.n_embd, model.config.head_dim
    for offset in (0, C):
        rows = slice(offset + head * hd, offset + (head + 1) * hd)
        lin.weight[rows] = R @ lin.weight[rows]
        lin.bias[rows] = R @ lin.bias[rows]


@torch.no_grad()
def rotate_vo(model: GPT, layer: int, head: int, R: torch.Tensor) -> None:
    """W_v -> R W_v and the head's columns of W_o -> W_o R^T."""
    attn, C, hd = model.transformer.h[layer].attn, model.config.n_embd, model.config.head_dim
    rows = slice(2 * C + head * hd, 2 * C + (head + 1) * hd)
    attn.c_attn.weight[rows] = R @ attn.c_attn.weight[rows]
    attn.c_attn.bias[rows] = R @ attn.c_attn.bias[rows]
    cols = slice(head * hd, (head + 1) * hd)
    attn.c_proj.weight[:, cols] = attn.c_proj.weight[:, cols] @ R.T


def logits_after(mode: str, rotate) -> tuple[torch.Tensor, torch.Tensor]:
    model = tiny(mode)
    x = tokens()
    V = model.config.vocab_size  # the padding ids' logits are -inf before and after
    before = model(x)[0][..., :V]
    rotate(model, 1, 0, random_orthogonal(model.config.head_dim))
    return before, model(x)[0][..., :V]


@pytest.mark.parametrize("rotate", [rotate_qk, rotate_vo])
def test_symmetric_attention_is_rotation_invariant(rotate):
    before, after = logits_after("symmetric", rotate)
    assert torch.allclose(before, after, atol=1e-5)


@pytest.mark.parametrize(
    "mode,rotate,breaks",
    [
        ("bq", rotate_qk, True),
        ("bq", rotate_vo, False),
        ("bqbv", rotate_qk, True),
        ("bqbv", rotate_vo, True),
        ("bv", rotate_qk, False),
        ("bv", rotate_vo, True),
    ],
)
def test_biases_break_the_rotations(mode, rotate, breaks):
    before, after = logits_after(mode, rotate)
    changed = (before - after).abs().max().item()
    if breaks:  # small at init (weights ~0.02) but ten orders above float64 rounding
        assert changed > 1e-6
    else:  # bq leaves the value/output rotation a symmetry, bv the query/key one
        assert changed < 1e-10


def test_key_bias_leaves_logits_unchanged():
    x = tokens()
    plain = tiny("bqbv")
    with_k = tiny("bqbv", k_bias=True, k_mean=3.0, k_std=1.0)
    with_k.load_state_dict(plain.state_dict())
    biases = draw_biases(plain.bias_spec, seed=5, micro_index=7)
    biases_k = draw_biases(with_k.bias_spec, seed=5, micro_index=7)
    assert torch.equal(biases["q"], biases_k["q"]) and torch.equal(biases["v"], biases_k["v"])
    assert biases_k["k"].abs().max() > 0.5
    assert torch.allclose(plain(x, biases=biases)[0], with_k(x, biases=biases_k)[0], atol=1e-10)


@pytest.mark.parametrize("mode", ["bq", "bqbv", "bv"])
def test_mean_biases_fold_into_projection_bias(mode):
    model, x = tiny(mode), tokens()
    with torch.no_grad():  # nonzero projection biases so the fold adds to something
        for block in model.transformer.h:
            block.attn.c_attn.bias.normal_()
    explicit = model(x, biases=model.mean_biases())[0]
    model.fold_mean_biases()
    assert model.config.symmetry.mode == "symmetric" and not model.mean_biases()
    assert torch.allclose(model(x)[0], explicit, atol=1e-10)


@pytest.mark.parametrize("mode", ["symmetric", "bq", "bqbv", "bv"])
def test_sdpa_matches_reference_attention(mode):
    model, x = tiny(mode, k_bias=True), tokens()
    biases = draw_biases(model.bias_spec, seed=3, micro_index=11)
    fast = model(x, biases=biases)[0]
    slow = model(x, biases=biases, reference=True)[0]
    assert torch.allclose(fast, slow, atol=1e-10)


def forward_by_hand(model: GPT, idx: torch.Tensor, bq, bv) -> torch.Tensor:
    """The paper's architecture written out in float64, independently of model/gpt.py: pre-LayerNorm
    blocks, a per-layer query bias bq[l] and value bias bv[l] (None: absent) shared by the heads and
    added after the projection, causal softmax attention, and the MLP activation the config names."""
    cfg, tr = model.config, model.transformer
    H, C = cfg.n_head, cfg.n_embd
    hd, T = C // H, idx.shape[1]
    act = {
        "gelu_exact": lambda u: 0.5 * u * (1 + torch.erf(u / 2**0.5)),
        "gelu": lambda u: 0.5 * u * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (u + 0.044715 * u**3))),
    }
    x = tr.wte.weight[idx] + tr.wpe.weight[:T]
    for layer, block in enumerate(tr.h):
        h = torch.nn.functional.layer_norm(x, (C,), block.ln_1.weight, block.ln_1.bias)
        q, k, v = (h @ block.attn.c_attn.weight.T + block.attn.c_attn.bias).split(C, dim=-1)
        q, k, v = (t.reshape(*t.shape[:2], H, hd).transpose(1, 2) for t in (q, k, v))
        if bq is not None:
            q = q + bq[layer]
        if bv is not None:
            v = v + bv[layer]
        scores = (q @ k.transpose(-1, -2)) / hd**0.5
        scores = scores.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)
        x = x + y @ block.attn.c_proj.weight.T + block.attn.c_proj.bias
        h = torch.nn.functional.layer_norm(x, (C,), block.ln_2.weight, block.ln_2.bias)
        u = h @ block.mlp.c_fc.weight.T + block.mlp.c_fc.bias
        if cfg.mlp == "prelu":
            a = torch.where(u >= 0, u, u * block.mlp.act.weight)
        else:
            a = act[cfg.mlp](u)
        x = x + a @ block.mlp.c_proj.weight.T + block.mlp.c_proj.bias
    x = torch.nn.functional.layer_norm(x, (C,), tr.ln_f.weight, tr.ln_f.bias)
    return x @ tr.wte.weight.T


@pytest.mark.parametrize(
    "mlp, mode", [("gelu_exact", "bv"), ("gelu", "bqbv"), ("prelu", "bq"), ("gelu_exact", "symmetric")]
)
def test_the_forward_equals_the_architecture_written_by_hand(mlp, mode):
    """Covers the two switches that reproduce the paper's GELU ablation and its bV-only runs: the exact
    GELU (erf) and the value bias without a query bias."""
    torch.manual_seed(0)
    sym = SymmetryConfig(mode=mode, v_mean=0.0 if mode == "bv" else 0.5)
    cfg = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, mlp=mlp, symmetry=sym)
    model = GPT(cfg).double().eval()
    with torch.no_grad():
        for p in model.parameters():  # off the init, so that biases and norms matter
            p.add_(0.3 * torch.randn_like(p))
    biases = draw_biases(model.bias_spec, seed=4, micro_index=9) or {}
    assert set(biases) == {"symmetric": set(), "bq": {"q"}, "bqbv": {"q", "v"}, "bv": {"v"}}[mode]
    x = tokens()
    ours = model(x, biases=biases)[0][..., :50]  # the real vocabulary; the padding ids are -inf
    by_hand = forward_by_hand(model, x, biases.get("q"), biases.get("v"))[..., :50]
    assert (ours - by_hand).abs().max() < 1e-10
    if mlp.startswith("gelu"):  # the two GELUs are different functions: the switch changes the model
        other = {"gelu": "gelu_exact", "gelu_exact": "gelu"}[mlp]
        twin = GPT(GPTConfig(**{**cfg.__dict__, "mlp": other})).double().eval()
        twin.load_state_dict(model.state_dict())
        assert (twin(x, biases=biases)[0][..., :50] - ours).abs().max() > 1e-6


def spec(mode: str = "bqbv", **kw) -> BiasSpec:
    return BiasSpec(SymmetryConfig(mode=mode, **kw), n_layer=3, n_head=4, head_dim=8)


def test_bias_draws_are_keyed_by_seed_micro_batch_and_layer():
    s = spec()
    a, b = draw_biases(s, 1, 10), draw_biases(s, 1, 10)
    assert all(torch.equal(a[k], b[k]) for k in a)
    other_batch, other_seed = draw_biases(s, 1, 11), draw_biases(s, 2, 10)
    for k in a:
        assert not torch.equal(a[k], other_batch[k]) and not torch.equal(a[k], other_seed[k])
        assert not torch.equal(a[k][0], a[k][1])  # layers differ
    assert a["q"].shape == (3, 1, 8)  # one vector shared by the heads of a layer
    assert draw_biases(spec(per_head=True), 1, 10)["q"].shape == (3, 4, 8)
    assert draw_biases(BiasSpec(SymmetryConfig(mode="symmetric"), 3, 4, 8), 1, 10) is None


@pytest.mark.parametrize("kw", [{}, {"per_head": True}, {"k_bias": True}, {"mode": "bq"}])
def test_vectorised_draws_equal_the_scalar_reference(kw):
    s = spec(**kw)
    for seed, m in [(0, 0), (1337, 5), (-1, 123_456_789), (7, 2**33 + 3)]:
        fast, slow = draw_biases(s, seed, m), reference_biases(s, seed, m)
        assert fast.keys() == slow.keys() == set(s.streams())
        for name in fast:  # the same bits: the hash is exact integer work, Box-Muller the same float64 steps
            assert torch.equal(fast[name], slow[name]), (name, seed, m)


def test_a_stream_is_drawn_the_same_whichever_others_are_on():
    q_only, both = spec(mode="bq"), spec()
    assert torch.equal(draw_biases(q_only, 3, 9)["q"], draw_biases(both, 3, 9)["q"])


@pytest.mark.parametrize("stride", [1, 3])
def test_chunked_draws_are_the_single_draws_in_any_order(monkeypatch, stride):
    monkeypatch.setattr(model.symmetry, "CHUNK_VALUES", 2 * 3 * 3 * 4 * 8 * 5)  # 5 micro-batches per chunk
    s = spec(per_head=True)
    draws = BiasDraws(s, seed=11, device="cpu", stride=stride)
    assert draws.size == 5
    # in order across chunk edges, then a resume far back, a jump ahead and an index off the chunk's grid
    for m in [0, stride, 2 * stride, 5 * stride, 6 * stride, 1, 2, 40, 40 + stride, 39]:
        got, want = draws(m), draw_biases(s, 11, m)
        assert all(torch.equal(got[k], want[k]) for k in want), m


def test_draws_of_ranks_together_are_the_draws_of_one_process():
    s, seed = spec(), 5
    one = BiasDraws(s, seed, "cpu", stride=1)
    ranks = [BiasDraws(s, seed, "cpu", stride=2) for _ in range(2)]
    for m in range(12):  # rank r of 2 reads micro-batches r, r + 2, ...
        got, want = ranks[m % 2](m), one(m)
        assert all(torch.equal(got[k], want[k]) for k in want)


def draw_violations(z: torch.Tensor) -> list[str]:
    """Which of the draw's properties standardised samples ``z`` (micro-batches, variables) break.

    Predicted for independent N(0, 1) values: a Kolmogorov-Smirnov distance to the normal CDF below
    1.95/sqrt(n) (the 0.1% critical value), every correlation between two variables (layers, heads,
    coordinates) below 5/sqrt(N) in size, and the mean lag-1 correlation between consecutive
    micro-batches within 5 standard errors of 0. A wrong shape, a layer that repeats another or
    micro-batches that follow each other fail one of them."""
    N, V = z.shape
    out = []
    x = z.flatten().sort().values.double()
    n = x.numel()
    cdf = 0.5 * (1 + torch.erf(x / 2**0.5))
    ecdf = torch.arange(1, n + 1, dtype=torch.float64) / n
    ks = torch.maximum((ecdf - cdf).abs(), (ecdf - 1 / n - cdf).abs()).max().item()
    if ks > 1.95 / n**0.5:
        out.append(f"not normal: KS distance {ks:.4f}")
    r = torch.corrcoef(z.T.double())
    worst = (r - torch.eye(V, dtype=torch.float64)).abs().max().item()
    if worst > 5 / N**0.5:
        out.append(f"variables correlated: |r| up to {worst:.3f}")
    zc = z - z.mean(0)
    lag = ((zc[1:] * zc[:-1]).sum(0) / (zc * zc).sum(0)).mean().item()
    if abs(lag) > 5 / (N * V) ** 0.5:
        out.append(f"consecutive micro-batches correlated: mean lag-1 r {lag:.3f}")
    return out


def standardised(s: BiasSpec, draws: list[dict]) -> torch.Tensor:
    cols = [(torch.stack([d[k] for d in draws]) - s.mean(k)) / s.std(k) for k in s.streams()]
    return torch.cat([c.flatten(1) for c in cols], dim=1)


def test_bias_draws_are_independent_normals_and_broken_ones_are_caught():
    s = spec(per_head=True)
    draws = BiasDraws(s, 0, "cpu")
    z = standardised(s, [draws(m) for m in range(600)])  # 600 micro-batches x 192 variables
    assert draw_violations(z) == []
    uniform = (torch.rand(z.shape, generator=torch.Generator().manual_seed(0)) - 0.5) * 12**0.5
    assert any("not normal" in v for v in draw_violations(uniform))
    repeated_layer = z.clone().view(600, 2, 3, 4, 8)
    repeated_layer[:, :, 1] = repeated_layer[:, :, 0]
    assert any("variables correlated" in v for v in draw_violations(repeated_layer.view(600, -1)))
    drifting = z.clone()
    drifting[1:] = 0.6 * z[:-1] + 0.8 * z[1:]  # still N(0, 1), but each micro-batch leans on the last
    assert any("consecutive" in v for v in draw_violations(drifting))


def test_bias_draw_statistics_match_the_config():
    s = spec(per_head=True)
    draws = BiasDraws(s, 0, "cpu")
    samples = [draws(m) for m in range(400)]  # 400 x 3 layers x 4 heads samples per coordinate
    q = torch.stack([d["q"] for d in samples]).reshape(-1, 8)
    v = torch.stack([d["v"] for d in samples]).reshape(-1, 8)
    n = q.shape[0]
    assert torch.allclose(q.mean(0), torch.full((8,), 0.5), atol=4 * 0.15 / n**0.5)
    assert torch.allclose(q.std(0), torch.linspace(0.05, 0.15, 8), rtol=0.06)
    assert torch.allclose(v.mean(0), torch.full((8,), 0.5), atol=4 * 0.05 / n**0.5)
    assert torch.allclose(v.std(0), torch.full((8,), 0.05), rtol=0.06)
    only_v = BiasSpec(SymmetryConfig(mode="bv", v_mean=0.0), n_layer=3, n_head=4, head_dim=8)
    v0 = torch.stack([draw_biases(only_v, 0, m)["v"] for m in range(400)]).reshape(-1, 8)
    assert only_v.means().keys() == {"v"} and torch.allclose(v0.mean(0), torch.zeros(8), atol=4 * 0.05 / 1200**0.5)


def test_prelu_slopes_and_residual_init():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=100, block_size=8, n_layer=4, n_head=4, n_embd=64)
    model = GPT(cfg)
    slopes = torch.cat([b.mlp.act.weight for b in model.transformer.h])
    assert abs(slopes.mean().item() - 0.2) < 0.05 and abs(slopes.std().item() - 1.0) < 0.05
    proj = torch.cat([b.mlp.c_proj.weight.flatten() for b in model.transformer.h])
    assert abs(proj.std().item() - 0.02 / (2 * 4) ** 0.5) < 1e-3
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.transformer.wte.weight.shape[0] == 128  # 100 padded to a multiple of 64


def test_compiled_bqbv_forward_has_no_graph_break():
    # backend="eager" traces with dynamo exactly as inductor would, without code generation, so the
    # check needs no C++ compiler; fullgraph=True raises on any graph break.
    model, x = tiny("bqbv"), tokens()
    biases = draw_biases(model.bias_spec, seed=0, micro_index=0)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    assert torch.allclose(compiled(x, x, biases)[0], model(x, x, biases)[0])
