"""Hugging Face interop: our GPT to ``transformers`` models and back (the commands are in eval/hf.py).

    python -m eval.hf export RUN_DIR OUT_DIR [--custom]   # safetensors, config, tokenizer (+ modelling code)
    python -m eval.hf import SRC OUT_RUN                  # SRC: a local GPT-2 folder or a hub name

Export folds the mean attention biases into the projection bias first (exact, see
GPT.fold_mean_biases), so nothing of the symmetry breaking is left at inference. A GELU model then
is a stock ``GPT2LMHeadModel`` (``gelu`` is the tanh approximation, GPT-2's ``gelu_new``; ``gelu_exact``
is transformers' ``gelu``; GPT-2's
Conv1D stores weights as (in, out), the transpose of nn.Linear). A PReLU model needs its own code:
``model/hf_modeling.py`` is copied in as ``modeling_symbreak.py`` and loads with
``AutoModelForCausalLM.from_pretrained(OUT_DIR, trust_remote_code=True)``. Logits cover the real
vocabulary only (the padding rows of the embedding are dropped).
"""

from __future__ import annotations

import copy
import runpy
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from configs import SymmetryConfig, UserError
from model.gpt import GPT, GPTConfig
from model.hf_modeling import SymbreakConfig, SymbreakForCausalLM

MODELING_FILE = Path(__file__).with_name("hf_modeling.py")
ROPE_FILE = Path(__file__).with_name("rope.py")  # the modelling code imports it: copied beside it
# our GELUs and the names transformers gives them
GPT2_ACTIVATION = {"gelu": "gelu_new", "gelu_exact": "gelu"}
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def folded_state(model: GPT) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """A copy of the model with its mean biases folded in; every projection and norm gets a bias tensor."""
    m = copy.deepcopy(model).float().cpu()
    after_rotation = m.fold_mean_biases()
    cfg = m.config
    state = {k: v.detach().clone() for k, v in m.state_dict().items() if k != "lm_head.weight"}
    state["transformer.wte.weight"] = state["transformer.wte.weight"][: cfg.vocab_size].clone()
    for i in range(cfg.n_layer):  # exported attention always carries a projection bias
        state.setdefault(f"transformer.h.{i}.attn.c_attn.bias", torch.zeros(3 * cfg.n_embd))
        if cfg.position == "rope":  # and with rope the query bias that comes after the rotation
            q_bias = torch.zeros(cfg.n_embd) if after_rotation is None else after_rotation[i]
            state[f"transformer.h.{i}.attn.q_bias"] = q_bias
    return cfg, state


def _with_zero_biases(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stock GPT-2 has a bias in every Linear/LayerNorm; a bias-free model's are zeros, exactly."""
    out = dict(state)
    for key, w in state.items():
        is_norm = ".ln_" in key or key.startswith("transformer.ln_f")
        if key.endswith(".weight") and (is_norm or key.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))):
            bias_key = key[: -len("weight")] + "bias"
            out.setdefault(bias_key, torch.zeros(w.shape[0]))
    return out


def to_gpt2(model: GPT, eot: int | None = None):
    """A transformers ``GPT2LMHeadModel`` computing the same logits (GELU models only)."""
    if model.config.mlp not in GPT2_ACTIVATION or model.config.position != "learned":
        raise UserError(
            "only a GELU model with learned positions exports to stock GPT-2; "
            "a PReLU or rope model needs the custom code (--custom)"
        )
    cfg, state = folded_state(model)
    hf_cfg = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.block_size,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=4 * cfg.n_embd,
        activation_function=GPT2_ACTIVATION[model.config.mlp],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        bos_token_id=eot,
        eos_token_id=eot,
        tie_word_embeddings=True,
    )
    state = _with_zero_biases(state)
    for key in list(state):
        if key.endswith(CONV1D):
            state[key] = state[key].t().contiguous()
    hf = GPT2LMHeadModel(hf_cfg)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to wte
    if missing or unexpected:
        raise RuntimeError(f"GPT-2 weight mapping is incomplete: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf.eval()


def to_custom(model: GPT, eot: int | None = None):
    """The model as ``modeling_symbreak.SymbreakForCausalLM`` (imported from model/hf_modeling.py)."""
    cfg, state = folded_state(model)
    hf_cfg = SymbreakConfig(
        vocab_size=cfg.vocab_size,
        block_size=cfg.block_size,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_embd=cfg.n_embd,
        mlp=cfg.mlp,
        bias=cfg.bias,
        position=cfg.position,
        rope_fraction=cfg.rope_fraction,
        rope_base=cfg.rope_base,
        bos_token_id=eot,
        eos_token_id=eot,
    )
    hf = SymbreakForCausalLM(hf_cfg)
    hf.load_state_dict(state, strict=True)
    return hf.eval()


def export(model: GPT, out_dir: str | Path, eot: int | None = None, custom: bool = False) -> str:
    """Write ``out_dir`` (config.json, model.safetensors, and for custom code modeling_symbreak.py).

    Returns "gpt2" for a stock GPT-2 export, "custom" otherwise.
    """
    out = Path(out_dir)
    if custom or model.config.mlp not in GPT2_ACTIVATION or model.config.position != "learned":
        hf = to_custom(model, eot)
        hf.config.auto_map = {
            "AutoConfig": "modeling_symbreak.SymbreakConfig",
            "AutoModelForCausalLM": "modeling_symbreak.SymbreakForCausalLM",
        }
        hf.save_pretrained(out, safe_serialization=True)
        shutil.copyfile(MODELING_FILE, out / "modeling_symbreak.py")
        shutil.copyfile(ROPE_FILE, out / ROPE_FILE.name)
        return "custom"
    to_gpt2(model, eot).save_pretrained(out, safe_serialization=True)
    return "gpt2"


def from_gpt2(hf: Any) -> GPT:
    """Our GPT (symmetric, GELU) with the weights of a transformers ``GPT2LMHeadModel``."""
    c = hf.config
    mlp = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact"}.get(c.activation_function)
    if mlp is None:
        raise UserError(f"GPT-2 activation '{c.activation_function}' is not a GELU (gelu_new, gelu) this model has")
    if abs(c.layer_norm_epsilon - 1e-5) > 1e-12:
        raise UserError(f"GPT-2 layer_norm_epsilon {c.layer_norm_epsilon} differs from the model's 1e-5")
    if c.n_inner not in (None, 4 * c.n_embd):
        raise UserError(f"GPT-2 n_inner {c.n_inner} is not 4 * n_embd as this model requires")
    cfg = GPTConfig(
        vocab_size=c.vocab_size,
        block_size=c.n_positions,
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_embd=c.n_embd,
        mlp=mlp,
        symmetry=SymmetryConfig(mode="symmetric"),
    )
    model = GPT(cfg)
    state = {k: v.detach().float().clone() for k, v in hf.state_dict().items() if not k.startswith("lm_head")}
    for key in list(state):
        if key.endswith(CONV1D):
            state[key] = state[key].t().contiguous()
    wte = torch.zeros(cfg.padded_vocab_size, cfg.n_embd)  # padding rows: zero logits, never sampled
    wte[: c.vocab_size] = state["transformer.wte.weight"]
    state["transformer.wte.weight"] = wte
    state["lm_head.weight"] = wte
    ours = model.state_dict()
    state = {k: v for k, v in state.items() if k in ours}  # drops GPT-2's causal-mask buffers if any
    model.load_state_dict(state, strict=True)
    return model.eval()


if __name__ == "__main__":  # the documented `python -m model.hf export|import ...` runs the command in eval/hf.py
    runpy.run_module("eval.hf", run_name="__main__", alter_sys=True)
