"""Hugging Face interop: exported models give our logits, imported GPT-2 gives GPT-2's (tiny local models)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from checkpoints import load_checkpoint
from configs import SymmetryConfig
from eval.hf import main
from model import GPT, GPTConfig
from model.hf import export, from_gpt2

V = 100  # not a multiple of 64: the padded rows must be dropped on export and added on import


def tiny(mlp: str, mode: str, bias: bool = True) -> GPT:
    torch.manual_seed(0)
    sym = SymmetryConfig(mode=mode)
    cfg = GPTConfig(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=16, mlp=mlp, symmetry=sym, bias=bias)
    model = GPT(cfg).eval()
    with torch.no_grad():  # move every parameter off its init (zero biases, unit norms) so each one matters
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def ids() -> torch.Tensor:
    return torch.randint(0, V, (3, 16), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    "mlp, mode, bias, stock",
    [
        ("prelu", "bqbv", True, False),
        ("prelu", "bq", False, False),
        ("gelu", "bqbv", True, True),
        ("gelu", "bq", False, True),
        ("gelu_exact", "bv", True, True),  # transformers' "gelu" is the exact one
    ],
)
def test_export_gives_our_logits(tmp_path, mlp, mode, bias, stock):
    model = tiny(mlp, mode, bias)
    ours = model(ids())[0][..., :V]
    kind = export(model, tmp_path, eot=V - 1)
    assert kind == ("gpt2" if stock else "custom")
    assert (tmp_path / "model.safetensors").exists()
    assert (tmp_path / "modeling_symbreak.py").exists() != stock
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=not stock).eval()
    assert isinstance(hf, GPT2LMHeadModel) == stock
    with torch.no_grad():
        theirs = hf(ids()).logits
    assert theirs.shape == ours.shape
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    assert model.config.symmetry.mode == mode  # export folds a copy, not the caller's model


def test_gelu_model_can_also_export_with_the_custom_code(tmp_path):
    model = tiny("gelu", "bqbv")
    assert export(model, tmp_path, custom=True) == "custom"
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids()).logits, model(ids())[0][..., :V], atol=1e-4, rtol=0)


def test_custom_export_generates_like_our_model(tmp_path):
    model = tiny("prelu", "bqbv")
    export(model, tmp_path, eot=V - 1)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
    prompt = ids()[:1, :4]
    ours = model.generate(prompt, 6, temperature=0)
    theirs = hf.generate(prompt, max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(prompt))
    assert torch.equal(ours, theirs)


def stock_gpt2(vocab: int = V, activation: str = "gelu_new") -> GPT2LMHeadModel:
    torch.manual_seed(3)
    cfg = GPT2Config(
        vocab_size=vocab, n_positions=16, n_layer=2, n_head=2, n_embd=16, activation_function=activation,
        bos_token_id=vocab - 1, eos_token_id=vocab - 1,
    )
    hf = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return hf


@pytest.mark.parametrize("activation, mlp", [("gelu_new", "gelu"), ("gelu", "gelu_exact")])
def test_imported_gpt2_gives_gpt2_logits_and_exports_back(tmp_path, activation, mlp):
    hf = stock_gpt2(activation=activation)
    ours = from_gpt2(hf)
    assert ours.config.mlp == mlp
    with torch.no_grad():
        want = hf(ids()).logits
        torch.testing.assert_close(ours(ids())[0][..., :V], want, atol=1e-4, rtol=0)
    export(ours, tmp_path / "back")
    again = GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids()).logits, want, atol=1e-4, rtol=0)


def test_import_cli_writes_a_loadable_run(tmp_path, capsys):
    hf = stock_gpt2(vocab=257)  # the byte tokenizer's vocabulary
    hf.save_pretrained(tmp_path / "gpt2")
    assert main(["import", str(tmp_path / "gpt2"), str(tmp_path / "wrong")]) == 2  # not GPT-2's 50,257 ids
    assert "vocabulary of 257 but the gpt2 tokenizer has 50257" in capsys.readouterr().err
    assert main(["import", str(tmp_path / "gpt2"), str(tmp_path / "run"), "--tokenizer", "byte"]) == 0
    state = load_checkpoint(next((tmp_path / "run").glob("ckpt_*.pt")))
    assert state["config"]["symmetry"]["mode"] == "symmetric" and state["config"]["model"]["mlp"] == "gelu"
    m = state["config"]["model"]
    model = GPT(
        GPTConfig(
            vocab_size=257, block_size=16, n_layer=m["n_layer"], n_head=2, n_embd=16, mlp="gelu",
            symmetry=SymmetryConfig(mode="symmetric"),
        )
    )
    model.load_state_dict(state["model"])
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ids())[0][..., :257], hf(ids()).logits, atol=1e-4, rtol=0)
    assert main(["import", str(tmp_path / "gpt2"), str(tmp_path / "run"), "--tokenizer", "byte"]) == 2  # occupied


def test_import_from_a_missing_folder_is_a_user_error(tmp_path, capsys):
    assert main(["import", str(tmp_path / "nothing-here"), str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.startswith("error: cannot load GPT-2 weights")


def test_custom_export_handles_left_padding(tmp_path):
    model = tiny("prelu", "bqbv")
    export(model, tmp_path, eot=V - 1)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
    batch = torch.tensor([[5, 6, 7, 8], [V - 1, V - 1, 9, 10]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    with torch.no_grad():
        padded = hf(batch, attention_mask=mask).logits
        torch.testing.assert_close(padded[1, 2:], model(torch.tensor([[9, 10]]))[0][0, :, :V], atol=1e-4, rtol=0)
        torch.testing.assert_close(padded[0], model(batch[:1])[0][0, :, :V], atol=1e-4, rtol=0)


def test_the_loss_is_gpt2s_even_when_every_real_logit_is_negative():
    """The padded vocabulary ids take no probability: with every real logit far below zero (where a zero
    logit on a padding id would take almost all the mass), our loss equals GPT2LMHeadModel's."""
    hf = stock_gpt2()
    with torch.no_grad():
        up = torch.ones(16) / 4.0
        hf.transformer.wte.weight.add_(3 * up)  # every token embedding leans one way ...
        hf.transformer.ln_f.weight.fill_(0.05)
        hf.transformer.ln_f.bias.copy_(-8 * up)  # ... and the final hidden state the other
    ours = from_gpt2(hf)
    x = ids()
    with torch.no_grad():
        logits = hf(x).logits
        assert logits.max() < -5  # the regime that exposed the padding: all real logits strongly negative
        theirs = hf(x, labels=x).loss
        _, loss = ours(x[:, :-1], x[:, 1:])
        padded = ours(x)[0][..., V:]
    torch.testing.assert_close(loss, theirs, atol=1e-5, rtol=0)
    assert torch.isneginf(padded).all()
