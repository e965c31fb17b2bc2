"""Resolve ``data.*`` settings to a folder of shards, its tokenizer and token streams."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configs import DataConfig, UserError
from data.loader import TokenStream
from data.prepare import prepare_builtin
from data.shards import find_shards
from data.tokenizer import GPT2_VOCAB, Tokenizer, get_tokenizer

TOKENIZER_DIR = "tokenizer"  # a run dir's copy of its dataset's meta.json and tokenizer file
DATA_RECORD = "data.json"  # a run dir's record of the dataset it trained on: its folder and fingerprint


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


def resolve_folder(cfg: DataConfig, ctx: Any = None) -> Path:
    """``data.path`` if set; else the prepared dataset ``data.name`` (the builtin one is made on demand)."""
    if cfg.path:
        return Path(cfg.path)
    if cfg.name == "builtin":
        tokenizer = cfg.tokenizer or "byte"
        folder = Path(cfg.root) / f"builtin-{tokenizer}"
        is_main = ctx is None or ctx.is_main
        if is_main and not (folder / "meta.json").exists():
            print(f"preparing the built-in corpus into {folder} (once)", flush=True)
            prepare_builtin(folder, tokenizer)
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


def open_dataset(cfg: DataConfig, ctx: Any = None) -> Dataset:
    folder = resolve_folder(cfg, ctx)
    if not folder.is_dir():
        raise UserError(f"data folder '{folder}' not found; set --data.path to a folder of token shards")
    meta = load_meta(folder, cfg.tokenizer)
    if cfg.tokenizer and meta["tokenizer"] != cfg.tokenizer:
        raise UserError(
            f"data.tokenizer is {cfg.tokenizer} but '{folder}' holds {meta['tokenizer']} tokens; drop the setting"
        )
    return Dataset(folder, meta, load_tokenizer(folder, meta))
