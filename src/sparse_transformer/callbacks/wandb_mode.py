"""Deprecated alias of ``sparse_transformer.training.callbacks.wandb_mode`` (the same module object), for one release."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("..training.callbacks.wandb_mode", __package__)
