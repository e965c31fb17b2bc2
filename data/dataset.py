"""Resolve ``data.*`` settings to a folder of shards, its tokenizer and token streams."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configs import DataConfig, UserError
from data.loader import TokenStream
from data.prepare import BPE_VOCAB, prepare_builtin
from data.shards import find_shards
from data.tokenizer import GPT2_VOCAB, MIN_BPE_VOCAB, Tokenizer, get_tokenizer

TOKENIZER_DIR = "tokenizer"  # a run dir's copy of its dataset's meta.json and tokenizer file
DATA_RECORD = "data.json"  # a run dir's record of the dataset it trained on: its folder and fingerprint
# The built-in corpus under its own tokenizer, made on demand: builtin-byte, builtin-gpt2, builtin-bpe,
# builtin-bpe4096 (a BPE of that many tokens, end-of-text included).
BUILTIN_NAME = re.compile(r"builtin-(?:(?P<tokenizer>byte|gpt2)|bpe(?P<vocab>[1-9][0-9]*)?)")


@dataclass
class Dataset:
    folder: Path
    meta: dict[str, Any]
    tokenizer: Tokenizer

    def stream(self, split: str, batch_size: int, block_size: int, seed: int, shuffle: bool = True) -> TokenStream:
        files = find_shards(self.folder, split)
        try:
            return TokenStream(files, batch_size, block_size, seed, shuffle, vocab_size=self.meta["vocab_size"])
        except ValueError as e:
            raise UserError(f"{split} split of '{self.folder}': {e}") from None

    def fingerprint(self) -> str:
        """What the data is, not where: sha256 over meta.json, every shard's name and size, and the
        validation shards' bytes (what evaluation reads; the training shards are too big to hash)."""
        h = hashlib.sha256(json.dumps(self.meta, sort_keys=True).encode())
        for split in ("train", "val"):
            for f in find_shards(self.folder, split):
                h.update(f"{f.name}:{f.stat().st_size}\n".encode())
                if split == "val":
                    with open(f, "rb") as fh:
                        for chunk in iter(lambda: fh.read(1 << 22), b""):
                            h.update(chunk)
        return h.hexdigest()

    def record(self) -> dict[str, str]:
        """The run dir's record of this dataset (``data.json``)."""
        return {"folder": str(self.folder.resolve()), "fingerprint": self.fingerprint()}

    def save_tokenizer(self, dest: Path) -> None:
        """Copy what ``load_tokenizer`` needs (meta.json and a trained tokenizer's file) into ``dest``."""
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "meta.json").write_text(json.dumps(self.meta, indent=2) + "\n")
        file = self.meta.get("tokenizer_file")
        if file:
            shutil.copyfile(self.folder / file, dest / file)


def load_meta(folder: Path, tokenizer: str = "") -> dict[str, Any]:
    """meta.json; a folder without one (shards made elsewhere, e.g. llm.c's GPT-2 fineweb shards) only
    when ``tokenizer`` names what its tokens are, since nothing else can tell."""
    path = folder / "meta.json"
    if not path.exists():
        if not list(folder.glob("*.bin")):
            raise UserError(f"'{folder}' holds no token shards (*.bin); prepare a dataset with python -m data.prepare")
        if tokenizer == "gpt2":
            return {"tokenizer": "gpt2", "vocab_size": GPT2_VOCAB, "source": "external"}
        if tokenizer:
            raise UserError(
                f"'{folder}' has no meta.json, which a {tokenizer} tokenizer needs; "
                "re-create the dataset with python -m data.prepare"
            )
        raise UserError(
            f"'{folder}' has no meta.json: an interrupted python -m data.prepare (run it again with --overwrite), or "
            "shards made elsewhere: name their tokenizer, e.g. --data.tokenizer=gpt2 for llm.c's GPT-2 shards"
        )
    try:
        meta = json.loads(path.read_text())
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or not {"tokenizer", "vocab_size"} <= set(meta):
        raise UserError(f"'{path}' is not a dataset description; re-create the dataset with python -m data.prepare")
    return meta


def load_tokenizer(folder: Path, meta: dict[str, Any]) -> Tokenizer:
    """The tokenizer meta.json names; a trained BPE is loaded from its file beside the shards."""
    file = meta.get("tokenizer_file")
    tok = get_tokenizer(meta["tokenizer"], tokenizer_file=folder / file if file else None)
    if tok.vocab_size != meta["vocab_size"]:
        raise UserError(
            f"'{folder}/meta.json' says vocab_size {meta['vocab_size']} but its {tok.name} tokenizer has "
            f"{tok.vocab_size}; re-create the dataset with python -m data.prepare"
        )
    return tok


def builtin_dataset(cfg: DataConfig) -> tuple[str, str, int] | None:
    """(folder name, tokenizer, BPE vocabulary size) when ``data.name`` is a built-in dataset, else None.

    ``builtin`` takes its tokenizer from ``data.tokenizer`` (bytes if unset); ``builtin-byte``,
    ``builtin-gpt2``, ``builtin-bpe`` and ``builtin-bpe<N>`` (a BPE of N tokens) name theirs, so that a
    config picks a BPE size in the one key that ``data.path`` replaces.
    """
    if cfg.name == "builtin":
        tokenizer = cfg.tokenizer or "byte"
        return f"builtin-{tokenizer}", tokenizer, BPE_VOCAB
    named = BUILTIN_NAME.fullmatch(cfg.name)
    if named is None:
        return None
    tokenizer, vocab_size = named["tokenizer"] or "bpe", int(named["vocab"] or BPE_VOCAB)
    if cfg.tokenizer and cfg.tokenizer != tokenizer:
        raise UserError(
            f"data.name '{cfg.name}' holds {tokenizer} tokens but data.tokenizer is {cfg.tokenizer}; "
            f"drop data.tokenizer or use data.name=builtin-{cfg.tokenizer}"
        )
    if vocab_size < MIN_BPE_VOCAB:
        raise UserError(
            f"data.name '{cfg.name}' asks for a {vocab_size}-token BPE, too small for a byte-level one; "
            f"use at least builtin-bpe{MIN_BPE_VOCAB} (the quickstart's is builtin-bpe4096)"
        )
    return cfg.name, tokenizer, vocab_size


def resolve_folder(cfg: DataConfig, ctx: Any = None) -> Path:
    """``data.path`` if set; else the prepared dataset ``data.name`` (the builtin one is made on demand)."""
    if cfg.path:
        return Path(cfg.path)
    builtin = builtin_dataset(cfg)
    if builtin:
        name, tokenizer, vocab_size = builtin
        folder = Path(cfg.root) / name
        is_main = ctx is None or ctx.is_main
        if is_main and not (folder / "meta.json").exists():
            print(f"preparing the built-in corpus into {folder} (once)", flush=True)
            prepare_builtin(folder, tokenizer, vocab_size)
        if ctx is not None:
            ctx.barrier()
        return folder
    folder = Path(cfg.root) / cfg.name
    if not folder.is_dir():
        raise UserError(
            f"dataset '{cfg.name}' not found under '{cfg.root}'; prepare it with "
            f"python -m data.prepare --out {folder} or set --data.path"
        )
    return folder


def open_dataset(cfg: DataConfig, ctx: Any = None, tokenizer_origin: str = "") -> Dataset:
    """The dataset ``cfg`` names; ``tokenizer_origin`` says where ``data.tokenizer`` was set (``configs.origin``)."""
    folder = resolve_folder(cfg, ctx)
    if not folder.is_dir():
        raise UserError(f"data folder '{folder}' not found; set --data.path to a folder of token shards")
    meta = load_meta(folder, cfg.tokenizer)
    if cfg.tokenizer and meta["tokenizer"] != cfg.tokenizer:
        where = f" (set {tokenizer_origin})" if tokenizer_origin else ""
        raise UserError(
            f"data.tokenizer is {cfg.tokenizer}{where} but '{folder}' holds {meta['tokenizer']} tokens; "
            f"pass --data.tokenizer={meta['tokenizer']} or another --data.path"
        )
    return Dataset(folder, meta, load_tokenizer(folder, meta))
