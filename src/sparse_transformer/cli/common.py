"""What the commands share: the one-line error and its exit code, the command line of the commands
that read a checkpoint (sample, evaluate), folders a command will write (checked before anything
is written), and run folders (named once for a whole job, a new one made exclusively; the run a
checkpoint belongs to; whether a folder holds a run). Atomic writes are ``files.py``'s. Torch-free.
"""

from __future__ import annotations

import difflib
import itertools
import os
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from .. import files
from ..checkpoint import ARCH_KEYS, kept_checkpoints, merge_typed
from ..config import Config, ConfigError, check_eval, check_sample, field_docs

RUN_ENV = "SPARSE_TRANSFORMER_RUN_DIR"
_named_here: str | None = None  # the folder this process named (a later run_dir() here names a new one)


class LaunchError(ValueError):
    """The processes of a job cannot agree on a run folder; one line."""


def fail(e: Exception, code: int = 2) -> None:
    """``error: <e>`` on stderr (one line), then exit ``code`` (2: a bad command line or input)."""
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(code) from None


# ------------------------------------------------------------------------------------------------
# The command line of sample and evaluate: options of one section, ckpt, data/architecture overrides
# ------------------------------------------------------------------------------------------------
WHAT = {"sample": "sampling", "eval": "evaluation"}
MODULE = {"sample": "sample", "eval": "evaluate"}


def _route(arg: str, section: str, names: list[str], known: dict, opts: list, overrides: list) -> None:
    """File one ``key=value`` under the section's options or the config overrides; ConfigError if neither."""
    what = WHAT[section]
    s = arg[2:] if arg.startswith("--") else arg
    if "=" not in s:
        raise ConfigError(f"argument {arg!r} is not key=value (e.g. ckpt=runs/x/checkpoints/last.ckpt) or --help")
    key, value = s.split("=", 1)
    bare = key[len(section) + 1 :] if key.startswith(section + ".") else key
    if bare in names:
        opts.append(f"{bare}={value}")
    elif key in known and (key in ARCH_KEYS or key.startswith("data.") or key == "imports"):
        overrides.append(f"{key}={value}")  # where the data is and how it is read may differ from training
    elif key in known:
        raise ConfigError(f"{key} cannot be set for {what}: the checkpoint fixes it; {what} options: {', '.join(names)}")
    else:
        valid = names + [k for k in known if k.startswith("data.")]
        close = difflib.get_close_matches(bare, valid, n=1, cutoff=0.6) or difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else f"valid: {', '.join(names)}"
        raise ConfigError(f"unknown {what} option {key}: {hint}")


def parse_cli(argv: list[str], section: str, cls) -> tuple:
    """(options of ``section`` merged over ``cls``'s defaults, config overrides, flags); ConfigError if bad."""
    names, known = list(field_docs(cls)), field_docs()
    opts, overrides, flags = [], [], set()
    for a in argv:
        if a in ("--help", "-h"):
            flags.add("help")
        else:
            _route(a, section, names, known, opts, overrides)
    raw = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in opts}
    cfg = merge_typed(OmegaConf.structured(cls), [o for o in opts if not o.startswith("prompt=")], f"{section}.")
    if "prompt" in raw:
        cfg.prompt = raw["prompt"]  # verbatim: YAML parsing would strip spaces and turn "true" into a bool
    merge_typed(OmegaConf.structured(Config), overrides, "")  # only checks the overrides' types
    if "help" not in flags:
        (check_sample if section == "sample" else check_eval)(cfg)
        if not cfg.ckpt:
            raise ConfigError("ckpt=<path> is required: the checkpoint to use (e.g. runs/default/<stamp>/checkpoints/last.ckpt)")
        if not Path(cfg.ckpt).is_file():
            raise ConfigError(f"ckpt={cfg.ckpt} does not exist or is not a file")
    return cfg, overrides, flags


def help_text(module: str, cls, extra: str) -> str:
    lines = [f"usage: python -m sparse_transformer.{module} ckpt=<path> [option=value ...]", "", "options:"]
    for k, doc in field_docs(cls).items():
        lines.append(f"  {k:16s} {doc}")
    lines += ["", extra, "Also data.<key>=value (where the data is, how it is read: data.cache_dir, data.path, ...; "
              "not data.modality, seq_len or shape) and imports=[module, ...]."]
    return "\n".join(lines)


def options_or_exit(argv: list[str], section: str, cls, example: str) -> tuple:
    """``parse_cli``'s options and overrides; a bad command line exits 2 with one line, --help prints and exits 0."""
    try:
        opts, overrides, flags = parse_cli(argv, section, cls)
    except ConfigError as e:
        fail(e)
    if "help" in flags:
        print(help_text(MODULE[section], cls, f"Also accepted as {section}.<option>. Example: {example}"))
        raise SystemExit(0)
    return opts, overrides


# ------------------------------------------------------------------------------------------------
# Run folders
# ------------------------------------------------------------------------------------------------
def run_folder(ckpt: str | Path) -> Path:
    """The run a checkpoint belongs to (runs/<exp>/<stamp>/checkpoints/x.ckpt -> runs/<exp>/<stamp>)."""
    p = Path(ckpt).resolve().parent
    return p.parent if p.name == "checkpoints" else p


def stamped_folder(base: Path, create: bool = False) -> Path:
    """A folder under ``base`` named by the time (``20261130-172129``), ``-2``, ``-3``, ... if taken.
    ``create``: made here, exclusively (``mkdir`` fails if another process made it first, and the
    next suffix is tried), so processes started in the same second get a folder each."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for k in itertools.count(1):
        out = Path(base) / (stamp if k == 1 else f"{stamp}-{k}")
        if not create:
            if not out.exists():
                return out
            continue
        try:
            out.mkdir(parents=True)
            return out
        except FileExistsError:
            if not out.is_dir():  # a file in the way (of it or of a folder above): not a name taken by a run
                raise
    raise AssertionError("unreachable")


def folder_error(key: str, path: str | Path, writable: bool = True) -> ConfigError | None:
    """A ConfigError naming ``key=path`` if a folder cannot be made or written there (a file in the
    way or above it; unwritable, checked only where ``writable``), else None. Leaves nothing."""
    path = Path(path)
    problem = files.folder_problem(path)
    if problem and (writable or not problem.startswith("cannot be written") or not path.is_dir()):
        return ConfigError(f"{key}={path} {problem}; give a folder that can be written")
    return None


def file_error(key: str, path: str | Path) -> ConfigError | None:
    """A ConfigError naming ``key=path`` if a file cannot be written there: a folder in its place, or
    its folder cannot be made or written. None if it can."""
    path = Path(path)
    if path.is_dir():
        return ConfigError(f"{key}={path} is a folder; give the path of a file to write")
    problem = files.folder_problem(path.parent)
    return ConfigError(f"{key}={path}: its folder {path.parent} {problem}; give a path that can be written") if problem else None


def check_backend_here(cfg, backend: str, device, key: str) -> None:
    """The attention ``backend`` named for sampling or evaluation (``key``) must run every layer of
    ``cfg``'s network on ``device``: ConfigError (one line) before any forward pass otherwise."""
    from ..training.preflight import check_backend  # lazy: torch

    c = OmegaConf.merge(cfg, {"attention": {"backend": backend}})
    try:
        check_backend(c, device)
    except ConfigError as e:
        raise ConfigError(str(e).replace("attention.backend=", f"{key}=")) from None


RUN_FILES = ("config.yaml", "summary.json", "metrics.csv")


def run_in(folder: str | Path) -> list[str]:
    """What in ``folder`` shows a run was there: its config, summary, metrics and checkpoints (names)."""
    folder = Path(folder)
    found = [n for n in RUN_FILES if (folder / n).is_file()]
    ck = folder / "checkpoints"
    return found + [f"checkpoints/{p.name}" for p in (kept_checkpoints(ck) + sorted(ck.glob("best*.ckpt")) if ck.is_dir() else [])]


def clear_run(folder: str | Path) -> None:
    """Remove the run in ``folder`` (``overwrite=true``): its config, summary, metrics and the
    checkpoints of ``run_in``, and temporaries a killed writer left; nothing else."""
    folder = Path(folder)
    for name in run_in(folder):
        (folder / name).unlink(missing_ok=True)
    ck = folder / "checkpoints"
    if ck.is_dir():
        for stale in ck.glob(".*.ckpt.tmp-*"):
            stale.unlink(missing_ok=True)


def is_rank_zero() -> bool:
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def shared_run_name() -> str | None:
    """The folder name every process of an externally launched multi-process job derives alike (no
    communication needed before the run folder exists): ``slurm-<job id>`` under ``srun`` with more
    than one task, ``torchrun-<rdzv id>`` under torchrun. A requeued SLURM job or a restarted
    torchrun group keeps its id, so ``resume=auto`` continues it. None for a single process and for
    processes Lightning starts itself (rank 0 passes its folder to them through RUN_ENV)."""
    env = os.environ
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and env.get("SLURM_JOB_ID"):
        job = env["SLURM_JOB_ID"]
        if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
            job = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
        return f"slurm-{job}"
    if int(env.get("WORLD_SIZE", "1") or 1) > 1 and "TORCHELASTIC_RUN_ID" in env:
        rid = env["TORCHELASTIC_RUN_ID"]
        if rid in ("", "none"):
            raise LaunchError("torchrun without --rdzv-id (or --standalone) gives every job the same id: "
                              "pass --rdzv-id=<job name> or run_dir=<a folder every node sees>")
        return f"torchrun-{rid[:8] if len(rid) == 36 and rid.count('-') == 4 else rid}"  # --standalone: a uuid
    return None


def run_dir(cfg) -> Path:
    """Named once for the whole job: cfg.run_dir; else the folder rank 0 named and passed to the
    processes Lightning starts (RUN_ENV, also set by the sweep runner); else a name every rank of an
    external launcher derives alike (shared_run_name); else a new runs/<exp>/<time> that rank 0
    makes here and now, exclusively (``-2``, ``-3``, ... when another run took that second).
    Only that last one is made here: the others are reused as they are (resume=auto continues them)."""
    global _named_here
    if cfg.run_dir:
        return Path(cfg.run_dir)
    given = os.environ.get(RUN_ENV)
    if given and (not is_rank_zero() or given != _named_here):
        return Path(given)
    shared = shared_run_name()
    if shared:
        return Path("runs") / cfg.exp / shared
    if not is_rank_zero():
        raise LaunchError(f"process {os.environ.get('RANK', '?')} was not started by rank 0 and its launcher gives no "
                          f"job id: pass run_dir=<a folder every process sees>")
    path = stamped_folder(Path("runs") / cfg.exp, create=True)  # made now: two runs never share it
    os.environ[RUN_ENV] = _named_here = str(path)
    return path


def made_here(path: Path) -> bool:
    """Whether ``path`` is the new stamped folder this process made (``run_dir``)."""
    return _named_here is not None and str(path) == _named_here
