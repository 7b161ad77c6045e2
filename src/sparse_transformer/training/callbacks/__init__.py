"""Training callbacks: samples, attention maps, throughput/MFU, the progress bar and model summary;
and ``wandb_mode`` (where W&B runs go: torch-free, the sweep command asks it too).

Names are imported on first use, so ``training.callbacks.wandb_mode`` loads neither torch nor
Lightning. ``training.trainer.build_callbacks`` turns the config's ``callbacks`` section into them.
"""

from ..._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["AttentionMapsCallback", "attention_image", "default_queries", "draw_attention_maps",
                     "plot_attention_maps", "save_figure"], ".attention_maps"),
    **dict.fromkeys(["ModelTable", "ProgressBar", "RichBar", "console_callbacks"], ".progress"),
    **dict.fromkeys(["SamplesCallback", "generate", "save_samples"], ".samples"),
    **dict.fromkeys(["WindowThroughput", "flops_per_token"], ".throughput"),
    "wandb_mode": ".wandb_mode",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
