"""Hugging Face forms of our tokenizers encode every text to our ids, and survive save/load."""

import itertools

import pytest
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer

from configs import UserError
from data.builtin import documents
from data.hf_tokenizer import EOT_TEXT, byte_characters, merge_pair, to_hf
from data.tokenizer import get_tokenizer, train_bpe

from helpers import gpt2_ranks

HARD = [
    "",
    "   ",
    "héllo wörld 🙂  \n\n  tabs\t\there 12345 don't I'll we've THEY'RE",
    "\u00a0\u2009 a\r\nb  \n",
    "x = {'a': [1, 2.5e-3]}  # café\n\n\n",
    "数据 данные ﬁ ǅ",
]


@pytest.fixture(scope="module")
def corpus() -> str:
    return "\n".join(itertools.islice(documents(), 120))


@pytest.fixture(scope="module", params=["byte", "bpe", "gpt2"])
def ours(request, corpus, tmp_path_factory):
    if request.param == "gpt2":
        return get_tokenizer("gpt2", bpe_file=gpt2_ranks())
    if request.param == "bpe":
        return train_bpe([corpus[:100_000]], 600, tmp_path_factory.mktemp("bpe") / "tokenizer.json")
    return get_tokenizer("byte")


def test_the_byte_map_is_the_byte_level_alphabet():
    chars = byte_characters()
    assert len(set(chars)) == 256 and set(chars) == set(pre_tokenizers.ByteLevel.alphabet())
    assert chars[ord("A")] == "A" and chars[ord(" ")] == "Ġ" and chars[ord("\n")] == "Ċ"


def test_a_merge_is_the_last_pair_bpe_joins():
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"bc": 3, b"ab": 4, b"abc": 5}
    assert merge_pair(b"abc", ranks) == (b"a", b"bc")  # bc (3) merges before ab (4)
    assert merge_pair(b"ab", ranks) == (b"a", b"b")
    with pytest.raises(UserError, match="from two lower-ranked parts"):
        merge_pair(b"abc", {b"a": 0, b"b": 1, b"c": 2, b"abc": 3})


def test_the_hf_tokenizer_gives_our_ids_and_decodes_back(ours, corpus, tmp_path):
    to_hf(ours, max_length=128).save_pretrained(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    for text in [corpus, *HARD]:
        ids = hf(text)["input_ids"]
        assert ids == ours.encode(text)
        assert hf.decode(ids) == text
    assert hf.eos_token_id == hf.bos_token_id == ours.eot and hf.convert_ids_to_tokens(ours.eot) == EOT_TEXT
    assert hf.model_max_length == 128 and len(hf) == ours.vocab_size


def test_a_literal_end_of_text_is_special_in_hf_unless_split(ours):
    hf = to_hf(ours)
    text = f"a{EOT_TEXT}b"
    assert hf(text)["input_ids"] == [*ours.encode("a"), ours.eot, *ours.encode("b")]
    assert hf(text, split_special_tokens=True)["input_ids"] == ours.encode(text)
