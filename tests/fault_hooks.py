"""Test hooks for training subprocesses, loaded with ``imports=[tests.fault_hooks]`` and driven by
environment variables (every DDP rank imports it, as the config check imports ``imports`` on each rank):

- ``ST_HOOK_NAN="0:3,4;1:6"``: a nan loss on rank 0 at global steps 3 and 4, on rank 1 at step 6
  (``all:5`` for every rank).
- ``ST_HOOK_BLOCK_AT=13`` and ``ST_HOOK_MARK=<file>``: after step 13 write the file and wait
  (for a SIGKILL, or a SIGTERM, after which the step ends and Lightning stops the run).
- ``ST_HOOK_TRACE=<folder>``: each rank appends ``{"rank", "step", "sum", "first"}`` of every training
  batch to ``rank<r>.jsonl`` (which windows each rank saw).
- ``ST_HOOK_STAMP=<stamp>`` and ``ST_HOOK_START_AT=<unix time>``: the clock reads ``<stamp>`` when a
  run folder is named, and naming waits until that time (processes started together name their
  folders at once).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from sparse_transformer.training.module import SparseTransformerLM


def _nan_steps() -> dict:
    spec = os.environ.get("ST_HOOK_NAN", "")
    out: dict = {}
    for part in filter(None, spec.split(";")):
        rank, steps = part.split(":")
        out[rank] = {int(s) for s in steps.split(",")}
    return out


_orig_nll = SparseTransformerLM._nll
_orig_end = SparseTransformerLM.on_train_batch_end


def _nll(self, batch):
    nll, count = _orig_nll(self, batch)
    if self.training and self._trainer is not None:
        spec = _nan_steps()
        steps = spec.get(str(self.global_rank), set()) | spec.get("all", set())
        if self.trainer.global_step in steps:
            nll = nll * float("nan")
        trace = os.environ.get("ST_HOOK_TRACE")
        if trace:
            tokens = batch[0]
            with open(Path(trace) / f"rank{self.global_rank}.jsonl", "a") as f:
                f.write(json.dumps({"rank": self.global_rank, "step": self.trainer.global_step, "epoch": self.current_epoch,
                                    "sum": int(tokens.sum()), "first": tokens[:, :8].tolist()}) + "\n")
    return nll, count


def _on_train_batch_end(self, outputs, batch, batch_idx):
    _orig_end(self, outputs, batch, batch_idx)
    at = os.environ.get("ST_HOOK_BLOCK_AT")
    if at and self.trainer.global_step == int(at):
        Path(os.environ["ST_HOOK_MARK"]).write_text(str(self.trainer.global_step))
        deadline = time.time() + 120
        while not _got_sigterm(self.trainer) and time.time() < deadline:
            time.sleep(0.02)


def _got_sigterm(trainer) -> bool:
    return trainer.received_sigterm or any(getattr(cb, "_sigterm", False) for cb in trainer.callbacks)


def _stamped_at_once() -> None:
    from sparse_transformer.cli import common

    stamp, start = os.environ.get("ST_HOOK_STAMP"), os.environ.get("ST_HOOK_START_AT")
    if not stamp:
        return
    named = common.stamped_folder

    def stamped_folder(base, create=False):
        if start:
            time.sleep(max(0.0, float(start) - time.time()))
        return named(base, create)

    common.time = type("Clock", (), {"strftime": staticmethod(lambda fmt: stamp)})
    common.stamped_folder = stamped_folder


_stamped_at_once()
SparseTransformerLM._nll = _nll
SparseTransformerLM.on_train_batch_end = _on_train_batch_end
torch.set_num_threads(1)
