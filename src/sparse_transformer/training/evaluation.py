"""What a network is measured on: next-token NLL in bits per dim (the one home of NLL -> bits, used by
the LightningModule's validation and test and by ``evaluate``), a split's windows (with a minimum
context: the paper's Table 3) and the scoring loop over them.

Every window is (tokens int64 (n,), mask bool (n,)): the mask says which positions count.
"""

from __future__ import annotations

import itertools
import math
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, Subset
from tqdm import tqdm

from .. import data
from ..config.schema import ConfigError
from ..data.store import DataError
from ..data.windows import ContextWindows

LN2 = math.log(2.0)


def token_nll(logits: Tensor, tokens: Tensor, mask: Tensor) -> Tensor:
    """(B·n,) float32 next-token negative log-likelihoods in nats, 0 where ``mask`` is False
    (``logits`` (B, n, V) already predict position t from tokens < t)."""
    nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens.reshape(-1), reduction="none")
    return nll * mask.reshape(-1).to(nll.dtype)


def bits_per_dim(nats, count):
    """Mean bits per scored token from summed nats and their count (tensors or numbers)."""
    return nats / count / LN2


# ------------------------------------------------------------------------------------------------
# Windows of a split
# ------------------------------------------------------------------------------------------------
def split_dataset(cfg, split: str, purpose: str):
    """The DataModule's windows dataset of ``split`` (test or validation) for ``cfg``'s data;
    ConfigError (``<purpose> needs the checkpoint's <split> data: ...``) where there is none."""
    try:
        dm = data.build_datamodule(cfg)
        dm.prepare_data()
        dm.setup("test" if split == "test" else "validate")
        loader = dm.test_dataloader() if split == "test" else dm.val_dataloader()
    except (DataError, NotImplementedError) as e:
        raise ConfigError(f"{purpose} needs the checkpoint's {split} data: {e}") from None
    return loader.dataset


def evaluation_windows(cfg, split: str, min_context: int):
    """The windows dataset of the split: the DataModule's own, or ContextWindows over its stream."""
    ds = split_dataset(cfg, split, "evaluation")
    if split == "validation" and getattr(ds, "count", None) is not None:  # the whole split, not data.val_windows
        if hasattr(ds, "starts"):
            ds.count = len(ds.starts)
        elif hasattr(ds, "items"):
            ds.count = len(ds.items)
    if min_context == 0:
        return ds
    stream = getattr(ds, "stream", None)
    if stream is None or not hasattr(stream, "read"):
        raise ConfigError(f"eval.min_context applies to token streams (text, audio); this {cfg.data.modality} "
                          f"split holds separate examples, each scored whole: drop eval.min_context")
    try:
        return ContextWindows(stream, cfg.data.seq_len, min_context)
    except DataError as e:
        raise ConfigError(str(e)) from None


def split_examples(cfg, count: int, seed: int, split: str = "test") -> np.ndarray:
    """``count`` windows (examples) of ``split``, chosen by ``seed``: int64 (count, n). A streamed
    split gives its first examples, in turn."""
    ds = split_dataset(cfg, split, "priming")
    if isinstance(ds, IterableDataset):
        rows = [np.asarray(x, dtype=np.int64) for x, _ in itertools.islice(iter(ds), count)]
        if not rows:
            raise ConfigError(f"priming needs the checkpoint's {split} data, but its {split} stream is empty")
        return np.stack([rows[i % len(rows)] for i in range(count)])
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(ds))[:count] if len(ds) >= count else rng.integers(0, len(ds), count)
    return np.stack([np.asarray(ds[int(i)][0], dtype=np.int64) for i in idx])


# ------------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------------
class _Take(IterableDataset):
    """The first ``limit`` items of an iterable dataset."""

    def __init__(self, ds, limit: int):
        self.ds, self.limit = ds, limit

    def __iter__(self):
        return itertools.islice(iter(self.ds), self.limit)


@torch.no_grad()
def score(net, ds, batch_size: int, limit: int | None = None, progress: bool = True) -> tuple[float, int, int]:
    """(summed nats, scored tokens, windows) of ``net`` over the windows of ``ds`` (the first
    ``limit`` of them), the nats summed in float64."""
    if isinstance(ds, IterableDataset):  # a streamed split: no length, take the first `limit`
        if limit is not None:
            ds = _Take(ds, limit)
    elif limit is not None and limit < len(ds):
        ds = Subset(ds, range(limit))
    dev = next(net.parameters()).device
    nats = torch.zeros((), dtype=torch.float64, device=dev)
    count = windows = 0
    for tokens, mask in tqdm(DataLoader(ds, batch_size=batch_size), desc="evaluating", unit="batch",
                             disable=not progress, file=sys.stderr):
        tokens, mask = tokens.to(dev), mask.to(dev)
        nats += token_nll(net(tokens), tokens, mask).double().sum()
        count += int(mask.sum())
        windows += tokens.shape[0]
    return float(nats), count, windows
