"""Whether a steady-state training step waits on the device.

``HostReads`` (CPU): records every host read of a tensor (``item``, ``tolist``, ``bool``, ``float``,
``int``, ``cpu``, ``numpy``), every tensor made from Python numbers on a device and every
``torch.distributed.barrier``; on GPUs each of these is a synchronisation. ``SyncDebug`` (GPU):
``torch.cuda.set_sync_debug_mode("error")``, so any synchronising CUDA call raises, with its
traceback. Both are active during steady steps only (``steady``) and go first among the
callbacks, so a step's own work is inside their window.

Loaded in training subprocesses with ``imports=[tests.sync_hooks]``, ``ST_SYNC_EVERY=<k>`` and
optionally ``ST_SYNC_FROM=<first steady step>`` (every rank imports it): the trainer gets the probe
for the device it trains on, and at the end each rank writes ``steady <count>`` and its host reads
(none: nothing more) to ``ST_SYNC_OUT/rank<r>.txt``.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback


def steady(step: int, every: int, first: int | None = None) -> bool:
    """Steps from ``first`` (default 2·every: compilation, autotuning, CUDA graph recording are
    done) that do not read the device by design (log_every_n_steps = throughput window = warm-up =
    ``every``: those reads come at the end of steps every-1, 2·every-1, ...)."""
    return step >= (2 * every if first is None else first) and (step + 1) % every != 0


class HostReads(Callback):
    NAMES = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")

    def __init__(self, every: int, first: int | None = None):
        self.every, self.first, self.active, self.steady, self.reads = every, first, False, 0, []
        self._saved = {name: getattr(torch.Tensor, name) for name in self.NAMES}
        self._tensor, self._barrier = torch.tensor, torch.distributed.barrier

    def install(self) -> None:
        for name, fn in self._saved.items():
            setattr(torch.Tensor, name, self._wrap(fn, name))
        tensor = self._tensor

        def made(*args, **kwargs):
            if self.active and kwargs.get("device") is not None:
                self._record("torch.tensor(device=)")
            return tensor(*args, **kwargs)

        torch.tensor = made
        barrier = self._barrier

        def waits(*args, **kwargs):
            if self.active:
                self._record("torch.distributed.barrier")
            return barrier(*args, **kwargs)

        torch.distributed.barrier = waits

    def uninstall(self) -> None:
        for name, fn in self._saved.items():
            setattr(torch.Tensor, name, fn)
        torch.tensor, torch.distributed.barrier = self._tensor, self._barrier

    def _record(self, name: str) -> None:
        self.reads.append(f"--- {name}\n" + "".join(traceback.format_stack(limit=7)[:-2]))

    def _wrap(self, fn, name):
        def read(t, *args, **kwargs):
            if self.active:
                self._record(name)
            return fn(t, *args, **kwargs)
        return read

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.active = steady(trainer.global_step, self.every, self.first)
        self.steady += self.active

    def on_train_end(self, trainer, pl_module):
        self.active = False


class SyncDebug(Callback):
    def __init__(self, every: int, first: int | None = None):
        self.every, self.first, self.steady = every, first, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        active = steady(trainer.global_step, self.every, self.first)
        torch.cuda.set_sync_debug_mode("error" if active else "default")
        self.steady += active

    def on_train_end(self, trainer, pl_module):
        torch.cuda.set_sync_debug_mode("default")


class _Report(Callback):
    def __init__(self, probe, out: Path):
        self.probe, self.out = probe, out

    def on_train_end(self, trainer, pl_module):
        reads = getattr(self.probe, "reads", [])
        (self.out / f"rank{trainer.global_rank}.txt").write_text(f"steady {self.probe.steady}\n" + "\n".join(reads))


if os.environ.get("ST_SYNC_EVERY"):
    from sparse_transformer.training import trainer as _main  # fit() builds its Trainer through this module's name

    _build = _main.build_trainer

    def _build_trainer(cfg, out, callbacks=None, logger=None):
        trainer = _build(cfg, out, callbacks=callbacks, logger=logger)
        every = int(os.environ["ST_SYNC_EVERY"])
        first = int(os.environ["ST_SYNC_FROM"]) if os.environ.get("ST_SYNC_FROM") else None
        if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu":
            probe = SyncDebug(every, first)
        else:
            probe = HostReads(every, first)
            probe.install()
        trainer.callbacks.insert(0, probe)
        trainer.callbacks.append(_Report(probe, Path(os.environ["ST_SYNC_OUT"])))
        return trainer

    _main.build_trainer = _build_trainer
