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
  descent, q = 1; per-neuron SGD with p = 1 - k, q = 0). ``DormantFlow`` integrates this exactly up to
  the direction's turning (the log-norm in closed form at each step's utility);
- cost minimisation over the active neurons: when a dormant neuron's norm reaches ``threshold`` it joins
  the active set and the active set minimises the loss. ``class_agf`` takes that minimum in closed form:
  the class of irreps the neuron is aligned with is fitted exactly (its share of the residual goes to 0,
  the plateau the theory predicts), together with the dormant neurons aligned with that class, which
  grow with its drop and join its fit. Dormant neurons keep their direction and norm across phases: an
  assumption that fails where a drop is slow and its residual grows them (modular addition's
  ``restarted_agf`` measures it).

It starts from the run's own initial weights, so it predicts that run: when each class starts to drop.
Flow time converts to optimizer steps as steps = t * (1 - momentum) / lr.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


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


@dataclass
class ClassOnsets:
    onset: dict[int, float] = field(default_factory=dict)  # class -> flow time its first neuron activates
    first: dict[int, int] = field(default_factory=dict)  # class -> that neuron
    absorbed: dict[int, list[int]] = field(default_factory=dict)  # class -> dormant neurons that join its fit


def class_shares(theta: torch.Tensor, blocks: int, basis: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """Each neuron's weight per class (m, C): rows of ``theta`` cut into ``blocks`` vectors of R^|G|, each
    expressed in ``basis`` (columns grouped by class, ``owner`` (|G|, C) one-hot)."""
    parts = theta.reshape(len(theta), blocks, basis.shape[0])
    return (parts @ basis).square().sum(1) @ owner


def _class_part(y: torch.Tensor, basis: torch.Tensor, owner: torch.Tensor, c: int) -> torch.Tensor:
    """The part of the targets ``y`` (N, |G|) in class c's subspace."""
    cols = basis[:, owner[:, c] > 0]
    return y @ cols @ cols.T


@torch.no_grad()
def class_agf(
    x: torch.Tensor,
    y: torch.Tensor,
    w_in: torch.Tensor,
    w_out: torch.Tensor,
    power: int,
    norm_power: float,
    t_max: float,
    basis: torch.Tensor,
    owner: torch.Tensor,
    threshold: float = 1.0,
    step_tol: float = 0.01,
    learned: tuple[int, ...] = (),
    t0: float = 0.0,
) -> ClassOnsets:
    """AGF for f(x) = W_out (W_in x)^power (W_in: (m, k |G|), W_out: (|G|, m)) on mean((f(x) - y)^2) under the
    flow d theta_i/dt = -|theta_i|^norm_power grad_i L, from these weights at flow time t0 up to t_max.

    A neuron that reaches the threshold starts the class it is aligned with (the largest share of its
    weight), unless that class is already learned; the class's part of y leaves the residual, and the
    dormant neurons with more than half their weight in it are absorbed by its fit. Restarted from a run's
    weights at a later time, ``learned`` names the classes already fitted (their part of y is out of the
    residual) and the neurons already at half the threshold or more count as active."""
    x, y = x.double(), y.double()
    basis, owner = basis.double(), owner.double()
    blocks = power + 1
    flow = DormantFlow(w_in, w_out, power, norm_power, threshold)
    flow.dormant &= flow.lognorm < math.log(threshold / 2)
    residual, t, out = y.clone(), t0, ClassOnsets()
    for c in learned:
        residual = residual - _class_part(y, basis, owner, c)
    while t < t_max and flow.dormant.any():
        t, joined = flow.run(x, residual, t, t_max, step_tol)
        if not len(joined):
            break
        for i in joined.tolist():
            c = int(class_shares(flow.direction[i : i + 1], blocks, basis, owner).argmax())
            if c in out.onset or c in learned:
                continue
            residual = residual - _class_part(y, basis, owner, c)
            shares = class_shares(flow.direction, blocks, basis, owner)
            absorb = flow.dormant & (shares.argmax(1) == c) & (shares.max(1).values > 0.5 * shares.sum(1))
            flow.dormant &= ~absorb
            out.onset[c], out.first[c], out.absorbed[c] = t, i, torch.nonzero(absorb).flatten().tolist()
    return out
