"""Prepared token data on disk: one folder per corpus, written once, read memory-mapped.

Two formats, told apart by the folder's ``sparse_transformer.json``:
- ``arrow`` (default): a Hugging Face ``datasets`` DatasetDict. Streams (text, audio) are stored as
  rows of ``ROW`` uint8 tokens per split; items (images) as one row of n tokens each.
- ``raw``: one flat ``<split>.u8`` file per split, read with numpy alone. For machines that have
  torch but not ``datasets``/pyarrow (the GPU machine): carry a capped raw folder there.

A folder is written into a temporary beside it and renamed into place only when complete
(``files.atomic_folder``), so an interrupted or failed preparation leaves nothing behind; the
temporaries of a preparation that was killed outright are removed by the next one. The folder's
``sparse_transformer.json`` records each split's length and every file's size and SHA-256.
``open_store`` checks the sizes (cheap: ``stat`` only); ``verify_store`` checks the sums. A folder
that fails either raises ``DamagedStore``, one line naming the file.

``datasets`` is imported inside the functions that need it: the raw format must work without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np

from ..files import atomic_folder, write_json

ROW = 1 << 16  # tokens per stored row of a stream
META = "sparse_transformer.json"
OWNER = ".owner.json"  # inside a temporary folder while it is being written: which process writes it
SPLITS = ("train", "validation", "test")
FORMATS = ("arrow", "raw")
KINDS = ("stream", "items")
STALE_SECONDS = 3600  # a temporary whose writer cannot be asked is stale after an hour without a write


class DataError(ValueError):
    """Bad data (file, record, size); the message names it and says what would be right."""


class DamagedStore(DataError):
    """A prepared folder whose files are not what it recorded; ``file`` names the first that is not."""

    def __init__(self, file: str | Path, what: str):
        self.file, self.what = Path(file), what
        super().__init__(f"{file} is damaged: {what}")


# ------------------------------------------------------------------------------------------------
# Temporaries of killed preparations
# ------------------------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _is_stale(tmp: Path) -> bool:
    """A temporary of a writer that is gone: its process (this host) has ended; or, where it cannot be
    asked (another host, no owner file), nothing in it was written for ``STALE_SECONDS``."""
    try:
        owner = json.loads((tmp / OWNER).read_text())
        if owner.get("host") == socket.gethostname():
            return not _alive(int(owner["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    newest = max((p.lstat().st_mtime for p in [tmp, *tmp.rglob("*")]), default=0.0)
    return time.time() - newest > STALE_SECONDS


def remove_stale_temporaries(out_dir: str | Path) -> list[Path]:
    """Delete the temporary folders that killed preparations of ``out_dir`` left beside it
    (``.<name>.*``); a preparation still running (here, or recently elsewhere) keeps its own."""
    out_dir = Path(out_dir)
    removed = []
    if out_dir.parent.is_dir():
        for tmp in out_dir.parent.glob(f".{out_dir.name}.*"):
            if tmp.is_dir() and not tmp.is_symlink() and _is_stale(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
                removed.append(tmp)
    return removed


# ------------------------------------------------------------------------------------------------
# Checksums
# ------------------------------------------------------------------------------------------------
def sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_records(folder: Path) -> dict[str, dict]:
    """{relative path: {bytes, sha256}} of every file of a prepared folder but its meta file."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel not in (META, OWNER):
            out[rel] = {"bytes": p.stat().st_size, "sha256": sha256(p)}
    return out


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------
class StoreWriter:
    """Write a prepared folder split by split, atomically::

        with StoreWriter(out_dir, kind="stream", meta={...}) as w:
            w.write("train", chunk)          # stream: 1-D uint8 chunks, appended
        with StoreWriter(out_dir, kind="items", item_len=784, meta={...}) as w:
            w.write("train", images)         # items: (k, item_len) uint8

    Arrow rows go through ``datasets``' ``ArrowWriter`` chunk by chunk (not ``Dataset.from_dict``),
    so a corpus larger than memory can be written; the finished files become a DatasetDict.
    An existing folder is replaced only when the new one is complete.
    """

    def __init__(self, out_dir: str | Path, kind: str, meta: dict, fmt: str = "arrow", item_len: int | None = None):
        if kind not in KINDS or fmt not in FORMATS:
            raise ValueError(f"kind={kind!r} fmt={fmt!r}")
        if kind == "items" and not item_len:
            raise ValueError("items need item_len")
        self.out_dir, self.kind, self.meta, self.fmt, self.item_len = Path(out_dir), kind, meta, fmt, item_len
        self.lengths = {s: 0 for s in SPLITS}
        self._buf = {s: [] for s in SPLITS}  # stream: pending tokens shorter than a row
        self._writers: dict = {}

    def __enter__(self) -> "StoreWriter":
        self._made = [p for p in [self.out_dir.parent, *self.out_dir.parent.parents] if not p.exists()]
        remove_stale_temporaries(self.out_dir)
        self._folder = atomic_folder(self.out_dir, replace=True)
        self.tmp = self._folder.__enter__()
        write_json(self.tmp / OWNER, {"pid": os.getpid(), "host": socket.gethostname()})
        return self

    def _writer(self, split: str):
        if split not in self._writers:
            if self.fmt == "raw":
                self._writers[split] = open(self.tmp / f"{split}.u8", "wb")
            else:
                self._writers[split] = _arrow_writer(self.tmp / "build" / f"{split}.arrow", self.item_len
                                                     if self.kind == "items" else None)
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
            for w in self._writers.values():
                w.finalize()
                w.close()
            _save_dataset_dict(self.tmp)
        else:
            for f in self._writers.values():
                f.close()
        (self.tmp / OWNER).unlink()
        info = {**self.meta, "kind": self.kind, "format": self.fmt, "lengths": self.lengths}
        info["row" if self.kind == "stream" else "item_len"] = ROW if self.kind == "stream" else self.item_len
        info["files"] = file_records(self.tmp)
        write_json(self.tmp / META, info)

    def _close_writers(self) -> None:
        for w in self._writers.values():
            try:
                w.close()
            except Exception:  # closing after a failure: the first error is the one to report
                pass

    def __exit__(self, typ, exc, tb) -> bool:
        failed = None  # an error of _finish itself, raised after the clean-up
        if typ is None:
            try:
                self._finish()
            except BaseException as e:
                failed, typ, exc, tb = e, type(e), e, e.__traceback__
        if typ is not None:
            self._close_writers()
        try:
            self._folder.__exit__(typ, exc, tb)  # renames into place, or removes the temporary
        finally:
            if typ is not None:
                for p in self._made:  # folders made for this store only (an empty cache_dir): not left either
                    try:
                        p.rmdir()
                    except OSError:
                        break
        if failed is not None:
            raise failed
        return False


def _arrow_writer(path: Path, length: int | None):
    import datasets
    from datasets.arrow_writer import ArrowWriter

    feats = datasets.Features({"tokens": datasets.Sequence(datasets.Value("uint8"), length=length or -1)})
    path.parent.mkdir(exist_ok=True)
    return ArrowWriter(features=feats, path=str(path))


def _save_dataset_dict(tmp: Path) -> None:
    """``tmp/build/<split>.arrow`` -> ``tmp/dataset`` (a DatasetDict), then the build files go."""
    import datasets

    dd = datasets.DatasetDict({s: datasets.Dataset.from_file(str(tmp / "build" / f"{s}.arrow")) for s in SPLITS})
    was_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # a copy of what was just written: our own bar already showed it
    try:  # num_shards=1: datasets writes an empty split as zero shards, which load_from_disk rejects
        dd.save_to_disk(str(tmp / "dataset"), num_shards={s: 1 for s in SPLITS})
    finally:
        if was_on:
            datasets.enable_progress_bars()
    del dd
    shutil.rmtree(tmp / "build")


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


# ------------------------------------------------------------------------------------------------
# The record of a folder, and its checks
# ------------------------------------------------------------------------------------------------
def _meta_problem(meta) -> str | None:
    """What is wrong with a meta file's contents (None: nothing)."""
    if not isinstance(meta, dict):
        return "it is not a JSON mapping"
    if meta.get("kind") not in KINDS or meta.get("format", "arrow") not in FORMATS:
        return f"kind={meta.get('kind')!r} format={meta.get('format')!r} (valid: {'/'.join(KINDS)}, {'/'.join(FORMATS)})"
    lengths = meta.get("lengths")
    if not isinstance(lengths, dict) or sorted(lengths) != sorted(SPLITS) or \
            not all(type(v) is int and v >= 0 for v in lengths.values()):
        return f"lengths={lengths!r} (valid: a count for each of {', '.join(SPLITS)})"
    size_key = "row" if meta["kind"] == "stream" else "item_len"
    if (meta["kind"] == "items" or meta.get("format", "arrow") == "arrow") and \
            not (type(meta.get(size_key)) is int and meta[size_key] >= 1):
        return f"{size_key}={meta.get(size_key)!r} (valid: a positive count)"
    files = meta.get("files", {})
    for rel, rec in (files.items() if isinstance(files, dict) else [(None, None)]):
        p = Path(str(rel))
        if rel is None or p.is_absolute() or ".." in p.parts or not isinstance(rec, dict) or \
                type(rec.get("bytes")) is not int or not isinstance(rec.get("sha256"), str):
            return f"its file list has {rel!r}: {rec!r} (valid: relative paths with bytes and sha256)"
    return None


def read_meta(path: str | Path) -> dict:
    """The folder's record; DamagedStore if it is missing or not what a preparation writes."""
    f = Path(path) / META
    try:
        meta = json.loads(f.read_text())
    except FileNotFoundError:
        raise DamagedStore(f, "it is missing (every prepared folder has one)") from None
    except (OSError, ValueError) as e:
        raise DamagedStore(f, f"it is not readable JSON ({type(e).__name__}: {str(e).splitlines()[0][:80]})") from None
    problem = _meta_problem(meta)
    if problem:
        raise DamagedStore(f, problem)
    return meta


def is_prepared(path: str | Path, fmt: str | None = None) -> bool:
    """A prepared folder of format ``fmt`` (any, if None) exists at ``path``. DamagedStore if a folder
    is there but its record is missing or garbled."""
    p = Path(path)
    if not p.exists():
        return False
    return fmt is None or read_meta(p).get("format", "arrow") == fmt


def _expected_sizes(meta: dict) -> dict[str, int]:
    """Sizes that follow from the lengths alone (raw files): what a store from before file lists is checked by."""
    if meta.get("format", "arrow") != "raw":
        return {}
    per = meta.get("item_len", 1) if meta["kind"] == "items" else 1
    return {f"{s}.u8": n * per for s, n in meta["lengths"].items()}


def check_sizes(path: str | Path, meta: dict) -> None:
    """Every recorded file is there with its recorded size (``stat`` only); DamagedStore names the first that is not."""
    path = Path(path)
    recorded = [(rel, rec["bytes"]) for rel, rec in meta.get("files", {}).items()]
    for rel, size in recorded + list(_expected_sizes(meta).items()):
        f = path / rel
        try:
            have = f.stat().st_size
        except FileNotFoundError:
            raise DamagedStore(f, "it is missing") from None
        if have != size:
            raise DamagedStore(f, f"it has {have:,} bytes, but {size:,} were written when it was prepared")


def verify_store(path: str | Path) -> dict:
    """Check every file's SHA-256 against the record (reads everything); return {files, bytes}."""
    path = Path(path)
    meta = read_meta(path)
    check_sizes(path, meta)
    files = meta.get("files")
    if not files:
        raise DamagedStore(path / META, "it records no checksums to verify (prepared by an older version)")
    for rel, rec in files.items():
        if sha256(path / rel) != rec["sha256"]:
            raise DamagedStore(path / rel, "its SHA-256 differs from the one recorded when it was prepared")
    return {"files": len(files), "bytes": sum(r["bytes"] for r in files.values())}


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------
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


def _open_arrow(path: Path, meta: dict) -> dict:
    import datasets

    try:
        dd = datasets.load_from_disk(str(path / "dataset"))
    except Exception as e:  # whatever datasets raises for a garbled file: the folder is damaged
        raise DamagedStore(path / "dataset", f"datasets could not load it ({type(e).__name__}: "
                           f"{(str(e).splitlines() or [''])[0][:100]})") from None
    L = meta["lengths"]
    for k in SPLITS:
        rows = len(dd[k]) if k in dd else None
        want = L[k] if meta["kind"] == "items" else max(1, -(-L[k] // meta["row"]))
        if rows != want:
            raise DamagedStore(path / "dataset" / k, f"it holds {rows} rows, but {want} were written")
    if meta["kind"] == "stream":
        return {k: TokenStream(dd[k], L[k], meta["row"]) for k in SPLITS}
    return {k: TokenItems(dd[k]) for k in SPLITS}


def open_store(path: str | Path) -> tuple[dict, dict]:
    """(meta, {split: TokenStream | TokenItems}) of a prepared folder, in either format, after the
    cheap checks (the record, every file's size); DamagedStore names what is wrong."""
    path = Path(path)
    meta = read_meta(path)
    check_sizes(path, meta)
    if meta.get("format", "arrow") == "raw":
        L = meta["lengths"]
        if meta["kind"] == "stream":
            return meta, {k: RawStream(path / f"{k}.u8", L[k]) for k in SPLITS}
        return meta, {k: RawItems(path / f"{k}.u8", L[k], meta["item_len"]) for k in SPLITS}
    return meta, _open_arrow(path, meta)
