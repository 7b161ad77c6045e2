"""Map-style datasets of fixed-length windows over a token stream.

Training windows start at random offsets drawn from a generator seeded by (seed, rank, epoch,
index), so every run with the same seed sees the same ones and a resumed run repeats them. The
training DataModule passes rank 0 for every rank and deals the windows out (RankShard: rank r
takes r, r + world, ...), so DDP ranks see different windows and k ranks the windows of one process. Evaluation windows are non-overlapping and cover the whole split; the
last one is moved back to end at the split's end and scores only the tokens not scored before.
Each item is (tokens int64 (n,), mask bool (n,): which positions count in the loss).
"""

from __future__ import annotations

import math

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


class EvalWindows(Dataset):
    def __init__(self, stream: TokenStream, seq_len: int, limit: int | None = None):
        if len(stream) < seq_len:
            raise DataError(f"an evaluation split has {len(stream)} tokens, fewer than data.seq_len={seq_len}; "
                            f"lower data.seq_len or use more data")
        self.stream, self.n = stream, seq_len
        self.count = math.ceil(len(stream) / seq_len)
        if limit is not None:
            self.count = min(self.count, limit)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int):
        start = i * self.n
        mask = torch.ones(self.n, dtype=torch.bool)
        if start + self.n > len(self.stream):  # last window: end at the split's end, score only new tokens
            new = len(self.stream) - start
            start = len(self.stream) - self.n
            mask[: self.n - new] = False
        x = torch.from_numpy(self.stream.read(start, self.n).astype(np.int64))
        return x, mask
