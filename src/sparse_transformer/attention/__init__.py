"""Sparse attention: patterns (what may attend to what), backends (how it is computed), the layer."""

from .backends import BACKENDS, attend
from .connectivity import ConnectivityReport, check_connectivity, layer_reach, stack_masks
from .layer import SparseAttention
from .patterns import (
    INTEGRATIONS,
    PAIRS,
    PRIMITIVES,
    Part,
    PatternError,
    Structure,
    heads_mask,
    layer_heads,
    pattern_mask,
    pattern_names,
    register_pattern,
    registered_patterns,
    unregister_pattern,
    validate,
)

__all__ = [
    "BACKENDS", "INTEGRATIONS", "PAIRS", "PRIMITIVES", "ConnectivityReport", "Part", "PatternError",
    "SparseAttention", "Structure", "attend", "check_connectivity", "heads_mask", "layer_heads",
    "layer_reach", "pattern_mask", "pattern_names", "register_pattern", "registered_patterns",
    "stack_masks", "unregister_pattern", "validate",
]
