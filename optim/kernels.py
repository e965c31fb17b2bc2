"""Which implementation of torch's built-in optimizers to ask for."""

from __future__ import annotations


def fast_kwargs(groups: list[dict]) -> dict:
    """Fused kernels on CUDA, foreach elsewhere."""
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    return {"fused": True} if on_cuda else {"foreach": True}
