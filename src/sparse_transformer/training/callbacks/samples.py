"""Samples during and after training: generated with the network's pattern-aware KV cache
(``SparseTransformer.generate``; ``cache="none"`` is its uncached loop), written to ``<run>/samples/``
(``media.write_samples``) and logged to W&B as an image grid, audio clips or a text table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from ...media import mulaw_decode, tokens_to_text, write_samples
from .outside_step import forward_blocked


def save_samples(tokens: np.ndarray, modality: str, shape, folder: str | Path, stem: str,
                 sample_rate: int = 12000) -> list[Path]:
    """Write (N, n) uint8 samples as media under ``folder`` (``media.write_samples``): ``<stem>.png``
    (a readable image grid), ``<stem>-<k>.wav`` per audio sample, or ``<stem>.txt``."""
    return write_samples(folder, tokens, modality, shape, image=f"{stem}.png", audio=f"{stem}-{{k}}.wav",
                         text=f"{stem}.txt", sample_rate=sample_rate)


def generate(net, count: int, length: int | None = None, temperature: float = 1.0, seed: int = 0) -> tuple[np.ndarray, str]:
    """(count, length) uint8 samples from the network's ``generate`` (the pattern-aware KV cache),
    and the sampler's name; the network is put back in the mode it was in."""
    length = length or net.cfg.seq_len
    device = next(net.parameters()).device
    was = net.training
    net.eval()
    try:
        gen = torch.Generator(device=device).manual_seed(seed)
        out = net.generate(batch=count, length=length, temperature=temperature, generator=gen)
    finally:
        net.train(was)
    return out.detach().cpu().numpy().astype(np.uint8)[:, :length], "SparseTransformer.generate (KV cache)"


class SamplesCallback(Callback):
    """Every ``every_n_steps`` training steps (0: never) and at the end of training: ``count``
    samples into ``<out_dir>/step-<step>.(png|wav|txt)`` and, with a W&B logger, ``samples/image``
    (a ``wandb.Image`` grid), ``samples/audio`` (``wandb.Audio`` at data.sample_rate) or
    ``samples/text`` (a ``wandb.Table`` of step, sample, text). Under ``trainer.fast_dev_run`` (a
    smoke test) it draws one sample, of at most 16 tokens for text and audio."""

    def __init__(self, out_dir: str | Path, every_n_steps: int = 0, at_end: bool = True, count: int = 4,
                 length: int | None = None, temperature: float = 1.0, seed: int = 0):
        self.out_dir = Path(out_dir)
        self.every, self.at_end, self.count = every_n_steps, at_end, count
        self.length, self.temperature, self.seed = length, temperature, seed
        self._last_step = -1
        self.files: list[Path] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every and step > 0 and step % self.every == 0 and step != self._last_step:
            self.log_samples(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        if self.at_end and trainer.global_step != self._last_step:
            self.log_samples(trainer, pl_module)

    @rank_zero_only
    def log_samples(self, trainer, pl_module) -> list[Path]:
        if forward_blocked(trainer, "samples"):
            return []
        step = trainer.global_step
        self._last_step = step
        cfg = pl_module.cfg
        modality, shape = cfg.data.modality, pl_module.net.cfg.shape
        rate = int(cfg.data.get("sample_rate", 12000))
        length = None if modality == "image" else self.length
        count = self.count
        if trainer.fast_dev_run:
            count, length = 1, (None if modality == "image" else min(length or 16, 16))
        tokens, sampler = generate(pl_module.net, count, length, self.temperature, seed=self.seed + step)
        files = save_samples(tokens, modality, shape, self.out_dir, f"step-{step:06d}", sample_rate=rate)
        self.files += files
        print(f"samples at step {step} ({sampler}): {', '.join(str(f) for f in files)}")
        for lg in trainer.loggers:
            if not isinstance(lg, WandbLogger):
                continue
            if modality == "image":
                lg.log_image("samples/image", [str(files[0])], step=step, caption=[f"step {step}"])
            elif modality == "audio":
                lg.log_audio("samples/audio", [mulaw_decode(t) for t in tokens], step=step,
                             sample_rate=[rate] * len(tokens), caption=[f"step {step} #{k}" for k in range(len(tokens))])
            else:
                lg.log_text("samples/text", columns=["step", "sample", "text"],
                            data=[[step, k, tokens_to_text(t)] for k, t in enumerate(tokens)], step=step)
        return files
