"""Optimizer registry, parameter groups and learning-rate schedules.

An optimizer is registered under a name with a builder ``(param_groups, OptimConfig) -> Optimizer``:
either decorated with ``@register`` here or listed in ``LAZY`` as "module:function", imported only
when chosen.
Each group carries ``base_lr``; the trainer sets ``group["lr"] = base_lr * schedule(step)`` before
every step, so every optimizer follows the schedule. An optimizer that needs the step's loss (ECD)
sets the class attribute ``requires_loss = True`` and takes ``step(loss=...)``, the loss averaged
over all micro-batches and ranks, as a 0-dim tensor.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable

import torch
import torch.nn as nn

from configs import OptimConfig, UserError

Builder = Callable[[list[dict], OptimConfig], torch.optim.Optimizer]
OPTIMIZERS: dict[str, Builder] = {}
LAZY: dict[str, str] = {
    "soap": "optim.soap:build",
    "ecd": "optim.ecd:build",
    "per_neuron": "optim.per_neuron:build",
}


def register(name: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        OPTIMIZERS[name] = fn
        return fn

    return deco


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Weight decay on 2-D weight matrices only (embeddings by ``decay_embeddings``)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        is_matrix = p.dim() >= 2 and (cfg.decay_embeddings or id(p) not in embeddings)
        (decay if is_matrix else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _fast_kwargs(groups: list[dict]) -> dict:
    """Fused kernels on CUDA, foreach elsewhere."""
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    return {"fused": True} if on_cuda else {"foreach": True}


@register("adamw")
def _adamw(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **_fast_kwargs(groups))


@register("sgdm")
def _sgdm(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        groups,
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
        **_fast_kwargs(groups),
    )


def build_optimizer(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    return get_builder(cfg.name)(_with_base_lr(groups, cfg.lr), cfg)


def names() -> list[str]:
    return sorted(set(OPTIMIZERS) | set(LAZY))


def get_builder(name: str) -> Builder:
    if name not in OPTIMIZERS and name in LAZY:
        module, fn = LAZY[name].split(":")
        OPTIMIZERS[name] = getattr(importlib.import_module(module), fn)
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer '{name}'; set optim.name to one of: {', '.join(names())}")
    return OPTIMIZERS[name]


def _with_base_lr(groups: list[dict], lr: float) -> list[dict]:
    for g in groups:
        g.setdefault("lr", lr)
        g["base_lr"] = g["lr"]
    return groups


def lr_multiplier(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Warmup (linear from 1/warmup) then constant, cosine or linear decay to ``min_lr_ratio``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, max_steps - cfg.warmup_steps)
    frac = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * frac))
    elif cfg.schedule == "linear":
        shape = 1.0 - frac
    else:
        raise UserError(f"unknown schedule '{cfg.schedule}'; use constant, cosine or linear")
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape
