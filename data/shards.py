"""Token shards in the llm.c / modded-nanogpt layout.

A shard is a 256 x int32 header (magic 20240520, version, token count, the rest zero) followed by the
tokens: uint16 for version 1 (vocabularies up to 65,536, the llm.c format) and uint32 for version 2
(larger vocabularies, this project's extension). Documents are separated by the tokenizer's
end-of-text token, which also starts each document. Train and validation shards live side by side
and are told apart by name as llm.c names them: ``fineweb_train_000001.bin``, ``fineweb_val_000000.bin``,
``tiny_shakespeare_val.bin``.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from configs import UserError

MAGIC = 20240520
LLAMA3_MAGIC = 20240801  # llm.c's LLaMA-3 layout (version 7, uint32): recognized only to say so
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
DTYPES = {1: np.uint16, 2: np.uint32}
MAX_CHUNK = 1 << 24  # tokens per step of the vocabulary scan: bounded memory on 100M-token shards


def dtype_for_vocab(vocab_size: int) -> tuple[int, type]:
    """(version, dtype) wide enough to hold token ids below ``vocab_size``."""
    return (1, np.uint16) if vocab_size <= 2**16 else (2, np.uint32)


def shard_header(version: int, count: int) -> bytes:
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:3] = (MAGIC, version, count)
    return header.tobytes()


def write_shard(path: str | Path, tokens: np.ndarray, vocab_size: int) -> None:
    """Write atomically (temporary file, then rename) so a crash never leaves a half shard."""
    version, dtype = dtype_for_vocab(vocab_size)
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(shard_header(version, len(tokens)))
        f.write(np.asarray(tokens, dtype=dtype).tobytes())
    os.replace(tmp, path)


def read_header(path: str | Path) -> tuple[int, int]:
    """(version, token count) after checking the magic number and the file size."""
    path = Path(path)
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise UserError(f"shard '{path}' is truncated ({size} bytes, less than its header); re-create it")
    header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
    if header[0] == LLAMA3_MAGIC:
        raise UserError(
            f"shard '{path}' is an llm.c LLaMA-3 shard (magic {LLAMA3_MAGIC}), whose tokenizer this project "
            "lacks; prepare the corpus with python -m data.prepare"
        )
    if header[0] != MAGIC:
        raise UserError(f"shard '{path}' has magic number {header[0]}, not {MAGIC}; it is not an llm.c token shard")
    version, count = int(header[1]), int(header[2])
    if version not in DTYPES:
        raise UserError(f"shard '{path}' has unsupported version {version}; expected 1 (uint16) or 2 (uint32)")
    expected = HEADER_BYTES + count * np.dtype(DTYPES[version]).itemsize
    if size != expected:
        raise UserError(
            f"shard '{path}' holds {size} bytes but its header promises {expected} ({count} tokens); "
            "the file is truncated or corrupt, re-create it"
        )
    return version, count


def open_shard(path: str | Path) -> np.memmap | np.ndarray:
    """Memory-map a shard's tokens (validated header)."""
    version, count = read_header(path)
    if count == 0:  # numpy cannot map zero bytes
        return np.zeros(0, dtype=DTYPES[version])
    return np.memmap(path, dtype=DTYPES[version], mode="r", offset=HEADER_BYTES, shape=(count,))


def max_token(tokens: np.ndarray) -> int:
    """The largest id, scanned in chunks so that a 100M-token memory map is never copied whole."""
    top = 0
    for start in range(0, len(tokens), MAX_CHUNK):
        top = max(top, int(tokens[start : start + MAX_CHUNK].max()))
    return top


def check_vocab(path: str | Path, tokens: np.ndarray, vocab_size: int) -> None:
    top = max_token(tokens)
    if top >= vocab_size:
        raise UserError(
            f"shard '{path}' holds token {top}, outside the vocabulary of {vocab_size}; "
            "the shard and the tokenizer (meta.json / model.vocab_size) do not match"
        )


def check_vocab_all(files: list[Path], shards: list[np.ndarray], vocab_size: int) -> None:
    """``check_vocab`` on every shard; threads overlap the reads (numpy's max releases the GIL)."""
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(files)))) as pool:
        tops = list(pool.map(max_token, shards))
    for path, top in zip(files, tops):
        if top >= vocab_size:
            check_vocab(path, np.array([top]), vocab_size)


def shard_name_pattern(split: str) -> re.Pattern:
    """``*_{split}_NNNNNN.bin``, ``*_{split}.bin`` or ``{split}_NNNNNN.bin``: llm.c's names."""
    return re.compile(rf"(?:^|[_-]){re.escape(split)}(?:[_-]\d+)?\.bin$")


def find_shards(folder: str | Path, split: str) -> list[Path]:
    """Shards of a split ('train' or 'val') in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"data folder '{folder}' not found; set --data.path to a folder of token shards")
    pattern = shard_name_pattern(split)
    files = sorted(p for p in folder.glob("*.bin") if pattern.search(p.name))
    if not files:
        raise UserError(
            f"no {split} shards (*_{split}_NNNNNN.bin) in '{folder}'; prepare data with python -m data.prepare"
        )
    return files
