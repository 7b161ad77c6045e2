"""Text as bytes (vocabulary 256): a LightningDataModule over a prepared ``datasets`` stream.

Sources (``data.source``):
- ``pydoc``: the English text of Python's own reference documentation (``pydoc_data.topics``,
  ~466 KB, part of every CPython install): real data that needs no network and no download.
- ``local``: raw bytes of ``data.path`` (a text file, or a zip holding one, e.g. enwik8.zip).
- anything else: a Hugging Face hub dataset name whose ``text`` column is joined with newlines.
Single-stream corpora are split contiguously by ``data.splits`` (train, val, test).
"""

from __future__ import annotations

import hashlib
import math
import zipfile
from pathlib import Path

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from .store import DataError, is_prepared, open_store, write_streams
from .windows import EvalWindows, RandomWindows


def pydoc_corpus() -> bytes:
    import pydoc_data.topics as topics

    return "\n\n".join(topics.topics[k] for k in sorted(topics.topics)).encode("utf-8")


def read_local_bytes(path: str | Path) -> bytes:
    p = Path(path)
    if not p.exists():
        raise DataError(f"data.path={p} does not exist; point it at a text file or a zip holding one")
    if p.is_dir():
        files = sorted(x for x in p.rglob("*") if x.is_file())
        if not files:
            raise DataError(f"data.path={p} is an empty folder; put text files in it")
        data = b"\n".join(x.read_bytes() for x in files)
    elif zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            names = [n for n in z.namelist() if not n.endswith("/")]
            if not names:
                raise DataError(f"data.path={p} is a zip with no files; it should hold the text file")
            data = b"".join(z.read(n) for n in names)
    else:
        data = p.read_bytes()
    if not data:
        raise DataError(f"data.path={p} is empty; give a file with text in it")
    return data


def hub_text(name: str, split: str | None = None) -> bytes:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as e:  # offline, unknown name, script datasets refused by datasets >= 4
        raise DataError(
            f"could not load hub dataset {name!r} ({type(e).__name__}): this machine may be offline; "
            f"download it elsewhere and set data.source=local data.path=<file>"
        ) from None
    col = "text" if "text" in ds.column_names else ds.column_names[0]
    return "\n".join(ds[col]).encode("utf-8")


def split_stream(data: np.ndarray, fractions) -> dict[str, np.ndarray]:
    a, b, c = (int(round(f * len(data))) for f in fractions)
    return {"train": data[:a], "validation": data[a : a + b], "test": data[a + b : a + b + c]}


def unigram_entropy(tokens: np.ndarray, vocab: int = 256) -> float:
    """Bits per token of the empirical unigram distribution."""
    counts = np.bincount(tokens, minlength=vocab).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


class TextDataModule(L.LightningDataModule):
    modality = "text"

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        d = cfg.data
        self.seq_len, self.batch_size = d.seq_len, d.batch_size
        key = f"{d.source}|{d.path}|{list(d.splits)}|{d.max_bytes}"
        name = Path(d.path).stem if d.source == "local" and d.path else d.source.replace("/", "__")
        self.dir = Path(d.cache_dir) / f"text-{name}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"
        self.splits: dict = {}

    # --- data shape for the model's factorized positions (n/l, l) ---
    @property
    def shape(self) -> list[int]:
        from ..config import positional_shape

        return positional_shape(self.cfg)

    def raw_bytes(self) -> bytes:
        d = self.cfg.data
        if d.source == "pydoc":
            return pydoc_corpus()
        if d.source == "local":
            if not d.path:
                raise DataError("data.source=local needs data.path=<text file or zip>")
            return read_local_bytes(d.path)
        return hub_text(d.source)

    def prepare_data(self) -> None:
        """Build the token store once (Lightning calls this on local rank 0 only)."""
        if is_prepared(self.dir):
            return
        data = np.frombuffer(self.raw_bytes(), dtype=np.uint8)
        if self.cfg.data.max_bytes:
            data = data[: self.cfg.data.max_bytes]
        if len(data) == 0:
            raise DataError(f"data.source={self.cfg.data.source} gave no text")
        write_streams(self.dir, split_stream(data, self.cfg.data.splits), {"modality": "text", "source": self.cfg.data.source})

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            _, self.splits = open_store(self.dir)
            for name in ("validation", "test"):
                if len(self.splits[name]) < self.seq_len:
                    raise DataError(f"the {name} split has {len(self.splits[name])} tokens, fewer than "
                                    f"data.seq_len={self.seq_len}; lower data.seq_len or change data.splits")

    def entropy(self) -> float:
        """Unigram entropy of the training split (bits per byte): the bar a model must beat."""
        return unigram_entropy(self.splits["train"].all())

    def _loader(self, ds, shuffle=False, batch_size=None):
        d = self.cfg.data
        return DataLoader(ds, batch_size=batch_size or self.batch_size, shuffle=shuffle, num_workers=d.num_workers,
                          pin_memory=d.pin_memory, persistent_workers=d.persistent_workers and d.num_workers > 0,
                          drop_last=False)

    def train_dataloader(self):
        t = self.trainer
        epoch = t.current_epoch if t is not None else 0
        rank = t.global_rank if t is not None else 0
        count = max(1, math.ceil(len(self.splits["train"]) / self.seq_len))
        ds = RandomWindows(self.splits["train"], self.seq_len, count, self.cfg.seed, rank, epoch)
        return self._loader(ds)

    def val_dataloader(self):
        return self._loader(EvalWindows(self.splits["validation"], self.seq_len, self.cfg.data.val_windows),
                            batch_size=self.cfg.data.eval_batch_size)

    def test_dataloader(self):
        return self._loader(EvalWindows(self.splits["test"], self.seq_len), batch_size=self.cfg.data.eval_batch_size)
