"""``run.init_from``: a new run that starts from another run's weights takes that run's architecture.

Weights only load into the model they were trained as. When the user's own settings do not describe the
model (no ``model.*`` key on the command line or in a config file the user passed: the default config's
``[model]`` is not a choice), the source's ``config.toml`` supplies ``[model]``, and its
``data.tokenizer`` too unless the user chose the data. A run dir made by ``eval.hf import`` is such a
source: ``--run.init_from=runs/gpt2`` then fine-tunes GPT-2 without restating its shape.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from configs import DEFAULT_CONFIG, Config, ModelConfig, UserError, build_section, read_toml


def source_config(init_from: Path) -> Path | None:
    """The ``config.toml`` of the run that ``run.init_from`` names (a run dir, or a checkpoint in one)."""
    folder = init_from if init_from.is_dir() else init_from.parent
    path = folder / "config.toml"
    return path if path.is_file() else None


def user_set(cfg: Config, section: str) -> list[str]:
    """The keys of ``section`` that the user chose: on the command line or in a config file they passed."""
    chosen = set(cfg.from_cli) | {k for k, file in cfg.origins.items() if Path(file) != DEFAULT_CONFIG}
    return sorted(k for k in chosen if k.startswith(section + "."))


def adopt_source_architecture(cfg: Config) -> tuple[Config, str]:
    """``cfg`` with the source's ``[model]`` (and tokenizer) where the user left them open, and the line
    that says so ("" when nothing was taken)."""
    if not cfg.run.init_from:
        return cfg, ""
    path = source_config(Path(cfg.run.init_from))
    if path is None or user_set(cfg, "model"):
        return cfg, ""
    source = read_toml(path)
    out = copy.copy(cfg)
    try:
        out.model = build_section(ModelConfig, source.get("model", {}), "model")
    except UserError as e:
        raise UserError(f"run.init_from: the [model] of '{path}' cannot be used ({e}); set [model] yourself") from None
    taken = "[model]"
    tokenizer = source.get("data", {}).get("tokenizer", "")
    if tokenizer and tokenizer != cfg.data.tokenizer and not user_set(cfg, "data"):
        out.data = dataclasses.replace(cfg.data, tokenizer=tokenizer)
        taken += f" and data.tokenizer = {tokenizer}"
    return out, f"run.init_from: {taken} taken from {path} (set model keys to choose the architecture yourself)"
