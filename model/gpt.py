"""A nanoGPT-style GPT-2 whose attention takes unlearned query/value/key biases.

Learned positions (or rotary q and k, model/rope.py), pre-LayerNorm, tied embeddings, vocabulary padded to
a multiple of 64, init std 0.02 with residual projections scaled by (2 * n_layer)^-1/2. The biases are
passed in as tensors (drawn outside, see model/symmetry.py) so a compiled forward has no graph break and
attention stays on F.scaled_dot_product_attention. With ``symmetry.learned`` they are parameters of the
attention modules instead, started at the draws' means (the control for the draws' randomness).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from configs import Config, ModelConfig, SymmetryConfig, UserError
from model.rope import apply_rope, rope_angles, rotary_dims
from model.symmetry import BiasSpec

PRESETS: dict[str, tuple[int, int, int]] = {  # name: (n_layer, n_head, n_embd)
    "tiny": (2, 2, 64),
    "small": (4, 4, 128),
    "mini": (6, 6, 384),
    "124M": (12, 12, 768),
    "355M": (24, 16, 1024),
    "774M": (36, 20, 1280),
    "1.3B": (48, 25, 1600),
}
INIT_STD = 0.02  # every Linear and Embedding weight at init; the residual projections are scaled down from it
REFERENCE_WIDTH = PRESETS["124M"][2]  # the paper's bias values were chosen for GPT-2 124M


def init_projection_spread(n_embd: int) -> float:
    """The standard deviation of one query (or key, or value) coordinate at init.

    A block's attention input is LayerNorm'd (weight 1, bias 0 at init), so each token is a vector of
    norm √n_embd; c_attn's rows are N(0, INIT_STD²) and its bias is zero, so a coordinate w·x is
    N(0, INIT_STD²·n_embd) over the draw of w. The residual scaling touches only the output projections.
    (LayerNorm's eps shrinks the norm by a factor that does not depend on the width: 0.6% for the first
    block's embeddings of std 0.02, less deeper in.)"""
    return INIT_STD * math.sqrt(n_embd)


def width_scale(symmetry: SymmetryConfig, n_embd: int) -> float:
    """What multiplies the biases' means and stds: 1 as written, or with ``symmetry.scale = "width"`` the
    spread at init over GPT-2 124M's, √(n_embd / 768), so a bias is the same multiple of the spread it
    is added to at any width (exactly 1.0 at width 768)."""
    if symmetry.scale == "absolute":
        return 1.0
    return init_projection_spread(n_embd) / init_projection_spread(REFERENCE_WIDTH)


@dataclass
class GPTConfig(ModelConfig):
    """The architecture: the ``[model]`` knobs resolved (a preset expanded, the vocabulary known) and
    the ``[symmetry]`` settings, which the attention biases and their draws read."""

    vocab_size: int = 50257
    symmetry: SymmetryConfig = field(default_factory=SymmetryConfig)

    def __post_init__(self) -> None:
        self.symmetry.check()
        self.check()
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.position == "rope" and self.rope_dims < 2:
            raise ValueError(
                f"rope_fraction {self.rope_fraction} of head_dim {self.head_dim} rotates no pair of dimensions; "
                "raise it"
            )

    @classmethod
    def from_config(cls, model: ModelConfig, symmetry: SymmetryConfig, tokenizer_vocab: int) -> GPTConfig:
        """The architecture ``model`` describes for a tokenizer of ``tokenizer_vocab`` ids."""
        knobs = dataclasses.asdict(model)
        if model.preset:
            if model.preset not in PRESETS:
                raise UserError(f"unknown model.preset '{model.preset}'; use one of: {', '.join(PRESETS)}")
            knobs["n_layer"], knobs["n_head"], knobs["n_embd"] = PRESETS[model.preset]
        knobs["vocab_size"] = model.vocab_size or tokenizer_vocab
        if knobs["vocab_size"] < tokenizer_vocab:
            raise UserError(
                f"model.vocab_size {model.vocab_size} is smaller than the tokenizer's {tokenizer_vocab}; "
                "raise it or set 0"
            )
        try:
            return cls(**knobs, symmetry=dataclasses.replace(symmetry))
        except ValueError as e:
            raise UserError(f"invalid model config: {e}") from None

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def rope_dims(self) -> int:
        """The rotated dimensions of each head with ``position = "rope"``."""
        return rotary_dims(self.head_dim, self.rope_fraction)

    @property
    def padded_vocab_size(self) -> int:
        return (self.vocab_size + 63) // 64 * 64

    def bias_spec(self) -> BiasSpec:
        return BiasSpec(
            self.symmetry, self.n_layer, self.n_head, self.head_dim, width_scale(self.symmetry, self.n_embd)
        )


class PReLU(nn.Module):
    """PReLU over the last dimension with one learnable negative slope per feature."""

    def __init__(self, features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, x, x * self.weight)


def gelu(mlp: str) -> nn.GELU:
    """``gelu``: the tanh approximation (GPT-2's ``gelu_new``); ``gelu_exact``: x·Φ(x) with the erf."""
    return nn.GELU(approximate="tanh" if mlp == "gelu" else "none")


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.act = PReLU(4 * cfg.n_embd) if cfg.mlp == "prelu" else gelu(cfg.mlp)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


def _as_head_bias(b: torch.Tensor) -> torch.Tensor:
    """(heads, head_dim) -> (1, heads, 1, head_dim), broadcasting over batch and time."""
    return b.unsqueeze(0).unsqueeze(2)


def _add_head_bias(t: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``t`` (B, heads, T, head_dim) plus a per-head bias (heads or 1, head_dim), in ``t``'s dtype."""
    return t if b is None else t + _as_head_bias(b).to(t.dtype)


class KVCache:
    """Every layer's keys and values of the tokens seen so far, for generation one token at a time.

    Buffers of block_size positions are allocated at the first write (with the keys' shape, dtype and
    device); ``length`` counts the cached positions. A forward pass with a cache runs its tokens at the
    positions ``length, length + 1, ...``, attending to the cached ones and causally among themselves.
    """

    def __init__(self, n_layer: int, block_size: int):
        self.block_size = block_size
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer
        self.length = 0

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new positions' k, v (B, heads, T, head_dim); the keys and values of all positions so far."""
        if self.keys[layer] is None:
            B, H, _, D = k.shape
            self.keys[layer] = k.new_empty(B, H, self.block_size, D)
            self.values[layer] = v.new_empty(B, H, self.block_size, D)
        end = self.length + k.size(2)
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)
        if cfg.symmetry.learned:  # the control: the mode's biases as parameters, started at the draws' means
            shape = (cfg.n_head, cfg.head_dim) if cfg.symmetry.per_head else (cfg.head_dim,)
            for name, mean in cfg.bias_spec().means().items():  # plain Parameters (no Linear): q_bias, v_bias
                self.register_parameter(f"{name}_bias", nn.Parameter(mean.expand(shape).clone()))

    def heads(
        self, x: torch.Tensor, extra_bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-head q, k, v of shape (B, n_head, T, head_dim); ``extra_bias`` (3C,) joins c_attn's bias."""
        B, T, C = x.shape
        bias = self.c_attn.bias
        if extra_bias is not None:
            bias = extra_bias if bias is None else bias + extra_bias
        q, k, v = F.linear(x, self.c_attn.weight, bias).split(C, dim=2)
        return tuple(t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))

    def _packed_bias(self, bq, bk, bv, like: torch.Tensor) -> torch.Tensor | None:
        """The per-head biases as one (3C,) vector laid out like c_attn's output (q | k | v)."""
        if bq is None and bk is None and bv is None:
            return None
        C = self.n_head * self.head_dim
        parts = [
            torch.zeros(C, device=like.device, dtype=like.dtype)
            if b is None
            else b.expand(self.n_head, self.head_dim).reshape(C).to(like.dtype)
            for b in (bq, bk, bv)
        ]
        return torch.cat(parts)

    def qkv(
        self,
        x: torch.Tensor,
        bq: torch.Tensor | None,
        bv: torch.Tensor | None,
        bk: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-head q, k, v with the biases added after the projection and, with rope, after the rotation."""
        if rope is None:
            # Adding a per-head constant after the projection is adding it to the projection's
            # bias: one (3C,) vector add instead of elementwise passes over q and v.
            return self.heads(x, self._packed_bias(bq, bk, bv, x))
        q, k, v = self.heads(x, self._packed_bias(None, None, bv, x))  # v is not rotated
        return _add_head_bias(apply_rope(q, *rope), bq), _add_head_bias(apply_rope(k, *rope), bk), v

    def forward(
        self,
        x: torch.Tensor,
        bq: torch.Tensor | None = None,
        bv: torch.Tensor | None = None,
        bk: torch.Tensor | None = None,
        reference: bool = False,
        cache: tuple[KVCache, int] | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``rope``: the cos and sin (T, rope_dims / 2) of these tokens' positions, or None (no rotation)."""
        B, T, C = x.shape
        p = self.dropout if self.training else 0.0
        if reference and cache is None:  # the plain formulas, kept to check the fast path against
            q, k, v = self.heads(x)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            q, k, v = _add_head_bias(q, bq), _add_head_bias(k, bk), _add_head_bias(v, bv)
            att = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
            y = F.dropout(att, p) @ v
        else:
            q, k, v = self.qkv(x, bq, bv, bk, rope)
            if cache is not None:
                y = self._cached(q, k, v, *cache)
            else:
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def _cached(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache, layer: int) -> torch.Tensor:
        """Attention of the new positions over the cached ones and themselves (the biases are in k and v)."""
        past, T = cache.length, q.size(2)
        k, v = cache.extend(layer, k, v)
        if past == 0:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if T == 1:  # one new token sees every position
            return F.scaled_dot_product_attention(q, k, v)
        # query i sits at position past + i: it sees keys 0..past + i (is_causal would align top-left)
        mask = torch.ones(T, past + T, dtype=torch.bool, device=q.device).tril(diagonal=past)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, bq=None, bv=None, bk=None, reference: bool = False, cache=None, rope=None):
        x = x + self.attn(self.ln_1(x), bq, bv, bk, reference, cache, rope)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    @classmethod
    def from_config(cls, cfg: Config, tokenizer_vocab: int) -> GPT:
        """The GPT that ``cfg.model`` and ``cfg.symmetry`` describe, for a tokenizer of ``tokenizer_vocab`` ids."""
        return cls(GPTConfig.from_config(cfg.model, cfg.symmetry, tokenizer_vocab))

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.bias_spec = cfg.bias_spec()
        layers = dict(wte=nn.Embedding(cfg.padded_vocab_size, cfg.n_embd))
        if cfg.position == "learned":
            layers["wpe"] = nn.Embedding(cfg.block_size, cfg.n_embd)
        else:  # rope: cos/sin of every position made once, so a (compiled) forward only slices them
            cos, sin = rope_angles(torch.arange(cfg.block_size), cfg.rope_dims, cfg.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.transformer = nn.ModuleDict(
            dict(
                **layers,
                drop=nn.Dropout(cfg.dropout),
                h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
                ln_f=nn.LayerNorm(cfg.n_embd, bias=cfg.bias),
            )
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.padded_vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied
        # The vocabulary is padded to a multiple of 64 for fast matmuls; the padding ids get logit -inf,
        # added in the same matmul, so they take no probability in the loss, the scores or the samples.
        padding = torch.zeros(cfg.padded_vocab_size)
        padding[cfg.vocab_size :] = -math.inf
        self.register_buffer("padding_bias", padding, persistent=False)
        # Evaluation biases: the means, as buffers (n_layer, 1, head_dim) so they move with the model
        # (learned biases are parameters of the attention modules instead).
        for name, mean in {} if cfg.symmetry.learned else self.bias_spec.means().items():
            self.register_buffer(f"mean_b{name}", mean.expand(cfg.n_layer, 1, -1).clone(), persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=INIT_STD / math.sqrt(2 * cfg.n_layer))
            elif name.endswith("act.weight"):
                nn.init.normal_(p, mean=cfg.prelu_mean, std=cfg.prelu_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding and "wpe" in self.transformer else n

    def mean_biases(self) -> dict[str, torch.Tensor]:
        """The biases used when none are drawn, each (n_layer, 1 or n_head, head_dim): the draws' means, or
        with ``symmetry.learned`` the learned biases (stacked, so the loss's gradient reaches them)."""
        if not self.config.symmetry.learned:
            return {name: getattr(self, f"mean_b{name}") for name in self.bias_spec.means()}
        D = self.config.head_dim
        return {
            name: torch.stack([getattr(block.attn, f"{name}_bias").view(-1, D) for block in self.transformer.h])
            for name in self.bias_spec.streams()
        }

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        biases: dict[str, torch.Tensor] | None = None,
        reference: bool = False,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, padded_vocab; -inf at the padding ids) and, with targets, the mean cross-entropy
        over the real vocabulary (a target of -1 is ignored).

        ``biases`` maps "q"/"v"/"k" to (n_layer, heads, head_dim) draws; None means ``mean_biases()``
        (the evaluation means, or the learned biases). ``reference`` runs the plain formulas: biases added
        to q/k/v after projection (and after the rotation with rope) and attention as matmul-softmax-matmul.
        With a ``cache`` (see ``new_cache``) the tokens continue the cached ones: they run at positions
        ``cache.length, ...`` and are added to the cache.
        """
        B, T = idx.shape
        past = 0 if cache is None else cache.length
        if past + T > self.config.block_size:
            raise ValueError(f"sequence length {past + T} exceeds block_size {self.config.block_size}")
        if biases is None:
            biases = self.mean_biases()
        x, rope = self.transformer.wte(idx), None
        if self.config.position == "rope":
            rope = (self.rope_cos[past : past + T], self.rope_sin[past : past + T])
        else:
            x = x + self.transformer.wpe(torch.arange(past, past + T, device=idx.device))
        x = self.transformer.drop(x)
        bq, bv, bk = biases.get("q"), biases.get("v"), biases.get("k")
        for i, block in enumerate(self.transformer.h):
            x = block(
                x,
                None if bq is None else bq[i],
                None if bv is None else bv[i],
                None if bk is None else bk[i],
                reference,
                None if cache is None else (cache, i),
                rope,
            )
        if cache is not None:
            cache.length += T
        logits = F.linear(self.transformer.ln_f(x), self.lm_head.weight, self.padding_bias)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def fold_mean_biases(self) -> torch.Tensor | None:
        """Add the evaluation biases (the means, or the learned biases) into c_attn's bias vector and drop
        them: the logits are unchanged.

        A query/key bias adds to q/k directly; a value bias b gives softmax(.) @ (v + b) =
        softmax(.) @ v + b because attention rows sum to one. Afterwards the model is plain
        symmetric attention, which is what an exported model runs.

        With rope the query and key biases come after the rotation, where no projection bias (which
        rotates with q) can stand in for them: a key bias is dropped (it adds q·b to every score of a
        query, which the softmax cancels), and the query bias is removed and returned, (n_layer, n_embd),
        for the caller to add after the rotation (the exported code does). Otherwise None is returned.
        """
        cfg, C = self.config, self.config.n_embd
        after_rotation = None
        for name, bias in self.mean_biases().items():
            heads = bias.detach().expand(-1, cfg.n_head, -1).reshape(cfg.n_layer, C).clone()
            if cfg.position == "rope" and name in ("q", "k"):
                after_rotation = heads if name == "q" else after_rotation
                continue
            offset = {"q": 0, "k": C, "v": 2 * C}[name]
            for i, block in enumerate(self.transformer.h):
                lin = block.attn.c_attn
                if lin.bias is None:
                    lin.bias = nn.Parameter(torch.zeros(3 * C, device=lin.weight.device, dtype=lin.weight.dtype))
                lin.bias[offset : offset + C] += heads[i].to(lin.bias.dtype)
        for name in self.bias_spec.streams():
            if cfg.symmetry.learned:
                for block in self.transformer.h:
                    delattr(block.attn, f"{name}_bias")
            else:
                delattr(self, f"mean_b{name}")
        cfg.symmetry = dataclasses.replace(cfg.symmetry, mode="symmetric", k_bias=False, learned=False)
        self.bias_spec = cfg.bias_spec()
        return after_rotation

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward), the PaLM appendix B estimate."""
        cfg = self.config
        return 6 * self.num_params() + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size

    def new_cache(self) -> KVCache:
        """An empty key/value cache for ``forward(..., cache=...)``."""
        return KVCache(self.config.n_layer, self.config.block_size)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Sample continuations with the mean biases; padded vocabulary entries are never drawn.

        Each token is predicted from the last block_size tokens. With ``use_cache`` the prompt runs
        once and each new token alone against the cached keys and values, while the whole sequence fits
        in block_size; past that, the window slides and moves every position, so each step runs its
        window afresh, as without the cache. Both give the same logits up to rounding.
        """
        cache = None
        for _ in range(max_new_tokens):
            if use_cache and idx.size(1) <= self.config.block_size:
                if cache is None:
                    cache = self.new_cache()
                logits, _ = self(idx[:, cache.length :], cache=cache)
            else:
                logits, _ = self(idx[:, -self.config.block_size :])
            logits = logits[:, -1, : self.config.vocab_size].float()
            if temperature <= 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(logits.softmax(dim=-1), 1)
            idx = torch.cat([idx, nxt], dim=1)
        return idx
