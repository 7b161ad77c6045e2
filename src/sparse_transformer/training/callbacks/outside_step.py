"""How a callback runs the network outside a training step (samples, attention maps).

Under FSDP with mixed precision the blocks hold bf16/fp16 weights during a forward while the
embedding's output is fp32, so such a forward runs under the precision plugin's own context
(autocast), as Lightning runs a step. Over more than one device FSDP gathers each block's weights
from every rank, so work that only rank 0 does cannot run a forward at all: it is skipped."""

from __future__ import annotations

import contextlib

from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_warn


def forward_context(trainer):
    """The context a callback's own forward passes run in: the precision plugin's under FSDP, none
    otherwise (other strategies keep fp32 weights, which run as they are)."""
    if isinstance(trainer.strategy, FSDPStrategy):
        return trainer.precision_plugin.forward_context()
    return contextlib.nullcontext()


def rank_zero_forward_blocked(trainer, what: str) -> bool:
    """True (after one warning) where a forward on rank 0 alone would wait for the other ranks forever."""
    if isinstance(trainer.strategy, FSDPStrategy) and trainer.world_size > 1:
        rank_zero_warn(f"{what} are skipped under trainer.strategy=fsdp with more than one device "
                       "(a forward on rank 0 alone would wait for the other ranks' weight shards)")
        return True
    return False
