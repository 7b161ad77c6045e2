"""Fault tolerance: exact resume, a checkpoint on SIGTERM, skipped non-finite steps, atomic checkpoints.

Lightning does the loops and the checkpoint contents (weights, optimiser, scheduler, loop counters,
the training loader's ``state_dict``: data/base.py ResumableLoader). Written here is only what it
does not do, or does in a way that breaks an exact resume:

- ``ResumeState``: the random state of every rank (Lightning 2.6 does not checkpoint RNG states),
  put back just before the first resumed training step, so dropout takes the masks an uninterrupted
  run would have taken; and, on SIGTERM, ``checkpoints/last.ckpt`` before the process exits.
  Lightning 2.6 notices SIGTERM but saves nothing, and its handler is replaced during training:
  it broadcasts from inside the signal handler on whichever rank got the signal (a collective the
  other ranks do not enter), and at an epoch's last batch it stops after counting the epoch
  complete, where a checkpoint restores into a skipped epoch (seen: epoch 0 -> 2). Here the signal
  only sets a flag; at the end of the step the ranks agree on it (an all-reduce, with several),
  save where Lightning's own every-n-steps checkpoints are saved, and let Lightning stop.
- ``AtomicCheckpointIO``: a temporary file in the checkpoint's own folder, fsync, rename. Lightning's
  ``_atomic_save`` writes through an fsspec transaction whose temporary file is made by
  ``tempfile.mkstemp()`` in $TMPDIR and moved with ``shutil.move``: where $TMPDIR is another
  filesystem (a node's /tmp and a shared checkpoint folder), that move is a copy over the old
  ``last.ckpt``, and a kill during the copy leaves it truncated. It also never fsyncs. And it
  keeps the ones before: a new ``last.ckpt`` moves the old one to ``previous.ckpt`` (and that to
  ``previous-2.ckpt``, ..., ``trainer.keep_checkpoints`` in all), renames only, so one damaged
  file never loses the run (cli/train.py resumes from the newest that reads).
- ``ResumeState.on_save_checkpoint``: no checkpoint with non-finite weights is written; the run
  stops with ``NonFiniteWeightsError`` instead (one host read per save, none per step).
- ``metrics.csv`` (loggers.py ``RunCSVLogger``) is rewound to the checkpoint on resume and flushed
  before each checkpoint is written.
- ``nonfinite_on_any_rank``: the all-reduce behind skipping a nan/inf step on every rank at once
  (module.py: Lightning refuses a ``training_step`` that returns None under DDP, so the update is
  skipped instead; a rank deciding alone would step while the others do not). It stays on the
  device: the update is skipped by fused AdamW's ``found_inf``; ``BadSteps`` reads the flags on the
  host only every ``trainer.log_every_n_steps`` steps, where counting and stopping happen.
- No host synchronisation per step under DDP: the ranks agree on a SIGTERM every
  ``trainer.log_every_n_steps`` steps (Lightning's own per-batch broadcast of it is thinned to
  the same steps), and ``StepTimer`` checks ``trainer.max_time`` at those steps too.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.callbacks import Callback, Timer
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from .. import files
from ..checkpoint import LAST, kept_checkpoints, kept_names, nonfinite, stamp
from .loggers import RunCSVLogger

SIGTERM_EXIT = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended


class NonFiniteLossError(RuntimeError):
    """trainer.max_bad_steps non-finite steps in a row; the message is one line naming the steps."""


class SigtermStop(RuntimeError):
    """The run stopped on SIGTERM with ``last.ckpt`` saved; the message says how to continue."""


class NonFiniteWeightsError(RuntimeError):
    """A checkpoint was about to be saved with nan/inf weights; none was written. One line."""


def check_weights_finite(checkpoint: dict, step: int, folder: str | Path) -> None:
    """Raise NonFiniteWeightsError if ``checkpoint``'s weights hold nan or inf on any rank (every
    rank builds the checkpoint and agrees: one all-reduce and one host read per save)."""
    bad, total, first = nonfinite(checkpoint.get("state_dict") or {})
    if _distributed():
        t = torch.tensor([float(bad)], device=_device_of(checkpoint))
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        bad = int(t.item())
    if bad:
        where = f", the first in {first}" if first else ""
        raise NonFiniteWeightsError(
            f"the weights are not finite at global step {step} ({bad:,} of {total:,} values nan or inf{where}): no "
            f"checkpoint was written and the run stops; {folder} keeps the last good ones (resume=last continues "
            f"from them): lower optim.lr or check the data")


def _device_of(checkpoint: dict):
    """The device of the all-reduce: the weights' (NCCL needs CUDA tensors), else the CPU (gloo)."""
    for t in (checkpoint.get("state_dict") or {}).values():
        if isinstance(t, torch.Tensor):
            return t.device
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def nonfinite_on_any_rank(*values: torch.Tensor | None) -> torch.Tensor:
    """A float32 scalar on the device: 1.0 on every rank when any of ``values`` (the loss, the
    gradient norm; None is left out) is nan/inf on any rank, else 0.0. Never read on the host: the
    optimizer skips on it (fused AdamW's ``found_inf``). One all-reduce (MAX) of one number, called
    directly: Lightning's ``strategy.reduce`` puts a barrier first, a host sync under NCCL."""
    flags = [(~torch.isfinite(v.detach())).any() for v in values if v is not None]
    bad = flags[0]
    for f in flags[1:]:
        bad = bad | f.to(bad.device)
    bad = bad.to(torch.float32)
    if _distributed():
        torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
    return bad


def _where(steps: list[tuple[int, int, int]]) -> str:
    """'global step 5 (epoch 0, batch 5)' or 'global steps 3-5 (epoch 0, batches 3-5)'."""
    (s0, e0, b0), (s1, e1, b1) = steps[0], steps[-1]
    if s0 == s1:
        return f"global step {s0} (epoch {e0}, batch {b0})"
    if e0 == e1:
        return f"global steps {s0}-{s1} (epoch {e0}, batches {b0}-{b1})"
    return f"global steps {s0}-{s1} (epoch {e0} batch {b0} to epoch {e1} batch {b1})"


class BadSteps:
    """Counts the optimizer steps skipped for a non-finite loss or gradient norm, from flags the
    device wrote (``record``) and the host reads only in ``read``: every ``every`` steps, at a
    checkpoint and at the end. ``limit`` (trainer.max_bad_steps) bad steps in a row stop the run
    at the next read, with one line naming them (0: never stop; bad steps are still skipped)."""

    def __init__(self, limit: int = 0, every: int = 1):
        self.limit, self.every = limit, max(1, every)
        self.skipped = 0  # steps skipped so far (saved in checkpoints)
        self.in_a_row = 0
        self._flags: torch.Tensor | None = None  # one device flag per step not read yet
        self._steps: list[tuple[int, int, int]] = []  # their (global step, epoch, batch)
        self._run: list[tuple[int, int, int]] = []  # the current bad run's first and last step
        self._stop: tuple | None = None  # (count, first, last) of a run that reached the limit

    def start(self, every: int) -> None:
        """A new fit: read every ``every`` steps; unread flags of an earlier fit are dropped."""
        self.every, self._flags, self._steps, self._stop = max(1, every), None, [], None

    def record(self, bad: torch.Tensor, step: int, epoch: int, batch: int) -> None:
        if self._flags is None or self._flags.device != bad.device or self._flags.numel() < self.every:
            self.read()
            self._flags = torch.zeros(self.every, dtype=torch.float32, device=bad.device)
        if len(self._steps) == self._flags.numel():
            self.read()
        self._flags[len(self._steps)] = bad  # a device-to-device copy
        self._steps.append((step, epoch, batch))

    def read(self) -> list[tuple[int, int, int]]:
        """Count the recorded flags (one host read); the bad steps among them."""
        if not self._steps:
            return []
        flags = self._flags[: len(self._steps)].tolist()
        bad = []
        for where, flag in zip(self._steps, flags):
            if not flag:
                self.in_a_row, self._run = 0, []
                continue
            bad.append(where)
            self.skipped += 1
            self.in_a_row += 1
            self._run = [self._run[0] if self._run else where, where]
            if self.limit and self.in_a_row >= self.limit and (self._stop is None or self._stop[1] == self._run[0]):
                self._stop = (self.in_a_row, self._run[0], where)  # the run that reached the limit, as far as it went
        self._steps = []
        return bad

    def check(self) -> None:
        if self._stop is not None:
            count, first, last = self._stop
            raise NonFiniteLossError(
                f"the training loss or gradient norm was nan/inf for {count} steps in a row "
                f"(trainer.max_bad_steps={self.limit}), at {_where([first, last])}; every rank skipped them. "
                f"Lower optim.lr, check the data, or raise trainer.max_bad_steps")

    def warning(self, bad: list[tuple[int, int, int]]) -> str:
        steps = ", ".join(str(s) for s, _, _ in bad[:8]) + (", ..." if len(bad) > 8 else "")
        plural = "s" if len(bad) > 1 else ""
        return (f"non-finite training loss or gradient norm at global step{plural} {steps} on some rank: "
                f"skipped on every rank ({self.skipped} skipped so far, {self.in_a_row} in a row now"
                + (f", at most {self.limit})" if self.limit else ")"))

    def state_dict(self) -> dict:
        return {"skipped_steps": self.skipped, "bad_in_a_row": self.in_a_row}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = int(state.get("skipped_steps", 0))
        self.in_a_row = int(state.get("bad_in_a_row", 0))


def rng_states() -> dict:
    """torch (CPU), numpy and Python states, and this process's own CUDA device's (Lightning's
    ``_collect_rng_states`` takes every visible GPU's: each of 8 ranks would save and set all 8).
    Tensors and plain values only, so that a ``weights_only`` load reads them (numpy's state, a
    tuple holding a uint32 array, becomes a dict holding an int64 tensor: ``numpy_state_plain``)."""
    states = _collect_rng_states(include_cuda=False)
    if "numpy" in states:
        states["numpy"] = numpy_state_plain(states["numpy"])
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch.cuda.current"] = torch.cuda.get_rng_state()
    return states


def numpy_state_plain(state: tuple) -> dict:
    """``np.random.get_state()`` as tensors and plain values."""
    name, keys, pos, has_gauss, cached = state
    return {"bit_generator": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
            "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def numpy_state_tuple(state) -> tuple:
    """What ``np.random.set_state`` takes, from ``numpy_state_plain``'s dict (or an older
    checkpoint's tuple, returned as it is)."""
    if not isinstance(state, dict):
        return state
    keys = state["keys"].numpy() if isinstance(state["keys"], torch.Tensor) else np.asarray(state["keys"])
    return (state["bit_generator"], keys.astype(np.uint32), state["pos"], state["has_gauss"], state["cached_gaussian"])


def set_rng_states(states: dict) -> None:
    states = dict(states)
    cuda = states.pop("torch.cuda.current", None)
    states.pop("torch.cuda", None)
    if "numpy" in states:
        states["numpy"] = numpy_state_tuple(states["numpy"])
    _set_rng_states(states)
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ResumeState(Callback):
    """Random states of every rank in the checkpoint; restored at the first resumed step. Also
    saves ``last`` on SIGTERM and rewinds a resumed run's metrics.csv to its checkpoint."""

    def __init__(self, last: str | Path):
        self.last = str(last)
        self._pending: dict | None = None  # RNG states to restore before the next training step
        self._rewind = False
        self._sigterm = False  # set by the signal handler, acted on at the end of the step
        self._saved_step: int | None = None
        self._trainer = None

    def state_dict(self) -> dict[str, Any]:
        # Lightning builds the checkpoint on every rank and rank 0 writes it: gather each rank's
        # states (the same collective on every rank, inside the save every rank makes).
        states = rng_states()
        rank, world = _world()
        if world > 1:
            gathered: list = [None] * world
            torch.distributed.all_gather_object(gathered, states)
            return {"rng": gathered}
        return {"rng": [states]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        per_rank = state_dict.get("rng") or []
        if not per_rank:
            return
        rank, world = _world()
        if len(per_rank) != world:
            rank_zero_warn(f"resuming {len(per_rank)}-process training with {world} processes: random states "
                           f"(dropout) and data positions are not those of an uninterrupted run")
        self._pending = per_rank[rank % len(per_rank)]
        self._rewind = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # As late as possible: anything between the restore and this step (validation, other
        # callbacks' start hooks, creating the loader's iterator) must not shift the stream.
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None
        if self._rewind:
            self._rewind = False
            step = trainer.fit_loop.epoch_loop._batches_that_stepped
            for lg in trainer.loggers:
                if isinstance(lg, RunCSVLogger):
                    lg.rewind(step)

    def on_train_start(self, trainer, pl_module) -> None:
        self._trainer, self._sigterm, self._saved_step = trainer, False, None
        if threading.current_thread() is threading.main_thread():
            # over Lightning's (registered when fit starts); Lightning puts the original back at teardown
            signal.signal(signal.SIGTERM, self._on_sigterm)
        thin_lightning_sigterm_broadcast(trainer)

    def _on_sigterm(self, signum, frame) -> None:
        if not self._sigterm and self._trainer is not None:
            launcher = self._trainer.strategy.launcher
            if launcher is not None:  # the processes Lightning started get it too, as with Lightning's handler
                launcher.kill(signum)
        self._sigterm = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stop = self._sigterm
        if trainer.world_size > 1:  # every rank stops after the same step, or the savers wait on the others
            if not agreement_step(trainer):
                return
            stop = sigterm_on_any_rank(stop, pl_module.device)
        if stop:
            trainer.save_checkpoint(self.last)
            self._saved_step = trainer.global_step
            rank_zero_info(f"SIGTERM: saved {self.last} at step {trainer.global_step}")
            # Lightning's own flag (no public setter): it ends the run after this step's logging
            trainer._signal_connector.received_sigterm = True

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        check_weights_finite(checkpoint, trainer.global_step, Path(self.last).parent)
        stamp(checkpoint)  # the format number: RNG states as tensors and plain values (checkpoint.py)
        for lg in trainer.loggers:  # rows up to the checkpoint on disk before the checkpoint is
            if isinstance(lg, RunCSVLogger):
                lg.save()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # a SIGTERM that Lightning's handler caught (before training started): save if not saved yet
        if (isinstance(exception, SIGTERMException) and trainer.state.fn == TrainerFn.FITTING
                and self._saved_step != trainer.global_step and trainer.global_step > 0):
            trainer.save_checkpoint(self.last)
            rank_zero_info(f"SIGTERM: saved {self.last} at step {trainer.global_step}")


def agreement_step(trainer) -> bool:
    """True at the end of every ``trainer.log_every_n_steps``-th optimizer step (the same steps on
    every rank): where the ranks agree on stopping, each agreement being a host sync."""
    return not trainer.fit_loop._should_accumulate() and trainer.global_step % max(1, trainer.log_every_n_steps) == 0


def sigterm_on_any_rank(flag: bool, device) -> bool:
    """True on every rank when any rank got SIGTERM (one all-reduce and one host read)."""
    t = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def thin_lightning_sigterm_broadcast(trainer) -> None:
    """Lightning 2.6 broadcasts rank 0's SIGTERM flag before every training batch under DDP and
    reads it on the host (``_broadcast_sigterm_tensor``): a sync per step. During training only
    ``ResumeState`` sets that flag, on every rank at once, so the broadcast matters only for a
    SIGTERM that Lightning's own handler caught before training started: keep it at the first batch
    and every ``trainer.log_every_n_steps`` steps (the same batches on every rank)."""
    loop = trainer.fit_loop.epoch_loop
    broadcast = getattr(type(loop), "_broadcast_sigterm_tensor", None)
    if broadcast is None:  # another Lightning version: leave it alone
        return
    every, first = max(1, trainer.log_every_n_steps), [True]

    def thinned() -> None:
        if first[0] or loop._batches_that_stepped % every == 0:
            first[0] = False
            broadcast(loop)

    loop._broadcast_sigterm_tensor = thinned


class StepTimer(Timer):
    """Lightning's ``Timer`` (``trainer.max_time``), checked every ``trainer.log_every_n_steps``
    steps instead of every step: its check broadcasts the decision, a host sync per step under DDP.
    The run may end up to that many steps past the limit. Saved under Lightning's own state key."""

    @property
    def state_key(self) -> str:
        return "Timer"

    def on_train_batch_end(self, trainer, *args, **kwargs) -> None:
        if agreement_step(trainer):
            super().on_train_batch_end(trainer, *args, **kwargs)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save to ``.<name>.tmp-*`` beside the target, fsync, ``os.replace``, fsync the folder
    (``files.atomic_file``): a reader sees the old checkpoint or the new one, never a part (see the
    module docstring). Temporaries a killed writer left are removed first.

    ``last.ckpt`` keeps ``keep - 1`` predecessors: the new one is written whole under a temporary
    name, then the old ones move down a name (``last`` -> ``previous`` -> ``previous-2`` ...; the
    oldest is dropped) and the new one takes ``last``. A kill between those renames leaves no
    ``last.ckpt`` but a whole ``previous.ckpt``, which ``resume=last``/``auto`` takes. The same
    step saved twice (SIGTERM, then the end of training) replaces ``last`` without moving it down."""

    def __init__(self, keep: int = 1):
        super().__init__()
        self.keep = max(1, int(keep))
        self._step_in: dict[str, int] = {}  # the step of the checkpoint this process last wrote to a path

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # remote storage: Lightning's fsspec path
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        path = Path(path)
        files.remove_stale(path)
        step = checkpoint.get("global_step")
        if path.name != LAST or self.keep == 1 or not path.exists() or self._step_in.get(str(path)) == step:
            with files.atomic_file(path, "wb") as f:
                torch.save(checkpoint, f)
        else:
            staged = path.parent / f".{path.name}.tmp-staged"  # a temporary of last.ckpt: remove_stale's
            with files.atomic_file(staged, "wb") as f:
                torch.save(checkpoint, f)
            self._move_down(path.parent)
            files.replace(staged, path)
        self._step_in[str(path)] = step

    def _move_down(self, folder: Path) -> None:
        names = kept_names(self.keep)
        for stale in kept_checkpoints(folder):  # beyond keep (a resumed run may keep fewer)
            if stale.name not in names:
                stale.unlink(missing_ok=True)
        for newer, older in reversed(list(zip(names, names[1:]))):
            if (folder / newer).exists():
                files.replace(folder / newer, folder / older)
