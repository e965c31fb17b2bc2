"""A small classifier with all three symmetries, trained by SGD, against the exact conservation laws.

    python train.py configs/small_tasks/conservation_laws.toml

Network: x -> W_in -> layer norm (no gain, eps 0) -> W_hidden -> ReLU -> W_out, b_out -> softmax.
- translation: adding one vector to every row of W_out (one number to every entry of b_out) shifts all
  logits alike, so S = sum over classes of W_out's rows (of b_out) is a linear charge;
- scale: the layer norm makes the loss invariant to W_in -> a W_in, so |W_in|^2 is a quadratic charge;
- rescale: ReLU is positively homogeneous, so neuron i's |W_out[:, i]|^2 - |W_hidden[i]|^2 is one.
The laws (small_tasks/noether.py) hold for any data order, so training uses random mini-batches.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class SymmetricNet(nn.Module):
    def __init__(self, d_in: int, width: int, hidden: int, classes: int, generator: torch.Generator):
        super().__init__()

        def init(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, generator=generator, dtype=torch.float64) / shape[-1] ** 0.5)

        self.w_in = init(width, d_in)
        self.w_hidden = init(hidden, width)
        self.w_out = init(classes, hidden)
        self.b_out = nn.Parameter(0.1 * torch.randn(classes, generator=generator, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.layer_norm(x @ self.w_in.T, (self.w_in.shape[0],), eps=0.0)  # eps 0: exactly scale invariant
        return F.relu(h @ self.w_hidden.T) @ self.w_out.T + self.b_out


def linear_charges(w_out: torch.Tensor, b_out: torch.Tensor) -> dict[str, torch.Tensor]:
    """The translation charges: W_out's and b_out's sums over classes."""
    return {"translation_weight": w_out.sum(0), "translation_bias": b_out.sum()}


def quadratic_charges(w_in: torch.Tensor, w_hidden: torch.Tensor, w_out: torch.Tensor) -> dict[str, torch.Tensor]:
    """The scale charge |W_in|^2 and the per-neuron rescale charges |W_out[:, i]|^2 - |W_hidden[i]|^2.

    Applied to parameters these are the charges; to steps theta_{n+1} - theta_n, the kinetic terms; to
    gradients, plain SGD's gradient terms."""
    return {"scale": w_in.square().sum(), "rescale": w_out.square().sum(0) - w_hidden.square().sum(1)}
