"""Hugging Face export and import of runs.

    python -m eval.hf export RUN_DIR OUT_DIR [--custom]   # safetensors, config, tokenizer (+ modelling code)
    python -m eval.hf import SRC OUT_RUN                  # SRC: a local GPT-2 folder or a hub name

(``python -m model.hf ...`` runs the same commands.) The conversions are in ``model/hf.py``.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from transformers import GPT2LMHeadModel
from transformers.utils import logging as hf_logging

from checkpoints import save_checkpoint
from configs import ArgumentParser, UserError, command, from_dict, to_dict, to_toml
from data.dataset import TOKENIZER_DIR
from data.hf_tokenizer import save_hf
from data.tokenizer import fixed_vocabulary
from eval.output import check_folder_target, staged_folder
from eval.run import load_run
from model.hf import export, from_gpt2


def load_gpt2(src: str) -> Any:
    """A ``GPT2LMHeadModel`` from a local folder, or from the hub when ``src`` is a name and we are online.

    A local file is refused before anything reads it: only a folder's safetensors or a hub name load here.
    """
    if Path(src).is_file():
        raise UserError(f"'{src}' is a file; pass a folder written by save_pretrained (config.json + weights)")
    try:
        return GPT2LMHeadModel.from_pretrained(src, use_safetensors=Path(src).is_dir() or None)
    except (OSError, ValueError) as e:
        detail = " ".join(str(e).split())[:200]
        msg = f"cannot load GPT-2 weights from '{src}' ({detail}); pass a local save_pretrained folder"
        raise UserError(msg) from None


def import_run(src: str, out_run: str | Path, tokenizer: str = "gpt2") -> Path:
    """A run dir (config.toml + checkpoint) holding stock GPT-2 weights, readable by the eval tools and a
    starting point for training (``--run.init_from=OUT_RUN``). ``tokenizer`` is the one its ids are."""
    out = Path(out_run)
    check_folder_target(out, "OUT_RUN")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"'{out}' is not empty; choose another OUT_RUN")
    model = from_gpt2(load_gpt2(src))
    c = model.config
    vocab, eot = fixed_vocabulary(tokenizer)
    if c.vocab_size != vocab:
        raise UserError(
            f"the model in '{src}' has a vocabulary of {c.vocab_size} but the {tokenizer} tokenizer has "
            f"{vocab} ids; pass --tokenizer with the one it was trained with"
        )
    cfg = from_dict(
        {
            "run": {"name": out.name, "dir": str(out.parent)},
            "model": {
                "n_layer": c.n_layer,
                "n_head": c.n_head,
                "n_embd": c.n_embd,
                "block_size": c.block_size,
                "vocab_size": c.vocab_size,
                "mlp": c.mlp,
            },
            "symmetry": {"mode": "symmetric"},
            "data": {"tokenizer": tokenizer},
        }
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.toml").write_text(to_toml(to_dict(cfg)))
    tok_dir = out / TOKENIZER_DIR  # the eval tools read a run's tokenizer from here
    tok_dir.mkdir(exist_ok=True)
    meta = {"tokenizer": tokenizer, "vocab_size": vocab, "eot": eot}
    (tok_dir / "meta.json").write_text(json.dumps(meta) + "\n")
    payload = {"model": model.state_dict(), "config": to_dict(cfg), "step": 0, "tokens": 0, "source": str(src)}
    return save_checkpoint(out, 0, payload, keep=1)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No progress bar from save_pretrained: stderr is for the one line that says what went wrong."""
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def export_run(
    run_dir: str, out_dir: str, checkpoint: str | None = None, custom: bool = False, overwrite: bool = False
) -> str:
    """Write the run's model and its tokenizer as a ``save_pretrained`` folder; the line to print.

    The destination must be a new or empty folder (or ``overwrite``), and never the run dir itself.
    """
    out = Path(out_dir)
    if out.resolve() == Path(run_dir).resolve() or Path(run_dir).resolve() in out.resolve().parents:
        raise UserError(f"'{out_dir}' is inside the run dir '{run_dir}'; export to a folder of its own")
    check_folder_target(out, "OUT_DIR")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"'{out_dir}' is not an empty folder; choose another OUT_DIR or pass --overwrite")
    run = load_run(run_dir, "cpu", checkpoint)
    # written aside and moved into OUT_DIR at the end: a full disk leaves OUT_DIR as it was
    with quiet_transformers(), staged_folder(out, "OUT_DIR", replace=overwrite, errors=(SafetensorError,)) as stage:
        kind = export(run.model, stage, run.tokenizer.eot, custom)
        save_hf(run.tokenizer, stage, run.model.config.block_size)
        record = {"run_dir": str(run.run_dir), "checkpoint": str(run.checkpoint), "tokenizer": run.tokenizer.name}
        (stage / "symbreak.json").write_text(json.dumps(record))
    how = "GPT2LMHeadModel" if kind == "gpt2" else "AutoModelForCausalLM(..., trust_remote_code=True)"
    return f"exported {run.checkpoint} with its {run.tokenizer.name} tokenizer to {out_dir} ({how})"


@command
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description="Export a run to Hugging Face format, or import GPT-2 weights.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    e = sub.add_parser("export", help="write a save_pretrained folder for RUN_DIR")
    e.add_argument("run_dir")
    e.add_argument("out_dir")
    e.add_argument("--checkpoint", default=None, help="a checkpoint file (default: the run's latest)")
    e.add_argument("--custom", action="store_true", help="use the custom modelling code even for a GELU model")
    e.add_argument("--overwrite", action="store_true", help="replace what OUT_DIR holds")
    i = sub.add_parser("import", help="make a run dir from stock GPT-2 weights")
    i.add_argument("src", help="a local GPT-2 folder (save_pretrained), or a hub name such as gpt2 when online")
    i.add_argument("out_run")
    i.add_argument("--tokenizer", default="gpt2", choices=("gpt2", "byte"), help="the tokenizer of its ids")
    args = p.parse_args(argv)
    if args.command == "export":
        print(export_run(args.run_dir, args.out_dir, args.checkpoint, args.custom, args.overwrite))
    else:
        print(f"imported {args.src} into {import_run(args.src, args.out_run, args.tokenizer)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
