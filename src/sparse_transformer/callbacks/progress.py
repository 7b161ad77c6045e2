"""Deprecated alias of ``sparse_transformer.training.callbacks.progress`` (the same module object), for one release."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("..training.callbacks.progress", __package__)
