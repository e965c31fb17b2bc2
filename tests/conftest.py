"""Fixtures shared by the test files (helpers that are plain functions live in helpers.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data.shards import write_shard

from helpers import ROOT


@pytest.fixture(scope="session", autouse=True)
def at_the_repository_root():
    """Run every test from the repository root, wherever pytest was started: the built-in corpus is
    prepared once under data/prepared/ there, and shared by every test that trains on it."""
    mp = pytest.MonkeyPatch()
    mp.chdir(ROOT)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread; with more, a busy machine turns each op into a wait.
    Child processes get the same count, since CPU kernels may round differently with another one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A learnable byte stream (each token mostly fixed by the previous one), built in milliseconds."""
    folder = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)

    def chain(n: int) -> np.ndarray:
        noise = rng.integers(0, 4, n)
        x = np.zeros(n, dtype=np.int64)
        for i in range(1, n):
            x[i] = (x[i - 1] * 5 + 3 + noise[i]) % 256
        return x

    write_shard(folder / "synth_train_000000.bin", chain(40_000), 257)
    write_shard(folder / "synth_val_000000.bin", chain(8_192), 257)
    (folder / "meta.json").write_text(json.dumps({"tokenizer": "byte", "vocab_size": 257, "eot": 256}))
    return folder
