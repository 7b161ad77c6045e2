"""Prepared token data on disk: one folder per corpus, written once, read memory-mapped.

Two formats, told apart by the folder's ``sparse_transformer.json``:
- ``arrow`` (default): a Hugging Face ``datasets`` DatasetDict. Streams (text, audio) are stored as
  rows of ``ROW`` uint8 tokens per split; items (images) as one row of n tokens each.
- ``raw``: one flat ``<split>.u8`` file per split, read with numpy alone. For machines that have
  torch but not ``datasets``/pyarrow (the GPU machine): carry a capped raw folder there.

Every write goes to a temporary folder beside the target that is renamed into place only when
complete, so an interrupted or failed preparation (a corrupt file, Ctrl-C) leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

ROW = 1 << 16  # tokens per stored row of a stream
META = "sparse_transformer.json"
SPLITS = ("train", "validation", "test")
FORMATS = ("arrow", "raw")


class DataError(ValueError):
    """Bad data (file, record, size); the message names it and says what would be right."""


class StoreWriter:
    """Write a prepared folder split by split, atomically::

        with StoreWriter(out_dir, kind="stream", meta={...}) as w:
            w.write("train", chunk)          # stream: 1-D uint8 chunks, appended
        with StoreWriter(out_dir, kind="items", item_len=784, meta={...}) as w:
            w.write("train", images)         # items: (k, item_len) uint8

    Arrow rows go through ``datasets``' ``ArrowWriter`` chunk by chunk (not ``Dataset.from_dict``),
    so a corpus larger than memory can be written; the finished files become a DatasetDict.
    """

    def __init__(self, out_dir: str | Path, kind: str, meta: dict, fmt: str = "arrow", item_len: int | None = None):
        if kind not in ("stream", "items") or fmt not in FORMATS:
            raise ValueError(f"kind={kind!r} fmt={fmt!r}")
        if kind == "items" and not item_len:
            raise ValueError("items need item_len")
        self.out_dir, self.kind, self.meta, self.fmt, self.item_len = Path(out_dir), kind, meta, fmt, item_len
        self.lengths = {s: 0 for s in SPLITS}
        self._buf = {s: [] for s in SPLITS}  # stream: pending tokens shorter than a row
        self._writers: dict = {}

    def __enter__(self) -> "StoreWriter":
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.", dir=self.out_dir.parent))
        return self

    def _writer(self, split: str):
        if split not in self._writers:
            if self.fmt == "raw":
                self._writers[split] = open(self.tmp / f"{split}.u8", "wb")
            else:
                import datasets
                from datasets.arrow_writer import ArrowWriter

                length = self.item_len if self.kind == "items" else None
                feats = datasets.Features({"tokens": datasets.Sequence(datasets.Value("uint8"), length=length or -1)})
                (self.tmp / "build").mkdir(exist_ok=True)
                self._writers[split] = ArrowWriter(features=feats, path=str(self.tmp / "build" / f"{split}.arrow"))
        return self._writers[split]

    def _rows(self, split: str, rows: list[np.ndarray]) -> None:
        if rows:
            self._writer(split).write_batch({"tokens": rows})

    def write(self, split: str, tokens: np.ndarray) -> None:
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {SPLITS}")
        tokens = np.ascontiguousarray(tokens, dtype=np.uint8)
        if self.kind == "items":
            tokens = tokens.reshape(-1, self.item_len)
            self.lengths[split] += len(tokens)
            if self.fmt == "raw":
                self._writer(split).write(tokens.tobytes())
            else:
                self._rows(split, list(tokens))
            return
        tokens = tokens.reshape(-1)
        self.lengths[split] += len(tokens)
        if self.fmt == "raw":
            self._writer(split).write(tokens.tobytes())
            return
        buf = self._buf[split]
        buf.append(tokens)
        if sum(len(b) for b in buf) >= ROW:
            flat = np.concatenate(buf)
            full = len(flat) // ROW * ROW
            self._rows(split, [flat[i : i + ROW] for i in range(0, full, ROW)])
            self._buf[split] = [flat[full:]]

    def _finish(self) -> None:
        for split in SPLITS:
            if self.kind == "stream" and self.fmt == "arrow":
                rest = np.concatenate(self._buf[split]) if self._buf[split] else np.zeros(0, np.uint8)
                if len(rest) or self.lengths[split] == 0:  # an empty split still gets one (empty) row
                    self._rows(split, [rest])
            self._writer(split)  # every split exists, even if empty
        if self.fmt == "arrow":
            import datasets

            for w in self._writers.values():
                w.finalize()
                w.close()
            dd = datasets.DatasetDict({s: datasets.Dataset.from_file(str(self.tmp / "build" / f"{s}.arrow")) for s in SPLITS})
            was_on = datasets.is_progress_bar_enabled()
            datasets.disable_progress_bars()  # a copy of what was just written: our own bar already showed it
            try:  # num_shards=1: datasets writes an empty split as zero shards, which load_from_disk rejects
                dd.save_to_disk(str(self.tmp / "dataset"), num_shards={s: 1 for s in SPLITS})
            finally:
                if was_on:
                    datasets.enable_progress_bars()
            del dd
            shutil.rmtree(self.tmp / "build")
        else:
            for f in self._writers.values():
                f.close()
        info = {**self.meta, "kind": self.kind, "format": self.fmt, "lengths": self.lengths}
        info["row" if self.kind == "stream" else "item_len"] = ROW if self.kind == "stream" else self.item_len
        (self.tmp / META).write_text(json.dumps(info, indent=1))

    def __exit__(self, typ, exc, tb) -> bool:
        try:
            if typ is None:
                self._finish()
                if self.out_dir.exists():
                    shutil.rmtree(self.out_dir)
                os.replace(self.tmp, self.out_dir)
        finally:
            if self.tmp.exists():  # failed, interrupted, or _finish raised: leave nothing half-written
                for w in self._writers.values():
                    try:
                        w.close()
                    except Exception:
                        pass
                shutil.rmtree(self.tmp, ignore_errors=True)
        return False


def write_streams(out_dir: str | Path, splits: dict[str, np.ndarray], meta: dict, fmt: str = "arrow") -> Path:
    """Store each split's uint8 token stream (atomic)."""
    with StoreWriter(out_dir, "stream", meta, fmt) as w:
        for name, arr in splits.items():
            w.write(name, arr)
    return Path(out_dir)


def write_items(out_dir: str | Path, splits: dict[str, np.ndarray], meta: dict, fmt: str = "arrow") -> Path:
    """Store each split's (count, n) uint8 items, e.g. flattened images (atomic)."""
    n = next(iter(splits.values())).shape[1]
    with StoreWriter(out_dir, "items", meta, fmt, item_len=n) as w:
        for name, arr in splits.items():
            w.write(name, arr)
    return Path(out_dir)


def is_prepared(path: str | Path, fmt: str | None = None) -> bool:
    p = Path(path)
    if not (p / META).exists():
        return False
    f = read_meta(p).get("format", "arrow")
    return (fmt is None or f == fmt) and ((p / "dataset").exists() if f == "arrow" else True)


def read_meta(path: str | Path) -> dict:
    return json.loads((Path(path) / META).read_text())


def _values(col) -> np.ndarray:
    """The uint8 values of an Arrow list column (zero-copy where possible). Arrow rather than
    datasets' numpy format, which widens every integer to int64."""
    parts = [c.flatten().to_numpy(zero_copy_only=False) for c in col.chunks]
    return (np.concatenate(parts) if len(parts) > 1 else parts[0]) if parts else np.zeros(0, np.uint8)


class TokenStream:
    """One split of a stored stream: ``read(start, n)`` returns uint8 tokens start..start+n-1."""

    def __init__(self, ds, length: int, row: int):
        self.ds = ds.with_format("arrow")
        self.length = length
        self.row = row

    def __len__(self) -> int:
        return self.length

    def read(self, start: int, n: int) -> np.ndarray:
        if start < 0 or start + n > self.length:
            raise IndexError(f"window {start}..{start + n} outside a stream of {self.length} tokens")
        r0, r1 = start // self.row, (start + n - 1) // self.row
        flat = _values(self.ds[r0 : r1 + 1]["tokens"])
        off = start - r0 * self.row
        return flat[off : off + n]

    def all(self) -> np.ndarray:
        return self.read(0, self.length) if self.length else np.zeros(0, np.uint8)


class TokenItems:
    """One split of stored items: ``[i]`` is item i's uint8 tokens."""

    def __init__(self, ds):
        self.ds = ds.with_format("arrow")

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> np.ndarray:
        return _values(self.ds[int(i)]["tokens"])


class RawStream(TokenStream):
    """A raw split: a memory-mapped flat uint8 file (numpy only)."""

    def __init__(self, path: Path, length: int):
        self.length = length
        self.mm = np.memmap(path, dtype=np.uint8, mode="r") if length else np.zeros(0, np.uint8)

    def read(self, start: int, n: int) -> np.ndarray:
        if start < 0 or start + n > self.length:
            raise IndexError(f"window {start}..{start + n} outside a stream of {self.length} tokens")
        return np.asarray(self.mm[start : start + n])


class RawItems(TokenItems):
    def __init__(self, path: Path, count: int, n: int):
        self.mm = np.memmap(path, dtype=np.uint8, mode="r", shape=(count, n)) if count else np.zeros((0, n), np.uint8)

    def __len__(self) -> int:
        return len(self.mm)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.mm[int(i)])


def open_store(path: str | Path) -> tuple[dict, dict]:
    """(meta, {split: TokenStream | TokenItems}) of a prepared folder, in either format."""
    path = Path(path)
    meta = read_meta(path)
    if meta.get("format", "arrow") == "raw":
        L = meta["lengths"]
        if meta["kind"] == "stream":
            return meta, {k: RawStream(path / f"{k}.u8", L[k]) for k in L}
        return meta, {k: RawItems(path / f"{k}.u8", L[k], meta["item_len"]) for k in L}
    import datasets

    dd = datasets.load_from_disk(str(path / "dataset"))
    if meta["kind"] == "stream":
        return meta, {k: TokenStream(dd[k], meta["lengths"][k], meta["row"]) for k in dd}
    return meta, {k: TokenItems(dd[k]) for k in dd}

