"""The one checkpoint loader (and the format stamp its saver writes), used by training (``resume=``),
sampling, evaluation and ``lit.load_checkpoint`` (the notebooks).

Every load is ``torch.load(..., weights_only=True)``: a checkpoint is tensors and plain values
(dicts, lists, tuples, str, numbers, None), and a file that asks the unpickler for anything else
(a crafted pickle calling ``os.system``, say) is refused before any of it runs.

The one exception is what checkpoints written before the format stamp hold: numpy's random state
(``callbacks['ResumeState']['rng'][*]['numpy']``, a ``uint32`` array). Exactly the four globals that
rebuild it are allowed, for the length of the load only (``LEGACY_NUMPY``). New checkpoints keep
that state as a tensor (callbacks/fault.py), so they need none.

Checkpoints carry ``checkpoint[FORMAT_KEY] = FORMAT``; one without it is format 0 (written before
the stamp), and one from a newer version (a higher number) is refused in one line.

A leaf: imports torch (lazily) and nothing of ours.
"""

from __future__ import annotations

import re
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

FORMAT_KEY = "sparse_transformer_format"
FORMAT = 1  # 1: RNG states as tensors and plain values (0: numpy's state as a numpy array)


class CheckpointError(ValueError):
    """A checkpoint cannot be used: unreadable, unsafe, or from a newer format. One line."""


def legacy_numpy_globals() -> list:
    """What unpickling numpy's MT19937 state (a uint32 array) needs, and nothing more: the array
    rebuild function, the array and dtype classes, and the uint32 dtype class (numpy >= 2)."""
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    allowed = [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    # the same function under the name numpy 1.x pickled it with
    allowed.append((_reconstruct, "numpy.core.multiarray._reconstruct"))
    return allowed


@contextmanager
def legacy_globals():
    """Allow ``legacy_numpy_globals`` for ``weights_only`` loads inside the block (e.g. around
    Lightning's own load in ``trainer.fit(ckpt_path=..., weights_only=True)``)."""
    import torch

    with torch.serialization.safe_globals(legacy_numpy_globals()):
        yield


def _asks_for(e: Exception) -> str | None:
    """The code a ``weights_only`` load refused to call or build (from torch's multi-line message),
    or None where it refused for another reason (bytes that are not a pickle of plain data)."""
    msg = str(e)
    m = re.search(r"GLOBAL ([\w.]+)", msg) or re.search(r"got <class '([\w.]+)'>", msg)
    return m.group(1) if m else None


def _unpickler_error(e: Exception) -> str:
    m = re.search(r"WeightsUnpickler error: \s*(\S[^\n]*)", str(e))
    return m.group(1).strip() if m else _first_line(e)


def load(path: str | Path, *, label: str | None = None, map_location: Any = "cpu", mmap: bool = False) -> dict:
    """The checkpoint at ``path`` as a dict, loaded ``weights_only``; CheckpointError (one line that
    starts with ``label``, default ``ckpt=<path>``) if it is unreadable, asks for code, is not a dict,
    or comes from a newer format. ``mmap=True`` maps the tensors instead of reading them (a cheap
    check of a large file; zip checkpoints only, others are read)."""
    import pickle

    import torch

    label = label or f"ckpt={path}"
    path = str(path)
    try:
        if mmap and not zipfile.is_zipfile(path):
            mmap = False
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": torch's multi-line warnings
            warnings.simplefilter("ignore")
            with legacy_globals():
                ck = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        asks = _asks_for(e) if "Weights only load failed" in str(e) else None
        if asks:
            raise CheckpointError(f"{label} is refused: it asks to call or build {asks} while loading, and a checkpoint "
                                  f"holds only tensors and plain values; nothing in it was run") from None
        raise CheckpointError(f"{label} is not a readable checkpoint (UnpicklingError: {_unpickler_error(e)})") from None
    except Exception as e:  # truncated, not a zip or pickle, a folder, unreadable
        raise CheckpointError(f"{label} is not a readable checkpoint ({type(e).__name__}: {_first_line(e)})") from None
    check_format(ck, label)
    return ck


def check_format(ck: Any, label: str) -> int:
    """The checkpoint's format number; CheckpointError if it is not a dict or its format is newer."""
    if not isinstance(ck, dict):
        raise CheckpointError(f"{label} is not a checkpoint: it holds a {type(ck).__name__}, not a dict")
    v = ck.get(FORMAT_KEY, 0)
    if type(v) is not int or v < 0:
        raise CheckpointError(f"{label} has {FORMAT_KEY}={v!r}, not a format number (0..{FORMAT})")
    if v > FORMAT:
        raise CheckpointError(f"{label} was written by a newer sparse-transformer (checkpoint format {v}); this version "
                              f"reads formats 0..{FORMAT}: update sparse-transformer to use it")
    return v


def stamp(checkpoint: dict) -> None:
    """Mark a checkpoint being saved with this version's format."""
    checkpoint[FORMAT_KEY] = FORMAT


def _first_line(e: Exception) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else ""
