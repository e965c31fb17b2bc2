"""Tokenize a corpus into train/val token shards (llm.c layout) plus meta.json.

    python -m data.prepare --source openwebtext --tokenizer gpt2
    python -m data.prepare --source fineweb-edu --tokenizer gpt2 --max_tokens 5e8
    python -m data.prepare --source files:corpus/ --tokenizer bpe --vocab_size 16384
    python -m data.prepare --source builtin --tokenizer byte --out data/prepared/builtin-byte

Sources: builtin, openwebtext, fineweb-edu (sample-10BT), hf:NAME or any Hugging Face dataset name,
files:PATH (a .txt/.jsonl/.parquet file, a folder or a glob; a bare existing path works too).
Tokenizers: gpt2 (tiktoken; offline: --bpe_file or GPT2_BPE_FILE), byte, bpe (trained here).

The corpus streams through: the main process reads documents and writes shards, worker processes
tokenize chunks of about a megabyte of text, and only a few chunks are in flight, so memory stays
bounded whatever the corpus size. Document i is held out for validation when i % --val_every == 0,
until the validation split holds --val_tokens tokens. The output does not depend on --workers.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from configs import TOKENIZERS, ArgumentParser, UserError, command
from data.outdir import finish_output, owned, start_output, write_failure, writing
from data.shards import dtype_for_vocab, write_shard
from data.sources import Piece, Source, resolve_source
from data.tokenizer import BPE_FILE_NAME, Tokenizer, get_tokenizer, train_bpe
from progress import progress_bar

SHARD_TOKENS = 100_000_000  # llm.c's shard size: 200 MB of uint16
CHUNK_CHARS = 1 << 20  # text per worker task: amortizes the hand-off, keeps memory small
IN_FLIGHT_PER_WORKER = 4  # chunks queued per worker: enough to keep workers busy, bounded memory
VAL_EVERY = 100
VAL_TOKENS = 20_000_000  # the 124M configs validate on 10.5M tokens
BPE_VOCAB = 8192
BPE_SAMPLE_CHARS = 100_000_000
DEFAULT_ROOT = Path("data/prepared")
START_METHOD = "fork" if sys.platform == "linux" else "spawn"  # fork is unsafe on macOS, absent on Windows


# --- tokenizing (in worker processes, or inline for one worker) --------------------------------


def encode_chunk(tok: Tokenizer, pieces: list[Piece]) -> tuple[np.ndarray, np.ndarray]:
    """Tokens of ``pieces`` (each starting document preceded by end-of-text) and each piece's length."""
    dtype = dtype_for_vocab(tok.vocab_size)[1]
    eot = np.array([tok.eot], dtype=dtype)
    parts, sizes = [], []
    for text, starts in pieces:
        ids = tok.encode_array(text)
        if starts:
            parts.append(eot)
        parts.append(ids)
        sizes.append(len(ids) + starts)
    return np.concatenate(parts).astype(dtype, copy=False), np.array(sizes, dtype=np.int64)


_worker_tok: Tokenizer | None = None


def _init_worker(name: str, bpe_file: str | None, tokenizer_file: str | None) -> None:
    global _worker_tok
    _worker_tok = get_tokenizer(name, bpe_file, tokenizer_file)


def _encode_in_worker(pieces: list[Piece]) -> tuple[np.ndarray, np.ndarray]:
    return encode_chunk(_worker_tok, pieces)


def chunked(pieces: Iterable[Piece]) -> Iterator[list[Piece]]:
    """Worker tasks of about CHUNK_CHARS characters; the cut depends on the text only, not on timing."""
    chunk, size = [], 0
    for piece in pieces:
        chunk.append(piece)
        size += len(piece[0])
        if size >= CHUNK_CHARS:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


@contextlib.contextmanager
def worker_pool(workers: int, tok: Tokenizer, tokenizer_args: tuple) -> Iterator[Any]:
    """A pool of tokenizing processes, or None for ``workers`` <= 1 (tokenize inline)."""
    global _worker_tok
    if workers <= 1:
        yield None
        return
    if START_METHOD == "fork":
        # Workers inherit the tokenizer and start in milliseconds. Safe here: the pool starts before
        # the source is read, and the tokenizers library's own threads are switched off in them.
        _worker_tok = tok
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        context, initializer, initargs = multiprocessing.get_context("fork"), None, ()
    else:  # each worker builds its own tokenizer
        context, initializer, initargs = multiprocessing.get_context("spawn"), _init_worker, tokenizer_args
    with context.Pool(workers, initializer=initializer, initargs=initargs) as pool:
        yield pool


def encoded(
    chunks: Iterable[list[Piece]], tok: Tokenizer, pool: Any, workers: int
) -> Iterator[tuple[list[Piece], np.ndarray, np.ndarray]]:
    """(chunk, tokens, piece lengths) in input order; with a pool, ``workers`` processes tokenize ahead."""
    if pool is None:
        for chunk in chunks:
            yield chunk, *encode_chunk(tok, chunk)
        return
    pending: deque = deque()
    for chunk in chunks:
        pending.append((chunk, pool.apply_async(_encode_in_worker, (chunk,))))
        if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
            chunk, result = pending.popleft()
            yield chunk, *result.get()
    while pending:
        chunk, result = pending.popleft()
        yield chunk, *result.get()


# --- writing shards -----------------------------------------------------------------------------


class SplitWriter:
    """Fills shards of ``shard_tokens`` tokens for one split, writing each as soon as it is full."""

    def __init__(self, out: Path, prefix: str, split: str, vocab_size: int, shard_tokens: int):
        self.out, self.prefix, self.split = out, prefix, split
        self.vocab_size, self.shard_tokens = vocab_size, shard_tokens
        self.dtype = dtype_for_vocab(vocab_size)[1]
        self.buf: np.ndarray | None = None
        self.filled = self.shards = self.tokens = self.documents = 0

    def add(self, tokens: np.ndarray) -> None:
        self.tokens += len(tokens)
        while len(tokens):
            if self.buf is None:
                self.buf = np.empty(self.shard_tokens, dtype=self.dtype)
            n = min(len(tokens), self.shard_tokens - self.filled)
            self.buf[self.filled : self.filled + n] = tokens[:n]
            self.filled += n
            tokens = tokens[n:]
            if self.filled == self.shard_tokens:
                self.flush()

    def flush(self) -> None:
        if self.filled:
            name = self.out / f"{self.prefix}_{self.split}_{self.shards:06d}.bin"
            with writing(name):
                write_shard(name, self.buf[: self.filled], self.vocab_size)
            self.shards += 1
            self.filled = 0


class Splitter:
    """Routes documents to the train or val writer in input order, so the result is deterministic."""

    def __init__(self, writers: dict[str, SplitWriter], val_every: int, val_tokens: int, max_tokens: int):
        self.writers, self.val_every, self.val_tokens, self.max_tokens = writers, val_every, val_tokens, max_tokens
        self.doc_index = -1
        self.split = "train"
        self.sha = hashlib.sha256()

    def add(self, pieces: list[Piece], tokens: np.ndarray, sizes: np.ndarray) -> bool:
        """Write a chunk's tokens; True once the train split holds ``max_tokens``."""
        val = self.writers["val"]
        start = offset = 0
        split = self.split
        for (text, starts), n in zip(pieces, sizes.tolist()):
            self.sha.update(text.encode("utf-8"))
            if starts:
                self.doc_index += 1
                held_out = self.doc_index % self.val_every == 0
                new = "val" if held_out and (not self.val_tokens or val.tokens < self.val_tokens) else "train"
                if new != split:
                    if self._write(split, tokens[start:offset]):
                        return True
                    split, start = new, offset
                self.writers[split].documents += 1
            offset += n
        self.split = split
        return self._write(split, tokens[start:offset])

    def _write(self, split: str, tokens: np.ndarray) -> bool:
        writer = self.writers[split]
        if split == "train" and self.max_tokens:
            tokens = tokens[: self.max_tokens - writer.tokens]
            writer.add(tokens)
            return writer.tokens >= self.max_tokens
        writer.add(tokens)
        return False


# --- the whole preparation ----------------------------------------------------------------------


def bpe_sample(source: Source, chars: int, val_every: int) -> Iterator[str]:
    """The first ``chars`` characters of training documents: validation text never shapes the tokenizer."""
    seen, doc = 0, -1
    for text, starts in source.pieces():
        doc += starts
        if doc % val_every == 0:
            continue
        yield text
        seen += len(text)
        if seen >= chars:
            return


def prepare(
    source: Source,
    tokenizer: str,
    out: str | Path,
    *,
    bpe_file: str | None = None,
    vocab_size: int = BPE_VOCAB,
    bpe_sample_chars: int = BPE_SAMPLE_CHARS,
    workers: int = 1,
    val_every: int = VAL_EVERY,
    val_tokens: int = VAL_TOKENS,
    max_tokens: int = 0,
    shard_tokens: int = SHARD_TOKENS,
    overwrite: bool = False,
    progress: bool = True,
    reuse: bool = False,
) -> dict[str, Any]:
    """Tokenize ``source`` into ``out``; returns (and writes) meta.json's contents.

    One preparation of ``out`` runs at a time (see data/outdir.py). Another one running makes this one
    stop with a UserError, or with ``reuse`` wait for it and return the dataset it made.
    """
    if val_every < 2:
        raise UserError(f"--val_every {val_every} leaves no training data; use 2 or more")
    if shard_tokens < 1 or workers < 1 or max_tokens < 0 or val_tokens < 0:
        raise UserError("--shard_tokens and --workers must be positive, --max_tokens and --val_tokens not negative")
    out = Path(out)
    target = out.resolve()  # a symlink's target is the folder replaced; the link itself stays as it is
    with owned(target, out, wait=reuse):
        if reuse and (target / "meta.json").is_file():
            return json.loads((target / "meta.json").read_text())  # made by the process this one waited for
        existed = target.exists()
        tmp = start_output(target, out, overwrite)
        try:
            meta = write_dataset(
                source, tokenizer, tmp, bpe_file=bpe_file or os.environ.get("GPT2_BPE_FILE"), vocab_size=vocab_size,
                bpe_sample_chars=bpe_sample_chars, workers=workers, val_every=val_every, val_tokens=val_tokens,
                max_tokens=max_tokens, shard_tokens=shard_tokens, progress=progress,
            )
            finish_output(tmp, target)
        except OSError as e:
            raise UserError(write_failure(e, tmp, out, existed)) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # whatever stopped it (an error, Ctrl-C): no partial folder stays
    return meta


def write_dataset(
    source: Source,
    tokenizer: str,
    tmp: Path,
    *,
    bpe_file: str | None,
    vocab_size: int,
    bpe_sample_chars: int,
    workers: int,
    val_every: int,
    val_tokens: int,
    max_tokens: int,
    shard_tokens: int,
    progress: bool,
) -> dict[str, Any]:
    """The dataset, written into the empty folder ``tmp``; meta.json last."""
    tokenizer_file = None
    if tokenizer == "bpe":
        tokenizer_file = str(tmp / BPE_FILE_NAME)
        print(f"training a {vocab_size}-token BPE on up to {bpe_sample_chars:,} characters", file=sys.stderr)
        tok = train_bpe(bpe_sample(source, bpe_sample_chars, val_every), vocab_size, tokenizer_file)
    else:
        tok = get_tokenizer(tokenizer, bpe_file)
    writers = {s: SplitWriter(tmp, source.prefix, s, tok.vocab_size, shard_tokens) for s in ("train", "val")}
    splitter = Splitter(writers, val_every, val_tokens, max_tokens)
    t0 = time.time()
    with worker_pool(workers, tok, (tok.name, bpe_file, tokenizer_file)) as pool:
        bar = progress_bar(
            total=max_tokens or None,
            unit="tok",
            unit_scale=True,
            desc=f"{source.name} -> {tok.name}",
            disable=not progress,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        with bar:
            for pieces, tokens, sizes in encoded(chunked(source.pieces()), tok, pool, workers):
                before = writers["train"].tokens
                done = splitter.add(pieces, tokens, sizes)
                bar.update(writers["train"].tokens - before if max_tokens else len(tokens))
                if done:
                    break  # leaving the pool's block stops the workers: nothing further is read
    for w in writers.values():
        w.flush()
    if not writers["train"].tokens or not writers["val"].tokens:
        docs = splitter.doc_index + 1
        raise UserError(
            f"source '{source.name}' gave {docs} document(s), too few for a train and a val split (document i is "
            "held out when i % --val_every == 0); add documents, or cut .txt files into documents with "
            "--doc_separator (e.g. '\\n\\n' or '<|endoftext|>')"
        )
    meta = {
        "tokenizer": tok.name,
        "vocab_size": tok.vocab_size,
        "eot": tok.eot,
        **({"tokenizer_file": BPE_FILE_NAME} if tokenizer_file else {}),
        "dtype": np.dtype(writers["train"].dtype).name,
        "source": source.name,
        "source_detail": source.detail,
        "tokens": {s: w.tokens for s, w in writers.items()},
        "documents": {s: w.documents for s, w in writers.items()},
        "shards": {s: w.shards for s, w in writers.items()},
        "val_every": val_every,
        "val_tokens": val_tokens,
        "max_tokens": max_tokens,
        "shard_tokens": shard_tokens,
        "text_sha256": splitter.sha.hexdigest(),
        "seconds": round(time.time() - t0, 3),
    }
    with writing(tmp / "meta.json"):
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")  # written last: marks a complete dataset
    return meta


def prepare_builtin(out: str | Path, tokenizer: str = "byte", vocab_size: int = BPE_VOCAB) -> dict[str, Any]:
    """The built-in corpus, every 20th document held out (the quickstart's dataset; ``vocab_size`` for a
    bpe tokenizer). Runs started together may all ask for it: one prepares it, the others wait and use it."""
    builtin = resolve_source("builtin")
    # A BPE reads the corpus twice (to train, then to tokenize): its 2 MB are kept from the first pass, which
    # spares parsing the standard library again (a quarter of the preparation)
    first_pass = functools.cache(lambda: list(builtin.pieces()))
    source = dataclasses.replace(builtin, pieces=lambda: iter(first_pass()))
    return prepare(
        source, tokenizer, out, vocab_size=vocab_size, val_every=20, val_tokens=0, overwrite=True, progress=False,
        reuse=True,
    )


# --- command line -------------------------------------------------------------------------------


def count(text: str) -> int:
    """A token or character count: 1000000, 1e6, 1_000_000, 500M, 10B."""
    scale = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}.get(text[-1:].lower(), 1)
    digits = text[:-1] if scale != 1 else text
    try:
        return int(float(digits.replace("_", "")) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a count (examples: 1000000, 1e6, 500M, 10B)") from None


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, help="builtin | openwebtext | fineweb-edu | hf:NAME | files:PATH")
    p.add_argument("--tokenizer", default="gpt2", choices=TOKENIZERS)
    p.add_argument("--out", help=f"output folder (default: {DEFAULT_ROOT}/<source>-<tokenizer>)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    p.add_argument("--workers", type=int, default=default_workers(), help="tokenizing processes (default: all cores)")
    p.add_argument("--max_tokens", type=count, default=0, help="stop once the train split holds this many (0: all)")
    p.add_argument("--val_every", type=int, default=VAL_EVERY, help="hold out every N-th document")
    p.add_argument("--val_tokens", type=count, default=VAL_TOKENS, help="cap on the val split (0: no cap)")
    p.add_argument("--shard_tokens", type=count, default=SHARD_TOKENS, help="tokens per shard")
    p.add_argument("--bpe_file", help="gpt2: a local GPT-2 ranks file (gpt2.tiktoken); default $GPT2_BPE_FILE")
    p.add_argument("--vocab_size", type=int, default=BPE_VOCAB, help="bpe: vocabulary size, end-of-text included")
    p.add_argument("--bpe_sample", type=count, default=BPE_SAMPLE_CHARS, help="bpe: characters to train it on")
    p.add_argument("--text_field", default="text", help="the text field (jsonl) or column (parquet, datasets)")
    p.add_argument(
        "--doc_separator",
        default="",
        help=r"txt: the string between documents, e.g. '\n\n' or '<|endoftext|>' (default: one document per file)",
    )
    p.add_argument("--hf_config", help="datasets: configuration / subset name")
    p.add_argument("--hf_split", default="train", help="datasets: split to read")
    p.add_argument("--data_files", nargs="+", help="datasets: data_files for a builder such as json or parquet")
    p.add_argument(
        "--streaming", action=argparse.BooleanOptionalAction, default=True, help="datasets: stream instead of caching"
    )
    return p


@command
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        separator = args.doc_separator.replace("\\n", "\n").replace("\\t", "\t")  # as typed in a shell
        source = resolve_source(
            args.source, args.text_field, args.hf_config, args.hf_split, args.streaming, args.data_files, separator
        )
        out = Path(args.out) if args.out else DEFAULT_ROOT / f"{source.prefix}-{args.tokenizer}"
        meta = prepare(
            source,
            args.tokenizer,
            out,
            bpe_file=args.bpe_file,
            vocab_size=args.vocab_size,
            bpe_sample_chars=args.bpe_sample,
            workers=args.workers,
            val_every=args.val_every,
            val_tokens=args.val_tokens,
            max_tokens=args.max_tokens,
            shard_tokens=args.shard_tokens,
            overwrite=args.overwrite,
        )
    except KeyboardInterrupt:
        print("interrupted: nothing was written to the output folder; run the command again", file=sys.stderr)
        return 130
    tokens, shards = meta["tokens"], meta["shards"]
    seconds = meta["seconds"]
    rate = f", {(tokens['train'] + tokens['val']) / seconds / 1e6:.2f}M tokens/s" if seconds >= 0.05 else ""
    print(
        f"wrote {out}: train {tokens['train']:,} tokens in {shards['train']} shard(s), "
        f"val {tokens['val']:,} tokens in {shards['val']} shard(s), {meta['tokenizer']} vocabulary "
        f"{meta['vocab_size']:,}, {seconds:.1f}s{rate}"
    )
    print(f"train on it: python train.py --data.path={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
