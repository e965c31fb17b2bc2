"""Token shards in the llm.c / modded-nanogpt layout.

A shard is a 256 x int32 header (magic, version, token count, the rest zero) followed by the tokens:
uint16 for version 1 (vocabularies up to 65,536) and uint32 for version 2 (larger vocabularies, this
project's extension). Documents are separated by the tokenizer's end-of-text token. Train and
validation shards live side by side and are told apart by name (``*_train_*.bin``, ``*_val_*.bin``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from configs import UserError

MAGIC = 20240520
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
DTYPES = {1: np.uint16, 2: np.uint32}


def dtype_for_vocab(vocab_size: int) -> tuple[int, type]:
    """(version, dtype) wide enough to hold token ids below ``vocab_size``."""
    return (1, np.uint16) if vocab_size <= 2**16 else (2, np.uint32)


def write_shard(path: str | Path, tokens: np.ndarray, vocab_size: int) -> None:
    """Write atomically (temporary file, then rename) so a crash never leaves a half shard."""
    version, dtype = dtype_for_vocab(vocab_size)
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:3] = (MAGIC, version, len(tokens))
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype=dtype).tobytes())
    os.replace(tmp, path)


def read_header(path: str | Path) -> tuple[int, int]:
    """(version, token count) after checking the magic number and the file size."""
    path = Path(path)
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise UserError(f"shard '{path}' is truncated ({size} bytes, less than its header); re-create it")
    header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
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


def open_shard(path: str | Path) -> np.memmap:
    """Memory-map a shard's tokens (validated header)."""
    version, count = read_header(path)
    return np.memmap(path, dtype=DTYPES[version], mode="r", offset=HEADER_BYTES, shape=(count,))


def check_vocab(path: str | Path, tokens: np.ndarray, vocab_size: int) -> None:
    top = int(tokens.max()) if len(tokens) else 0
    if top >= vocab_size:
        raise UserError(
            f"shard '{path}' holds token {top}, outside the vocabulary of {vocab_size}; "
            "the shard and the tokenizer (meta.json / model.vocab_size) do not match"
        )


def find_shards(folder: str | Path, split: str) -> list[Path]:
    """Shards of a split ('train' or 'val') in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"data folder '{folder}' not found; set --data.path to a folder of token shards")
    files = sorted(p for p in folder.glob("*.bin") if f"_{split}" in p.name or p.name.startswith(f"{split}_"))
    if not files:
        raise UserError(f"no {split} shards (*_{split}_*.bin) in '{folder}'; prepare data with python -m data.prepare")
    return files
