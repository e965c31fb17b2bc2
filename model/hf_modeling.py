"""Hugging Face modelling code for an exported symbreak GPT (loaded with ``trust_remote_code=True``).

This file is copied next to the weights as ``modeling_symbreak.py`` and must stay self-contained:
it imports only torch, transformers and the rotary helpers of ``rope.py``, which is copied beside it. The
exported model is the training model with its mean (or learned) attention biases folded into the
query/key/value projection bias, so attention here is plain causal attention, except with rotary
positions (``position = "rope"``): there the query bias comes after the rotation (``attn.q_bias``).
The MLP is PReLU with one learned negative slope per feature, or GELU (tanh-approximated or exact).
Embeddings are tied: the logits are the final hidden states times the token embedding matrix.

Generation uses transformers' key/value cache (``use_cache=True``, the default of ``generate``) while
the sequence fits in block_size; past that the window of the last block_size tokens slides, every
position moves, and each step runs its whole window again, as without the cache.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .rope import apply_rope, rope_angles, rotary_dims

GELU_APPROXIMATION = {"gelu": "tanh", "gelu_exact": "none"}  # the tanh GELU (GPT-2's) or the exact one
# transformers 5 calls the cache argument and output field `cache`, earlier versions `past_key_values`
CACHE_NAME = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class SymbreakConfig(PretrainedConfig):
    model_type = "symbreak-gpt"
    attribute_map = {
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "hidden_size": "n_embd",
        "max_position_embeddings": "block_size",
    }

    def __init__(
        self,
        vocab_size: int = 50257,
        block_size: int = 1024,
        n_layer: int = 12,
        n_head: int = 12,
        n_embd: int = 768,
        mlp: str = "prelu",
        bias: bool = True,
        layer_norm_eps: float = 1e-5,
        position: str = "learned",
        rope_fraction: float = 0.5,
        rope_base: float = 10000.0,
        **kwargs,
    ):
        self.vocab_size, self.block_size = vocab_size, block_size
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, n_embd
        self.mlp, self.bias, self.layer_norm_eps = mlp, bias, layer_norm_eps
        self.position, self.rope_fraction, self.rope_base = position, rope_fraction, rope_base
        kwargs.setdefault("tie_word_embeddings", False)  # logits use wte directly; there is no lm_head
        super().__init__(**kwargs)


class PReLU(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, x, x * self.weight)


class Attention(nn.Module):
    def __init__(self, cfg: SymbreakConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=True)  # holds the folded mean biases
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        if cfg.position == "rope":  # the query bias added after the rotation, which c_attn's bias cannot hold
            self.register_buffer("q_bias", torch.zeros(cfg.n_embd))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache=None, layer: int = 0, rope=None):
        """``mask``: None for plain causal attention, else (B, 1, T, past + T) booleans; ``cache``: a
        transformers Cache holding ``past`` earlier positions, extended here by this layer's k, v; ``rope``:
        the cos and sin (B, 1, T, rope_dims / 2) of the tokens' positions, or None."""
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in self.c_attn(x).split(C, 2))
        if rope is not None:
            q = apply_rope(q, *rope) + self.q_bias.view(self.n_head, 1, -1).to(q.dtype)
            k = apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(k, v, layer)
        past = k.size(2) - T
        if mask is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        elif past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # query i sits at position past + i (is_causal would align the mask top-left)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, past, x.device))
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


def causal_mask(T: int, past: int, device: torch.device) -> torch.Tensor:
    """(T, past + T) booleans: query i, at position past + i, sees keys 0..past + i."""
    return torch.ones(T, past + T, dtype=torch.bool, device=device).tril(diagonal=past)


class Block(nn.Module):
    def __init__(self, cfg: SymbreakConfig):
        super().__init__()
        C = cfg.n_embd
        self.ln_1 = nn.LayerNorm(C, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.attn = Attention(cfg)
        self.ln_2 = nn.LayerNorm(C, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.mlp = nn.Module()
        self.mlp.c_fc = nn.Linear(C, 4 * C, bias=cfg.bias)
        self.mlp.act = PReLU(4 * C) if cfg.mlp == "prelu" else nn.GELU(approximate=GELU_APPROXIMATION[cfg.mlp])
        self.mlp.c_proj = nn.Linear(4 * C, C, bias=cfg.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache=None, layer: int = 0, rope=None):
        x = x + self.attn(self.ln_1(x), mask, cache, layer, rope)
        return x + self.mlp.c_proj(self.mlp.act(self.mlp.c_fc(self.ln_2(x))))


class SymbreakForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = SymbreakConfig
    base_model_prefix = "transformer"
    main_input_name = "input_ids"

    def __init__(self, config: SymbreakConfig):
        super().__init__(config)
        C = config.n_embd
        positions = {"wpe": nn.Embedding(config.block_size, C)} if config.position == "learned" else {}
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, C),
                **positions,
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(C, eps=config.layer_norm_eps, bias=config.bias),
            )
        )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.wte

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        cache=None,
        past_key_values=None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits of ``input_ids``; with a cache (``cache`` or ``past_key_values``, or a new one when
        ``use_cache``) they continue its positions, and the cache is returned extended."""
        cache = None if use_cache is False else (cache if cache is not None else past_key_values)
        if use_cache and cache is None:
            cache = DynamicCache()
        past = cache.get_seq_length() if cache is not None else 0
        B, T = input_ids.shape
        if past + T > self.config.block_size:
            raise ValueError(f"{past + T} positions exceed block_size {self.config.block_size}")
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            keep = attention_mask.bool()  # (B, past + T)
            mask = causal_mask(T, past, input_ids.device)[None, None] & keep[:, None, None, :]
            rows = torch.arange(T, device=input_ids.device)
            own = torch.zeros_like(mask[0, 0])
            own[rows, past + rows] = True  # a padding query sees itself: no all-masked row
            mask = mask | own
            if position_ids is None:  # left padding: count positions from the first real token
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=input_ids.device)[None]
        x, rope = self.transformer.wte(input_ids), None
        if self.config.position == "rope":
            c = self.config
            cos, sin = rope_angles(position_ids, rotary_dims(c.n_embd // c.n_head, c.rope_fraction), c.rope_base)
            rope = (cos.unsqueeze(1), sin.unsqueeze(1))  # (B or 1, 1, T, dims / 2): broadcast over the heads
        else:
            x = x + self.transformer.wpe(position_ids)
        for i, block in enumerate(self.transformer.h):
            x = block(x, mask, cache, i, rope)
        logits = F.linear(self.transformer.ln_f(x), self.transformer.wte.weight)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        out = CausalLMOutputWithPast(loss=loss, logits=logits)
        if cache is not None:
            out[CACHE_NAME] = cache
        return out

    def prepare_inputs_for_generation(
        self, input_ids: torch.LongTensor, attention_mask=None, use_cache: bool = True, **kwargs
    ) -> dict:
        """Only the uncached tokens while the sequence fits in block_size; beyond, the last block_size
        tokens without the cache (the window slides, so every cached position would move)."""
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if use_cache and input_ids.size(1) <= self.config.block_size:
            past = cache.get_seq_length() if cache is not None else 0
            inputs = {"input_ids": input_ids[:, past:], "attention_mask": attention_mask, "use_cache": True}
            return inputs if cache is None else {**inputs, CACHE_NAME: cache}
        input_ids = input_ids[:, -self.config.block_size :]
        if attention_mask is not None:
            attention_mask = attention_mask[:, -self.config.block_size :]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
