"""Loading through Hugging Face ``datasets``: hub names, saved or parquet folders, and the one-line
errors when the hub cannot be reached (this machine and the GPU machine are offline).

``datasets`` is imported inside ``load``: it is heavy, and the GPU machine's raw stores need none of it."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from .store import DataError

ALIASES = {"val": "validation", "valid": "validation", "dev": "validation"}


def offline_reason() -> str | None:
    """Why the hub cannot be reached, or None if it seems reachable."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").lower() in ("1", "true", "yes", "on"):
            return f"this machine is offline ({var}=1)"
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        return "this machine is offline (huggingface.co cannot be reached)"
    return None


def hub_error(name: str, e: BaseException, local_hint: str) -> DataError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    why = offline_reason()
    if why:
        return DataError(f"data.source={name}: {why} and no cached copy was found; get the data on a machine with "
                         f"network and point at it here with data.source=local data.path=<{local_hint}>")
    return DataError(f"data.source={name} could not be loaded from the hub ({type(e).__name__}: {first}); check the "
                     f"name, or set data.source=local data.path=<{local_hint}>")


def is_dataset_dir(path: Path) -> bool:
    """A folder ``datasets`` can load as a whole: saved with save_to_disk, or parquet/arrow files."""
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        return True
    return path.is_dir() and (any(path.rglob("*.parquet")) or any(path.rglob("*.arrow")))


def load(source: str, *, streaming: bool = False, local_hint: str = "local files"):
    """A DatasetDict (or IterableDatasetDict) of ``source``: a hub name or a local dataset folder.
    Split names are normalised (val/valid/dev -> validation)."""
    import datasets

    p = Path(source)
    try:
        if p.exists() and ((p / "dataset_dict.json").exists() or (p / "state.json").exists()):
            dd = datasets.load_from_disk(str(p))
            if streaming:
                dd = datasets.IterableDatasetDict({k: v.to_iterable_dataset(num_shards=max(1, min(64, len(v)))) for k, v in dd.items()})
        else:
            dd = datasets.load_dataset(source, streaming=streaming)
    except DataError:
        raise
    except Exception as e:  # offline, unknown name, a loading script (datasets >= 4 refuses them), ...
        if p.exists():
            raise DataError(f"data.source={source}: datasets could not read this folder ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
        raise hub_error(source, e, local_hint) from None
    if not isinstance(dd, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        dd = {"train": dd}
    return {ALIASES.get(k, k): v for k, v in dd.items()}


def column(ds, kinds: tuple[str, ...], names: tuple[str, ...], source: str, what: str) -> str:
    """The first column whose feature type is one of ``kinds`` (e.g. Image), else one named in ``names``."""
    feats = ds.features or {}
    for k, f in feats.items():
        if type(f).__name__ in kinds:
            return k
    for k in names:
        if k in feats:
            return k
    raise DataError(f"data.source={source} has no {what} column (columns: {', '.join(feats)}); "
                    f"expected a {'/'.join(kinds)} feature or a column named {'/'.join(names)}")
