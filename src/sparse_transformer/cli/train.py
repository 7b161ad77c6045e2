"""Train: ``python -m sparse_transformer.train exp=<name> key=value ...`` (or ``make train``).

The command line is validated before torch and Lightning are imported (exit 2, one line, nothing
written); then what needs torch to know (a GPU, devices, the model's size against memory, the
backend, the stack's reach), the folders it will write and the checkpoint to resume from are
checked, the run folder is named once for the whole job (a new one made exclusively; one holding
a run is not reused without resume or overwrite=true), the resolved config is printed compactly,
and ``training.trainer.fit`` runs (data prepared once, validation before and after, a summary).
Torch, Lightning and the data stack are imported in ``main`` only after the command line is
valid, so ``--help``, ``--cfg`` and a bad key answer in about a second.

Exit codes: 2 for bad input (one line on stderr, nothing written), 1 for a runtime failure that
is not a bug (out of memory, non-finite weights, too many non-finite steps: one line), 143 on
SIGTERM (last.ckpt saved).
"""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

from omegaconf import OmegaConf

from .. import files
from ..checkpoint import LAST, CheckpointError, kept_checkpoints, load
from ..config import ConfigError, main_config
from .common import LaunchError, clear_run, fail, folder_error, is_rank_zero, made_here, run_dir, run_in

WIDTH = 120


def check_resume_checkpoint(cfg, ckpt: str):
    """The checkpoint to resume from, read once by the one safe loader (``weights_only``, tensors
    mapped, not read) before anything is written: a file that asks to run code, an unreadable one
    or one of a newer format is refused in one line (CheckpointError) and nothing in it runs.
    Lightning's own load in fit/validate is ``weights_only`` too (training.trainer). Returns it."""
    label = f"resume={ckpt}" if cfg.resume not in ("last", "auto") else f"resume={cfg.resume}: {ckpt}"
    return load(ckpt, label=label, mmap=True)


def resume_path(cfg, out: Path, rank0: bool = True) -> str | None:
    """The checkpoint to resume from (``check_resume_checkpoint``). ``resume=last``/``auto`` take
    the run's newest checkpoint that reads: last.ckpt, else the ones kept before it
    (previous.ckpt, ...), saying on stderr (rank 0) which one was damaged or missing; none that reads
    is a CheckpointError. ``auto`` with no checkpoint at all starts fresh."""
    if cfg.resume not in ("last", "auto"):
        if cfg.resume:
            check_resume_checkpoint(cfg, cfg.resume)
        return cfg.resume or None
    folder = out / "checkpoints"
    kept = kept_checkpoints(folder)
    if not kept:
        if cfg.resume == "last":
            raise CheckpointError(f"resume=last: {folder / LAST} does not exist; give run_dir=<a run folder with a "
                                  f"checkpoint> or resume=auto")
        return None
    problems, damaged = ([] if kept[0].name == LAST else [f"resume={cfg.resume}: {folder / LAST} is missing"]), []
    for ckpt in kept:
        try:
            ck = check_resume_checkpoint(cfg, str(ckpt))
            step = ck.get("global_step", "?") if isinstance(ck, dict) else "?"
        except CheckpointError as e:
            problems.append(str(e))
            damaged.append(ckpt)
            continue
        if problems and rank0:
            # set aside, so that the next saves do not move them down over the good ones
            for bad in damaged:
                bad.rename(bad.with_name(bad.name + ".damaged"))
            aside = f" (set aside as {', '.join(b.name + '.damaged' for b in damaged)})" if damaged else ""
            print(f"warning: {'; '.join(problems)}{aside}; resuming from the checkpoint kept before it, {ckpt} "
                  f"(step {step})", file=sys.stderr)
        return str(ckpt)
    if len(problems) == 1:  # the run's one checkpoint: its own message
        raise CheckpointError(problems[0])
    raise CheckpointError(f"{'; '.join(problems)}; no checkpoint in {folder} reads: give resume=<a good checkpoint> "
                          f"or a new run_dir")


def check_folders(cfg) -> None:
    """The folders training writes must be folders it can write (not files, not under files): the
    run folder (run_dir, else runs/<exp>) and data.cache_dir (which may be read-only if it holds
    the prepared data already)."""
    problem = None if cfg.run_dir else files.folder_problem(Path("runs") / cfg.exp)
    if problem:
        raise ConfigError(f"the run folder runs/{cfg.exp}/<time> (no run_dir given): runs/{cfg.exp} "
                          f"{problem}; give run_dir=<a folder that can be written>")
    e = (folder_error("run_dir", cfg.run_dir) if cfg.run_dir else None) or \
        folder_error("data.cache_dir", cfg.data.cache_dir, writable=False)
    if e:
        raise e


def check_not_a_run(cfg, out: Path) -> None:
    """An explicit run_dir holding a run, without resume: refused, or (overwrite=true) that run's
    files removed. Only rank 0 looks (it alone writes, and the others start after it has)."""
    if not cfg.run_dir or cfg.resume is not None:
        return
    found = run_in(out)
    if found and not cfg.get("overwrite", False):
        raise ConfigError(f"run_dir={out} holds a run ({', '.join(found[:4])}): continue it with resume=last, give a "
                          f"new run_dir, or overwrite=true to replace it")
    if found:
        clear_run(out)


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
    """(run folder, checkpoint to resume from); a config torch shows to be impossible, a folder that
    cannot be written, a run folder the processes cannot agree on or that holds a run, or an
    unusable checkpoint: one line, exit 2, nothing written (a new run folder made for this run is
    removed again)."""
    rank0 = is_rank_zero()
    out = None
    try:
        preflight.check_runtime(cfg)
        check_folders(cfg)
        out = run_dir(cfg)
        ckpt = resume_path(cfg, out, rank0)
        if rank0:
            check_not_a_run(cfg, out)
    except (ConfigError, LaunchError, CheckpointError) as e:
        if out is not None:
            remove_if_new(out)
        fail(e)
    return out, ckpt


def remove_if_new(out: Path) -> None:
    """Remove the run folder this process made for this run if nothing was written into it."""
    if made_here(out):
        try:
            out.rmdir()
        except OSError:  # something was written: keep it
            pass


def out_of_memory(e: BaseException, cfg) -> str:
    """One line for an out-of-memory error: what was asked for (torch's own words) and the keys
    that reduce the memory a step takes."""
    msg = str(e)
    m = re.search(r"[Tt]ried to allocate ([\d.]+ ?[KMGT]?i?B|\d+ bytes)", msg)
    asked = f"tried to allocate {m.group(1)}" if m else msg.strip().splitlines()[0][:160] if msg.strip() else "no detail"
    m2 = re.search(r"(GPU \d+ has a total capacity of [\d.]+ ?[KMGT]?i?B of which [\d.]+ ?[KMGT]?i?B is free)", msg)
    d = cfg.data
    return (f"out of memory during training: {asked}" + (f" ({m2.group(1)})" if m2 else "") + f"; reduce "
            f"data.batch_size={d.batch_size} (trainer.accumulate_grad_batches keeps the global batch), set "
            f"model.recompute=true" + (" (now false)" if not cfg.model.recompute else "")
            + f" or shorten data.seq_len={d.seq_len}")


def is_out_of_memory(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and "can't allocate memory" in str(e))


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
    except SystemExit as e:  # bad data (exit 2) before anything was written: no empty run folder left
        if e.code == 2:
            remove_if_new(out)
        raise
    except fault.SigtermStop as e:
        if rank0:
            print(e, file=sys.stderr)
        raise SystemExit(fault.SIGTERM_EXIT) from None
    except (fault.NonFiniteLossError, fault.NonFiniteWeightsError) as e:
        fail(e, code=1)
    except (RuntimeError, MemoryError) as e:
        if not is_out_of_memory(e):
            raise
        fail(out_of_memory(e, cfg), code=1)
