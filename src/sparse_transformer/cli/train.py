"""Train: ``python -m sparse_transformer.train exp=<name> key=value ...`` (or ``make train``).

The command line is validated before torch and Lightning are imported (exit 2, one line, nothing
written); then what needs torch to know (a GPU, the backend, the stack's reach) and the checkpoint
to resume from are checked, the run folder is named once for the whole job, the resolved config is
printed compactly, and ``training.trainer.fit`` runs (data prepared once, validation before and
after, a summary). Torch, Lightning and the data stack are imported in ``main`` only after the
command line is valid, so ``--help``, ``--cfg`` and a bad key answer in about a second.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from omegaconf import OmegaConf

from ..checkpoint import CheckpointError, load
from ..config import ConfigError, main_config
from .common import LaunchError, fail, is_rank_zero, run_dir

WIDTH = 120


def resume_path(cfg, out: Path) -> str | None:
    last = out / "checkpoints" / "last.ckpt"
    if cfg.resume == "last":
        return str(last)
    if cfg.resume == "auto":
        return str(last) if last.is_file() else None
    return cfg.resume or None


def check_resume_checkpoint(cfg, ckpt: str) -> None:
    """The checkpoint to resume from, read once by the one safe loader (``weights_only``, tensors
    mapped, not read) before anything is written: a file that asks to run code, an unreadable one
    or one of a newer format is refused in one line (CheckpointError) and nothing in it runs.
    Lightning's own load in fit/validate is ``weights_only`` too (training.trainer)."""
    label = f"resume={ckpt}" if cfg.resume not in ("last", "auto") else f"resume={cfg.resume}: {ckpt}"
    load(ckpt, label=label, mmap=True)


OTHER_COMMANDS = ("sample", "eval")  # sections the sample and evaluate commands read, not training


def config_lines(cfg, width: int = WIDTH) -> list[str]:
    """The resolved config, compactly: the top-level keys on one line, then a line (wrapped at
    ``width``) per section of ``key=value`` pairs (``--cfg`` prints all of it as YAML)."""
    c = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in OTHER_COMMANDS}
    top = {k: v for k, v in c.items() if not isinstance(v, dict)}
    lines = [" ".join(f"{k}={_value(v)}" for k, v in top.items())]
    for name, section in c.items():
        if isinstance(section, dict):
            pairs = " ".join(f"{k}={_value(v)}" for k, v in _flat(section))
            lines += textwrap.wrap(pairs, width, initial_indent=f"{name + ':':11s}", subsequent_indent=" " * 11,
                                   break_on_hyphens=False)
    return lines


def _flat(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _value(v) -> str:
    if isinstance(v, list):
        return "[" + ",".join(map(str, v)) + "]"
    return "null" if v is None else str(v)


def prepare(cfg, preflight) -> tuple[Path, str | None]:
    """(run folder, checkpoint to resume from); a config torch shows to be impossible, a run folder
    the processes cannot agree on or an unusable checkpoint: one line, exit 2, nothing written."""
    try:
        preflight.check_runtime(cfg)
        out = run_dir(cfg)
        ckpt = resume_path(cfg, out)
        if ckpt:
            check_resume_checkpoint(cfg, ckpt)
    except (ConfigError, LaunchError, CheckpointError) as e:
        fail(e)
    return out, ckpt


def main(argv: list[str] | None = None) -> dict:
    cfg = main_config(argv)  # exits 2 on a bad command line (user modules imported by its check), before torch

    # lazy (see the module docstring): torch, Lightning and the data stack, once the command line is valid
    from ..training import fault, preflight, trainer

    out, ckpt = prepare(cfg, preflight)
    rank0 = is_rank_zero()
    if rank0:
        print("\n".join(config_lines(cfg)))
    try:
        return trainer.fit(cfg, out, ckpt, rank0=rank0)
    except fault.SigtermStop as e:
        if rank0:
            print(e, file=sys.stderr)
        raise SystemExit(fault.SIGTERM_EXIT) from None
    except fault.NonFiniteLossError as e:
        fail(e, code=1)
