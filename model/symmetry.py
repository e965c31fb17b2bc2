"""Unlearned attention biases that break the rotational symmetry of attention.

Standard attention is invariant under W_q -> R W_q, W_k -> R W_k and W_v -> R W_v, W_o -> W_o R^T
(R orthogonal, per head). Adding a fixed-distribution random vector to the per-head queries (bQ) and
values (bV) after projection singles out a direction and breaks both rotations.

A training draw is a pure function of (seed, global micro-batch index, layer): it does not depend on
world size, accumulation split or on what ran before, so resumed and distributed runs replay it
exactly. Evaluation uses the means, which fold into the projection bias (see GPT.fold_mean_biases).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from configs import MODES, SymmetryConfig

__all__ = ["MODES", "BiasSpec", "draw_biases", "draw_key"]
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class BiasSpec:
    """What to draw: the symmetry settings and the model's shape."""

    symmetry: SymmetryConfig
    n_layer: int
    n_head: int
    head_dim: int

    @property
    def has_q(self) -> bool:
        return self.symmetry.mode in ("bq", "bqbv")

    @property
    def has_v(self) -> bool:
        return self.symmetry.mode in ("bqbv", "bv")

    @property
    def has_k(self) -> bool:
        return self.symmetry.k_bias

    @property
    def draws_anything(self) -> bool:
        return self.has_q or self.has_v or self.has_k

    def q_std(self) -> torch.Tensor:
        return torch.linspace(self.symmetry.q_std_min, self.symmetry.q_std_max, self.head_dim)

    def means(self) -> dict[str, torch.Tensor]:
        """Per-coordinate means, shape (head_dim,), for the biases this spec uses."""
        s, out = self.symmetry, {}
        for name, used, mean in (("q", self.has_q, s.q_mean), ("v", self.has_v, s.v_mean), ("k", self.has_k, s.k_mean)):
            if used:
                out[name] = torch.full((self.head_dim,), mean)
        return out


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def draw_key(seed: int, micro_index: int, layer: int) -> int:
    """A 63-bit generator seed that depends on all three numbers and nothing else."""
    h = _splitmix64(seed & _MASK64)
    h = _splitmix64(h ^ (micro_index & _MASK64))
    h = _splitmix64(h ^ (layer & _MASK64))
    return h >> 1


def draw_biases(
    spec: BiasSpec, seed: int, micro_index: int, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor] | None:
    """Draw every layer's biases for one micro-batch.

    Returns {"q"|"v"|"k": tensor (n_layer, heads, head_dim)} where heads is n_head with per-head
    draws and 1 otherwise (one vector shared by the heads of a layer), or None in symmetric mode.
    Drawn on the CPU from a per-layer generator, so the values are the same on every device.
    """
    if not spec.draws_anything:
        return None
    s = spec.symmetry
    heads = spec.n_head if s.per_head else 1
    shape = (heads, spec.head_dim)
    q_std = spec.q_std() if spec.has_q else None
    out: dict[str, list[torch.Tensor]] = {name: [] for name in spec.means()}
    gen = torch.Generator()
    for layer in range(spec.n_layer):
        gen.manual_seed(draw_key(seed, micro_index, layer))
        if spec.has_q:
            out["q"].append(s.q_mean + q_std * torch.randn(shape, generator=gen))
        if spec.has_v:
            out["v"].append(s.v_mean + s.v_std * torch.randn(shape, generator=gen))
        if spec.has_k:
            out["k"].append(s.k_mean + s.k_std * torch.randn(shape, generator=gen))
    return {name: torch.stack(vals).to(device, non_blocking=True) for name, vals in out.items()}
