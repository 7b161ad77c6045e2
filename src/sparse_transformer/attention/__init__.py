"""Sparse attention: patterns (what may attend to what), backends (how it is computed), the layer.

Imports are lazy so that ``sparse_transformer.attention.constants`` (used to validate a command
line) does not pull in torch.
"""

from importlib import import_module

_EXPORTS = {
    "attend": ".backends",
    "ConnectivityReport": ".connectivity",
    "check_connectivity": ".connectivity",
    "layer_reach": ".connectivity",
    "stack_masks": ".connectivity",
    "SparseAttention": ".layer",
    "Part": ".patterns",
    "PatternError": ".patterns",
    "Structure": ".patterns",
    "heads_mask": ".patterns",
    "layer_heads": ".patterns",
    "pattern_mask": ".patterns",
    "pattern_names": ".patterns",
    "register_pattern": ".patterns",
    "registered_patterns": ".patterns",
    "unregister_pattern": ".patterns",
    "validate": ".patterns",
    "BACKENDS": ".constants",
    "INTEGRATIONS": ".constants",
    "PAIRS": ".constants",
    "PRIMITIVES": ".constants",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
