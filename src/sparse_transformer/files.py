"""Writes that a reader sees whole or not at all: the one home for atomic files and folders.

A leaf: imports nothing of ours, so data/, training/, the CLIs and the sweep runner all use it.
Each write goes to a temporary beside the target (same filesystem, so ``os.replace`` is atomic),
is flushed and fsynced, then renamed over the target; the folder is fsynced so the rename itself
survives a crash. A write that fails or is interrupted leaves the old target and no temporary.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems (and Windows) cannot open a folder: the rename still happened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale(path: Path) -> None:
    """Delete temporaries of ``path`` left by a writer that was killed (``.<name>.tmp-*``)."""
    path = Path(path)
    if path.parent.is_dir():
        for stale in path.parent.glob(f".{path.name}.tmp-*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """``os.replace(src, dst)`` (same filesystem: atomic), the rename made durable (folder fsynced)."""
    os.replace(src, dst)
    _fsync_dir(Path(dst).parent)


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """``with atomic_file(p, "wb") as f: ...``: ``p`` appears, complete, only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path, "w") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    with atomic_file(path, "w") as f:
        json.dump(obj, f, indent=indent)


@contextmanager
def atomic_folder(out: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``, renamed to ``out`` only if the block succeeds.
    An existing ``out`` is an error unless ``replace`` (then it is swapped out after success)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            if not replace:
                raise FileExistsError(f"{out} already exists")
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(out.parent)


def folder_problem(path: str | os.PathLike) -> str | None:
    """Why a folder could not be made or written at ``path``, as the end of a sentence that starts
    with the path (None: it can). Checks a file in the way, a file above it, and (by creating and
    removing a probe file in the nearest existing folder: ``os.access`` says yes to root on read-only
    mounts) permission. Leaves nothing behind."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return "is a file, not a folder"
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"is under {existing}, which is a file, not a folder"
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=existing)
    except OSError as e:
        return f"cannot be written ({existing}: {e.strerror or type(e).__name__})"
    os.close(fd)
    os.unlink(probe)
    return None
