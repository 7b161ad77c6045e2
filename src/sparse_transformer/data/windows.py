"""Map-style datasets of fixed-length windows over a token stream.

Training windows start at random offsets drawn from a generator seeded by (seed, rank, epoch,
index), so every run with the same seed sees the same ones and a resumed run repeats them. The
training DataModule passes rank 0 for every rank and deals the windows out (RankShard: rank r
takes r, r + world, ...), so DDP ranks see different windows and k ranks the windows of one process.

Evaluation windows (``ContextWindows``) score every token of the split exactly once. With
``min_context`` C = 0 (validation, ``make eval``) they are disjoint and cover the whole split, the
last one moved back to end at the split's end, scoring only the tokens not scored before. With
C > 0 (the paper's Table 3) window k starts at k·(n - C) and scores its last n - C positions, so
every scored token sees at least C tokens before it, except the split's first C tokens.
Each item is (tokens int64 (n,), mask bool (n,): which positions count in the loss).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .store import DataError, TokenStream


class RandomWindows(Dataset):
    def __init__(self, stream: TokenStream, seq_len: int, count: int, seed: int, rank: int = 0, epoch: int = 0):
        if len(stream) < seq_len:
            raise DataError(f"the training split has {len(stream)} tokens, fewer than data.seq_len={seq_len}; "
                            f"lower data.seq_len or use more data")
        self.stream, self.n, self.count = stream, seq_len, count
        self.seed, self.rank, self.epoch = seed, rank, epoch

    def __len__(self) -> int:
        return self.count

    def offset(self, i: int) -> int:
        rng = np.random.default_rng([self.seed, self.rank, self.epoch, i])
        return int(rng.integers(0, len(self.stream) - self.n + 1))

    def __getitem__(self, i: int):
        x = torch.from_numpy(self.stream.read(self.offset(i), self.n).astype(np.int64))
        return x, torch.ones(self.n, dtype=torch.bool)


class ContextWindows(Dataset):
    """Windows of n tokens over a stream, overlapping so that each scored token sees >= C context
    (C = 0: disjoint windows). ``count`` (at most ``limit``) is how many are handed out; setting it
    to ``len(starts)`` gives the whole split again."""

    def __init__(self, stream: TokenStream, seq_len: int, min_context: int = 0, limit: int | None = None):
        n = seq_len
        if not 0 <= min_context < n:
            raise DataError(f"eval.min_context={min_context} must be in 0..{n - 1} (below the model's sequence length n={n})")
        if len(stream) < n:
            raise DataError(f"an evaluation split has {len(stream)} tokens, fewer than data.seq_len={n}; "
                            f"lower data.seq_len or use more data")
        self.stream, self.n, self.C = stream, n, min_context
        starts = np.arange(0, len(stream) - n + 1, n - min_context, dtype=np.int64)
        if starts[-1] + n < len(stream):
            starts = np.append(starts, len(stream) - n)
        self.starts = starts
        self.count = len(starts) if limit is None else min(len(starts), limit)

    def __len__(self) -> int:
        return self.count

    def scored_from(self, k: int) -> int:
        """The first position of window k that it scores: right after the previous window's end."""
        return 0 if k == 0 else int(self.starts[k - 1] + self.n - self.starts[k])

    def __getitem__(self, k: int):
        if not 0 <= k < self.count:
            raise IndexError(k)
        x = torch.from_numpy(self.stream.read(int(self.starts[k]), self.n).astype(np.int64))
        mask = torch.zeros(self.n, dtype=torch.bool)
        mask[self.scored_from(k) :] = True
        return x, mask

