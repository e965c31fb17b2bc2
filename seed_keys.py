"""Counter-based generator seeds: one 63-bit seed from (seed, index, layer) and nothing else.

Shared by the bias draws (model.symmetry: one draw per micro-batch and layer) and ECD's noise
(optim.ecd: one per step), so that both follow from the run's seed and the step alone: a resumed run,
any number of ranks and any batch order draw the same numbers.
"""

from __future__ import annotations

MASK64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def draw_key(seed: int, micro_index: int, layer: int) -> int:
    """A 63-bit generator seed that depends on all three numbers and nothing else."""
    h = splitmix64(seed & MASK64)
    h = splitmix64(h ^ (micro_index & MASK64))
    h = splitmix64(h ^ (layer & MASK64))
    return h >> 1
