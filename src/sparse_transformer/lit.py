"""Deprecated: the LightningModule moved to ``sparse_transformer.training.module`` (also
``sparse_transformer.SparseTransformerLM`` and ``sparse_transformer.load_checkpoint``). This alias
re-exports it for one release."""

import warnings

from .training.module import LN2, SparseTransformerLM, config_dict, load_checkpoint  # noqa: F401

warnings.warn("sparse_transformer.lit is deprecated: use sparse_transformer.training.module "
              "(or sparse_transformer.SparseTransformerLM / load_checkpoint)", DeprecationWarning, stacklevel=2)
