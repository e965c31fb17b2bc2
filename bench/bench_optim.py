"""Optimizer step time and state memory, side by side in one run.

    python bench/bench_optim.py [--width 256] [--rounds 5] [--steps 5] [--threads 1]

Step time: on CPU, GPT-2 124M's structure (12 layers, tied embedding, 4x MLP, PReLU) scaled down
in width (n_embd = --width; vocabulary and SOAP's max_precond_dim scaled by the same factor, so the
same sides are preconditioned as at 124M: not the embedding's vocabulary side), fixed random gradients. Variants
run interleaved, round after round, and each reports the median over rounds of its mean step time,
as a ratio to torch AdamW (foreach): shared machines make absolute times noise, ratios less so.
SOAP is timed without refreshes, and its refresh (power iteration + QR on every side) separately, so
its cost at preconditioning frequency k is step + refresh/k. Muon runs its Newton-Schulz products in
fp32 here (bf16 on CUDA), on the blocks' matrices, and AdamW (foreach) on the embedding and the rest.

Memory: the bytes of every tensor in ``optimizer.state_dict()`` after one step, for the bench model
and for the real GPT-2 124M (context 512), the latter built on the meta device, so nothing is allocated.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import optim
from configs import OptimConfig
from model import GPT, GPTConfig
from optim.soap import SOAP

LOSS = 5.0  # the loss handed to ECD; any value above F0


def gpt(width: int, device: str = "cpu") -> GPT:
    vocab = max(64, round(50304 * width / 768 / 64) * 64)
    with torch.device(device):
        return GPT(GPTConfig(vocab_size=vocab, block_size=512, n_layer=12, n_head=max(1, width // 64), n_embd=width))


def variants(width: int) -> dict[str, OptimConfig]:
    max_dim = 10000 * width // 768
    return {
        "adamw": optim.config("adamw", lr=1e-4, weight_decay=0.01),
        "sgdm": optim.config("sgdm", lr=0.03, weight_decay=0.0),
        "ecd": optim.config("ecd", lr=1.0, weight_decay=0.0, on_low_loss="clamp"),
        "ecd (wd 0.01)": optim.config("ecd", lr=1.0, weight_decay=0.01, on_low_loss="clamp"),
        "ecd (per_tensor)": optim.config("ecd", lr=1.0, weight_decay=0.0, per_tensor=True, on_low_loss="clamp"),
        "soap (no refresh)": optim.config(
            "soap", lr=3e-4, betas=[0.95, 0.95], precondition_frequency=10**9, max_precond_dim=max_dim
        ),
        "muon": optim.config("muon", lr=0.02, adamw_lr=1e-4, adamw_weight_decay=0.01),
    }


def build(model: GPT, cfg: OptimConfig) -> torch.optim.Optimizer:
    return optim.build_optimizer(optim.param_groups(model, cfg), cfg)


def stepper(opt: torch.optim.Optimizer) -> Callable[[], None]:
    if getattr(opt, "requires_loss", False):
        loss = torch.tensor(LOSS)
        return lambda: opt.step(loss=loss)
    return opt.step


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """Every tensor the optimizer keeps between steps: per-parameter state and its own attributes
    (ECD's flat velocity), but not ECD's scratch ``workspace`` (d floats, printed separately: AdamW's
    foreach step allocates temporaries of that size too). Read from the objects, not ``state_dict()``."""
    tensors = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    tensors += [t for k, t in vars(opt).items() if isinstance(t, torch.Tensor) and k != "workspace"]
    return sum(t.numel() * t.element_size() for t in tensors)


def fill_grads(model: GPT, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.empty_like(p) if p.is_meta else torch.randn(p.shape, generator=g) * 1e-3


def time_steps(args) -> None:
    model = gpt(args.width)
    fill_grads(model)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"step time: 124M structure at width {args.width}, {n_params / 1e6:.1f}M parameters, "
        f"{torch.get_num_threads()} thread(s), {args.rounds} rounds x {args.steps} steps"
    )
    opts = {name: build(model, cfg) for name, cfg in variants(args.width).items()}
    steps = {name: stepper(o) for name, o in opts.items()}
    for step in steps.values():  # the first step allocates state (and SOAP's eigh)
        step()
    soap = opts["soap (no refresh)"]
    times: dict[str, list[float]] = {name: [] for name in opts}
    refresh: list[float] = []
    for _ in range(args.rounds):
        for name, step in steps.items():
            t = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - t) / args.steps)
        t = time.perf_counter()
        for state in soap.state.values():
            SOAP._refresh(state)
        refresh.append(time.perf_counter() - t)
    med = {name: statistics.median(v) for name, v in times.items()}
    base = med["adamw"]
    print(f"{'optimizer':<22}{'ms/step':>10}{'x adamw':>10}")
    for name, t in med.items():
        print(f"{name:<22}{t * 1e3:>10.1f}{t / base:>10.2f}")
    r = statistics.median(refresh)
    print(f"soap refresh (all sides): {r * 1e3:.1f} ms")
    for k in (1, 10, 100):
        t = med["soap (no refresh)"] + r / k
        print(f"{'soap, refresh every ' + str(k):<22}{t * 1e3:>10.1f}{t / base:>10.2f}")


def memory(args) -> None:
    for label, device, width in (("bench model", "cpu", args.width), ("GPT-2 124M", "meta", 768)):
        model = gpt(width, device)
        fill_grads(model)
        n = sum(p.numel() for p in model.parameters())
        sizes = {}
        for name, cfg in variants(width).items():
            if name.startswith("ecd (") or name.startswith("soap"):
                continue
            opt = build(model, cfg)
            stepper(opt)()
            sizes[name] = state_bytes(opt)
        soap = optim.config("soap", lr=3e-4, precondition_frequency=10, max_precond_dim=10000 * width // 768)
        opt = build(model, soap)
        opt.step()
        sizes["soap"] = state_bytes(opt)
        print(f"state memory, {label} ({n / 1e6:.1f}M parameters, fp32 state):")
        for name, b in sizes.items():
            print(f"  {name:<8}{b / 2**20:>10.1f} MiB{b / sizes['adamw']:>8.2f} x adamw{b / (4 * n):>8.2f} x params")
        print(f"  (ecd's scratch workspace, not state: {4 * n / 2**20:.1f} MiB)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=256, help="n_embd of the scaled-down model (768 is 124M)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=5, help="steps per variant per round")
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (one: on shared cores, more measure contention)"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    time_steps(args)
    memory(args)


if __name__ == "__main__":
    main()
