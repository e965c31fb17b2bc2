"""Small-init dynamics of one attention layer whose logits are learned through q . k, in closed form where
it exists and by exact numerical minimisation where it does not.

The layer of small_tasks/attention/mechanism.py sees one-hot tokens, so a head's logit between a query
token a and a key token b is an entry of the V x V matrix Lambda_h = c W_Q^T W_K (c = 1/sqrt(head_dim)),
plus c bQ^T W_K e_b in the modes with a query bias. Everything here works on the *reduced model*: the
same loss written as a function of logit matrices, the fixed values and the output bias, so the theory
and the run share one definition of the loss (``reduced_loss``).

Derived (see docs/science.md, "Attention from small initialization"):
- symmetric: with g_h = -dL/dLambda_h, gradient flow gives dW_Q/dt = c W_K g_h^T, dW_K/dt = c W_Q g_h; at
  the first plateau (all logits 0, the output bias at its optimum) g_h = G / H for every head, G the
  reduced model's -dL/dLambda there. A singular pair (s, u, v) of G grows as exp(c s t / H) in both
  factors, so its logit grows as alpha^2 exp(2 c s t / H) from init scale alpha: the escape time is
  H ln(1/alpha) / (c s_1) + O(1). In steps of SGD with momentum beta the time unit is lr / (1 - beta).
- with bQ of mean mu: the logit term c mu^T W_K e_b is linear in W_K, so dW_K/dt has the init-independent
  part c mu (G^T 1)^T / H: the query-independent logit grows linearly from the first step, with no saddle,
  at rate c^2 |mu|^2 |G^T 1| / H. Where the data have no query-independent component G^T 1 = 0 and only
  the saddle is left.
- plateaus (AGF): the loss at the first plateau is the reduced loss at zero logits with the best output
  bias; after the first feature, one head carries a rank-1 logit matrix while the others still attend
  uniformly, at the minimum of the loss over that set (``rank_one_level``).
"""

from __future__ import annotations

import math

import torch

ATTENTIONS = ("softmax", "linear")


def attend(logits: torch.Tensor, attention: str) -> torch.Tensor:
    """Attention weights over the last axis: softmax, or its first-order expansion around uniform
    attention without the normalisation, (1 + logits) / T, where the loss is quadratic in the logits."""
    if attention == "softmax":
        return torch.softmax(logits, dim=-1)
    return (1.0 + logits) / logits.shape[-1]


def reduced_loss(
    head_logits: torch.Tensor,
    tokens: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor,
    y: torch.Tensor,
    attention: str,
) -> torch.Tensor:
    """The layer's loss as a function of per-head logit matrices ``head_logits`` (H, V, V), the output bias
    (dv,), the fixed value table ``values`` (V, dv), tokens (N, T) and targets (N, T, dv): the heads'
    outputs are averaged, the loss is 1/2 the mean over positions of the squared error."""
    logits = head_logits[:, tokens[:, :, None], tokens[:, None, :]]  # (H, N, T, T)
    out = (attend(logits, attention) @ values[tokens]).mean(0) + bias
    return 0.5 * (out - y).square().sum(-1).mean()


def best_bias(tokens: torch.Tensor, values: torch.Tensor, y: torch.Tensor, heads: int, attention: str) -> torch.Tensor:
    """The output bias that minimises the loss at zero logits: the mean residual (the loss is quadratic in it)."""
    zero = torch.zeros(heads, values.shape[0], values.shape[0], dtype=values.dtype)
    out = (attend(zero[:, tokens[:, :, None], tokens[:, None, :]], attention) @ values[tokens]).mean(0)
    return (y - out).mean((0, 1))


def first_plateau(tokens, values, y, attention: str) -> tuple[float, torch.Tensor]:
    """(L0, G): the loss at the first plateau and G = -dL/dLambda of the one-head reduced model there
    (for H heads each head's gradient is G / H; the plateau does not depend on H)."""
    bias = best_bias(tokens, values, y, 1, attention)
    lam = torch.zeros(1, values.shape[0], values.shape[0], dtype=values.dtype, requires_grad=True)
    loss = reduced_loss(lam, tokens, values, bias, y, attention)
    (grad,) = torch.autograd.grad(loss, lam)
    return float(loss.detach()), -grad[0].detach()


def escape_rate(g: torch.Tensor, head_dim: int, heads: int) -> float:
    """c s_1 / H: the rate (per unit of flow time) at which each factor of the leading feature grows."""
    return float(torch.linalg.matrix_norm(g, ord=2)) / (math.sqrt(head_dim) * heads)


def saddle_slope(g: torch.Tensor, head_dim: int, heads: int, lr_eff: float) -> float:
    """Predicted d(escape step) / d ln(1/alpha) of the symmetric model: 1 / (lr_eff c s_1 / H)."""
    return 1.0 / (lr_eff * escape_rate(g, head_dim, heads))


def first_order_rate(g: torch.Tensor, q_mean: torch.Tensor, head_dim: int, heads: int) -> float:
    """With bQ of mean ``q_mean``: d|u|/dt = c^2 |mu|^2 |G^T 1| / H, the query-independent logit u's initial
    growth (per unit of flow time), independent of the init scale. Zero without a query-independent
    component (G^T 1 = 0) or with mu = 0."""
    return float(q_mean.square().sum() * g.sum(0).norm()) / (head_dim * heads)


def rank_one_level(
    tokens, values, y, heads: int, attention: str, starts: int = 3, iters: int = 100, seed: int = 0
) -> float:
    """The loss after the first feature: min over a rank-1 logit matrix a b^T in one head (the others at
    zero logits) and the output bias, by L-BFGS from ``starts`` random points, the best kept."""
    gen = torch.Generator().manual_seed(seed)
    v = values.shape[0]
    start_bias = best_bias(tokens, values, y, heads, attention)
    factors = [torch.randn(2, v, 1, generator=gen, dtype=values.dtype) for _ in range(starts)]
    return min(_rank_one_min(ab, start_bias, tokens, values, y, heads, attention, iters) for ab in factors)


def _rank_one_min(ab, bias, tokens, values, y, heads: int, attention: str, iters: int) -> float:
    """One L-BFGS descent of the rank-1 one-head loss from factors ``ab`` (2, V, 1) and an output bias."""
    ab, bias = ab.clone().requires_grad_(), bias.clone().requires_grad_()
    others = torch.zeros(heads - 1, values.shape[0], values.shape[0], dtype=values.dtype)
    opt = torch.optim.LBFGS(
        [ab, bias], max_iter=iters, tolerance_grad=1e-12, tolerance_change=1e-15, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        lam = torch.cat([(ab[0] @ ab[1].T)[None], others])
        loss = reduced_loss(lam, tokens, values, bias, y, attention)
        loss.backward()
        return loss

    opt.step(closure)
    return float(closure().detach())


def fit_slope(log_inv_alpha: list[float], steps: list[float]) -> float:
    """Least-squares slope of escape step against ln(1/alpha)."""
    x = torch.tensor(log_inv_alpha, dtype=torch.float64)
    t = torch.tensor(steps, dtype=torch.float64)
    xc = x - x.mean()
    return float((xc * (t - t.mean())).sum() / xc.square().sum())
