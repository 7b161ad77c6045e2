"""Samples during and after training: generated with the project's sampler when it offers one
(``sparse_transformer.sample``, KV cache), else with a plain uncached loop; written to
``<run>/samples/`` and logged to W&B as an image grid, audio clips or a text table."""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from .media import mulaw_decode, save_samples, tokens_to_text

# Parameter names a library sampler may use for what this callback passes.
_ALIASES = {
    "count": ("count", "num_samples", "n_samples", "batch_size"),
    "length": ("length", "max_new_tokens", "n_tokens", "steps"),
    "temperature": ("temperature",),
    "generator": ("generator",),
}


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


def library_sampler():
    """The project's sampler (``sparse_transformer.sample``, with a KV cache) as a function
    ``(net, count, length, temperature, generator) -> (count, length) tokens``, or None when it
    is absent or its signature cannot be matched (a warning then says why)."""
    try:
        from .. import sample as mod
    except ImportError:
        return None
    for name in ("sample_tokens", "generate"):
        fn = getattr(mod, name, None)
        if not callable(fn):
            continue
        params = inspect.signature(fn).parameters
        names = list(params)
        mapping = {ours: next((a for a in aliases if a in params), None) for ours, aliases in _ALIASES.items()}
        required = [p for p in names[1:] if params[p].default is inspect.Parameter.empty
                    and params[p].kind in (params[p].POSITIONAL_OR_KEYWORD, params[p].KEYWORD_ONLY)]
        missing = [p for p in required if p not in mapping.values()]
        if mapping["count"] is None or mapping["length"] is None or missing:
            warnings.warn(f"sparse_transformer.sample.{name}{inspect.signature(fn)} does not match "
                          f"(net, count, length, temperature, generator); using the uncached sampler", stacklevel=2)
            continue

        def call(net, count, length, temperature=1.0, generator=None, _fn=fn, _m=mapping):
            kw = {_m["count"]: count, _m["length"]: length}
            if _m["temperature"]:
                kw[_m["temperature"]] = temperature
            if _m["generator"]:
                kw[_m["generator"]] = generator
            return _fn(net, **kw)

        call.__name__ = f"sparse_transformer.sample.{name}"
        return call
    return None


def generate(net, count: int, length: int | None = None, temperature: float = 1.0, seed: int = 0) -> tuple[np.ndarray, str]:
    """(count, length) uint8 samples and the name of the sampler that drew them."""
    length = length or net.cfg.seq_len
    gen = torch.Generator().manual_seed(seed)
    fn = library_sampler()
    name = getattr(fn, "__name__", "sample_uncached")
    was = net.training
    net.eval()
    try:
        out = (fn or sample_uncached)(net, count, length, temperature=temperature, generator=gen)
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
