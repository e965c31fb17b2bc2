"""Rotary position embeddings (RoPE) over the first dimensions of each attention head.

Pairing: split halves over the rotated slice (the GPT-NeoX / Llama convention). With r rotated
dimensions, coordinate i pairs with i + r/2 for i < r/2 and the pair turns by the angle p·θ_i at
position p, θ_i = base^(-2i/r); the dimensions from r on pass through unrotated. A query at position
m and a key at position n then score q·k through the rotation by (n - m)·θ_i only: relative positions.

This file imports only torch: the exported Hugging Face code (model/hf_modeling.py) imports it too,
and an export copies it next to the modelling file.
"""

from __future__ import annotations

import torch


def rotary_dims(head_dim: int, fraction: float) -> int:
    """The rotated dimensions of a head: ``fraction`` of ``head_dim``, rounded down to an even number."""
    return 2 * int(fraction * head_dim / 2)


def rope_angles(positions: torch.Tensor, dims: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every position's angles, shape ``positions.shape + (dims // 2,)``, float32.

    Computed in float64 and rounded once, so a table made ahead and one made per call agree bit for bit
    (the angles reach block_size radians, where float32 products would be off by about 1e-4)."""
    inv_freq = base ** (-torch.arange(0, dims, 2, dtype=torch.float64, device=positions.device) / dims)
    angles = positions.to(torch.float64)[..., None] * inv_freq
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``2 * cos.size(-1)`` dimensions of ``x`` (..., T, head_dim); ``cos``/``sin``
    broadcast against (..., T, dims // 2). The result has ``x``'s dtype (cos and sin are cast to it)."""
    half = cos.size(-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)
