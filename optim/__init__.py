"""Optimizers: a registry of one module per optimizer, parameter groups and learning-rate schedules.

Each optimizer is a module here holding its own settings and its builder:

    @dataclass
    class Options:            # the table [optim.<name>], its defaults, learning rate included
        lr: float = ...
        weight_decay: float = ...
        def check(self) -> None: ...     # value ranges, as one-line errors
    def build(groups, options) -> torch.optim.Optimizer

``[optim]`` itself holds only what every optimizer shares (name, schedule, warmup, clipping, which
parameters decay; see ``configs.OptimConfig``). Each group carries ``base_lr``; the trainer sets
``group["lr"] = base_lr * schedule(step)`` before every step, so every optimizer follows the schedule.
An optimizer that needs the step's loss (ECD) sets the class attribute ``requires_loss = True`` and takes
``step(loss=...)``, the loss averaged over all micro-batches and ranks, as a 0-dim tensor. One that may
decline a step sets ``skip_reason`` (a string) after such a ``step()``, and None after one it took.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from types import ModuleType
from typing import Any

import torch
import torch.nn as nn

import configs
from configs import Config, OptimConfig, UserError, build_section
from optim import adamw, ecd, muon, per_neuron, sgdm, soap

OPTIMIZERS: dict[str, ModuleType] = {
    "adamw": adamw,
    "sgdm": sgdm,
    "soap": soap,
    "ecd": ecd,
    "muon": muon,
    "per_neuron": per_neuron,
}
for _name, _module in OPTIMIZERS.items():  # so that a knob written in [optim] names its table
    for _field in dataclasses.fields(_module.Options):
        configs.KEY_OWNERS["optim"].setdefault(_field.name, []).append(_name)


def names() -> list[str]:
    return sorted(OPTIMIZERS)


def get_module(name: str) -> ModuleType:
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer '{name}'; set optim.name to one of: {', '.join(names())}")
    return OPTIMIZERS[name]


def config(name: str, **options: Any) -> OptimConfig:
    """An ``[optim]`` section for ``name`` with its table set to ``options`` (for code and tests)."""
    return OptimConfig(name=name, sections={name: options})


def settings(cfg: OptimConfig, from_cli: frozenset[str] = frozenset()) -> Any:
    """The typed options of the optimizer in use: its defaults, its table, and ``optim.lr`` if set.

    ``optim.lr`` is a shortcut for the learning rate in the table; where both are given, the one given
    on the command line (``from_cli``) wins over the file's, and two on the same side must agree.
    """
    table = cfg.sections.get(cfg.name, {})
    options = build_section(get_module(cfg.name).Options, table, f"optim.{cfg.name}")
    if cfg.lr > 0:
        key = f"optim.{cfg.name}.lr"
        table_wins = "lr" in table and key in from_cli and "optim.lr" not in from_cli
        if "lr" in table and ((key in from_cli) == ("optim.lr" in from_cli)) and options.lr != cfg.lr:
            raise UserError(f"optim.lr = {cfg.lr} and {key} = {options.lr} disagree; set only one of them")
        if not table_wins:
            options.lr = cfg.lr
    configs.positive(f"optim.{cfg.name}", lr=options.lr)
    return options


def resolve(cfg: Config) -> Config:
    """A copy of ``cfg`` whose optimizer settings are checked and written out in full.

    Every table ``[optim.<name>]`` must belong to a registered optimizer and hold only its knobs (a
    config may carry several, e.g. one tuned table per optimizer). The one in use is filled with its
    defaults and becomes the only table, with ``optim.lr`` folded in.
    """
    for name, table in cfg.optim.sections.items():
        if name not in OPTIMIZERS:
            raise UserError(f"unknown optimizer table [optim.{name}]; optimizers are: {', '.join(names())}")
        build_section(OPTIMIZERS[name].Options, table, f"optim.{name}")
    options = settings(cfg.optim, cfg.from_cli)
    out = copy.copy(cfg)
    out.optim = dataclasses.replace(cfg.optim, lr=0.0, sections={cfg.optim.name: dataclasses.asdict(options)})
    return out


def upgrade_config(data: dict[str, Any]) -> dict[str, Any]:
    """A stored config from an older version, in today's shape.

    The old ``[optim]`` held every optimizer's knobs side by side; the ones of the optimizer that ran
    move into its table, the others (never used by that run) are dropped. A knob added to that table
    since takes its default, which is what the run did before the knob existed.
    """
    old = data.get("optim")
    if not isinstance(old, dict):
        return data
    name = old.get("name", "adamw")
    new = old
    if not any(isinstance(v, dict) for v in old.values()) and "momentum" in old:
        shared = {f.name for f in dataclasses.fields(OptimConfig) if not f.metadata.get("tables")} - {"lr"}
        own = {f.name for f in dataclasses.fields(get_module(name).Options)}
        new = {k: v for k, v in old.items() if k in shared}
        if old.get("decay_embeddings"):
            new["decay"] = "matrices_and_embeddings"
        new[name] = {k: v for k, v in old.items() if k in own}
    table = new.get(name)
    if name in OPTIMIZERS and isinstance(table, dict):
        new = {**new, name: {**dataclasses.asdict(OPTIMIZERS[name].Options()), **table}}
    return {**data, "optim": new}


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Weight decay (the optimizer's own ``weight_decay``) on the parameters ``optim.decay`` names:
    ``matrices`` (2-D weights but not embeddings), ``matrices_and_embeddings``, or ``all``. An optimizer
    module with a ``split_groups(model, decay, no_decay, options)`` makes its own groups from those two lists."""
    weight_decay = settings(cfg).weight_decay
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if cfg.decay == "all":
            decayed = True
        else:  # a parameter named *bias is a bias even when 2-D (learned per-head attention biases)
            matrix = p.dim() >= 2 and not name.endswith("bias")
            decayed = matrix and (cfg.decay == "matrices_and_embeddings" or id(p) not in embeddings)
        (decay if decayed else no_decay).append(p)
    split = getattr(get_module(cfg.name), "split_groups", None)
    if split is not None:  # an optimizer that treats some modules apart (Muon: the blocks' matrices)
        return split(model, decay, no_decay, settings(cfg))
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    options = settings(cfg)
    for g in groups:
        g.setdefault("lr", options.lr)
        g["base_lr"] = g["lr"]
    return get_module(cfg.name).build(groups, options)


def lr_multiplier(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Warmup (linear from 1/warmup) then constant, cosine or linear decay to ``min_lr_ratio``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, max_steps - cfg.warmup_steps)
    frac = min(1.0, (step - cfg.warmup_steps) / span)
    shape = 0.5 * (1.0 + math.cos(math.pi * frac)) if cfg.schedule == "cosine" else 1.0 - frac
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape
