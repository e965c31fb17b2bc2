"""Generation with a key/value cache, in our GPT and in the exported Hugging Face model, against the
uncached path: the same greedy tokens, the same samples, logits equal up to rounding."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from configs import SymmetryConfig
from model import GPT, GPTConfig
from model.hf import export

V, BLOCK = 50, 16
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(mode: str = "bqbv", dtype=torch.float64) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=V, block_size=BLOCK, n_layer=2, n_head=2, n_embd=16, symmetry=SymmetryConfig(mode=mode))
    model = GPT(cfg).to(dtype).eval()
    with torch.no_grad():  # off the init, so that attention is far from uniform and every position matters
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def prompt(batch: int, length: int) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(length))


@pytest.mark.parametrize("mode", ["symmetric", "bq", "bqbv"])
@pytest.mark.parametrize("length", [1, 5, 20])  # 20: the prompt alone overflows the window
def test_cached_greedy_generation_gives_the_uncached_tokens(mode, length):
    model, x = tiny(mode), prompt(3, length)
    cached = model.generate(x, 24, temperature=0)  # 5 + 24 tokens: the window slides past BLOCK
    plain = model.generate(x, 24, temperature=0, use_cache=False)
    assert torch.equal(cached, plain)
    assert len(set(cached[0, length:].tolist())) > 1  # not a degenerate repeat of one token


def test_cached_sampling_draws_the_uncached_samples():
    model, x = tiny(), prompt(2, 3)
    torch.manual_seed(4)
    cached = model.generate(x, 20, temperature=0.9, top_k=10)
    torch.manual_seed(4)
    plain = model.generate(x, 20, temperature=0.9, top_k=10, use_cache=False)
    assert torch.equal(cached, plain)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_a_cached_forward_continues_the_full_forward(dtype, atol):
    model, x = tiny(dtype=dtype), prompt(2, BLOCK)
    full = model(x)[0]
    cache = model.new_cache()
    pieces = [model(x[:, a:b], cache=cache)[0] for a, b in [(0, 4), (4, 5), (5, 11), (11, BLOCK)]]
    assert cache.length == BLOCK
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=atol, rtol=0)
    alone = model(x[:, 4:5])[0]  # the same token without its context: the cache must matter
    assert (alone[:, 0, :V] - full[:, 4, :V]).abs().max() > 100 * atol


def test_a_cache_refuses_positions_past_the_block_size():
    model = tiny()
    cache = model.new_cache()
    model(prompt(1, BLOCK), cache=cache)
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(prompt(1, 1), cache=cache)


@pytest.fixture
def exported(tmp_path):
    model = tiny(dtype=torch.float32)
    export(model, tmp_path, eot=V - 1)
    return model, AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True).eval()


def forward_lengths(hf, **kw) -> tuple[torch.Tensor, list[int]]:
    """``hf.generate(**kw)`` and the number of tokens each forward pass ran."""
    lengths: list[int] = []
    hook = hf.register_forward_pre_hook(lambda m, a, k: lengths.append(k["input_ids"].shape[1]), with_kwargs=True)
    try:
        return hf.generate(**kw), lengths
    finally:
        hook.remove()


def test_exported_model_generates_with_its_cache_like_without(exported):
    model, hf = exported
    x = prompt(1, 4)
    ours = model.generate(x, 20, temperature=0)
    common = dict(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=20, do_sample=False)
    cached, steps = forward_lengths(hf, use_cache=True, **common)
    plain, plain_steps = forward_lengths(hf, use_cache=False, **common)
    assert torch.equal(cached, ours) and torch.equal(plain, ours)
    # the prompt once, then one token a step until the window (16) is full, then whole windows
    assert steps == [4] + [1] * 12 + [BLOCK] * 7
    assert plain_steps == list(range(4, BLOCK + 1)) + [BLOCK] * 7


def test_exported_model_caches_left_padded_batches(exported):
    model, hf = exported
    batch = torch.tensor([[5, 6, 7, 8], [V - 1, V - 1, 9, 10]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    common = dict(input_ids=batch, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=V - 1)
    cached, steps = forward_lengths(hf, use_cache=True, **common)
    assert steps == [4] + [1] * 7
    assert torch.equal(cached, hf.generate(use_cache=False, **common))
    assert torch.equal(cached[1, 2:], model.generate(batch[1:, 2:], 8, temperature=0)[0])


def test_exported_forward_with_a_cache_continues_the_full_forward(exported):
    _, hf = exported
    x = prompt(2, 10)
    with torch.no_grad():
        full = hf(x).logits
        first = hf(x[:, :6], use_cache=True)
        rest = hf(x[:, 6:], cache=first.cache if hasattr(first, "cache") else first.past_key_values).logits
    torch.testing.assert_close(torch.cat([first.logits, rest], dim=1), full, atol=2e-5, rtol=0)
