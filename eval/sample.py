"""Generate text from a model, and from a trained run.

    python -m eval.sample runs/quickstart --prompt "The" --tokens 64 --temperature 0.8 --top_k 40
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.nn as nn

from configs import ArgumentParser, UserError, command, resolve_device
from eval.run import load_run


@torch.no_grad()
def sample_text(
    model: nn.Module,
    tokenizer: Any,
    prompt: str,
    n_tokens: int,
    temperature: float = 0.8,
    top_k: int | None = 40,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> str:
    """``prompt`` and ``n_tokens`` sampled tokens, decoded; the mean biases, as at evaluation."""
    was_training = model.training
    model.eval()
    device = torch.device(device)
    # sampling must not disturb (or depend on) the training streams, on the CPU or the GPU
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        ids = tokenizer.encode(prompt) or [tokenizer.eot]
        idx = torch.tensor([ids], dtype=torch.long, device=device)
        out = model.generate(idx, n_tokens, temperature=temperature, top_k=top_k)
    model.train(was_training)
    return tokenizer.decode(out[0].tolist())


@command
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description="Generate text from a trained run (mean biases, as at evaluation).")
    p.add_argument("run_dir")
    p.add_argument("--prompt", default="The ")
    p.add_argument("--tokens", type=int, default=200, help="new tokens per sample")
    p.add_argument("--temperature", type=float, default=0.8, help="0 picks the most likely token")
    p.add_argument("--top_k", type=int, default=40, help="0 samples from the whole vocabulary")
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default=None, help="a checkpoint file (default: the run's latest)")
    p.add_device()
    args = p.parse_args(argv)
    if args.tokens < 1 or args.samples < 1 or args.top_k < 0 or args.temperature < 0:
        raise UserError("--tokens and --samples must be >= 1, --top_k and --temperature >= 0; fix the value")
    device = resolve_device(args.device)
    run = load_run(args.run_dir, device, args.checkpoint)
    for i in range(args.samples):
        top_k = args.top_k or None
        seed = args.seed + i
        text = sample_text(run.model, run.tokenizer, args.prompt, args.tokens, args.temperature, top_k, seed, device)
        print(text if args.samples == 1 else f"--- sample {i + 1}\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
