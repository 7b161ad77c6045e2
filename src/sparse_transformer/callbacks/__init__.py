"""Training callbacks and logging: samples, attention maps, throughput/MFU, the W&B logger.

``build_callbacks(cfg, out, logger)`` turns the ``callbacks`` section of the config into
Lightning callbacks. Imports are lazy (as in ``attention``): the drawing functions can be used
without importing Lightning's loggers.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

_EXPORTS = {
    "AttentionMapsCallback": ".attention_maps",
    "attention_image": ".attention_maps",
    "default_queries": ".attention_maps",
    "draw_attention_maps": ".attention_maps",
    "plot_attention_maps": ".attention_maps",
    "save_figure": ".attention_maps",
    "image_grid": "..media",
    "mulaw_decode": "..media",
    "save_samples": ".samples",
    "tokens_to_text": "..media",
    "write_wav": "..media",
    "ProgressBar": ".progress",
    "SamplesCallback": ".samples",
    "generate": ".samples",
    "sample_uncached": ".samples",
    "WindowThroughput": ".throughput",
    "flops_per_token": ".throughput",
    "RunWandbLogger": ".loggers",
    "build_wandb_logger": ".loggers",
    "wandb_mode": ".wandb_mode",
}

__all__ = sorted(_EXPORTS) + ["build_callbacks"]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_callbacks(cfg, out: Path, logger=None) -> list:
    """The callbacks the config asks for; media go under ``out/samples`` and ``out/attention``."""
    from .attention_maps import AttentionMapsCallback
    from .samples import SamplesCallback
    from .throughput import WindowThroughput

    c = cfg.callbacks
    cbs = []
    s = c.samples
    if s.every_n_steps or s.at_end:
        cbs.append(_eager(SamplesCallback(Path(out) / "samples", every_n_steps=s.every_n_steps, at_end=s.at_end,
                                          count=s.count, length=s.length, temperature=s.temperature, seed=cfg.seed)))
    a = c.attention_maps
    if a.enabled:
        layers = list(a.layers) if a.layers is not None else None
        cbs.append(_eager(AttentionMapsCallback(Path(out) / "attention", every_n_steps=a.every_n_steps, example=a.example,
                                                queries=list(a.queries), layers=layers)))
    tp = c.throughput
    if tp.enabled and logger:
        cbs.append(WindowThroughput(peak_flops=tp.peak_flops, window=tp.window, warmup=tp.warmup))
    return cbs


def _eager(callback):
    """Run the callback's training hooks with torch.compile ignored (``model.compile``): sampling
    token by token and drawing attention maps of one window through a network compiled for static
    shapes would compile it once per length and batch (and replay no CUDA graph)."""
    import torch

    stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
    if stance is None:
        return callback
    for name in ("on_train_start", "on_train_batch_end", "on_train_end"):
        hook = getattr(callback, name)

        def run(*args, _hook=hook, **kwargs):
            with stance("force_eager"):
                return _hook(*args, **kwargs)

        setattr(callback, name, run)
    return callback
