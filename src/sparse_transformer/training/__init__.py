"""Training with Lightning: the LightningModule and everything the Trainer is built from.

- ``module.py``: ``SparseTransformerLM`` (next-token loss in bits per dim, AdamW with warm-up and
  cosine decay, the non-finite step skipped on the device) and ``load_checkpoint``;
- ``evaluation.py``: the one NLL -> bits-per-dim, evaluation windows with a minimum context, scoring;
- ``fault.py``: exact resume, SIGTERM, skipped steps, atomic checkpoints;
- ``loggers.py``: the W&B and CSV loggers, quiet logs;
- ``trainer.py``: the Trainer from a config, and ``fit`` (validate, fit, validate, a summary);
- ``preflight.py``: what a config check cannot know without torch (a GPU, the backend, the stack's reach);
- ``callbacks/``: samples, attention maps, throughput/MFU, the progress bar and model summary.

Imports nothing of ``cli``. Names are imported on first use, so ``training.callbacks.wandb_mode``
stays torch-free.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["SparseTransformerLM", "config_dict", "load_checkpoint"], ".module"),
    **dict.fromkeys(["bits_per_dim", "token_nll"], ".evaluation"),
    **dict.fromkeys(["build_trainer", "fit"], ".trainer"),
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
