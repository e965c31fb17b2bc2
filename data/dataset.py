"""Resolve ``data.*`` settings to a folder of shards, its tokenizer and token streams."""

from __future__ import annotations

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

    def save_tokenizer(self, dest: Path) -> None:
        """Copy what ``load_tokenizer`` needs (meta.json and a trained tokenizer's file) into ``dest``."""
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "meta.json").write_text(json.dumps(self.meta, indent=2) + "\n")
        file = self.meta.get("tokenizer_file")
        if file:
            shutil.copyfile(self.folder / file, dest / file)


def load_meta(folder: Path) -> dict[str, Any]:
    """meta.json, or GPT-2 defaults for shards made elsewhere (llm.c / modded-nanogpt fineweb shards)."""
    path = folder / "meta.json"
    if not path.exists():
        return {"tokenizer": "gpt2", "vocab_size": GPT2_VOCAB, "source": "external"}
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
        folder = Path(cfg.root) / f"builtin-{cfg.tokenizer}"
        is_main = ctx is None or ctx.is_main
        if is_main and not (folder / "meta.json").exists():
            print(f"preparing the built-in corpus into {folder} (once)", flush=True)
            prepare_builtin(folder, cfg.tokenizer)
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
    meta = load_meta(folder)
    return Dataset(folder, meta, load_tokenizer(folder, meta))
