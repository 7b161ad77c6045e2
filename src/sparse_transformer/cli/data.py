"""``python -m sparse_transformer.data exp=<name> key=value ... [verify=true] [rebuild=true]``: prepare an
experiment's data once (``make data EXP=<name> ARGS="data.max_bytes=30000000 data.format=raw"``).

Prints the folder, each split's size and the time taken. Every prepared folder records its files'
sizes (checked each time it is opened) and SHA-256 sums: ``verify=true`` checks the sums too;
``rebuild=true`` prepares the folder again (what the error for a damaged folder says to run).
Bad input (a key, a value, a source, a folder that cannot be written, damaged data) is one line on
stderr and exit 2, with nothing written; a failure of the machine (disk full, ...) is one line and exit 1.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..config import help_text, main_config
from ..data import build_datamodule
from ..data.store import DataError, read_meta

OPTIONS = {  # the data command's own options, besides every config key
    "verify": "check every prepared file against its recorded SHA-256 (reads it all); default false",
    "rebuild": "prepare the folder again, even where it exists (a damaged one, say); default false",
}
BOOLS = {"true": True, "false": False}


def fail(message: str, code: int = 2):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def usage() -> str:
    lines = ["usage: python -m sparse_transformer.data [exp=<name>] [key=value ...] [verify=true] [rebuild=true]", "",
             "options of this command:"]
    lines += [f"  {k:32s} {doc}" for k, doc in OPTIONS.items()]
    return "\n".join(lines + ["", *help_text().splitlines()[2:]])


def split_options(argv: list[str]) -> tuple[dict[str, bool], list[str]]:
    """({verify, rebuild}, the rest of argv for the config); a bad option value is one line, exit 2."""
    opts, rest = dict.fromkeys(OPTIONS, False), []
    for a in argv:
        key, eq, value = (a[2:] if a.startswith("--") else a).partition("=")
        if key not in OPTIONS:
            rest.append(a)
        elif value.lower() not in BOOLS:
            fail(f"{key}={value} is not valid; valid: {key}=true or {key}=false" if eq else
                 f"{key} needs a value; valid: {key}=true or {key}=false")
        else:
            opts[key] = BOOLS[value.lower()]
    return opts, rest


def report(dm, cfg, existed: bool, seconds: float) -> dict:
    meta = read_meta(dm.dir)
    size = sum(f.stat().st_size for f in Path(dm.dir).rglob("*") if f.is_file())
    unit = "items" if meta["kind"] == "items" else "tokens"
    lengths = ", ".join(f"{k} {v:,}" for k, v in meta["lengths"].items())
    print(f"{'already prepared' if existed else f'prepared in {seconds:.1f} s'}: {dm.dir} ({meta.get('format', 'arrow')}, "
          f"{size / 1e6:.1f} MB on disk)")
    print(f"{cfg.data.modality} from {cfg.data.source}: {lengths} {unit}; shape {dm.shape}")
    return {"dir": str(dm.dir), "seconds": seconds, "bytes": size, "lengths": meta["lengths"]}


def prepare(argv: list[str]) -> dict:
    opts, rest = split_options(argv)
    if any(a in ("--help", "-h") for a in rest):
        print(usage())
        raise SystemExit(0)
    cfg = main_config(rest)  # a bad key or value: one line, exit 2, before torch loads
    dm = build_datamodule(cfg)
    if dm.streaming:
        print(f"data.streaming=true: {cfg.data.source} is read from the hub while training; nothing to prepare")
        return {}
    dm.command_args = rest
    dm.rebuild = opts["rebuild"]
    t0 = time.time()
    existed = not dm.rebuild and dm.prepared()
    dm.prepare_data()
    dm.setup("fit")
    out = report(dm, cfg, existed, time.time() - t0)
    if opts["verify"]:
        v = dm.verify()
        print(f"verified: the SHA-256 of all {v['files']} files ({v['bytes'] / 1e6:.1f} MB) match their record")
        out["verified"] = v
    return out


def main(argv: list[str] | None = None) -> dict:
    try:
        return prepare(sys.argv[1:] if argv is None else list(argv))
    except DataError as e:
        fail(str(e))
    except OSError as e:  # the machine, not the input: a full disk, a vanished mount
        fail(f"{type(e).__name__}: {e}", code=1)


if __name__ == "__main__":
    main()
