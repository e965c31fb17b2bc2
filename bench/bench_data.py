"""Data pipeline speed, measured side by side.

    python bench/bench_data.py [--rounds 3] [--copies 8] [--workers 2] [--bpe_file PATH]

1. Preparation: ``python -m data.prepare``'s pipeline (read a .jsonl file, tokenize with gpt2 in
   --workers processes, write shards) against raw tiktoken ``encode_ordinary_batch`` on the same
   documents already in memory. Both run interleaved in rounds; the median tokens/s of each and their
   ratio are printed (goal: ratio >= 0.70 on 2 cores).
2. Loader: batches/s of the quickstart's train stream (``TokenStream.batch`` plus the tensor hand-off)
   against the quickstart model's consumption rate (optimizer steps/s of configs/quickstart.toml on
   this machine, the faster of 1 thread and torch's default). Goal: ratio >= 100.
3. Validation: opening a 100M-token shard with the vocabulary check (page cache warm).

The text is the built-in corpus repeated --copies times (about 2 MB each). GPT-2 ranks come from
--bpe_file or GPT2_BPE_FILE (or tiktoken's own download, online).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.prepare import prepare  # noqa: E402
from data.sources import resolve_source  # noqa: E402
from data.tokenizer import gpt2_encoding  # noqa: E402


def bench_prepare(docs: list[str], rounds: int, workers: int, bpe_file: str, tmp: Path) -> tuple[float, float]:
    path = tmp / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    enc = gpt2_encoding(bpe_file)
    n_tokens = sum(len(ids) for ids in enc.encode_ordinary_batch(docs[:100]))  # warm-up
    raw, ours = [], []
    for r in range(rounds):
        t = time.perf_counter()
        n_tokens = sum(len(ids) for ids in enc.encode_ordinary_batch(docs))
        raw.append(n_tokens / (time.perf_counter() - t))
        t = time.perf_counter()
        meta = prepare(
            resolve_source(f"files:{path}"),
            "gpt2",
            tmp / "out",
            bpe_file=bpe_file,
            workers=workers,
            overwrite=True,
            progress=False,
        )
        dt = time.perf_counter() - t
        text_tokens = sum(meta["tokens"].values()) - sum(meta["documents"].values())  # without end-of-text
        assert text_tokens == n_tokens, (text_tokens, n_tokens)
        ours.append(n_tokens / dt)
        print(f"  round {r}: raw {raw[-1] / 1e6:.3f}M tok/s, prepare {ours[-1] / 1e6:.3f}M tok/s", flush=True)
    return statistics.median(raw), statistics.median(ours)


def bench_loader(steps: int, batches: int) -> tuple[float, float]:
    import torch

    from configs import load_config
    from optim import build_optimizer
    from runtime import Context
    from tasks.lm import LMTask

    cfg = load_config(None, ["--train.progress=false"])
    ctx = Context(device=torch.device("cpu"))
    task = LMTask(cfg, ctx)
    model = task.build_model()
    optimizer = build_optimizer(task.param_groups(model), cfg.optim)
    model.train()

    def step(m: int) -> None:
        loss = task.loss(model, task.batch(m), m)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    rates = []
    for threads in sorted({1, torch.get_num_threads()}):  # on a busy machine one thread can be much faster
        torch.set_num_threads(threads)
        step(0)  # warm-up
        t = time.perf_counter()
        for m in range(1, steps + 1):
            step(m)
        rates.append(steps / (time.perf_counter() - t))
    consume = max(rates)  # the model's best rate: the comparison must not flatter the loader
    task.batch(0)
    t = time.perf_counter()
    for m in range(batches):
        task.batch(m)
    load = batches / (time.perf_counter() - t)
    return consume, load


def bench_validation(tmp: Path) -> float:
    from data.loader import TokenStream
    from data.shards import write_shard

    path = tmp / "big_train_000000.bin"
    write_shard(path, np.random.default_rng(0).integers(0, 50257, 100_000_000, dtype=np.uint16), vocab_size=50257)
    TokenStream([path], 8, 1024, vocab_size=50257)  # page cache warm
    t = time.perf_counter()
    TokenStream([path], 8, 1024, vocab_size=50257)
    dt = time.perf_counter() - t
    path.unlink()
    return dt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--copies", type=int, default=8, help="copies of the built-in corpus to tokenize")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=10, help="quickstart optimizer steps to time per thread count")
    p.add_argument("--batches", type=int, default=5000, help="loader batches to time")
    p.add_argument("--bpe_file", default=os.environ.get("GPT2_BPE_FILE"))
    args = p.parse_args()
    from data.builtin import documents

    docs = list(documents()) * args.copies
    print(f"cores: {len(os.sched_getaffinity(0))}, text: {sum(len(d) for d in docs) / 1e6:.1f}M characters")
    with tempfile.TemporaryDirectory() as tmp:
        raw, ours = bench_prepare(docs, args.rounds, args.workers, args.bpe_file, Path(tmp))
        print(
            f"prepare ({args.workers} workers): {ours / 1e6:.3f}M tok/s | raw encode_ordinary_batch: "
            f"{raw / 1e6:.3f}M tok/s | ratio {ours / raw:.2f} (goal >= 0.70)"
        )
        consume, load = bench_loader(args.steps, args.batches)
        print(
            f"loader: {load:,.0f} batches/s | quickstart consumes {consume:,.1f} batches/s | "
            f"ratio {load / consume:,.0f} (goal >= 100)"
        )
        print(f"open + validate one 100M-token shard (warm cache): {bench_validation(Path(tmp)):.3f}s")


if __name__ == "__main__":
    main()
