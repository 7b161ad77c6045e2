"""Deprecated alias of ``sparse_transformer.training.loggers`` (the same module object), for one release."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("..training.loggers", __package__)
