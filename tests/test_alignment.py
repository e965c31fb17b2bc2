"""Key/bQ alignment: a token whose key is parallel to bQ by construction ranks first in every head."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from configs import SymmetryConfig, UserError
from data.tokenizer import byte_tokenizer
from eval.alignment import analyse, enrichment, frequency_classes, key_cosines, query_directions
from model import GPT, GPTConfig

TOKEN = ord("7")


def model_with_aligned_token(mode: str = "bq") -> GPT:
    """Every layer's W_k maps LayerNorm(wte[TOKEN]) onto the bQ direction of each head; others stay generic."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=257, block_size=8, n_layer=2, n_head=2, n_embd=16, symmetry=SymmetryConfig(mode=mode))
    model = GPT(cfg).eval()
    C = cfg.n_embd
    dirs = query_directions(model, "bq" if mode != "symmetric" else "random")
    with torch.no_grad():
        model.transformer.wpe.weight.zero_()  # the token's key is then the same at every position
        for layer, block in enumerate(model.transformer.h):
            u = F.layer_norm(model.transformer.wte.weight[TOKEN], (C,), block.ln_1.weight, block.ln_1.bias)
            u_hat = u / u.norm()
            d = dirs[layer].reshape(C)
            R = torch.randn(C, C)
            w_k = 3.0 * torch.outer(d, u_hat) + R @ (torch.eye(C) - torch.outer(u_hat, u_hat))
            block.attn.c_attn.weight[C : 2 * C] = w_k
            block.attn.c_attn.bias[C : 2 * C] = 0.0
    return model


def test_a_key_parallel_to_bq_ranks_first_in_every_head():
    model = model_with_aligned_token("bq")
    summary, cos, _ = analyse(model, byte_tokenizer(), positions=[0, 3, 7], k=10)
    assert cos.shape == (2, 2, 257, 3)
    for layer in summary["layers"]:
        for head in layer["heads"]:
            assert head["top"][0]["id"] == TOKEN and head["top"][0]["cos"] == pytest.approx(1.0, abs=1e-5)
            assert head["top"][1]["cos"] < 0.999
            assert head["top"][0]["token"] == "7"
    assert summary["direction"] == "bq"


def test_key_cosines_agree_with_the_models_own_layer0_keys():
    model = model_with_aligned_token("bqbv")
    dirs = query_directions(model, "bq")
    cos = key_cosines(model, dirs, [0, 5])
    idx = torch.tensor([[5, TOKEN, 200, 5, 5, 9]])
    x = model.transformer.wte(idx) + model.transformer.wpe(torch.arange(6))
    block = model.transformer.h[0]
    _, k, _ = block.attn.heads(block.ln_1(x))  # (1, heads, T, head_dim): what attention really uses
    for t_pos, p_index in ((0, 0), (5, 1)):
        for h in range(2):
            want = F.cosine_similarity(k[0, h, t_pos], dirs[0, h], dim=0)
            torch.testing.assert_close(cos[0, h, 9 if t_pos == 5 else 5, p_index], want, atol=1e-5, rtol=0)


def test_symmetric_model_gets_a_seeded_random_direction():
    symmetric = SymmetryConfig(mode="symmetric")
    cfg = GPTConfig(vocab_size=257, block_size=8, n_layer=2, n_head=2, n_embd=16, symmetry=symmetric)
    model = GPT(cfg)
    with pytest.raises(UserError, match="--direction random"):
        query_directions(model, "bq")
    d = query_directions(model, "random", seed=3)
    assert torch.equal(d, query_directions(model, "random", seed=3))
    assert not torch.equal(d, query_directions(model, "random", seed=4))
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(2, 2))
    model = model_with_aligned_token("symmetric")  # built with seed 0's random direction
    summary, _, _ = analyse(model, byte_tokenizer(), positions=[0], k=5, direction="random")
    assert all(h["top"][0]["id"] == TOKEN for layer in summary["layers"] for h in layer["heads"])


def test_enrichment_and_frequency_bands():
    V, K = 100, 10
    ranked = np.arange(V)
    exact = np.zeros(V, bool)
    exact[:K] = True  # the class is exactly the top K
    rest = ~exact
    e = enrichment(ranked, {"exact": exact, "rest": rest}, K)
    assert e["exact"] == pytest.approx(np.log2(((K + 0.5) / (K + 1)) / ((K + 0.5) / (V + 1))))
    assert e["rest"] < -3
    counts = np.array([0] * 10 + list(range(1, 91)))
    bands = frequency_classes(counts)
    stacked = np.stack(list(bands.values()))
    assert (stacked.sum(axis=0) == 1).all()  # the bands partition the vocabulary
    assert bands["freq_unseen"][:10].all() and bands["freq_top1pct"].sum() == 1 and bands["freq_top1pct"][-1]
