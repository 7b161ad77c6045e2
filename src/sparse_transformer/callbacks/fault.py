"""Deprecated alias of ``sparse_transformer.training.fault`` (and of ``training.loggers``, where
``RunCSVLogger`` moved), for one release."""

from ..training import fault as _fault
from ..training import loggers as _loggers


def __getattr__(name):
    for module in (_fault, _loggers):
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
