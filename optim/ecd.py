"""Energy Conserving Descent, the q=1 form (docs/optimizers.md has the algorithm and its sources).

θ is every parameter as one vector of dimension d, g its gradient and F the step's loss, both with
coupled L2 (g + wd·θ, F + ½·Σ_groups wd·‖θ_group‖²). With Δt = lr/√η and ν' = ν/√d, one step is:

  1. first step only: v ← −g/‖g‖
  2. v ← v/‖v‖                                    (energy conservation: back to unit speed)
  3. v ← v − c·(g − v·(v·g)),  c = ½·Δt·η·d / ((d−1)·(F−F0))
  4. θ ← θ + Δt·v
  5. v ← ‖v‖·u/‖u‖,  u = v/‖v‖ + ν'·z,  z ~ N(0, I)   (skipped when ν = 0)

Norms and v·g are taken over all parameters jointly; ``per_tensor=True`` takes v·g per tensor, as the
paper's own code does, for comparison only.

The velocity lives in one flat buffer in parameter order, so the norms and the dot product are single
reductions. It is kept as raw·scale with a 0-dim ``scale``: the division of step 2 folds into step 3's
multiplication instead of costing a pass over d numbers, and ``velocity`` (= raw·scale) has unit
norm between steps. The step does no host synchronisation except the one the ``on_low_loss`` policy
needs to act on F − F0 ≤ 0 before anything moves (``error``, ``skip``); ``clamp`` needs none and
reports clamped steps every 100 steps and at every checkpoint.
Under DDP every rank gets the same all-reduced loss and gradients, and z is drawn from a generator
seeded by (noise_seed, step), so the replicas stay identical and resume replays the same noise.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from configs import UserError, finite, non_negative, one_of, positive
from seed_keys import draw_key

LOW_LOSS_POLICIES = ("error", "skip", "clamp")
CLAMP_REPORT_EVERY = 100  # steps between the (synchronising) checks for clamped steps


@dataclass
class Options:  # [optim.ecd]
    lr: float = 1.0  # the time step is lr / sqrt(eta)
    eta: float = 100.0
    f0: float = 2.0  # must lie below every loss the run sees
    nu: float = 0.0  # direction noise; 0 switches it off
    weight_decay: float = 0.0  # coupled L2, into the gradient and the loss
    per_tensor: bool = False  # reproduce the reference code's per-tensor dot products
    on_low_loss: str = "error"  # what to do when F <= F0: error | skip | clamp
    low_loss_floor: float = 1e-3  # on_low_loss=clamp: F - F0 is raised to this
    noise_seed: int = 0  # seeds the direction noise (nu > 0); the same on every rank

    def check(self) -> None:
        positive("optim.ecd", eta=self.eta, low_loss_floor=self.low_loss_floor)
        non_negative("optim.ecd", nu=self.nu, weight_decay=self.weight_decay)
        finite("optim.ecd", f0=self.f0)
        one_of("optim.ecd", "on_low_loss", self.on_low_loss, LOW_LOSS_POLICIES)


class LowLossError(UserError):
    """F − F0 ≤ 0: the ECD energy is undefined; F0 must lie below every loss the run will see."""


def _say(msg: str) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(msg, file=sys.stderr, flush=True)


class ECD(torch.optim.Optimizer):
    requires_loss = True

    def __init__(
        self,
        params,
        lr: float = 1.0,
        eta: float = 100.0,
        f0: float = 2.0,
        nu: float = 0.0,
        weight_decay: float = 0.0,
        per_tensor: bool = False,
        on_low_loss: str = "error",
        low_loss_floor: float = 1e-3,
        noise_seed: int = 0,
    ):
        Options(lr, eta, f0, nu, weight_decay, per_tensor, on_low_loss, low_loss_floor, noise_seed).check()
        defaults = dict(lr=lr, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.eta, self.f0, self.nu, self.per_tensor = eta, f0, nu, per_tensor
        self.on_low_loss, self.low_loss_floor, self.noise_seed = on_low_loss, low_loss_floor, noise_seed
        self.params = [p for g in self.param_groups for p in g["params"]]
        self.sizes = [p.numel() for p in self.params]
        self.dim = sum(self.sizes)
        if self.dim < 2:
            raise UserError("ECD needs at least 2 parameters (d/(d-1) in its step)")
        self.dtype = torch.float64 if any(p.dtype == torch.float64 for p in self.params) else torch.float32
        self.device = self.params[0].device
        self.steps = 0  # applied steps: the first one initialises v, and it keys the noise draw
        self.skipped = 0
        self.skip_reason: str | None = None  # why the last step() moved nothing (on_low_loss=skip)
        self.low_loss_steps = torch.zeros((), dtype=torch.int64, device=self.device)  # clamped steps
        self.low_loss_reported = 0
        position = {id(p): i for i, p in enumerate(self.params)}
        self.group_index = [[position[id(p)] for p in g["params"]] for g in self.param_groups]
        # The velocity is raw·scale: the normalisation (step 2) is folded into the next step's
        # multiplications instead of costing a pass over d numbers of its own.
        self._set_velocity(torch.zeros(self.dim, dtype=self.dtype, device=self.device), torch.ones((), **self._like))
        # The flat gradient (then the noise) is written here every step; a fresh d-sized buffer each step
        # would cost page faults on CPU (on CUDA the caching allocator would hold it anyway).
        self.workspace = torch.zeros(self.dim, **self._like)
        self.work_views = self._views(self.workspace)

    @property
    def _like(self) -> dict:
        return {"dtype": self.dtype, "device": self.device}

    @property
    def velocity(self) -> torch.Tensor:
        """The unit-norm velocity, flat, in parameter order."""
        return self.raw * self.scale

    def _set_velocity(self, raw: torch.Tensor, scale: torch.Tensor) -> None:
        self.raw, self.scale = raw, scale
        self.raw_views = self._views(raw)

    def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [v.view(p.shape) for p, v in zip(self.params, flat.split(self.sizes))]

    def _flat_grad(self) -> torch.Tensor:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        if all(g.dtype == self.dtype for g in grads):
            torch.cat([g.reshape(-1) for g in grads], out=self.workspace)
        else:
            torch._foreach_copy_(self.work_views, grads)
        return self.workspace

    def _step_size(self) -> float:
        lrs = {g["lr"] for g in self.param_groups}
        if len(lrs) > 1:
            raise UserError("ECD moves all parameters with one time step; give every parameter group the same lr")
        return lrs.pop() / math.sqrt(self.eta)

    @torch.no_grad()
    def step(self, closure=None, *, loss: torch.Tensor | float | None = None):
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if loss is None:
            raise UserError("ECD needs the step's loss: call step(loss=...) or pass a closure")
        dt = self._step_size()
        F = torch.as_tensor(loss, device=self.device).detach().to(self.dtype).reshape(())
        g = self._flat_grad()
        for group, idx in zip(self.param_groups, self.group_index):  # coupled L2: into g and into F
            wd = group["weight_decay"]
            if wd:
                torch._foreach_add_([self.work_views[i] for i in idx], group["params"], alpha=wd)
                sq = torch.stack(torch._foreach_norm(group["params"])).to(self.dtype).square().sum()
                F = F + 0.5 * wd * sq
        gap = F - self.f0
        self.skip_reason = None
        if self.on_low_loss != "clamp":
            if bool(gap <= 0):  # the policy's one host synchronisation per step
                msg = (
                    f"ECD: loss {float(F):.6g} is at or below F0 = {self.f0}; the energy (F - F0) is undefined "
                    "there; set optim.ecd.f0 below the lowest loss"
                )
                if self.on_low_loss == "error":
                    raise LowLossError(msg + " (or optim.ecd.on_low_loss=skip|clamp)")
                self.skipped += 1
                self.skip_reason = msg  # the trainer reports it, with its step number
                return loss
        else:
            self.low_loss_steps += (gap <= 0).to(torch.int64)
            gap = gap.clamp(min=self.low_loss_floor)
            if (self.steps + 1) % CLAMP_REPORT_EVERY == 0:
                self._report_clamps()

        v = self.raw
        if self.steps == 0:  # 1. start along the descent direction
            torch.neg(g, out=v)
            self.scale = 1 / torch.linalg.vector_norm(v)
        # 2. the unit velocity is scale·v. 3. v ← scale·v·(1 + c·scale·(v·g)) − c·g:
        c = (0.5 * dt * self.eta * self.dim / (self.dim - 1)) / gap
        if self.per_tensor:  # with v·g per tensor (the paper's code)
            dots = torch.stack([torch.dot(a, b) for a, b in zip(v.split(self.sizes), g.split(self.sizes))])
            torch._foreach_mul_(self.raw_views, list((self.scale * (1 + c * self.scale * dots)).unbind()))
        else:
            v.mul_(self.scale * (1 + c * self.scale * torch.dot(v, g)))
        v.addcmul_(g, c, value=-1)
        torch._foreach_add_(self.params, self.raw_views, alpha=dt)  # 4.
        norm = torch.linalg.vector_norm(v)
        if self.nu > 0:  # 5. (the norm is kept implicitly: the next step normalises anyway)
            gen = torch.Generator(device=self.device)
            gen.manual_seed(draw_key(self.noise_seed, self.steps, 0))
            z = torch.randn(self.dim, generator=gen, out=self.workspace, **self._like)
            v.div_(norm).add_(z, alpha=self.nu / math.sqrt(self.dim))
            norm = torch.linalg.vector_norm(v)
        self.scale = 1 / norm
        self.steps += 1
        return loss

    def _report_clamps(self) -> None:
        n = int(self.low_loss_steps)
        if n > self.low_loss_reported:
            _say(
                f"warning: ECD: F - F0 <= 0 on {n} step(s) so far (clamped to {self.low_loss_floor}); "
                "set optim.ecd.f0 below the lowest loss"
            )
            self.low_loss_reported = n

    def state_dict(self) -> dict:
        if self.on_low_loss == "clamp":
            self._report_clamps()
        sd = super().state_dict()
        sd["ecd"] = {
            "velocity": self.raw.clone(),  # the unit-norm velocity is velocity * velocity_scale
            "velocity_scale": self.scale.clone(),
            "steps": self.steps,
            "skipped": self.skipped,
            "low_loss_steps": self.low_loss_steps.clone(),
            "low_loss_reported": self.low_loss_reported,
            "noise_seed": self.noise_seed,
        }
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("ecd")
        if extra["velocity"].numel() != self.dim:
            raise UserError("the checkpoint's ECD velocity does not match the model's parameters")
        super().load_state_dict(state_dict)
        self._set_velocity(extra["velocity"].to(**self._like).clone(), extra["velocity_scale"].to(**self._like))
        self.steps, self.skipped = int(extra["steps"]), int(extra["skipped"])
        self.low_loss_steps = extra["low_loss_steps"].to(self.device)
        self.low_loss_reported = int(extra["low_loss_reported"])
        if int(extra["noise_seed"]) != self.noise_seed:
            raise UserError(
                "the checkpoint's ECD noise_seed differs from optim.ecd.noise_seed; keep it the same to resume"
            )


def build(param_groups: list[dict], o: Options) -> ECD:
    return ECD(
        param_groups,
        lr=o.lr,
        eta=o.eta,
        f0=o.f0,
        nu=o.nu,
        weight_decay=o.weight_decay,
        per_tensor=o.per_tensor,
        on_low_loss=o.on_low_loss,
        low_loss_floor=o.low_loss_floor,
        noise_seed=o.noise_seed,
    )
