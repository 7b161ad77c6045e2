"""Tokens/s, FLOP/s and MFU through Lightning's ``ThroughputMonitor``.

What Lightning cannot know is the work of a *sparse* model, so it is counted here:

    training FLOPs per token = 6 · N  +  3 · Σ_layers Σ_heads  keys(h) · 2 · (d_qk/H + d/H)

N the non-embedding parameters (each weight a multiply-add forward, two more backward), keys(h)
the mean number of keys a query of head h attends (from the pattern's own masks), 2·d_head FLOPs
per attended pair for QKᵀ and again for AV, forward; backward twice that. Evaluation is a third
of it. Activation recomputation is not counted (MFU counts the model's FLOPs, not the hardware's).
MFU divides by an explicit per-device peak: Lightning's table has no entry for "NVIDIA H200" and
lists sparsity-doubled numbers for some chips, so on CUDA the default is 989e12 (H100/H200 dense
bf16); on CPU there is no MFU unless ``callbacks.throughput.peak_flops`` is given.
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import ThroughputMonitor

from ..attention.patterns import union_mask

H100_BF16 = 989e12
EXACT_UP_TO = 8192  # above this many positions, keys per query are averaged over sampled rows


@torch.no_grad()
def mean_keys(parts: tuple, n: int, rows: int = 2048, chunk: int = 512, seed: int = 0) -> float:
    """Mean number of keys a query attends under the union of ``parts`` at length n: exact
    (every row) up to EXACT_UP_TO positions, else the mean over ``rows`` random rows."""
    if n <= EXACT_UP_TO:
        qs = torch.arange(n)
    else:
        qs = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:rows]
    j = torch.arange(n)[None, :]
    total = 0
    for s in range(0, len(qs), chunk):
        total += int(union_mask(parts, qs[s:s + chunk, None], j).sum())
    return total / len(qs)


def attention_flops_per_token(net, n: int | None = None) -> float:
    """Forward FLOPs per token of QKᵀ and AV over the attended pairs, summed over layers and heads."""
    n = n or net.cfg.seq_len
    cache: dict = {}
    flops = 0.0
    for blk in net.blocks:
        a = blk.attn
        per_pair = 2 * (a.d_qk // a.n_head + a.d_model // a.n_head)
        for parts in a.heads:
            key = tuple(p.key() for p in parts)
            if key not in cache:
                cache[key] = mean_keys(parts, n)
            flops += cache[key] * per_pair
    return flops


def flops_per_token(net, n: int | None = None, train: bool = True) -> float:
    """Training (or forward-only) FLOPs per token: (6 or 2)·N + (3 or 1)·attention."""
    N = net.num_params(non_embedding=True)
    attn = attention_flops_per_token(net, n)
    return 6 * N + 3 * attn if train else 2 * N + attn


class SparseThroughputMonitor(ThroughputMonitor):
    """``ThroughputMonitor`` told each batch's FLOPs (tokens × FLOPs per token) and the peak.

    Logs ``train/device/items_per_sec`` (tokens/s per device; ``train/items_per_sec`` over all
    devices when there are several), ``train/device/flops_per_sec``, ``train/device/mfu`` and the
    same for ``validate/``, once ``window`` batches have been seen."""

    def __init__(self, peak_flops: float | None = None, window: int = 20):
        super().__init__(batch_size_fn=lambda b: int(b[0].shape[0]), length_fn=lambda b: int(b[0].numel()),
                         window_size=window)
        self.peak_flops = peak_flops
        self.train_fpt = self.eval_fpt = None

    def setup(self, trainer, pl_module, stage):
        super().setup(trainer, pl_module, stage)
        dev = trainer.strategy.root_device
        peak = self.peak_flops or (H100_BF16 if dev.type == "cuda" else None)
        self.available_flops = peak
        for t in self._throughputs.values():
            t.available_flops = peak
        if self.train_fpt is None:
            self.train_fpt = flops_per_token(pl_module.net, train=True)
            self.eval_fpt = flops_per_token(pl_module.net, train=False)

    # ThroughputMonitor reads ``pl_module.flops_per_batch`` at each batch end (its documented
    # interface); set it from the batch just done, since the last batch may be smaller.
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, *args):
        pl_module.flops_per_batch = int(batch[0].numel() * self.train_fpt)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, *args)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, *args, **kwargs):
        pl_module.flops_per_batch = int(batch[0].numel() * self.eval_fpt)
        super().on_validation_batch_end(trainer, pl_module, outputs, batch, *args, **kwargs)
