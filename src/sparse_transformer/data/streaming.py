"""``data.streaming=true``: hub datasets read record by record (nothing prepared on disk), sharded
per rank with ``datasets.distributed.split_dataset_by_node`` (and per DataLoader worker by
``datasets`` itself), so corpora larger than the disk still train.

Streams (text, audio) are concatenated and cut into non-overlapping windows of seq_len; items
(images) are one window each. Evaluation scores whole windows only, at most ``limit`` of them
per worker.

``datasets`` is imported inside ``shard``: heavy, and only streamed runs need it here.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import IterableDataset

SHUFFLE_BUFFER = 1000  # records held for the streamed shuffle (datasets' approximate shuffling)


class StreamedWindows(IterableDataset):
    def __init__(self, records, to_tokens: Callable[[dict], np.ndarray], seq_len: int, kind: str, limit: int | None = None):
        self.records, self.to_tokens, self.n, self.kind, self.limit = records, to_tokens, seq_len, kind, limit

    def _window(self, tokens: np.ndarray):
        return torch.from_numpy(np.asarray(tokens, dtype=np.int64)), torch.ones(self.n, dtype=torch.bool)

    def __iter__(self):
        count, buf, have = 0, [], 0
        for rec in self.records:
            tok = self.to_tokens(rec)
            if self.kind == "items":
                windows = [tok]
            else:
                buf.append(tok)
                have += len(tok)
                windows = []
                if have >= self.n:
                    flat = np.concatenate(buf)
                    k = len(flat) // self.n
                    windows = [flat[i * self.n : (i + 1) * self.n] for i in range(k)]
                    buf, have = [flat[k * self.n :]], len(flat) - k * self.n
            for w in windows:
                yield self._window(w)
                count += 1
                if self.limit is not None and count >= self.limit:
                    return


def shard(ds, rank: int, world: int, *, shuffle_seed: int | None = None, epoch: int = 0):
    """This rank's part of a streamed split; shuffled (approximately, by a buffer) for training."""
    from datasets.distributed import split_dataset_by_node

    if world > 1:
        ds = split_dataset_by_node(ds, rank=rank, world_size=world)
    if shuffle_seed is not None:
        ds = ds.shuffle(seed=shuffle_seed, buffer_size=SHUFFLE_BUFFER)
        ds.set_epoch(epoch)
    return ds
