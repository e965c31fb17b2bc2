"""Our tokenizers as Hugging Face fast tokenizers, so an exported model carries the one it was trained with.

All three are byte-level BPEs in ``tokenizers``' terms: the byte-to-character map of GPT-2 turns every
byte into a printable character, and the vocabulary is written in those characters.

- ``byte``: the 256 byte characters with ids 0..255 and no merges;
- ``gpt2``: tiktoken's ranks; a token's rank is its id, and the merge that made a token is found by
  running BPE on its bytes with the merges of lower rank only (the two parts left are the pair);
- ``bpe``: the trained ``tokenizers`` model as it is.

End-of-text is the special token ``<|endoftext|>`` at our id. One difference remains, as in the stock
GPT-2 tokenizer: Hugging Face reads a literal ``<|endoftext|>`` in a text as the special token, where
our encoders keep it as text (pass ``split_special_tokens=True`` to get ours).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

from configs import UserError
from data.tokenizer import Tokenizer

EOT_TEXT = "<|endoftext|>"


def byte_characters() -> list[str]:
    """GPT-2's reversible byte -> printable character map: printable Latin-1 bytes stand for
    themselves, the others take the characters from U+0100 on, in byte order."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), ord("ÿ") + 1))
    out, shifted = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + shifted))
            shifted += 1
    return out


def merge_pair(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two parts BPE joins last to make ``token``, using only the ranks below the token's own."""
    limit = ranks[token]
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best, at = limit, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1], limit)
            if r < best:
                best, at = r, i
        if at < 0:
            break
        parts[at : at + 2] = [parts[at] + parts[at + 1]]
    if len(parts) != 2:
        raise UserError(f"the GPT-2 ranks do not build {token!r} from two lower-ranked parts; check the ranks file")
    return parts[0], parts[1]


def _byte_level(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Any:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    # GPT-2's pre-tokenizing regex (the ByteLevel default) for every kind: a no-merge byte vocabulary
    # gives the same bytes whatever the split.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def _gpt2(enc: Any) -> Any:
    chars = byte_characters()

    def text(b: bytes) -> str:
        return "".join(chars[x] for x in b)

    ranks = {b: enc.encode_single_token(b) for b in enc.token_byte_values()}
    ordered = sorted(ranks, key=ranks.__getitem__)
    merges = [tuple(text(p) for p in merge_pair(b, ranks)) for b in ordered if len(b) > 1]
    return _byte_level({text(b): ranks[b] for b in ordered}, merges)


def to_hf(tok: Tokenizer, max_length: int | None = None) -> Any:
    """A ``transformers.PreTrainedTokenizerFast`` that encodes text to the same ids as ``tok``."""
    from transformers import PreTrainedTokenizerFast  # an optional dependency: the [hf] extra

    if tok.name == "byte":
        backend = _byte_level({c: i for i, c in enumerate(byte_characters())}, [])
    elif tok.name == "gpt2":
        backend = _gpt2(tok.backend)
    elif tok.name == "bpe":
        backend = HFTokenizer.from_str(tok.backend.to_str())  # a copy: the special token is added below
    else:
        raise UserError(f"no Hugging Face form for tokenizer '{tok.name}'")
    backend.add_special_tokens([EOT_TEXT])
    if backend.token_to_id(EOT_TEXT) != tok.eot:
        raise UserError(
            f"the {tok.name} vocabulary already holds '{EOT_TEXT}' as text, so it cannot be the end-of-text token"
        )
    hf = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=EOT_TEXT, eos_token=EOT_TEXT, unk_token=EOT_TEXT)
    if max_length:
        hf.model_max_length = max_length
    return hf


def save_hf(tok: Tokenizer, out_dir: str | Path, max_length: int | None = None) -> None:
    """``to_hf(tok)`` saved into ``out_dir``, loadable by transformers 4.x and 5.x alike.

    transformers 5 records its fast tokenizer as class ``TokenizersBackend``, which 4.x does not know;
    ``PreTrainedTokenizerFast`` is the same class under the name both versions read.
    """
    to_hf(tok, max_length).save_pretrained(out_dir)
    path = Path(out_dir) / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2) + "\n")
