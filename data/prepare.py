"""Tokenize a corpus into train/val shards (llm.c layout) plus meta.json.

python -m data.prepare --source builtin --tokenizer byte --out data/prepared/builtin-byte
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from configs import UserError
from data.shards import write_shard
from data.tokenizer import Tokenizer, get_tokenizer

SHARD_TOKENS = 100_000_000
VAL_EVERY = 20  # every 20th document is held out for validation


def write_dataset(
    docs: Iterable[str],
    tok: Tokenizer,
    out: str | Path,
    prefix: str,
    source: str,
    val_every: int = VAL_EVERY,
    shard_tokens: int = SHARD_TOKENS,
) -> dict:
    """Tokenize ``docs`` (each preceded by end-of-text) into ``{prefix}_{split}_NNNNNN.bin`` shards."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bufs: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    filled = {"train": 0, "val": 0}
    counts = {"train": 0, "val": 0}
    shard_ids = {"train": 0, "val": 0}
    sha = hashlib.sha256()

    def flush(split: str) -> None:
        if filled[split]:
            name = out / f"{prefix}_{split}_{shard_ids[split]:06d}.bin"
            write_shard(name, np.concatenate(bufs[split]), tok.vocab_size)
            shard_ids[split] += 1
            bufs[split], filled[split] = [], 0

    for i, doc in enumerate(docs):
        sha.update(doc.encode("utf-8"))
        split = "val" if i % val_every == 0 else "train"
        ids = np.array([tok.eot] + tok.encode(doc), dtype=np.int64)
        bufs[split].append(ids)
        filled[split] += len(ids)
        counts[split] += len(ids)
        if filled[split] >= shard_tokens:
            flush(split)
    for split in bufs:
        flush(split)
    meta = {
        "tokenizer": tok.name,
        "vocab_size": tok.vocab_size,
        "eot": tok.eot,
        "source": source,
        "tokens": counts,
        "shards": dict(shard_ids),
        "val_every": val_every,
        "text_sha256": sha.hexdigest(),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def prepare_builtin(out: str | Path, tokenizer: str = "byte") -> dict:
    from data.builtin import documents

    return write_dataset(documents(), get_tokenizer(tokenizer), out, "builtin", "builtin")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="builtin")
    p.add_argument("--tokenizer", default="byte")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        if args.source != "builtin":
            raise UserError(f"unknown source '{args.source}'; use builtin")
        meta = prepare_builtin(args.out, args.tokenizer)
    except UserError as e:
        sys.exit(f"error: {e}")
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
