"""Sparse Transformers (Child et al. 2019) in PyTorch: exact strided and fixed attention patterns,
block-sparse backends, and a Lightning training framework.

The public API, imported on first use (``import sparse_transformer`` loads neither torch nor
omegaconf):

- ``SparseTransformer(model, attention, shape)``: the network, from ``ModelConfig``, ``AttentionConfig``
  and the data's shape;
- ``Config``, ``ModelConfig``, ``AttentionConfig``, ``load_config``, ``ConfigError``: the configuration;
- ``SparseTransformerLM``, ``load_checkpoint``: the LightningModule and a trained run's checkpoint;
- ``build_datamodule``: the DataModule a config names;
- ``pattern_mask``, ``register_pattern``: attention patterns.
"""

from ._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "SparseTransformer": ".model",
    **dict.fromkeys(["AttentionConfig", "Config", "ConfigError", "ModelConfig", "load_config"], ".config"),
    **dict.fromkeys(["SparseTransformerLM", "load_checkpoint"], ".training.module"),
    "build_datamodule": ".data",
    **dict.fromkeys(["pattern_mask", "register_pattern"], ".attention"),
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
