"""A deterministic, memory-mapped, rank-aware token stream over llm.c shards.

The stream is a sequence of micro-batch windows: each shard is cut into non-overlapping windows of
B*T tokens (plus one for the shifted targets); an epoch visits every window of every shard once,
with the shard order and the window order within each shard permuted by (seed, epoch). Window m is
addressed directly, so the trainer's position is one integer (the next global micro-batch index).
Rank r of W at accumulation micro-step i of step s reads window (s*A + i)*W + r: the ranks of a step
read disjoint windows whose union is what one process with accumulation A*W reads, and a resumed run
(which restores s from its checkpoint) continues with exactly the next unseen window.

Opening validates every shard: its header (magic, version, file size against the token count) and
its largest token against the vocabulary, so a mismatched shard fails with its name before training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data.shards import check_vocab_all, open_shard


class TokenStream:
    def __init__(
        self,
        files: list[Path],
        batch_size: int,
        block_size: int,
        seed: int = 0,
        shuffle: bool = True,
        vocab_size: int | None = None,
    ):
        self.files = [Path(f) for f in files]
        self.B, self.T, self.seed, self.shuffle = batch_size, block_size, seed, shuffle
        self.shards = [open_shard(f) for f in self.files]
        if vocab_size is not None:
            check_vocab_all(self.files, self.shards, vocab_size)
        span = batch_size * block_size
        self.windows = np.array([max(0, (len(s) - 1) // span) for s in self.shards], dtype=np.int64)
        self.per_epoch = int(self.windows.sum())
        if self.per_epoch == 0:
            total = sum(len(s) for s in self.shards)
            raise ValueError(
                f"{total} tokens in {len(self.files)} shard(s) do not fill one micro-batch of "
                f"{batch_size}x{block_size}+1 tokens; lower train.batch_size or model.block_size"
            )
        self._epoch, self._order, self._ends = -1, None, None
        self._perms: dict[int, np.ndarray] = {}

    def _layout(self, epoch: int) -> None:
        if epoch == self._epoch:
            return
        n = len(self.shards)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
        else:
            order = np.arange(n)
        self._epoch, self._order, self._ends = epoch, order, np.cumsum(self.windows[order])
        self._perms = {}

    def _window_in_shard(self, shard: int, j: int) -> int:
        if not self.shuffle:
            return j
        if shard not in self._perms:
            rng = np.random.default_rng([self.seed, self._epoch, shard])
            self._perms[shard] = rng.permutation(int(self.windows[shard]))
        return int(self._perms[shard][j])

    def locate(self, m: int) -> tuple[int, int]:
        """(shard index, token offset) of window ``m``."""
        epoch, r = divmod(m, self.per_epoch)
        self._layout(epoch)
        k = int(np.searchsorted(self._ends, r, side="right"))
        start = int(self._ends[k - 1]) if k else 0
        shard = int(self._order[k])
        return shard, self._window_in_shard(shard, r - start) * self.B * self.T

    def window(self, m: int) -> np.ndarray:
        shard, offset = self.locate(m)
        return np.asarray(self.shards[shard][offset : offset + self.B * self.T + 1], dtype=np.int64)

    def batch(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets of window ``m``, each (B, T) int64."""
        buf = self.window(m)
        return buf[:-1].reshape(self.B, self.T), buf[1:].reshape(self.B, self.T)
