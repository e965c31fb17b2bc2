"""The token stream: every window once per epoch, disjoint ranks, deterministic order, exact resume."""

from pathlib import Path

import numpy as np
import pytest

import train
from data.loader import TokenStream
from data.shards import write_shard
from tasks.lm import LMTask

B, T = 2, 8


@pytest.fixture
def files(tmp_path) -> list[Path]:
    """Three shards of different lengths whose tokens are their own positions (mod 257), tagged by shard."""
    out = []
    for k, n in enumerate([170, 65, 300]):
        path = tmp_path / f"s_train_{k:06d}.bin"
        write_shard(path, (np.arange(n) + 1000 * k) % 60000, vocab_size=60000)
        out.append(path)
    return out


def windows_of(stream: TokenStream, ms) -> list[tuple[int, int]]:
    return [stream.locate(m) for m in ms]


def test_an_epoch_visits_every_window_once_and_batches_hold_their_window(files):
    stream = TokenStream(files, B, T, seed=3)
    everything = {(k, j * B * T) for k, n in enumerate(stream.windows) for j in range(n)}
    for epoch in range(2):
        ms = range(epoch * stream.per_epoch, (epoch + 1) * stream.per_epoch)
        seen = windows_of(stream, ms)
        assert len(set(seen)) == len(seen) == stream.per_epoch and set(seen) == everything
    tokens = [np.asarray(np.memmap(f, dtype=np.uint16, mode="r", offset=1024)) for f in files]
    for m in range(0, 2 * stream.per_epoch, 5):
        k, offset = stream.locate(m)
        x, y = stream.batch(m)
        window = tokens[k][offset : offset + B * T + 1].astype(np.int64)
        assert (x.ravel() == window[:-1]).all() and (y.ravel() == window[1:]).all()


def test_order_depends_on_seed_and_epoch_only(files):
    a, b, c = TokenStream(files, B, T, seed=1), TokenStream(files, B, T, seed=1), TokenStream(files, B, T, seed=2)
    n = a.per_epoch
    assert windows_of(a, range(n)) == windows_of(b, range(n)) != windows_of(c, range(n))
    assert windows_of(a, range(n)) != windows_of(a, range(n, 2 * n))  # reshuffled each epoch
    plain = TokenStream(files, B, T, shuffle=False)
    assert windows_of(plain, range(3)) == [(0, 0), (0, B * T), (0, 2 * B * T)]


@pytest.mark.parametrize("world,accum", [(2, 1), (2, 3), (4, 2)])
def test_ranks_read_disjoint_windows_whose_union_is_the_single_process_stream(files, world, accum):
    stream = TokenStream(files, B, T, seed=7)
    steps = 2 * stream.per_epoch // (world * accum) + 1  # crosses an epoch boundary
    per_rank = [
        [stream.locate((s * accum + i) * world + r) for s in range(steps) for i in range(accum)] for r in range(world)
    ]
    single = [stream.locate(m) for m in range(steps * accum * world)]  # one process, accumulation A*W
    step_sets = [[set(per_rank[r][s * accum : (s + 1) * accum]) for r in range(world)] for s in range(steps)]
    for s in range(steps):
        union = set().union(*step_sets[s])
        assert sum(len(x) for x in step_sets[s]) == len(union)  # disjoint within a step
        assert union == set(single[s * accum * world : (s + 1) * accum * world])


def test_a_fresh_stream_at_a_saved_position_continues_with_the_next_batch(files):
    first = TokenStream(files, B, T, seed=5)
    consumed = [first.batch(m) for m in range(7)]
    resumed = TokenStream(files, B, T, seed=5)  # what a restarted process builds; the position is 7
    for m in range(7, 7 + 2 * first.per_epoch):
        x1, y1 = first.batch(m)
        x2, y2 = resumed.batch(m)
        assert (x1 == x2).all() and (y1 == y2).all()
    assert not any((resumed.batch(7)[0] == x).all() for x, _ in consumed[:1])


def test_the_trainer_resumes_at_exactly_the_next_batch(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    write_shard(data / "d_train_000000.bin", rng.integers(0, 257, 4000), vocab_size=257)
    write_shard(data / "d_val_000000.bin", rng.integers(0, 257, 600), vocab_size=257)
    (data / "meta.json").write_text('{"tokenizer": "byte", "vocab_size": 257}')
    seen: list[tuple[int, int]] = []
    original = LMTask.batch

    def recording(self, m):
        x, y = original(self, m)
        seen.append((m, int(x.sum())))
        return x, y

    monkeypatch.setattr(LMTask, "batch", recording)
    common = [
        f"--run.dir={tmp_path}/runs",
        f"--data.path={data}",
        "--model.n_layer=1",
        "--model.n_head=2",
        "--model.n_embd=16",
        "--model.block_size=16",
        "--train.batch_size=2",
        "--train.grad_accum=2",
        "--train.progress=false",
        "--eval.interval=0",
        "--eval.tokens=64",
        "--eval.sample_tokens=0",
    ]
    assert train.main([*common, "--run.name=straight", "--train.max_steps=4"]) == 0
    straight, seen[:] = list(seen), []
    assert train.main([*common, "--run.name=split", "--train.max_steps=2"]) == 0
    assert seen == straight[:4]
    seen.clear()
    assert train.main([*common, "--run.name=split", "--train.max_steps=4", "--run.resume=true"]) == 0
    assert seen == straight[4:] and [m for m, _ in straight] == list(range(8))
