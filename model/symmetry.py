"""Unlearned attention biases that break the rotational symmetry of attention.

Standard attention is invariant under W_q -> R W_q, W_k -> R W_k and W_v -> R W_v, W_o -> W_o R^T
(R orthogonal, per head). Adding a fixed-distribution random vector to the per-head queries (bQ) and
values (bV) after projection singles out a direction and breaks both rotations.

A training draw is a pure function of (seed, global micro-batch index, layer): it does not depend on
world size, accumulation split or on what ran before, so resumed and distributed runs replay it
exactly. Evaluation uses the means, which fold into the projection bias (see GPT.fold_mean_biases).

The draw is counter-based, so it runs on the device with no generator state and no host round trip:
every coordinate hashes its own counter (layer, stream, head, coordinate) with a 64-bit key of
(seed, micro-batch), two 32-bit hashes give two 24-bit uniforms in (0, 1), and Box-Muller turns them
into one normal (|z| <= 5.9 by the smallest uniform, 2^-25: a draw beyond that has probability 4e-9).
The hashing is integer arithmetic that never leaves int64, hence exact on every device; the
Box-Muller step runs in float64 and is rounded to float32, so CPU and GPU agree except where their
float64 log/cos differ in the last bit across a float32 rounding boundary (about one value in 10^9).
``BiasDraws`` draws many micro-batches in one vectorised call, which is what a training step reads;
``reference_biases`` is the same function written out in scalar Python, the check of both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from configs import MODES, SymmetryConfig
from seed_keys import MASK64, splitmix64

__all__ = ["MODES", "BiasDraws", "BiasSpec", "draw_biases", "reference_biases"]
_MASK32 = (1 << 32) - 1
DRAWS = "counter-hash-1"  # names the draw function: a resumed run must replay the draws it started with
STREAMS = ("q", "v", "k")  # fixed counter slots: a stream's draw does not depend on which others are on
CHUNK_VALUES = 1 << 21  # BiasDraws draws this many values per call (a few MiB of int64 temporaries)


@dataclass(frozen=True)
class BiasSpec:
    """What to draw: the symmetry settings and the model's shape. ``scale`` multiplies every mean and
    std: 1 for the values as written, the width ratio for ``symmetry.scale = "width"`` (GPTConfig.bias_spec)."""

    symmetry: SymmetryConfig
    n_layer: int
    n_head: int
    head_dim: int
    scale: float = 1.0

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
        """Whether training draws biases: learned ones (``symmetry.learned``) are parameters instead."""
        return not self.symmetry.learned and (self.has_q or self.has_v or self.has_k)

    @property
    def heads(self) -> int:
        """Draws per layer: one per head, or one vector shared by the heads of a layer."""
        return self.n_head if self.symmetry.per_head else 1

    def streams(self) -> list[str]:
        """The biases drawn, in STREAMS order."""
        used = {"q": self.has_q, "v": self.has_v, "k": self.has_k}
        return [name for name in STREAMS if used[name]]

    def mean(self, name: str) -> float:
        s = self.symmetry
        return {"q": s.q_mean, "v": s.v_mean, "k": s.k_mean}[name] * self.scale

    def std(self, name: str, device: torch.device | str = "cpu") -> torch.Tensor:
        """The per-coordinate standard deviation of a stream, shape (head_dim,), made on ``device``."""
        s = self.symmetry
        if name == "q":
            std = torch.linspace(s.q_std_min, s.q_std_max, self.head_dim, device=device)
        else:
            std = torch.full((self.head_dim,), s.v_std if name == "v" else s.k_std, device=device)
        return std * self.scale  # times 1.0 is exact: absolute values draw bit for bit as before

    def means(self) -> dict[str, torch.Tensor]:
        """Per-coordinate means, shape (head_dim,), for the biases this spec uses."""
        return {name: torch.full((self.head_dim,), self.mean(name)) for name in self.streams()}


def _mul32(x, c: int):
    """x * c mod 2^32 for 0 <= x < 2^32, in pieces that stay below 2^49 (int64 never overflows)."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _MASK32


def _mix32(x):
    """A bijection of 32-bit words with strong avalanche (the "lowbias32" xorshift-multiply hash).

    Works alike on Python ints and on int64 tensors holding values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _seed_key(seed: int) -> tuple[int, int]:
    """The seed as two 32-bit words."""
    h = splitmix64(seed & MASK64)
    return h & _MASK32, h >> 32


def _micro_words(k0: int, k1: int, m):
    """Two 32-bit words per micro-batch index (an int or an int64 tensor of indices >= 0).

    For indices below 2^32 each word is a bijection of the index, so no two micro-batches share them."""
    m0, m1 = m & _MASK32, m >> 32
    return _mix32(_mix32(m0 ^ k0) ^ m1), _mix32(_mix32(m1 ^ k1) ^ m0)


def _counter(spec: BiasSpec, layer: int, stream: str, head: int, coord: int, half: int) -> int:
    """The slot of one uniform: (layer, stream, head, coordinate, which of Box-Muller's two)."""
    slot = (layer * len(STREAMS) + STREAMS.index(stream)) * spec.heads + head
    return (slot * spec.head_dim + coord) * 2 + half


def _bits(counter, a0, a1):
    return _mix32(_mix32(counter ^ a0) ^ a1)


def _draw(spec: BiasSpec, seed: int, micro: torch.Tensor) -> dict[str, torch.Tensor]:
    """The biases of the micro-batches ``micro`` (int64, shape (K,)), each stream (K, n_layer, heads,
    head_dim) float32, made on ``micro``'s device from aranges and elementwise ops: nothing is copied
    from the host. All of STREAMS' slots are computed (unused ones are cheap) so no index list is needed."""
    device = micro.device
    L, S, H, D = spec.n_layer, len(STREAMS), spec.heads, spec.head_dim
    slot = torch.arange(L * S * H, device=device).view(1, L, S, H, 1, 1)  # (layer * S + stream) * H + head
    coord = torch.arange(D, device=device).view(1, 1, 1, 1, D, 1)
    half = torch.arange(2, device=device).view(1, 1, 1, 1, 1, 2)
    counter = (slot * D + coord) * 2 + half
    a0, a1 = (a.view(-1, 1, 1, 1, 1, 1) for a in _micro_words(*_seed_key(seed), micro))
    u = ((_bits(counter, a0, a1) >> 8).double() + 0.5) * 2.0**-24  # 24-bit uniforms in (0, 1)
    z = (torch.sqrt(-2.0 * torch.log(u[..., 0])) * torch.cos((2 * torch.pi) * u[..., 1])).float()
    # mean + std * z in float32, as a plain normal draw would be
    return {name: spec.mean(name) + spec.std(name, device) * z[:, :, STREAMS.index(name)] for name in spec.streams()}


def draw_biases(
    spec: BiasSpec, seed: int, micro_index: int, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor] | None:
    """Draw every layer's biases for one micro-batch, on ``device``.

    Returns {"q"|"v"|"k": tensor (n_layer, heads, head_dim)} where heads is n_head with per-head
    draws and 1 otherwise (one vector shared by the heads of a layer), or None in symmetric mode.
    """
    if not spec.draws_anything:
        return None
    device = torch.device(device)
    micro = torch.full((1,), micro_index, dtype=torch.int64, device=_drawing_device(device))
    return {name: t[0].to(device) for name, t in _draw(spec, seed, micro).items()}


def _drawing_device(device: torch.device) -> torch.device:
    """Where a draw runs: on the device itself, unless it lacks float64 (MPS), then on the CPU."""
    return device if device.type in ("cpu", "cuda") else torch.device("cpu")


class BiasDraws:
    """The draws of one rank's micro-batches, made many at a time on the device.

    A rank reads micro-batches ``rank, rank + stride, ...`` (stride: the world size), so a call for
    index m draws m, m + stride, ... in one vectorised pass and later calls return views into it. Any
    index may be asked for in any order: a miss draws a new chunk starting there. Each value is computed
    elementwise from its own counter, so the chunking never changes a value.
    """

    def __init__(self, spec: BiasSpec, seed: int, device: torch.device | str, stride: int = 1):
        self.spec, self.seed, self.device, self.stride = spec, seed, torch.device(device), stride
        per_micro = 2 * spec.n_layer * len(STREAMS) * spec.heads * spec.head_dim
        self.size = max(1, CHUNK_VALUES // max(1, per_micro))  # micro-batches per chunk
        self.start: int | None = None
        self.chunk: dict[str, torch.Tensor] = {}

    def __call__(self, micro_index: int) -> dict[str, torch.Tensor] | None:
        if not self.spec.draws_anything:
            return None
        k = None if self.start is None else micro_index - self.start
        if k is None or k < 0 or k % self.stride or k // self.stride >= self.size:
            self.start, k = micro_index, 0
            micro = micro_index + self.stride * torch.arange(self.size, device=_drawing_device(self.device))
            self.chunk = {name: t.to(self.device) for name, t in _draw(self.spec, self.seed, micro).items()}
        return {name: t[k // self.stride] for name, t in self.chunk.items()}


def reference_biases(spec: BiasSpec, seed: int, micro_index: int) -> dict[str, torch.Tensor] | None:
    """``draw_biases`` written out one value at a time in Python arithmetic, with plain 32-bit
    products instead of ``_mul32``'s pieces: the check of the vectorised draw (CPU tensors)."""
    if not spec.draws_anything:
        return None

    def mix(x: int) -> int:
        x ^= x >> 16
        x = (x * 0x7FEB352D) & _MASK32
        x ^= x >> 15
        x = (x * 0x846CA68B) & _MASK32
        return x ^ (x >> 16)

    k0, k1 = _seed_key(seed)
    m0, m1 = micro_index & _MASK32, micro_index >> 32
    a0, a1 = mix(mix(m0 ^ k0) ^ m1), mix(mix(m1 ^ k1) ^ m0)
    out = {}
    for name in spec.streams():
        z = torch.empty(spec.n_layer, spec.heads, spec.head_dim, dtype=torch.float64)
        for layer in range(spec.n_layer):
            for head in range(spec.heads):
                for coord in range(spec.head_dim):
                    u = [
                        ((mix(mix(_counter(spec, layer, name, head, coord, half) ^ a0) ^ a1) >> 8) + 0.5) * 2.0**-24
                        for half in (0, 1)
                    ]
                    z[layer, head, coord] = math.sqrt(-2.0 * math.log(u[0])) * math.cos(2 * math.pi * u[1])
        out[name] = spec.mean(name) + spec.std(name) * z.float()
    return out
