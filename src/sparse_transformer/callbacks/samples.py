"""Deprecated alias of ``sparse_transformer.training.callbacks.samples`` (the same module object), for one release."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("..training.callbacks.samples", __package__)
