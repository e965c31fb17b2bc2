"""Tokenizers behind one small interface: encode, decode, the end-of-text id and the vocabulary size.

- ``byte``: UTF-8 bytes 0..255 plus end-of-text 256; needs nothing.
- ``gpt2``: tiktoken's GPT-2 encoding (50,257 tokens, end-of-text 50256). Offline, tiktoken cannot
  download its ranks, so ``--bpe_file`` / ``GPT2_BPE_FILE`` may point at a local ranks file in
  tiktoken's format (``gpt2.tiktoken``, the same ranks as tiktoken's ``r50k_base``).
- ``bpe``: a byte-level BPE trained with the ``tokenizers`` library on the corpus being prepared and
  saved beside its shards as ``tokenizer.json``. Its end-of-text id is one past the trained
  vocabulary, so no text can ever encode to it.

Every tokenizer encodes ordinary text only: a literal ``<|endoftext|>`` in a document is text, not
the separator, so documents can never merge or split by accident.
"""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from configs import TOKENIZERS, UserError
from progress import is_terminal

BPE_FILE_NAME = "tokenizer.json"  # a trained BPE, saved beside the shards
GPT2_VOCAB = 50257
GPT2_MERGES = 50256  # ranks in a GPT-2 ranks file (every token but end-of-text)
MIN_BPE_VOCAB = 258  # a byte-level BPE: the 256 bytes, end-of-text, and at least one merge
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_HOW_TO = (
    "set GPT2_BPE_FILE=PATH (python -m data.prepare also takes --bpe_file PATH) to a GPT-2 ranks file in "
    "tiktoken's format: gpt2.tiktoken, the same ranks as tiktoken's r50k_base; one ships in the "
    "openai-whisper package as whisper/assets/gpt2.tiktoken"
)


@dataclass
class Tokenizer:
    name: str
    vocab_size: int
    eot: int
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    encode_array: Callable[[str], np.ndarray]  # the same ids as ``encode``, without a Python list
    backend: Any = None  # gpt2: the tiktoken Encoding; bpe: the tokenizers.Tokenizer (for Hugging Face export)


def fixed_vocabulary(name: str) -> tuple[int, int]:
    """(vocabulary size, end-of-text id) of a tokenizer whose vocabulary is fixed, without loading it."""
    sizes = {"byte": (257, 256), "gpt2": (GPT2_VOCAB, GPT2_VOCAB - 1)}
    if name not in sizes:
        raise UserError(f"tokenizer '{name}' has no fixed vocabulary; use one of: {', '.join(sizes)}")
    return sizes[name]


def byte_tokenizer() -> Tokenizer:
    """UTF-8 bytes 0..255 plus end-of-text 256."""
    return Tokenizer(
        name="byte",
        vocab_size=257,
        eot=256,
        encode=lambda s: list(s.encode("utf-8")),
        decode=lambda ids: bytes(i for i in ids if i < 256).decode("utf-8", errors="replace"),
        encode_array=lambda s: np.frombuffer(s.encode("utf-8"), dtype=np.uint8),
    )


def gpt2_encoding(bpe_file: str | Path | None = None):
    """tiktoken's GPT-2 encoding: from ``bpe_file``, else ``GPT2_BPE_FILE``, else tiktoken's cache/download."""
    import tiktoken

    bpe_file = bpe_file or os.environ.get("GPT2_BPE_FILE")
    if bpe_file:
        return _gpt2_from_file(Path(bpe_file))
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # no network and nothing cached
        raise UserError(f"cannot load tiktoken's GPT-2 ranks ({type(e).__name__}); {GPT2_HOW_TO}") from None


def _gpt2_from_file(path: Path):
    import tiktoken

    if not path.is_file():
        raise UserError(f"GPT-2 ranks file '{path}' not found; {GPT2_HOW_TO}")
    try:  # tiktoken's format: one "base64(token) rank" per line
        lines = [line.split() for line in path.read_bytes().splitlines() if line.strip()]
        ranks = {base64.b64decode(token, validate=True): int(rank) for token, rank in lines}
    except ValueError:
        ranks = {}
    if len(ranks) != GPT2_MERGES:
        raise UserError(f"'{path}' is not a GPT-2 ranks file (expected {GPT2_MERGES} ranks); {GPT2_HOW_TO}")
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": GPT2_VOCAB - 1},
        explicit_n_vocab=GPT2_VOCAB,
    )


def gpt2_tokenizer(bpe_file: str | Path | None = None) -> Tokenizer:
    enc = gpt2_encoding(bpe_file)
    return Tokenizer(
        name="gpt2",
        vocab_size=GPT2_VOCAB,
        eot=enc.eot_token,
        encode=enc.encode_ordinary,
        decode=lambda ids: enc.decode([i for i in ids if i < enc.eot_token]),
        # No special token is allowed, so this is encode_ordinary without building a list of ints.
        encode_array=lambda s: enc.encode_to_numpy(s, allowed_special=set(), disallowed_special=()),
        backend=enc,
    )


def bpe_tokenizer(path: str | Path) -> Tokenizer:
    """A BPE saved by ``train_bpe``; its end-of-text id is the first id past its vocabulary."""
    from tokenizers import Tokenizer as HFTokenizer

    path = Path(path)
    if not path.is_file():
        raise UserError(f"BPE tokenizer file '{path}' not found; re-create the dataset with python -m data.prepare")
    try:
        tok = HFTokenizer.from_file(str(path))
    except Exception as e:
        raise UserError(f"'{path}' is not a tokenizers BPE file ({e}); re-create the dataset") from None
    eot = tok.get_vocab_size()
    return Tokenizer(
        name="bpe",
        vocab_size=eot + 1,
        eot=eot,
        encode=lambda s: tok.encode(s, add_special_tokens=False).ids,
        decode=lambda ids: tok.decode([i for i in ids if i < eot]),
        encode_array=lambda s: np.array(tok.encode(s, add_special_tokens=False).ids, dtype=np.uint32),
        backend=tok,
    )


def train_bpe(texts: Iterable[str], vocab_size: int, path: str | Path) -> Tokenizer:
    """Train a byte-level BPE of ``vocab_size`` tokens (end-of-text included) and save it to ``path``."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < MIN_BPE_VOCAB:
        raise UserError(f"--vocab_size {vocab_size} is too small for a byte-level BPE; use at least {MIN_BPE_VOCAB}")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,  # end-of-text takes the last id
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=is_terminal(sys.stderr),  # its bars leave blank lines in a log file
    )
    tok.train_from_iterator(texts, trainer)
    tok.save(str(path))
    return bpe_tokenizer(path)


def get_tokenizer(name: str, bpe_file: str | Path | None = None, tokenizer_file: str | Path | None = None) -> Tokenizer:
    """``bpe_file``: GPT-2 ranks for ``gpt2``; ``tokenizer_file``: the saved model for ``bpe``."""
    if name == "byte":
        return byte_tokenizer()
    if name == "gpt2":
        return gpt2_tokenizer(bpe_file)
    if name == "bpe":
        if not tokenizer_file:
            raise UserError("the bpe tokenizer needs its saved tokenizer.json; prepare a dataset with --tokenizer bpe")
        return bpe_tokenizer(tokenizer_file)
    raise UserError(f"unknown tokenizer '{name}'; use one of: {', '.join(TOKENIZERS)}")
