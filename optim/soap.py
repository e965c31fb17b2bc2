"""SOAP: Adam run in the eigenbasis of Shampoo's preconditioners.

For a weight matrix W (m×n; higher-dimensional weights are viewed as m×rest) with gradient G:

  L ← β_s·L + (1−β_s)·G Gᵀ   (m×m, only when m ≤ max_precond_dim; otherwise that side is the identity)
  R ← β_s·R + (1−β_s)·Gᵀ G   (n×n, likewise)
  G̃ = Q_Lᵀ G Q_R                                  the gradient in the eigenbasis
  M̃ ← β1·M̃ + (1−β1)·G̃,   V ← β2·V + (1−β2)·G̃²       Adam's moments, kept in the eigenbasis
  W ← W·(1 − lr·wd) − lr/(1−β1ᵗ) · Q_L [M̃ / (√(V/(1−β2ᵗ)) + eps)] Q_Rᵀ

Q_L, Q_R come from ``eigh`` of the first step's Gram matrices and are refreshed every
``precondition_frequency`` steps by one power iteration and QR (Q ← qr(L·Q), columns ordered by the
estimated eigenvalues diag(Qᵀ L Q), descending, V's axis permuted along with them). M̃ is rotated
exactly into the new basis; V is carried over. The Gram matrices take the current gradient after the
Adam step, so a projection never contains the gradient it projects (except on the first step).
1-D parameters have no sides: plain AdamW with the same conventions as ``torch.optim.AdamW``.
All state is fp32 (fp64 for fp64 parameters), whatever the autocast dtype.

``original=True`` takes the step of the original SOAP code (the copy the paper's runs used) instead:
the first step only accumulates the Gram matrices and computes the eigenbases, without moving any
parameter; Adam's step count t starts on the second step, so the refreshes come at t = 10, 20, ...;
eps is added to √V before the bias corrections, which go into the step size,
W ← W − lr·√(1−β2ᵗ)/(1−β1ᵗ) · Q_L [M̃ / (√V + eps)] Q_Rᵀ; and the decay follows the update,
W ← W·(1 − lr·wd), so it shrinks the updated weights.

Under DDP every rank holds the same all-reduced gradients, hence the same Gram matrices. With
``spread_refresh`` the eigendecompositions and refreshes, SOAP's one expensive part, are shared out:
each parameter's goes to one rank (balanced by the cubed side sizes), which broadcasts the bases and
moments it changed. The owner runs the very operations a single process would, so the result is
bit-identical to a single-process run and to every rank computing everything itself.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from configs import UserError, non_negative

SIDES = ("left", "right")
BASES = tuple(f"q_{side}" for side in SIDES)


@dataclass
class Options:  # [optim.soap]
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.95, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.01  # decoupled, as AdamW's
    precondition_frequency: int = 10  # steps between eigenbasis refreshes
    max_precond_dim: int = 10000  # a matrix side longer than this is not preconditioned
    shampoo_beta: float = -1.0  # EMA of the Gram matrices; < 0: betas[1]
    spread_refresh: bool = True  # DDP: each rank refreshes a share of the eigenbases and broadcasts them
    original: bool = False  # the original SOAP code's step (the paper's): see the module docstring

    def check(self) -> None:
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise UserError(f"optim.soap.betas must be two numbers in [0, 1), got {self.betas}")
        if self.precondition_frequency < 1:
            raise UserError(f"optim.soap.precondition_frequency must be >= 1, got {self.precondition_frequency}")
        non_negative("optim.soap", eps=self.eps, weight_decay=self.weight_decay, max_precond_dim=self.max_precond_dim)
        if not self.shampoo_beta < 1:  # nan included
            raise UserError(f"optim.soap.shampoo_beta must be < 1 (< 0: betas[1]), got {self.shampoo_beta}")


def _matrix(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1) if t.dim() >= 2 else t


@contextlib.contextmanager
def _one_cpu_thread(t: torch.Tensor) -> Iterator[None]:
    """CPU LAPACK (eigh, QR) on one thread: the multithreaded kernels collapse when cores are shared
    (a 320x320 eigh took 9 s on 2 busy cores, 0.05 s on one thread)."""
    if t.device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _eigenbasis(gram: torch.Tensor) -> torch.Tensor:
    """Eigenvectors of a symmetric PSD matrix, by descending eigenvalue."""
    with _one_cpu_thread(gram):
        try:
            _, vecs = torch.linalg.eigh(gram)
        except torch.linalg.LinAlgError:  # ill-conditioned in fp32: fp64 converges
            _, vecs = torch.linalg.eigh(gram.double())
            vecs = vecs.to(gram.dtype)
    # row-major whatever LAPACK returned: a broadcast needs it, and every rank's later matmuls then
    # see the same memory layout (a layout can change a BLAS kernel's rounding)
    return vecs.flip(1).contiguous()


def balance(costs: list[float], world: int) -> list[int]:
    """An owner rank for each job: the costliest first, each to the least loaded rank (lowest on ties)."""
    load, owner = [0.0] * world, [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        owner[i] = min(range(world), key=lambda r: (load[r], r))
        load[owner[i]] += costs[i]
    return owner


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _has_sides(state: dict) -> bool:
    return any(f"gram_{side}" in state for side in SIDES)


class SOAP(torch.optim.Optimizer):
    def __init__(
        self,
        params,
        lr: float = 3e-3,
        betas: tuple[float, float] = (0.95, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        precondition_frequency: int = 10,
        max_precond_dim: int = 10000,
        shampoo_beta: float = -1.0,
        spread_refresh: bool = True,
        original: bool = False,
    ):
        Options(lr, list(betas), eps, weight_decay, precondition_frequency, max_precond_dim, shampoo_beta).check()
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            precondition_frequency=precondition_frequency,
            max_precond_dim=max_precond_dim,
            shampoo_beta=shampoo_beta,
            original=original,
        )
        super().__init__(params, defaults)
        self.spread_refresh = spread_refresh

    def _init_state(self, p: torch.Tensor, group: dict) -> dict:
        state = self.state[p]
        dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
        shape = _matrix(p).shape
        state["step"] = 0
        state["exp_avg"] = torch.zeros(shape, dtype=dtype, device=p.device)
        state["exp_avg_sq"] = torch.zeros(shape, dtype=dtype, device=p.device)
        if p.dim() >= 2:
            for side, size in (("left", shape[0]), ("right", shape[1])):
                if size <= group["max_precond_dim"]:
                    state[f"gram_{side}"] = torch.zeros(size, size, dtype=dtype, device=p.device)
        return state

    @staticmethod
    def _grams(state: dict, g: torch.Tensor, beta: float) -> None:
        if "gram_left" in state:
            state["gram_left"].lerp_(g @ g.T, 1 - beta)
        if "gram_right" in state:
            state["gram_right"].lerp_(g.T @ g, 1 - beta)

    @staticmethod
    def _project(state: dict, g: torch.Tensor) -> torch.Tensor:
        if "q_left" in state:
            g = state["q_left"].T @ g
        if "q_right" in state:
            g = g @ state["q_right"]
        return g

    @staticmethod
    def _project_back(state: dict, u: torch.Tensor) -> torch.Tensor:
        if "q_left" in state:
            u = state["q_left"] @ u
        if "q_right" in state:
            u = u @ state["q_right"].T
        return u

    @staticmethod
    def _refresh(state: dict) -> None:
        """One power iteration and QR per side; M̃ is rotated into the new basis, V follows the order."""
        for axis, side in enumerate(SIDES):
            if f"q_{side}" not in state:
                continue
            q_old = state[f"q_{side}"]
            power = state[f"gram_{side}"] @ q_old
            order = torch.argsort((q_old * power).sum(0), descending=True)
            state["exp_avg_sq"] = state["exp_avg_sq"].index_select(axis, order)
            with _one_cpu_thread(power):
                q_new = torch.linalg.qr(power[:, order]).Q.contiguous()  # see _eigenbasis
            turn = q_new.T @ q_old  # old eigenbasis coordinates -> new ones
            state["exp_avg"] = turn @ state["exp_avg"] if axis == 0 else state["exp_avg"] @ turn.T
            state[f"q_{side}"] = q_new

    @staticmethod
    def _first_basis(state: dict) -> None:
        for side in SIDES:
            if f"gram_{side}" in state:
                state[f"q_{side}"] = _eigenbasis(state[f"gram_{side}"])

    def _spread(self, states: list[dict], work, changes: tuple[str, ...]) -> None:
        """``work`` on every state: here, or shared out across DDP ranks, each owner broadcasting the
        state entries named in ``changes``."""
        world, rank = _world()
        if world == 1 or not self.spread_refresh:
            for s in states:
                work(s)
            return
        costs = [sum(s[f"gram_{x}"].shape[0] ** 3 for x in SIDES if f"gram_{x}" in s) for s in states]
        owners = balance(costs, world)
        for s, owner in zip(states, owners):
            if owner == rank:
                work(s)
        pending = []
        for s, owner in zip(states, owners):
            for side in SIDES:
                if f"gram_{side}" in s and f"q_{side}" not in s:  # a first basis computed elsewhere
                    s[f"q_{side}"] = torch.empty_like(s[f"gram_{side}"])
            for key in changes:
                if key in s:
                    pending.append(dist.broadcast(s[key], src=owner, async_op=True))
        for handle in pending:
            handle.wait()

    def _adam(self, group: dict, params: list, states: list[dict], grads: list, steps: list[int]) -> None:
        """Adam in the eigenbasis on ``params`` (each at its Adam step count in ``steps``), with decay."""
        beta1, beta2 = group["betas"]
        lr, wd, original = group["lr"], group["weight_decay"], group.get("original", False)
        projected = [self._project(s, g) for s, g in zip(states, grads)]
        exp_avg = [s["exp_avg"] for s in states]
        exp_avg_sq = [s["exp_avg_sq"] for s in states]
        torch._foreach_lerp_(exp_avg, projected, 1 - beta1)
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, projected, projected, value=1 - beta2)
        denom = torch._foreach_sqrt(exp_avg_sq)
        if original:  # eps on √V; both bias corrections in the step size
            torch._foreach_add_(denom, group["eps"])
            scale = [-lr * math.sqrt(1 - beta2**t) / (1 - beta1**t) for t in steps]
        else:
            torch._foreach_div_(denom, [math.sqrt(1 - beta2**t) for t in steps])
            torch._foreach_add_(denom, group["eps"])
            scale = [-lr / (1 - beta1**t) for t in steps]
        direction = torch._foreach_div(exp_avg, denom)
        torch._foreach_mul_(direction, scale)
        updates = [self._project_back(s, d).view_as(p).to(p.dtype) for s, d, p in zip(states, direction, params)]
        if wd and not original:
            torch._foreach_mul_(params, 1 - lr * wd)
        torch._foreach_add_(params, updates)
        if wd and original:  # the decay shrinks the updated weights
            torch._foreach_mul_(params, 1 - lr * wd)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            shampoo_beta = group["shampoo_beta"] if group["shampoo_beta"] >= 0 else group["betas"][1]
            states = [self.state[p] if self.state[p] else self._init_state(p, group) for p in params]
            grads = [_matrix(p.grad).to(s["exp_avg"].dtype) for p, s in zip(params, states)]
            for s, g in zip(states, grads):
                s["step"] += 1
                if s["step"] == 1:
                    self._grams(s, g, shampoo_beta)
            first = [s for s in states if s["step"] == 1 and _has_sides(s)]
            self._spread(first, self._first_basis, BASES)
            original = group.get("original", False)  # a checkpoint from before the switch has none
            # Adam's step count: the original code's first step only builds the preconditioners
            adam_steps = [s["step"] - 1 if original else s["step"] for s in states]
            live = [k for k, t in enumerate(adam_steps) if t > 0]
            if live:
                self._adam(group, [params[k] for k in live], [states[k] for k in live],
                           [grads[k] for k in live], [adam_steps[k] for k in live])
            for s, g in zip(states, grads):
                if s["step"] > 1:
                    self._grams(s, g, shampoo_beta)
            k = group["precondition_frequency"]
            due = [s for s, t in zip(states, adam_steps) if t > 0 and t % k == 0 and _has_sides(s)]
            self._spread(due, self._refresh, (*BASES, "exp_avg", "exp_avg_sq"))
        return loss


def build(param_groups: list[dict], o: Options) -> SOAP:
    return SOAP(
        param_groups,
        lr=o.lr,
        betas=tuple(o.betas),
        eps=o.eps,
        weight_decay=o.weight_decay,
        precondition_frequency=o.precondition_frequency,
        max_precond_dim=o.max_precond_dim,
        shampoo_beta=o.shampoo_beta,
        spread_refresh=o.spread_refresh,
        original=o.original,
    )
