"""Deprecated alias of ``sparse_transformer.training.callbacks.attention_maps`` (the same module object), for one release."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("..training.callbacks.attention_maps", __package__)
