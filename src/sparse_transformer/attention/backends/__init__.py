"""How attention is computed. Every backend takes q, k (B, H, n, dk), v (B, H, n, dv), the parts
each head attends (patterns.layer_heads) and the scale, and returns (B, H, n, dv).

- ``reference`` dense masked softmax, O(n^2): the oracle (float64 in tests)
- ``blocked``   plain PyTorch, tiles against gathered keys: any device, O(n·keys per query)
- ``sdpa``      dense causal only, scaled_dot_product_attention (FlashAttention on CUDA)
- ``flex``      CUDA, FlexAttention block-sparse kernels (see backends/flex.py)
- ``auto``      sdpa for dense (any device), flex for sparse on CUDA, blocked otherwise
"""

from __future__ import annotations

import importlib

import torch

from ..constants import BACKENDS
from ..patterns import PatternError, _unknown


def _flex_usable(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        from . import flex  # noqa: F401
    except ImportError:
        return False
    return flex.available()


def resolve(backend: str, heads: tuple, device: torch.device) -> str:
    """The concrete backend ``auto`` means for these heads on this device."""
    if backend not in BACKENDS:
        raise _unknown("attention.backend", backend, BACKENDS)
    if backend != "auto":
        return backend
    if all(p.name == "dense" for parts in heads for p in parts):
        return "sdpa"  # exact and the fastest dense path on every device (3x blocked's speed on CPU)
    if device.type == "cuda" and _flex_usable(device):
        return "flex"
    return "blocked"


def get(name: str):
    """The module implementing backend ``name`` (it has ``attend(q, k, v, heads, scale)``)."""
    if name not in BACKENDS or name == "auto":
        raise PatternError(f"attention.backend {name!r} is not a concrete backend; valid: {', '.join(BACKENDS[1:])}")
    return importlib.import_module(f"{__name__}.{name}")


def attend(q, k, v, heads: tuple, *, backend: str = "auto", scale: float | None = None):
    """Causal attention of q, k, v under the per-head pattern parts ``heads``."""
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if len(heads) != q.shape[1]:
        raise PatternError(f"heads describes {len(heads)} heads but q has {q.shape[1]}")
    return get(resolve(backend, heads, q.device)).attend(q, k, v, heads, scale)


def prepare(heads: tuple, n: int, device: torch.device, backend: str = "auto"):
    """``(attend, state)`` for these heads at length n on this device: the concrete backend's
    ``attend`` and what it precomputes (flex: block masks; None for the others). Called outside
    torch.compile, so a compiled model reads a ready plan and traces no Python-side cache, module
    import or mask building: ``attend(q, k, v, heads, scale, prepared=state)`` is one graph."""
    mod = get(resolve(backend, heads, device))
    return mod.attend, (mod.prepare(heads, n, device) if hasattr(mod, "prepare") else None)
