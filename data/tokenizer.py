"""Tokenizers behind one small interface: encode, decode, the end-of-text id and the vocabulary size.

``byte`` needs nothing; ``gpt2`` uses tiktoken. Offline, tiktoken cannot download its ranks, so
``GPT2_BPE_FILE`` (or the ``bpe_file`` argument) may point at a local ranks file in tiktoken's format.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from configs import UserError


@dataclass
class Tokenizer:
    name: str
    vocab_size: int
    eot: int
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]


def byte_tokenizer() -> Tokenizer:
    """UTF-8 bytes 0..255 plus end-of-text 256."""
    return Tokenizer(
        name="byte",
        vocab_size=257,
        eot=256,
        encode=lambda s: list(s.encode("utf-8")),
        decode=lambda ids: bytes(i for i in ids if i < 256).decode("utf-8", errors="replace"),
    )


GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def gpt2_encoding(bpe_file: str | None = None):
    """tiktoken's GPT-2 encoding, from a local ranks file if one is named, else tiktoken's cache/download."""
    import tiktoken

    bpe_file = bpe_file or os.environ.get("GPT2_BPE_FILE")
    if bpe_file:
        if not Path(bpe_file).is_file():
            raise UserError(f"GPT-2 ranks file '{bpe_file}' not found; point GPT2_BPE_FILE at a gpt2.tiktoken file")
        from tiktoken.load import load_tiktoken_bpe

        ranks = load_tiktoken_bpe(str(bpe_file))
        return tiktoken.Encoding(
            name="gpt2",
            pat_str=GPT2_PATTERN,
            mergeable_ranks=ranks,
            special_tokens={"<|endoftext|>": 50256},
            explicit_n_vocab=50257,
        )
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # no network and nothing cached
        raise UserError(
            f"cannot load tiktoken's GPT-2 ranks ({type(e).__name__}); "
            "offline, set GPT2_BPE_FILE=/path/to/gpt2.tiktoken"
        ) from None


def gpt2_tokenizer(bpe_file: str | None = None) -> Tokenizer:
    enc = gpt2_encoding(bpe_file)
    return Tokenizer(
        name="gpt2",
        vocab_size=50257,
        eot=enc.eot_token,
        encode=enc.encode_ordinary,
        decode=lambda ids: enc.decode([i for i in ids if i < 50257]),
    )


def get_tokenizer(name: str, bpe_file: str | None = None) -> Tokenizer:
    if name == "byte":
        return byte_tokenizer()
    if name == "gpt2":
        return gpt2_tokenizer(bpe_file)
    raise UserError(f"unknown tokenizer '{name}'; use byte or gpt2")
