"""Samples during and after training: generated with the network's pattern-aware KV cache
(``SparseTransformer.generate``), else with a plain uncached loop; written to
``<run>/samples/`` and logged to W&B as an image grid, audio clips or a text table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from ..media import mulaw_decode, sample_grid, tokens_to_text, write_png, write_wav


def save_samples(tokens: np.ndarray, modality: str, shape, folder: str | Path, stem: str,
                 sample_rate: int = 12000) -> list[Path]:
    """Write (N, n) uint8 samples as media under ``folder``: ``<stem>.png`` (a readable image grid),
    ``<stem>-<k>.wav`` per audio sample, or ``<stem>.txt`` (text samples separated by rules)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if modality == "image":
        return [write_png(folder / f"{stem}.png", sample_grid(tokens, shape))]
    if modality == "audio":
        return [write_wav(folder / f"{stem}-{k}.wav", mulaw_decode(t), sample_rate) for k, t in enumerate(tokens)]
    text = "".join(f"===== sample {k} =====\n{tokens_to_text(t)}\n" for k, t in enumerate(tokens))
    path = folder / f"{stem}.txt"
    path.write_text(text, encoding="utf-8")
    return [path]


@torch.no_grad()
def sample_uncached(net, count: int, length: int | None = None, temperature: float = 1.0,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """(count, length) tokens drawn one at a time, each from a full forward pass.

    The fallback when no cached sampler exists: O(length) forward passes of the whole window,
    fine for the small models trained on CPU. The window is always fed at full length (unknown
    positions hold 0), which causality makes harmless and every backend accepts."""
    n = net.cfg.seq_len
    length = length or n
    device = next(net.parameters()).device
    idx = torch.zeros(count, n, dtype=torch.long, device=device)
    for t in range(length):
        logits = net(idx)[:, t].float() / temperature  # p(x_t | x_<t)
        probs = torch.softmax(logits, dim=-1)
        idx[:, t] = torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(device)
    return idx[:, :length]


def generate(net, count: int, length: int | None = None, temperature: float = 1.0, seed: int = 0) -> tuple[np.ndarray, str]:
    """(count, length) uint8 samples and the name of the sampler that drew them: the network's own
    ``generate`` (the pattern-aware KV cache) when it has one, else the uncached fallback."""
    length = length or net.cfg.seq_len
    device = next(net.parameters()).device
    was = net.training
    net.eval()
    try:
        if hasattr(net, "generate"):
            gen = torch.Generator(device=device).manual_seed(seed)
            out, name = net.generate(batch=count, length=length, temperature=temperature, generator=gen), "SparseTransformer.generate (KV cache)"
        else:
            out, name = sample_uncached(net, count, length, temperature, torch.Generator().manual_seed(seed)), "sample_uncached"
    finally:
        net.train(was)
    return out.detach().cpu().numpy().astype(np.uint8)[:, :length], name


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
