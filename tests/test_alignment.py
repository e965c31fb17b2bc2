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
    summary, cos, _, paper, positional = analyse(model, byte_tokenizer(), positions=[0, 3, 7], k=10)
    assert cos.shape == (2, 2, 257, 3) and paper.shape == (2, 2, 257) and positional.shape == (2, 2, 8)
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


def test_the_directions_of_a_symmetric_model_bq_draw_and_random():
    """bq: the mean its biased twin would draw around (all coordinates q_mean: the ones direction);
    draw: one draw from that distribution, shared by a layer's heads (the paper's null); random: isotropic."""
    symmetric = SymmetryConfig(mode="symmetric")
    cfg = GPTConfig(vocab_size=257, block_size=8, n_layer=2, n_head=2, n_embd=16, symmetry=symmetric)
    model = GPT(cfg)
    torch.testing.assert_close(query_directions(model, "bq"), torch.full((2, 2, 8), 8**-0.5))
    draw = query_directions(model, "draw", seed=3)
    assert torch.equal(draw, query_directions(model, "draw", seed=3)) and torch.equal(draw[:, 0], draw[:, 1])
    assert not torch.equal(draw, query_directions(model, "draw", seed=4)) and not torch.equal(draw[0], draw[1])
    # mean 0.5, std 0.05..0.15: a draw lies close to the ones direction, far from what isotropic gives
    assert (draw * 8**-0.5).sum(-1).min() > 0.9
    with pytest.raises(UserError, match="use one of: bq, draw, random"):
        query_directions(model, "sideways")
    d = query_directions(model, "random", seed=3)
    assert torch.equal(d, query_directions(model, "random", seed=3))
    assert not torch.equal(d, query_directions(model, "random", seed=4))
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(2, 2))
    model = model_with_aligned_token("symmetric")  # built with seed 0's random direction
    summary, *_ = analyse(model, byte_tokenizer(), positions=[0], k=5, direction="random")
    assert all(h["top"][0]["id"] == TOKEN for layer in summary["layers"] for h in layer["heads"])


def test_the_papers_statistic_is_the_raw_embedding_through_w_k_and_differs_from_ours_by_the_key_bias():
    torch.manual_seed(1)
    cfg = GPTConfig(vocab_size=257, block_size=8, n_layer=2, n_head=2, n_embd=16, symmetry=SymmetryConfig(mode="bq"))
    model = GPT(cfg).eval()
    C, hd = 16, 8
    dirs = query_directions(model, "bq")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for layer, block in enumerate(model.transformer.h):  # a key bias along bQ: every key leans its way
            block.attn.c_attn.bias[C : 2 * C] = 5.0 * dirs[layer].reshape(C)
    summary, cos, _, paper, positional = analyse(model, byte_tokenizer(), positions=[0, 7], k=10)
    wte, wpe = model.transformer.wte.weight[:257], model.transformer.wpe.weight
    for layer, block in enumerate(model.transformer.h):
        for h in range(2):
            w = block.attn.c_attn.weight[C + h * hd : C + (h + 1) * hd]
            for rows, got in ((wte, paper), (wpe, positional)):
                want = F.cosine_similarity(rows @ w.T, dirs[layer, h][None], dim=1)
                torch.testing.assert_close(torch.as_tensor(got[layer, h]), want, atol=1e-5, rtol=0)
    ours = cos.mean(-1)
    assert ours.min() > 0.9  # with the key bias every token's key points along bQ
    assert abs(float(paper.mean())) < 0.3  # without it, the raw embeddings do not
    theirs = summary["paper"]["layers"][0]["heads"][0]
    ranks = [np.argsort(np.argsort(x)) for x in (paper[0, 0], ours[0, 0].numpy())]
    assert theirs["spearman_with_ours"] == pytest.approx(np.corrcoef(*ranks)[0, 1])
    assert theirs["positional_mean_cos"] == pytest.approx(float(positional[0, 0].mean()))


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
