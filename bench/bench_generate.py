"""Generation tokens/s with and without the key/value cache: our GPT and its Hugging Face export.

    python bench/bench_generate.py [--rounds 3] [--threads 1] [--device cpu]

Greedy decoding from a 16-token prompt. Two models: the quickstart's shape (4 layers, 128 wide,
context 128, byte vocabulary) and a GPT-2-vocabulary one (6 layers, 384 wide, context 128). For each, a
continuation that fills the context (cached: one token per step) and, for the quickstart shape, one
that runs past it (the window slides, so those steps recompute their window either way).
Variants run interleaved in rounds; medians. Each row also says whether its tokens equal the uncached
GPT's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from model import GPT, GPTConfig  # noqa: E402
from model.hf import export  # noqa: E402

SHAPES = {  # name: (n_layer, n_embd, n_head, block_size, vocab)
    "quickstart shape": (4, 128, 4, 128, 257),
    "6x384, GPT-2 vocab": (6, 384, 6, 128, 50257),
}


def build(shape: tuple[int, int, int, int, int], device: str) -> GPT:
    n_layer, n_embd, n_head, block, vocab = shape
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=vocab, block_size=block, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    return GPT(cfg).to(device).eval()


def ways_to_generate(model: GPT, hf, prompt: torch.Tensor, new: int) -> dict[str, Callable[[], torch.Tensor]]:
    mask = torch.ones_like(prompt)

    def ours(cache: bool) -> Callable[[], torch.Tensor]:
        return lambda: model.generate(prompt, new, temperature=0, use_cache=cache)

    def theirs(cache: bool) -> Callable[[], torch.Tensor]:
        return lambda: hf.generate(prompt, attention_mask=mask, max_new_tokens=new, do_sample=False, use_cache=cache)

    return {
        "GPT, cache": ours(True),
        "GPT, no cache": ours(False),
        "HF export, cache": theirs(True),
        "HF export, no cache": theirs(False),
    }


def timed(fn) -> tuple[float, torch.Tensor]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} thread(s), {args.rounds} rounds")
    print(f"{'model':<20}{'new tokens':>11}{'variant':>26}{'tokens/s':>10}{'x uncached':>11}{'same tokens':>12}")
    for name, shape in SHAPES.items():
        model = build(shape, args.device)
        folder = tempfile.mkdtemp(prefix="bench_generate_")
        export(model, folder)
        hf = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).to(args.device).eval()
        prompt = torch.randint(0, shape[4], (1, 16), generator=torch.Generator().manual_seed(0)).to(args.device)
        block = shape[3]
        for new in [block - 16] + ([2 * block] if shape[4] < 1000 else []):
            variants = ways_to_generate(model, hf, prompt, new)
            times: dict[str, list[float]] = {v: [] for v in variants}
            outs = {}
            with torch.no_grad():
                for fn in variants.values():  # warm-up
                    fn()
                names = list(variants)
                for r in range(args.rounds):
                    for v in names[r % len(names) :] + names[: r % len(names)]:
                        sec, outs[v] = timed(variants[v])
                        times[v].append(sec)
            rate = {v: new / statistics.median(t) for v, t in times.items()}
            for v in variants:
                base = rate["HF export, no cache" if v.startswith("HF") else "GPT, no cache"]
                same = torch.equal(outs[v], outs["GPT, no cache"])
                print(f"{name:<20}{new:>11}{v:>26}{rate[v]:>10,.0f}{rate[v] / base:>11.2f}{str(same):>12}")


if __name__ == "__main__":
    main()
