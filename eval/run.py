"""Load a trained model (and its tokenizer) back from a run dir, for evaluation tools.

A run dir is only read here, never written: the tokenizer comes from the run's own copy, and the data
from the record of what the run trained on (``data.json``), checked by its fingerprint.
"""

from __future__ import annotations

import json
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import torch

from checkpoints import flat, list_checkpoints, load_checkpoint
from configs import Config, DataConfig, UserError, from_dict, to_dict, what_is
from data.dataset import DATA_RECORD, TOKENIZER_DIR, Dataset, load_meta, load_tokenizer, open_dataset
from data.tokenizer import Tokenizer
from model import GPT
from optim import upgrade_config


@dataclass
class LoadedRun:
    run_dir: Path
    config: Config
    model: GPT  # in eval mode
    tokenizer: Tokenizer
    checkpoint: Path


def latest_checkpoint(run_dir: Path) -> Path:
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise UserError(f"no checkpoint in '{run_dir}'; pass a run dir that finished at least one checkpoint")
    return ckpts[-1]


def run_tokenizer(run_dir: Path, cfg: Config) -> Tokenizer:
    """The run's own copy of its tokenizer; runs without one read it from their dataset."""
    saved = run_dir / TOKENIZER_DIR
    if (saved / "meta.json").exists():
        return load_tokenizer(saved, load_meta(saved))
    return open_dataset(cfg.data).tokenizer


def stored_config(state: dict) -> Config:
    """The config a checkpoint was written with, in today's shape."""
    return from_dict(upgrade_config(state["config"]))


# What a checkpoint must share with the run dir it is evaluated in: the model's shape and kind, and the
# tokenizer its ids belong to (the run dir's copy is used). Initialisation and dropout do not matter here.
SAME_MODEL_KEYS = ("model.", "symmetry.mode", "data.tokenizer")
INIT_ONLY = {"model.preset", "model.dropout", "model.prelu_mean", "model.prelu_std"}


def check_same_model(run_dir: Path, cfg: Config, path: Path) -> None:
    """A checkpoint passed with --checkpoint must hold the run's model: another run's would be read with
    this run's tokenizer and produce nonsense (or nothing) without a word."""
    saved = run_dir / "config.toml"
    if not saved.is_file():
        return  # nothing to compare with; the model is built from the checkpoint's own config
    theirs = flat(to_dict(from_dict(upgrade_config(tomllib.loads(saved.read_text())))))
    ours = flat(to_dict(cfg))
    keys = [k for k in ours if k.startswith(SAME_MODEL_KEYS) and k not in INIT_ONLY]
    diffs = [f"{k} {ours[k]!r} vs {theirs.get(k)!r}" for k in keys if ours[k] != theirs.get(k)]
    if diffs:
        home = path.parent if (path.parent / "config.toml").is_file() else "the run dir it was trained in"
        raise UserError(
            f"checkpoint '{path}' holds another model than run dir '{run_dir}' ({'; '.join(diffs[:3])}); "
            f"pass it with its own run dir as RUN_DIR ({home}), or a checkpoint of '{run_dir}'"
        )


def load_run(
    run_dir: str | Path, device: str | torch.device = "cpu", checkpoint: str | Path | None = None
) -> LoadedRun:
    """Rebuild the run's model from its checkpoint's stored config and load the weights.

    Needs only the run dir: the tokenizer comes from the copy the trainer keeps there.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run dir '{run_dir}' {what_is(run_dir)}; pass the folder a training run wrote (runs/<name>)")
    path = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir)
    notes: list[str] = []  # said once the run has loaded: an error line must stand alone
    state = load_checkpoint(path, warn=notes.append)
    cfg = stored_config(state)
    if checkpoint:
        check_same_model(run_dir, cfg, path)
    if cfg.task.get("name", "lm") != "lm":
        raise UserError(f"'{run_dir}' is a {cfg.task['name']} run; this tool reads language-model runs")
    tokenizer = run_tokenizer(run_dir, cfg)
    model = GPT.from_config(cfg, tokenizer.vocab_size)
    model.load_state_dict(state["model"])
    model.to(device).eval()
    for note in notes:
        print(note, file=sys.stderr)
    return LoadedRun(run_dir, cfg, model, tokenizer, path)


def run_dataset(run: LoadedRun, data: str | Path | None = None) -> Dataset:
    """The data to evaluate ``run`` on: the dataset it trained on, which must still be there and the same
    (its fingerprint), or the folder ``data`` when given, whose tokens must be the run's."""
    cfg = run.config.data
    if data:
        dataset = open_dataset(DataConfig(path=str(data), tokenizer=cfg.tokenizer))
        theirs, ours = dataset.tokenizer, run.tokenizer
        if (theirs.name, theirs.vocab_size) != (ours.name, ours.vocab_size):
            raise UserError(
                f"'{data}' holds {theirs.name} tokens (vocabulary {theirs.vocab_size}) but the run's tokenizer is "
                f"{ours.name} ({ours.vocab_size}); pass a dataset prepared with the run's tokenizer"
            )
        return dataset
    record = run.run_dir / DATA_RECORD
    if not record.exists():  # a run from before the record: its config names the data
        return open_dataset(cfg)
    recorded = json.loads(record.read_text())
    folder = Path(recorded["folder"])
    if not folder.is_dir():
        raise UserError(
            f"the data this run trained on, '{folder}', is gone; pass --data PATH to evaluate on another dataset"
        )
    dataset = open_dataset(DataConfig(path=str(folder), tokenizer=cfg.tokenizer))
    if dataset.fingerprint() != recorded["fingerprint"]:
        raise UserError(
            f"'{folder}' no longer holds the data this run trained on (its fingerprint differs); "
            "pass --data PATH to evaluate on what is there, or on another dataset"
        )
    return dataset
