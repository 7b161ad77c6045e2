"""Deprecated: the callbacks moved to ``sparse_transformer.training.callbacks`` (fault tolerance to
``training.fault``, the loggers to ``training.loggers``, ``build_callbacks`` to ``training.trainer``).
This alias and its submodules re-export them for one release."""

import warnings

from .._lazy import lazy_exports

warnings.warn("sparse_transformer.callbacks is deprecated: use sparse_transformer.training.callbacks "
              "(and training.fault, training.loggers, training.trainer)", DeprecationWarning, stacklevel=2)

_OLD = ["AttentionMapsCallback", "ProgressBar", "SamplesCallback", "WindowThroughput", "attention_image",
        "default_queries", "draw_attention_maps", "flops_per_token", "generate", "plot_attention_maps",
        "save_figure", "save_samples", "wandb_mode"]
_EXPORTS = {
    **dict.fromkeys(_OLD, "..training.callbacks"),
    **dict.fromkeys(["image_grid", "mulaw_decode", "tokens_to_text", "write_wav"], "..media"),
    **dict.fromkeys(["RunWandbLogger", "build_wandb_logger"], "..training.loggers"),
    **dict.fromkeys(["build_callbacks", "_eager"], "..training.trainer"),
}

__all__ = sorted(_EXPORTS) + ["sample_uncached"]

__getattr__ = lazy_exports(__name__, _EXPORTS)


def sample_uncached(net, count: int, length: int | None = None, temperature: float = 1.0, generator=None):
    """Deprecated: ``net.generate(batch=count, length=length, cache="none")``, the network's own uncached loop."""
    return net.generate(batch=count, length=length, temperature=temperature, generator=generator, cache="none")
