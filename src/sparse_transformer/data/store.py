"""Prepared token data on disk: one Hugging Face ``datasets`` DatasetDict per corpus.

Streams (text, audio) are stored as fixed-length rows of uint8 tokens per split, read back as
memory-mapped Arrow with zero copies; items (images) are one row per example. Writes go to a
temporary folder that is renamed into place, so an interrupted preparation leaves nothing behind.
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


class DataError(ValueError):
    """Bad data (file, record, size); the message names it and says what would be right."""


def write_streams(out_dir: str | Path, splits: dict[str, np.ndarray], meta: dict) -> Path:
    """Store each split's uint8 token stream as rows of a DatasetDict at ``out_dir`` (atomic)."""
    import datasets

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        feats = datasets.Features({"tokens": datasets.Sequence(datasets.Value("uint8"))})
        dd = {}
        lengths = {}
        for name, arr in splits.items():
            arr = np.ascontiguousarray(arr, dtype=np.uint8)
            rows = [arr[i : i + ROW] for i in range(0, len(arr), ROW)] or [arr[:0]]
            dd[name] = datasets.Dataset.from_dict({"tokens": rows}, features=feats)
            lengths[name] = int(len(arr))
        datasets.DatasetDict(dd).save_to_disk(str(tmp / "dataset"))
        (tmp / META).write_text(json.dumps({**meta, "kind": "stream", "row": ROW, "lengths": lengths}, indent=1))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def write_items(out_dir: str | Path, splits: dict[str, np.ndarray], meta: dict) -> Path:
    """Store each split's (count, n) uint8 items (e.g. flattened images) as rows (atomic)."""
    import datasets

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        dd = {}
        for name, arr in splits.items():
            arr = np.ascontiguousarray(arr, dtype=np.uint8)
            feats = datasets.Features({"tokens": datasets.Sequence(datasets.Value("uint8"), length=arr.shape[1])})
            dd[name] = datasets.Dataset.from_dict({"tokens": list(arr)}, features=feats)
        datasets.DatasetDict(dd).save_to_disk(str(tmp / "dataset"))
        lengths = {k: int(len(v)) for k, v in splits.items()}
        (tmp / META).write_text(json.dumps({**meta, "kind": "items", "lengths": lengths}, indent=1))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def is_prepared(path: str | Path) -> bool:
    return (Path(path) / META).exists() and (Path(path) / "dataset").exists()


def read_meta(path: str | Path) -> dict:
    return json.loads((Path(path) / META).read_text())


class TokenStream:
    """One split of a stored stream: ``read(start, n)`` returns uint8 tokens start..start+n-1."""

    def __init__(self, ds, length: int, row: int):
        self.ds = ds.with_format("numpy")
        self.length = length
        self.row = row

    def __len__(self) -> int:
        return self.length

    def read(self, start: int, n: int) -> np.ndarray:
        if start < 0 or start + n > self.length:
            raise IndexError(f"window {start}..{start + n} outside a stream of {self.length} tokens")
        r0, r1 = start // self.row, (start + n - 1) // self.row
        rows = self.ds[r0 : r1 + 1]["tokens"]
        flat = np.concatenate(list(rows)) if len(rows) > 1 else np.asarray(rows[0])
        off = start - r0 * self.row
        return flat[off : off + n]

    def all(self) -> np.ndarray:
        return self.read(0, self.length) if self.length else np.zeros(0, np.uint8)


class TokenItems:
    """One split of stored items: ``[i]`` is item i's uint8 tokens."""

    def __init__(self, ds):
        self.ds = ds.with_format("numpy")

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.ds[int(i)]["tokens"])


def open_store(path: str | Path) -> tuple[dict, dict]:
    """(meta, {split: TokenStream | TokenItems}) of a prepared folder."""
    import datasets

    meta = read_meta(path)
    dd = datasets.load_from_disk(str(Path(path) / "dataset"))
    if meta["kind"] == "stream":
        return meta, {k: TokenStream(dd[k], meta["lengths"][k], meta["row"]) for k in dd}
    return meta, {k: TokenItems(dd[k]) for k in dd}
