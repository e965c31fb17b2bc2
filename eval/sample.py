"""Generate text from a trained run.

python -m eval.sample runs/quickstart --prompt "The " --tokens 200 --temperature 0.8 --top_k 40
"""

from __future__ import annotations

import argparse
import sys

from configs import command


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Generate text from a trained run (mean biases, as at evaluation).")
    p.add_argument("run_dir")
    p.add_argument("--prompt", default="The ")
    p.add_argument("--tokens", type=int, default=200, help="new tokens per sample")
    p.add_argument("--temperature", type=float, default=0.8, help="0 picks the most likely token")
    p.add_argument("--top_k", type=int, default=40, help="0 samples from the whole vocabulary")
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    from eval.run import load_run
    from train import sample_text

    run = load_run(args.run_dir, args.device)
    for i in range(args.samples):
        text = sample_text(
            run.model,
            run.tokenizer,
            args.prompt,
            args.tokens,
            args.temperature,
            args.top_k or None,
            seed=args.seed + i,
            device=args.device,
        )
        print(text if args.samples == 1 else f"--- sample {i + 1}\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
