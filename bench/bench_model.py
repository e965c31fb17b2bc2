"""Training-step throughput of the symmetry modes, measured side by side.

    python bench/bench_model.py [--rounds 7] [--steps 5] [--device cpu]

Config (the acceptance setting): 4 layers, 4 heads, 256 dims, context 256, batch 8, vocabulary 4096,
fp32, AdamW. A step is what the trainer does per micro-batch: draw the biases, forward, backward,
optimizer step. Variants run interleaved in rounds, the order rotated each round, so that drift in
the machine's load and position effects hit them alike; the median over rounds is reported. Prints tokens/s per variant
and the ratios bqbv/symmetric and SDPA/reference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import SymmetryConfig  # noqa: E402
from model import GPT, GPTConfig, draw_biases  # noqa: E402
from runtime import GPU_PEAK_FLOPS, peak_flops  # noqa: E402

B, T, VOCAB = 8, 256, 4096


def make(mode: str, device: str) -> tuple[GPT, torch.optim.Optimizer]:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=VOCAB, block_size=T, n_layer=4, n_head=4, n_embd=256, symmetry=SymmetryConfig(mode=mode))
    model = GPT(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    return model, opt


def timed_steps(model: GPT, opt, steps: int, start: int, reference: bool, device: str) -> float:
    x = torch.randint(0, VOCAB, (B, T), device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for m in range(start, start + steps):
        biases = draw_biases(model.bias_spec, 0, m, device)
        _, loss = model(x, x, biases, reference=reference)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return B * T * steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    variants = {
        "symmetric": ("symmetric", False),
        "bq": ("bq", False),
        "bqbv": ("bqbv", False),
        "bqbv-reference": ("bqbv", True),
    }
    built = {name: make(mode, args.device) for name, (mode, _) in variants.items()}
    for name, (_, ref) in variants.items():  # warm-up
        timed_steps(*built[name], 2, 0, ref, args.device)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate who goes first
            rates[name].append(timed_steps(*built[name], args.steps, (r + 1) * 100, variants[name][1], args.device))
    med = {name: statistics.median(v) for name, v in rates.items()}
    print(
        f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{args.rounds} rounds x {args.steps} steps, B={B} T={T}"
    )
    print(f"{'variant':<16}{'tokens/s (median)':>20}{'min':>10}{'max':>10}")
    for name, v in rates.items():
        print(f"{name:<16}{med[name]:>20,.0f}{min(v):>10,.0f}{max(v):>10,.0f}")
    print(f"ratio bqbv/symmetric   {med['bqbv'] / med['symmetric']:.3f}  (goal >= 0.97)")
    print(f"ratio bq/symmetric     {med['bq'] / med['symmetric']:.3f}")
    print(f"ratio SDPA/reference   {med['bqbv'] / med['bqbv-reference']:.3f}  (bqbv, fused vs plain attention)")
    peak = peak_flops(torch.device(args.device), None)
    if peak:
        fpt = built["bqbv"][0].flops_per_token()
        print(f"MFU bqbv (fp32/tf32 peak {peak / 1e12:.0f} TFLOP/s): {fpt * med['bqbv'] / peak:.3f}")
    else:
        print(
            f"MFU: no peak known for {args.device} (GPU table has {len(GPU_PEAK_FLOPS)} entries; "
            "train.peak_flops overrides)"
        )


if __name__ == "__main__":
    main()
