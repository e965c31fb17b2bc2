"""Kinds of experiment: the Task interface, its registry, and the language-model task.

A task is registered here by name, as "module:Class", and imported only when a config names it, so a
task's dependencies load only when it runs. ``task.name`` in a config picks one (default ``lm``).
"""

from __future__ import annotations

import importlib

from configs import Config, UserError
from runtime import Context
from tasks.base import Task

__all__ = ["Task", "TASKS", "task_class", "build_task"]

TASKS: dict[str, str] = {
    "lm": "tasks.lm:LMTask",
    "group_composition": "small_tasks.composition.group_composition:GroupCompositionTask",
    "modular_addition": "small_tasks.composition.modular_addition:ModularAdditionTask",
    "diagonal_linear": "small_tasks.composition.diagonal_linear:DiagonalLinearTask",
    "lazy_rich": "small_tasks.linear.lazy_rich:LazyRichTask",
    "get_rich_quick": "small_tasks.linear.get_rich_quick:GetRichQuickTask",
    "get_rich_quick_relu": "small_tasks.linear.get_rich_quick:UnbalancedReLUTask",
    "get_rich_quick_phase": "small_tasks.linear.relu_phase:ReLUPhaseTask",
    "grokking_upstream": "small_tasks.linear.grokking:UpstreamGrokkingTask",
    "quasi_homogeneous": "small_tasks.linear.quasi_homogeneous:QuasiHomogeneousTask",
    "conservation_laws": "small_tasks.sgd.conservation_laws:ConservationLawsTask",
    "stochastic_collapse": "small_tasks.sgd.stochastic_collapse:StochasticCollapseTask",
    "stochastic_collapse_neuron": "small_tasks.sgd.stochastic_collapse:NeuronCollapseTask",
    "collapse_generalization": "small_tasks.sgd.collapse_generalization:CollapseGeneralizationTask",
    "limiting_dynamics": "small_tasks.sgd.limiting_dynamics:LimitingDynamicsTask",
    "limiting_scaling": "small_tasks.sgd.limiting_scaling:LimitingScalingTask",
    "gpt_symmetries": "small_tasks.sgd.gpt_symmetries:GPTSymmetriesTask",
    "normalised_equilibrium": "small_tasks.sgd.normalised_equilibrium:NormalisedEquilibriumTask",
    "attention_mechanism": "small_tasks.attention.mechanism:AttentionMechanismTask",
    "attention_linear_icl": "small_tasks.attention.in_context:LinearICLTask",
}


def task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise UserError(f"unknown task '{name}'; set task.name to one of: {', '.join(sorted(TASKS))}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_task(cfg: Config, ctx: Context) -> Task:
    return task_class(cfg.task.get("name", "lm"))(cfg, ctx)
