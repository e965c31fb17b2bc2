"""Networks for sequential group composition. Inputs are (B, k, n): k encoded group elements.

- ``PowerMLP``: y = W_out (W_in [x_1; ...; x_k])^k, the two-layer network of the theory; its width
  must grow exponentially in k to compose exactly.
- ``QuadraticRNN``: the recurrent network of the composition paper, a hidden state mixed by one matrix
  and driven by the next input: h_2 = (W_in x_1 + W_drive x_2)^2, h_t = (W_mix h_(t-1) + W_drive x_t)^2,
  y = W_out h_k. W_mix = W_in W_out composes exactly at the width of k = 2 (it re-encodes the running
  product), so its width does not grow with k.
- ``DeepComposer``: log2(k) layers, each composing adjacent pairs in parallel with its own block.

Every block exposes ``neuron_groups()``: (tensors, neuron dims, degree) for the per-neuron optimizer. The
deeper models also expose ``outputs(x)``, their intermediate read-outs, and ``segments(k)``, the inputs
each composes, for training with every intermediate product as a target (the reference code's
sequence-to-sequence option).
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
    """Init: init_scale * N(0, 1) / sqrt(fan_in) for every matrix."""

    def __init__(self, n: int, width: int, k: int, init_scale: float):
        super().__init__()
        self.k = k
        self.W_in = nn.Parameter(torch.randn(width, n) * init_scale / math.sqrt(n))
        self.W_drive = nn.Parameter(torch.randn(width, n) * init_scale / math.sqrt(n))
        self.W_mix = nn.Parameter(torch.randn(width, width) * init_scale / math.sqrt(width))
        self.W_out = nn.Parameter(torch.randn(n, width) * init_scale / math.sqrt(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = (x[:, 0] @ self.W_in.T + x[:, 1] @ self.W_drive.T).square()
        for t in range(2, self.k):
            h = (h @ self.W_mix.T + x[:, t] @ self.W_drive.T).square()
        return h @ self.W_out.T

    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        """The read-out W_out h_t after every step t = 2..k, (B, k-1, n): the products of the prefixes."""
        h = (x[:, 0] @ self.W_in.T + x[:, 1] @ self.W_drive.T).square()
        out = [h]
        for t in range(2, self.k):
            h = (h @ self.W_mix.T + x[:, t] @ self.W_drive.T).square()
            out.append(h)
        return torch.stack(out, dim=1) @ self.W_out.T

    @staticmethod
    def segments(k: int) -> list[tuple[int, int]]:
        """The inputs each of ``outputs`` composes: the prefixes [0, t)."""
        return [(0, t) for t in range(2, k + 1)]

    def neuron_groups(self) -> list[tuple[list[nn.Parameter], list[int], int]]:
        """Hidden unit i owns row i of W_in, W_drive and W_mix and column i of W_out; its degree is 2 in
        the first step (the one the small-initialization escape is about)."""
        return [([self.W_in, self.W_drive, self.W_mix, self.W_out], [0, 0, 0, 1], 2)]


class DeepComposer(nn.Module):
    def __init__(self, n: int, width: int, k: int, init_scale: float):
        super().__init__()
        depth = int(round(math.log2(k)))
        if 2**depth != k:
            raise UserError(f"the deep model composes pairs, so task.k must be a power of two, got {k}")
        self.layers = nn.ModuleList(PowerMLP(2 * n, width, n, 2, init_scale) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outputs(x)[:, -1]

    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Every layer's outputs, layer by layer, (B, k-1, n): the products of adjacent blocks of 2, 4, ..., k."""
        out = []
        for layer in self.layers:
            b, m, n = x.shape
            x = layer(x.reshape(b * m // 2, 2, n)).reshape(b, m // 2, n)
            out.append(x)
        return torch.cat(out, dim=1)

    @staticmethod
    def segments(k: int) -> list[tuple[int, int]]:
        """The inputs each of ``outputs`` composes: blocks [j 2^l, (j+1) 2^l) for each layer l."""
        depth = int(round(math.log2(k)))
        return [(j * 2**layer, (j + 1) * 2**layer) for layer in range(1, depth + 1) for j in range(k // 2**layer)]

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
