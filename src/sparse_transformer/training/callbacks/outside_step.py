"""Whether a callback may run the network outside a training step (samples, attention maps).

Under FSDP it may not: those passes call the blocks (each its own FSDP unit) outside the root's
forward, where FSDP does not cast the fp32 embedding output to the blocks' bf16/fp16 weights (seen
on an H200: a dtype error); over several devices rank 0 alone would also wait for the other ranks'
shards. ``sparse_transformer.sample`` on a checkpoint gives both after training. (The state dict
that missed every block under FSDP had another cause: training/trainer.py, BlockFSDP.)"""

from __future__ import annotations

from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_warn


def forward_blocked(trainer, what: str) -> bool:
    """True (with a warning) under FSDP, where ``what`` is skipped."""
    if isinstance(trainer.strategy, FSDPStrategy):
        rank_zero_warn(f"{what} are skipped under trainer.strategy=fsdp (their forward passes would run the blocks "
                       "outside FSDP's own forward); run sparse_transformer.sample on a checkpoint instead")
        return True
    return False
