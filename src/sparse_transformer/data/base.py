"""What every modality's LightningDataModule shares: the cache folder, prepare once (rank 0) into
a store, open it in ``setup``, check sizes, and build the DataLoaders from ``data.*``.

A subclass sets ``modality`` and ``kind`` ("stream": text/audio, cut into windows of seq_len;
"items": images, one sequence each) and writes its splits in ``build(writer)``; with
``data.streaming=true`` and a hub source it returns iterable datasets from ``streamed(split)``.

A damaged prepared folder (``store.DamagedStore``) is reported as one line naming the file and
the command that rebuilds it (``rebuild_command``).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import shlex
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..files import folder_problem
from . import hub
from .store import SPLITS, DamagedStore, DataError, StoreWriter, is_prepared, open_store, verify_store
from .streaming import StreamedWindows, shard
from .windows import ContextWindows, RandomWindows

BUILTIN: set[str] = {"local", "pydoc", "shakespeare", "bach"}  # sources that are not hub names


def unigram_entropy(tokens: np.ndarray, vocab: int = 256) -> float:
    """Bits per token of the empirical unigram distribution."""
    counts = np.bincount(tokens, minlength=vocab).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


class ItemDataset(Dataset):
    """Items (images) as (tokens int64 (n,), mask bool (n,) all True); ``order`` a permutation to
    read them in (training: a fixed shuffle per (seed, epoch), the same for any number of ranks)."""

    def __init__(self, items, limit: int | None = None, order=None):
        self.items = items
        self.count = len(items) if limit is None else min(len(items), limit)
        self.order = order

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int):
        x = torch.from_numpy(self.items[int(self.order[i]) if self.order is not None else i].astype("int64"))
        return x, torch.ones(len(x), dtype=torch.bool)


class RankShard(Dataset):
    """Rank ``rank``'s share of a map-style dataset: items rank, rank + world, rank + 2·world, ...
    ``even``: every rank gets len // world items (training: DDP ranks must take the same number of
    steps); else the first len % world ranks get one more (evaluation: every item scored once)."""

    def __init__(self, ds, rank: int, world: int, even: bool):
        self.ds, self.rank, self.world = ds, rank, world
        self.count = len(ds) // world if even else (len(ds) - rank + world - 1) // world

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int):
        if not 0 <= i < self.count:
            raise IndexError(i)
        return self.ds[i * self.world + self.rank]


class _SkipFirst:
    """A (batch) sampler without its first ``skipping[0]`` entries: indices only, no data is read.
    The count is read at each epoch: an iterator with persistent workers keeps this object for the
    epochs after, which skip nothing. (A one-item list, not the loader: a reference back to the
    loader would make a cycle, and a persistent-worker iterator freed by the cycle collector takes
    seconds to stop its workers.)"""

    def __init__(self, sampler, skipping: list):
        self.sampler, self.skipping = sampler, skipping

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skipping[0], None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skipping[0])


class _Counted:
    """The loader's iterator, counting the batches it has handed out."""

    def __init__(self, loader: "ResumableLoader", it):
        self.loader, self.it = loader, it

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.it)
        self.loader._yielded += 1
        return batch

    def __len__(self) -> int:
        return len(self.it)


class ResumableLoader(DataLoader):
    """A DataLoader whose position in the epoch is saved in checkpoints.

    Lightning 2.6 saves and restores a training loader's state only when the loader *itself* has
    ``state_dict``/``load_state_dict`` (it never asks the sampler). Without them a run resumed
    mid-epoch restarts the epoch's data from its first batch (with a warning), while the step
    counters continue. The state is the number of batches handed out in the current epoch; a
    restored loader skips that many batches of indices (no data is read for them), so a resumed
    run continues with exactly the batch the interrupted one would have taken next. Lightning's
    own DDP sampler sits under it unchanged: the skipped batches are this rank's.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._yielded = 0  # batches handed out by the current iterator
        self._skip = 0  # batches the next iterator skips (set by load_state_dict)
        self._skipping = [0]  # what the sampler skips while an iterator is being made

    @property
    def _index_sampler(self):
        return _SkipFirst(super()._index_sampler, self._skipping)

    def __iter__(self):
        skipped, self._skip = self._skip, 0
        self._skipping[0] = skipped
        try:
            it = super().__iter__()  # iterates _index_sampler now, for a new or a persistent-worker iterator
        finally:
            self._skipping[0] = 0
        self._yielded = skipped
        return _Counted(self, it)

    def state_dict(self) -> dict:
        return {"batches": self._yielded}

    def load_state_dict(self, state: dict) -> None:
        self._skip = int(state.get("batches", 0))


class TokenDataModule(L.LightningDataModule):
    modality = "?"
    kind = "stream"

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        d = cfg.data
        self.seq_len, self.batch_size = d.seq_len, d.batch_size
        key = "|".join(f"{k}={v}" for k, v in sorted(self.key_fields().items()))
        if d.source == "local" and d.path:
            name = Path(d.path).stem
        elif Path(d.source).exists():  # a local dataset folder given as the source
            name = Path(d.source).name
        else:
            name = d.source.rstrip("/").replace("/", "__")
        self.dir = Path(d.cache_dir) / f"{self.modality}-{name}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"
        self.splits: dict = {}
        self.meta: dict = {}
        self.rebuild = False  # prepare again even where a prepared folder exists (the data command's rebuild=true)
        self.command_args = sys.argv[1:]  # the command line, for the rebuild command of an error message

    # ---- identity of the prepared data: everything that changes the tokens or their files, nothing that doesn't
    def key_fields(self) -> dict:
        d = self.cfg.data
        key = {"source": d.source, "path": d.path, "splits": list(d.splits), "max_bytes": d.max_bytes}
        if d.format != "arrow":  # raw and arrow folders side by side; arrow keeps the names it had before
            key["format"] = d.format
        return key

    @property
    def shape(self) -> list[int]:
        """The data's own shape: data.shape where given (images: [H, W, C]), else the sequence [seq_len]
        (the model lays it out for its positions)."""
        d = self.cfg.data
        return [int(x) for x in d.shape] if d.shape else [d.seq_len]

    @property
    def streaming(self) -> bool:
        d = self.cfg.data
        return bool(d.streaming) and d.source not in BUILTIN

    # ---- preparation
    def build(self, writer: StoreWriter) -> None:
        raise NotImplementedError

    def item_len(self) -> int | None:
        return None

    def rebuild_command(self) -> str:
        """The command that prepares this folder again: the data keys of this command line, rebuild=true."""
        words = [a[2:] if a.startswith("--") else a for a in self.command_args]
        keep = [w for w in words if w.startswith("data.")] + ["rebuild=true"]
        return f"make data EXP={getattr(self.cfg, 'exp', None) or 'default'} ARGS={shlex.quote(' '.join(keep))}"

    def damaged(self, e: DamagedStore) -> DataError:
        return DataError(f"{e}; rebuild it: {self.rebuild_command()}")

    def prepared(self) -> bool:
        """This folder is prepared in data.format (a damaged one: one-line DataError with the rebuild command)."""
        try:
            return is_prepared(self.dir, self.cfg.data.format)
        except DamagedStore as e:
            raise self.damaged(e) from None

    def prepare_data(self) -> None:
        """Build the store once (Lightning calls this on local rank 0 only)."""
        if self.streaming or (not self.rebuild and self.prepared()):
            return
        d = self.cfg.data
        problem = folder_problem(self.dir.parent)
        if problem:
            raise DataError(f"data.cache_dir={d.cache_dir} {problem}; give a folder that can be written")
        t0 = time.time()
        meta = {"modality": self.modality, "source": d.source, "key": self.key_fields()}
        with StoreWriter(self.dir, self.kind, meta, d.format, item_len=self.item_len()) as w:
            self.build(w)
            if sum(w.lengths.values()) == 0:
                raise DataError(f"data.source={d.source}{' data.path=' + str(d.path) if d.path else ''} gave no data")
            self.check_lengths(w.lengths)  # a store too small for these windows is not kept
        self.rebuild = False
        self.prepare_seconds = time.time() - t0

    def verify(self) -> dict:
        """Every file of the prepared folder against its recorded SHA-256 ({files, bytes}); DataError if one differs."""
        try:
            return verify_store(self.dir)
        except DamagedStore as e:
            raise self.damaged(e) from None

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if self.streaming:
            self.splits = {s: None for s in SPLITS}
            self.streamed("train")  # fail here (offline, bad name), where train.py reports it in one line
            return
        try:
            self.meta, self.splits = open_store(self.dir)
        except DamagedStore as e:
            raise self.damaged(e) from None
        self.check_lengths({name: len(self.splits[name]) for name in SPLITS})

    def check_lengths(self, lengths: dict[str, int]) -> None:
        """Every split can be cut into windows (a test split may be empty); else a one-line DataError."""
        for name in SPLITS:
            size = lengths[name]
            if name == "test" and size == 0:
                continue  # a source may have no test split
            if self.kind == "stream" and size < self.seq_len:
                raise DataError(f"the {name} split of {self.dir} has {size} tokens, fewer than data.seq_len={self.seq_len}; "
                                f"lower data.seq_len, raise data.max_bytes or change data.splits")
            if self.kind == "items" and size == 0:
                raise DataError(f"the {name} split of {self.dir} is empty; give the source more items or change data.val_size/data.splits")

    def entropy(self) -> float | None:
        """Unigram entropy of a stream's training split (bits per token): the bar a model must beat."""
        if self.streaming or self.kind != "stream":
            return None
        return unigram_entropy(self.splits["train"].all())

    # ---- loaders
    def _loader(self, ds, batch_size=None, cls=DataLoader, seed=0):
        d = self.cfg.data
        # An own generator: creating an iterator then draws its worker seed from it, not from torch's
        # global RNG, so validation passes and epochs leave dropout's random stream alone (a run
        # resumed from a checkpoint takes the same dropout masks as an uninterrupted one).
        return cls(ds, batch_size=batch_size or self.batch_size, shuffle=False, num_workers=d.num_workers,
                   pin_memory=d.pin_memory, persistent_workers=d.persistent_workers and d.num_workers > 0,
                   drop_last=False, generator=torch.Generator().manual_seed(seed))

    def _rank(self) -> tuple[int, int, int]:
        t = self.trainer
        if t is None:
            return 0, 1, 0
        return t.global_rank, t.world_size, t.current_epoch

    def train_dataloader(self):
        rank, world, epoch = self._rank()
        seed = self.cfg.seed
        if self.streaming:
            return self._loader(self.streamed("train", rank=rank, world=world, epoch=epoch), seed=seed + epoch)
        # Map-style training data is one sequence of items per (seed, epoch), whatever the number of
        # ranks, dealt out rank, rank + world, ... (the Trainer runs with use_distributed_sampler=False:
        # Lightning's sampler would reshuffle it differently for every world size). So k ranks with
        # batch b see exactly the windows of one process with batch k·b, and no two ranks the same.
        if self.kind == "items":
            n = len(self.splits["train"])
            ds = ItemDataset(self.splits["train"], order=np.random.default_rng([seed, epoch]).permutation(n))
        else:
            count = max(1, math.ceil(len(self.splits["train"]) / self.seq_len))
            ds = RandomWindows(self.splits["train"], self.seq_len, count, seed, 0, epoch)
        if world > 1:
            ds = RankShard(ds, rank, world, even=True)
        return self._loader(ds, cls=ResumableLoader, seed=seed + epoch)

    def _eval(self, split: str, limit: int | None):
        bs = self.cfg.data.eval_batch_size
        if self.streaming:
            rank, world, _ = self._rank()
            return self._loader(self.streamed(split, rank=rank, world=world, limit=limit), batch_size=bs)
        if self.kind == "items":
            ds = ItemDataset(self.splits[split], limit)
        else:
            ds = ContextWindows(self.splits[split], self.seq_len, limit=limit)
        rank, world, _ = self._rank()
        if world > 1:  # each window scored once, on one rank (metrics are summed over ranks)
            ds = RankShard(ds, rank, world, even=False)
        return self._loader(ds, batch_size=bs)

    def val_dataloader(self):
        return self._eval("validation", self.cfg.data.val_windows)

    def test_dataloader(self):
        return self._eval("test", None)

    # ---- streaming (hub sources with data.streaming=true)
    def stream_records(self, ds, source: str):
        """(dataset with the columns this modality reads, picklable record -> uint8 tokens function)."""
        raise DataError(f"data.streaming=true is not available for data.modality={self.modality}")

    local_hint = "local files"

    def streamed(self, split: str, rank: int = 0, world: int = 1, epoch: int = 0, limit: int | None = None):
        d = self.cfg.data
        if getattr(self, "_stream", None) is None:
            self._stream = hub.load(d.source, streaming=True, local_hint=self.local_hint)
        name = {"train": "train", "validation": "validation", "test": d.test_split}[split]
        if name not in self._stream:
            raise DataError(f"data.streaming=true reads the source's {name} split, but data.source={d.source} has only "
                            f"{', '.join(self._stream)}; prepare it on disk instead (data.streaming=false)")
        ds, fn = self.stream_records(self._stream[name], d.source)
        ds = shard(ds, rank, world, shuffle_seed=self.cfg.seed if split == "train" else None, epoch=epoch)
        return StreamedWindows(ds, fn, self.seq_len, self.kind, limit)
