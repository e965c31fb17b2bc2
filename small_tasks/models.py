"""Networks for sequential group composition. Inputs are (B, k, n): k encoded group elements.

- ``PowerMLP``: y = W_out (W_in [x_1; ...; x_k])^k, the two-layer network of the theory; its width
  must grow exponentially in k to compose exactly.
- ``QuadraticRNN``: h_1 = x_1, h_t = Pair(h_{t-1}, x_t): one shared pair-composition block applied k-1
  times, so its width is that of k = 2.
- ``DeepComposer``: log2(k) layers, each composing adjacent pairs in parallel with its own block.

Every block exposes ``neuron_groups()``: (tensors, neuron dims, degree) for the per-neuron optimizer.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from configs import UserError


class PowerMLP(nn.Module):
    """y = W_out (W_in x)^power. Init: init_scale * N(0, 1) / sqrt(fan), fans overridable."""

    def __init__(
        self,
        n_in: int,
        width: int,
        n_out: int,
        power: int,
        init_scale: float,
        in_fan: int | None = None,
        out_fan: int | None = None,
    ):
        super().__init__()
        self.power = power
        self.W_in = nn.Parameter(torch.randn(width, n_in) * init_scale / math.sqrt(in_fan or n_in))
        self.W_out = nn.Parameter(torch.randn(n_out, width) * init_scale / math.sqrt(out_fan or width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1) @ self.W_in.T
        return (h.square() if self.power == 2 else h.pow(self.power)) @ self.W_out.T

    def neuron_groups(self) -> list[tuple[list[nn.Parameter], list[int], int]]:
        return [([self.W_in, self.W_out], [0, 1], self.power)]


class QuadraticRNN(nn.Module):
    def __init__(self, n: int, width: int, k: int, init_scale: float):
        super().__init__()
        self.k = k
        self.cell = PowerMLP(2 * n, width, n, 2, init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x[:, 0]
        for t in range(1, self.k):
            h = self.cell(torch.stack([h, x[:, t]], dim=1))
        return h

    def neuron_groups(self) -> list[tuple[list[nn.Parameter], list[int], int]]:
        return self.cell.neuron_groups()


class DeepComposer(nn.Module):
    def __init__(self, n: int, width: int, k: int, init_scale: float):
        super().__init__()
        depth = int(round(math.log2(k)))
        if 2**depth != k:
            raise UserError(f"the deep model composes pairs, so task.k must be a power of two, got {k}")
        self.layers = nn.ModuleList(PowerMLP(2 * n, width, n, 2, init_scale) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            b, m, n = x.shape
            x = layer(x.reshape(b * m // 2, 2, n)).reshape(b, m // 2, n)
        return x[:, 0]

    def neuron_groups(self) -> list[tuple[list[nn.Parameter], list[int], int]]:
        return [g for layer in self.layers for g in layer.neuron_groups()]


MODELS = {"mlp": PowerMLP, "rnn": QuadraticRNN, "deep": DeepComposer}


def build_model(kind: str, n: int, width: int, k: int, init_scale: float) -> nn.Module:
    if kind == "mlp":
        return PowerMLP(k * n, width, n, k, init_scale)
    if kind == "rnn":
        return QuadraticRNN(n, width, k, init_scale)
    if kind == "deep":
        return DeepComposer(n, width, k, init_scale)
    raise UserError(f"unknown task.model '{kind}'; use one of: {', '.join(MODELS)}")


def neuron_param_groups(model: nn.Module) -> list[dict]:
    """One optimizer group per block, with the per-neuron structure and norm power 1 - degree."""
    return [
        {"params": params, "neuron_dims": dims, "norm_power": 1 - degree, "weight_decay": 0.0}
        for params, dims, degree in model.neuron_groups()
    ]
