"""``python -m sparse_transformer.data exp=<name> key=value ...``: prepare an experiment's data once
(``make data EXP=<name> ARGS="data.max_bytes=30000000 data.format=raw"``).

Prints the folder, each split's size and the time taken; a bad source exits 2 with one line.
"""

from __future__ import annotations

import time
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    from ..config import main_config

    cfg = main_config(argv)
    from . import build_datamodule, prepare_or_exit
    from .store import is_prepared, read_meta

    dm = build_datamodule(cfg)
    if dm.streaming:
        print(f"data.streaming=true: {cfg.data.source} is read from the hub while training; nothing to prepare")
        return {}
    t0 = time.time()
    existed = is_prepared(dm.dir, cfg.data.format)
    prepare_or_exit(dm)
    seconds = time.time() - t0
    meta = read_meta(dm.dir)
    size = sum(f.stat().st_size for f in Path(dm.dir).rglob("*") if f.is_file())
    unit = "items" if meta["kind"] == "items" else "tokens"
    lengths = ", ".join(f"{k} {v:,}" for k, v in meta["lengths"].items())
    print(f"{'already prepared' if existed else f'prepared in {seconds:.1f} s'}: {dm.dir} ({meta.get('format', 'arrow')}, "
          f"{size / 1e6:.1f} MB on disk)")
    print(f"{cfg.data.modality} from {cfg.data.source}: {lengths} {unit}; shape {dm.shape}")
    return {"dir": str(dm.dir), "seconds": seconds, "bytes": size, "lengths": meta["lengths"]}


if __name__ == "__main__":
    main()
