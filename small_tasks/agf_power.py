"""Alternating Gradient Flows run numerically for the two-layer power network f(x) = sum_i w_i (u_i . x)^k.

AGF (Kunin et al., *Alternating Gradient Flows*) models training from small initialization as two
alternating phases:

- utility maximisation over the dormant neurons: a neuron whose output is negligible sees the residual
  r of the active ones as fixed and follows the gradient flow of its utility
  U_i = (2 / (N n_out)) sum_x (u_i . x)^k <w_i, r(x)> (minus the loss's first-order change). With
  theta_i = (u_i, w_i) of norm e^l and direction theta_bar, U is homogeneous of degree h = k + 1 and the
  flow splits into a direction flow on the unit sphere and a log-norm that integrates the utility:
      d theta_bar / dt = e^(q l) P grad U(theta_bar),    d l / dt = e^(q l) h U(theta_bar),
  where q = p + h - 2 for an optimizer that scales neuron i's step by |theta_i|^p (p = 0: plain gradient
  descent, q = 1; per-neuron SGD with p = 1 - k, q = 0);
- cost minimisation over the active neurons: when a dormant neuron's norm reaches ``threshold`` it joins
  the active set, and the active neurons minimise the loss (in no time); their residual starts the next
  utility phase. Dormant neurons keep their direction and norm across phases.

The result is a staircase: the loss after each cost minimisation and the flow time of each activation.
It starts from the run's own initial weights, so it predicts that run (which neuron learns what, and when),
not only the order of the template's irreps. Flow time converts to optimizer steps as
steps = t * (1 - momentum) / lr.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class AGFStaircase:
    times: list[float] = field(default_factory=list)  # flow time of each activation event
    levels: list[float] = field(default_factory=list)  # loss at the start, then after each event's cost minimisation
    joined: list[list[int]] = field(default_factory=list)  # the neurons that became active at each event
    residuals: list[torch.Tensor] = field(default_factory=list)  # y - f after each event's cost minimisation
    t_end: float = 0.0  # flow time the prediction covers

    def loss_at(self, t: float) -> float:
        """The predicted loss at flow time t (a step function)."""
        i = sum(1 for s in self.times if s <= t)
        return self.levels[i]


def _utility(x: torch.Tensor, r: torch.Tensor, u: torch.Tensor, w: torch.Tensor, k: int):
    """Utilities (m,) of unit-norm neurons (u: (m, D), w: (m, n_out)) and their gradients."""
    c = 2.0 / (x.shape[0] * r.shape[1])
    s = x @ u.T  # (N, m)
    rw = r @ w.T  # (N, m)
    sk1 = s.pow(k - 1)
    util = c * (sk1 * s * rw).sum(0)
    gu = c * k * (sk1 * rw).T @ x
    gw = c * (sk1 * s).T @ r
    return util, gu, gw


def _loss_and_grad(x: torch.Tensor, y: torch.Tensor, flat: torch.Tensor, a: int, k: int):
    """The loss mean((f - y)^2) of the neurons packed in ``flat`` (a rows of u, then a rows of w), and its gradient."""
    d = x.shape[1]
    u, w = flat[: a * d].view(a, d), flat[a * d :].view(a, -1)
    s = x @ u.T
    sk1 = s.pow(k - 1)
    err = (sk1 * s) @ w - y
    c = 2.0 / err.numel()
    g = torch.cat([(c * k * (sk1 * (err @ w.T)).T @ x).flatten(), (c * (sk1 * s).T @ err).flatten()])
    return float(err.square().mean()), g


def _minimise(x: torch.Tensor, y: torch.Tensor, u: torch.Tensor, w: torch.Tensor, k: int, max_iter: int) -> float:
    """Cost minimisation: the active neurons (u: (a, D), w: (a, n_out)) descend to a minimum of the loss, in place.

    L-BFGS in rounds of 250 iterations, until a round lowers the loss by less than 1e-8 of itself: the
    active set's surface has saddles that take thousands of iterations to leave, and a budget shorter
    than that returns a saddle instead of the minimum."""
    a = len(u)
    flat = torch.cat([u.flatten(), w.flatten()])
    flat.grad = torch.zeros_like(flat)

    def closure() -> torch.Tensor:
        loss, g = _loss_and_grad(x, y, flat, a, k)
        flat.grad.copy_(g)
        return torch.tensor(loss)

    opt = torch.optim.LBFGS(
        [flat], lr=1.0, max_iter=250, history_size=10, tolerance_grad=1e-14, tolerance_change=0.0,
        line_search_fn="strong_wolfe",
    )
    loss = float(closure())
    for _ in range(max(1, max_iter // 250)):
        opt.step(closure)
        new = float(closure())
        if loss - new <= 1e-8 * new:
            break
        loss = new
    d = x.shape[1]
    u.copy_(flat[: a * d].view(a, d))
    w.copy_(flat[a * d :].view(a, -1))
    return float(closure())


def _flow_time(
    ln: torch.Tensor, util: torch.Tensor, h: int, q: float, ds: torch.Tensor, log_thr: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per dormant neuron, at a fixed utility: the flow time in which its direction time advances by ``ds``,
    and the flow time at which its log-norm reaches ``log_thr`` (inf if it never does).

    With a = q h U and z = e^(-q l): dz/dt = -a, so z falls linearly; the direction moves at rate 1/z,
    so direction time s and flow time t are related by z(t) = z0 e^(-a s). q = 0: s = t, l grows by h U t."""
    if q == 0:
        rate = h * util
        hit = torch.where(rate > 0, (log_thr - ln) / rate.clamp_min(1e-300), math.inf)
        return ds, hit
    a = q * h * util
    z0 = (-q * ln).exp()
    small = a.abs() * ds < 1e-9
    dt = torch.where(small, z0 * ds, z0 * -torch.expm1(-a * ds) / torch.where(small, 1.0, a))
    z_thr = math.exp(-q * log_thr)
    hit = torch.where(a * (z0 - z_thr) > 0, (z0 - z_thr) / torch.where(a == 0, 1.0, a), math.inf)
    return dt, hit


def _advance(ln: torch.Tensor, util: torch.Tensor, h: int, q: float, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The log-norm after flow time dt at a fixed utility, and the direction time elapsed."""
    if q == 0:
        return ln + dt * h * util, torch.full_like(ln, dt)
    a = q * h * util
    z0 = (-q * ln).exp()
    z1 = (z0 - a * dt).clamp_min(1e-300)
    small = (a * dt).abs() < 1e-9 * z0
    ds = torch.where(small, dt / z0, (z0 / z1).log() / torch.where(small, 1.0, a))
    return -z1.log() / q, ds


class DormantFlow:
    """The utility-maximisation phase for a set of neurons: their directions and log-norms, advanced
    together in flow time against a fixed residual until one of them reaches the threshold."""

    def __init__(self, w_in: torch.Tensor, w_out: torch.Tensor, power: int, norm_power: float, threshold: float):
        theta = torch.cat([w_in.double(), w_out.double().T], dim=1)  # (m, D + n_out): neuron i is row i
        self.d_in, self.k, self.h = w_in.shape[1], power, power + 1
        self.q = norm_power + self.h - 2
        self.lognorm = theta.norm(dim=1).log()
        self.direction = theta / theta.norm(dim=1, keepdim=True)
        self.dormant = torch.ones(len(theta), dtype=torch.bool)
        self.log_thr = math.log(threshold)

    def run(self, x: torch.Tensor, residual: torch.Tensor, t: float, t_stop: float, step_tol: float):
        """Advance from flow time t until a dormant neuron reaches the threshold or t_stop; returns the
        time reached and the neurons that reached the threshold (empty at t_stop)."""
        d_in, h, q = self.d_in, self.h, self.q
        while t < t_stop and self.dormant.any():
            idx = torch.nonzero(self.dormant).flatten()
            dirs, ln = self.direction[idx], self.lognorm[idx]
            util, gu, gw = _utility(x, residual, dirs[:, :d_in], dirs[:, d_in:], self.k)
            grad = torch.cat([gu, gw], dim=1)
            tangent = grad - dirs * (dirs * grad).sum(1, keepdim=True)
            # Within a step the utility is held at its value at the step's start: the log-norm then has a
            # closed form (below), so the step is limited only by how far the directions turn.
            ds_max = step_tol / tangent.norm(dim=1).clamp_min(1e-300)  # direction time each neuron may advance
            dt_each, hit_each = _flow_time(ln, util, h, q, ds_max, self.log_thr)
            hit = float(hit_each.min())
            dt = min(float(dt_each.min()), hit, t_stop - t)
            ln_new, ds = _advance(ln, util, h, q, dt)
            new_dirs = dirs + ds[:, None] * tangent
            self.direction[idx] = new_dirs / new_dirs.norm(dim=1, keepdim=True)
            self.lognorm[idx] = torch.minimum(ln_new, torch.full_like(ln_new, self.log_thr))
            t += dt
            if hit <= dt:
                joined = idx[hit_each <= dt * (1 + 1e-9)]
                self.lognorm[joined] = self.log_thr
                self.dormant[joined] = False
                return t, joined
        return t, torch.zeros(0, dtype=torch.long)


@torch.no_grad()
def dormant_directions(
    x: torch.Tensor,
    y: torch.Tensor,
    w_in: torch.Tensor,
    w_out: torch.Tensor,
    power: int,
    norm_power: float,
    t_stop: float,
    step_tol: float = 0.01,
) -> torch.Tensor:
    """Every neuron's direction (m, D + n_out) after the first utility phase, at flow time t_stop, with no
    neuron activated: which class each one is aligned with when the first class is learned."""
    flow = DormantFlow(w_in, w_out, power, norm_power, threshold=math.inf)
    flow.run(x.double(), y.double(), 0.0, t_stop, step_tol)
    return flow.direction


@torch.no_grad()
def power_network_agf(
    x: torch.Tensor,
    y: torch.Tensor,
    w_in: torch.Tensor,
    w_out: torch.Tensor,
    power: int,
    norm_power: float,
    t_max: float,
    threshold: float = 1.0,
    step_tol: float = 0.01,
    loss_floor: float = 1e-9,
    max_cm_iter: int = 20_000,
) -> AGFStaircase:
    """AGF for f(x) = W_out (W_in x)^power from the initial weights (W_in: (m, D), W_out: (n_out, m)) on the loss
    mean((f(x) - y)^2), under the flow d theta_i/dt = -|theta_i|^norm_power grad_i L, up to flow time t_max.

    ``step_tol`` bounds how far one integration step turns a direction (radians); within a step the
    log-norm follows its closed form at the step's utility, and steps land exactly on each activation.
    """
    x, y = x.double(), y.double()
    flow = DormantFlow(w_in, w_out, power, norm_power, threshold)
    act_u = torch.zeros(0, w_in.shape[1], dtype=torch.float64)
    act_w = torch.zeros(0, y.shape[1], dtype=torch.float64)
    residual = y.clone()
    out = AGFStaircase(levels=[float(y.square().mean())], t_end=t_max)
    t = 0.0
    while t < t_max and flow.dormant.any() and out.levels[-1] > loss_floor:
        t, joined = flow.run(x, residual, t, t_max, step_tol)
        if not len(joined):
            break
        new = threshold * flow.direction[joined]
        act_u = torch.cat([act_u, new[:, : flow.d_in]])
        act_w = torch.cat([act_w, new[:, flow.d_in :]])
        level = _minimise(x, y, act_u, act_w, power, max_cm_iter)
        residual = y - (x @ act_u.T).pow(power) @ act_w
        out.times.append(t)
        out.levels.append(level)
        out.joined.append(joined.tolist())
        out.residuals.append(residual)
    return out
