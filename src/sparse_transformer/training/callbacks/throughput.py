"""Tokens/s, FLOP/s and MFU of training, measured over windows of steps (``WindowThroughput``).

Lightning's ``ThroughputMonitor`` calls ``torch.cuda.synchronize()`` after every batch, which
stalls the host once per step; here the clock is read, after one synchronisation, only at the end
of each window of ``callbacks.throughput.window`` optimizer steps, and the first
``callbacks.throughput.warmup`` steps (compilation, autotuning, CUDA graph capture) are left out.
The work of a *sparse* model is counted here:

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

import time

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from ...attention.patterns import keys_per_query, union_mask

H100_BF16 = 989e12
EXACT_UP_TO = 8192  # above this many positions, keys per query are averaged over sampled rows


@torch.no_grad()
def mean_keys(parts: tuple, n: int, rows: int = 2048, chunk: int = 512, seed: int = 0) -> float:
    """Mean number of keys a query attends under the union of ``parts`` at length n: exact up to
    EXACT_UP_TO positions (``attention.patterns.keys_per_query``), else the mean over ``rows``
    random rows of the mask."""
    if n <= EXACT_UP_TO:
        return float(keys_per_query(parts, n).double().mean())
    qs = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:rows]
    j = torch.arange(n)[None, :]
    total = sum(int(union_mask(parts, qs[s:s + chunk, None], j).sum()) for s in range(0, len(qs), chunk))
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


class WindowThroughput(Callback):
    """Logs, at the end of each window of ``window`` optimizer steps after the first ``warmup``:
    ``train/device/items_per_sec`` (tokens/s of this device), ``train/items_per_sec`` (all
    devices: × world size, the ranks' batches being equal), ``train/device/samples_per_sec``,
    ``train/device/flops_per_sec`` and, with a peak, ``train/device/mfu``: each from the tokens of
    the window's batches and the wall time between two synchronised window ends. Validation inside
    a window is not counted (the clock stops for it). Rank 0 measures; the other ranks do nothing."""

    def __init__(self, peak_flops: float | None = None, window: int = 20, warmup: int = 10):
        self.peak_flops, self.window, self.warmup = peak_flops, max(1, window), max(0, warmup)
        self.train_fpt: float | None = None
        self.peak: float | None = None
        self._reset()

    def _reset(self) -> None:
        self._steps = 0  # optimizer steps of this fit
        self._t0: float | None = None  # the clock's start (None: not running)
        self._elapsed = 0.0  # seconds of the current window before a pause
        self._tokens = self._samples = 0  # of the current window
        self._paused = False  # the clock stopped for a validation

    def setup(self, trainer, pl_module, stage):
        self.peak = self.peak_flops or (H100_BF16 if trainer.strategy.root_device.type == "cuda" else None)
        if self.train_fpt is None:
            self.train_fpt = flops_per_token(pl_module.net, train=True)

    @staticmethod
    def _now(trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()  # once per window: the work queued so far is done
        return time.perf_counter()

    def _start(self, t0: float) -> None:
        self._t0, self._elapsed, self._tokens, self._samples = t0, 0.0, 0, 0

    @rank_zero_only
    def on_train_start(self, trainer, pl_module) -> None:
        self._reset()
        if self.warmup == 0:
            self._start(self._now(trainer))

    @rank_zero_only
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        tokens = batch[0]  # shapes only: no device read
        self._tokens += tokens.numel()
        self._samples += tokens.shape[0]
        if trainer.fit_loop._should_accumulate():
            return
        self._steps += 1
        if self._steps == self.warmup:
            self._start(self._now(trainer))
        elif self._steps > self.warmup and (self._steps - self.warmup) % self.window == 0 and self._t0 is not None:
            now = self._now(trainer)  # this window's end is the next one's start
            seconds = self._elapsed + now - self._t0
            self._log(trainer, self._tokens / seconds, self._samples / seconds)
            self._start(now)

    def _log(self, trainer, tokens_per_s: float, samples_per_s: float) -> None:
        flops = tokens_per_s * self.train_fpt
        m = {"train/device/items_per_sec": tokens_per_s, "train/items_per_sec": tokens_per_s * trainer.world_size,
             "train/device/samples_per_sec": samples_per_s, "train/device/flops_per_sec": flops}
        if self.peak:
            m["train/device/mfu"] = flops / self.peak
        # Lightning's own route for callback metrics (as its ThroughputMonitor): the loggers, at
        # this step, and trainer.logged_metrics (hence the run's summary.json)
        trainer._logger_connector.log_metrics(m)

    @rank_zero_only
    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and self._t0 is not None:  # validation inside a window: stop the clock
            self._elapsed += self._now(trainer) - self._t0
            self._t0, self._paused = None, True

    @rank_zero_only
    def on_validation_end(self, trainer, pl_module) -> None:
        if self._paused:
            self._t0, self._paused = self._now(trainer), False
