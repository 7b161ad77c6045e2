"""How attention is computed. Every backend takes q, k (B, H, n, dk), v (B, H, n, dv), the parts
each head attends (patterns.layer_heads) and the scale, and returns (B, H, n, dv).

- ``reference`` dense masked softmax, O(n^2): the oracle (float64 in tests)
- ``blocked``   plain PyTorch, tiles against gathered keys: any device, O(n·keys per query)
- ``sdpa``      dense causal only, scaled_dot_product_attention (its own kernel choice: cuDNN on Hopper)
- ``flex``      CUDA, FlexAttention block-sparse kernels (see backends/flex.py); any pattern
- ``triton``    CUDA, kernels specialised to the paper's patterns (see backends/triton.py)
- ``auto``      sdpa for dense (any device); on CUDA triton where its kernels apply, else flex;
                blocked otherwise
"""

from __future__ import annotations

import importlib

import torch

from ..constants import BACKENDS
from ..patterns import PatternError, _unknown, warn_once


def _flex_usable(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        from . import flex  # noqa: F401
    except ImportError:
        return False
    return flex.available()


def triton_unsupported(heads: tuple, dims: tuple[int, int] | None, device: torch.device) -> str | None:
    """Why the triton kernels cannot run these heads here (None: they can)."""
    from . import triton as kernels  # imports no Triton until a kernel runs

    return kernels.unsupported(heads, dims, device=device)


def resolve(backend: str, heads: tuple, device: torch.device, dims: tuple[int, int] | None = None) -> str:
    """The concrete backend ``auto`` means for these heads (head dims ``dims`` = (d_qk, d_v)) on
    this device. ``auto`` says once when it passes over the triton kernels on a GPU, and why."""
    if backend not in BACKENDS:
        raise _unknown("attention.backend", backend, BACKENDS)
    if backend != "auto":
        return backend
    if all(p.name == "dense" for parts in heads for p in parts):
        return "sdpa"  # exact and the fastest dense path on every device (3x blocked's speed on CPU)
    device = torch.device(device)
    if device.type == "cuda":
        why = triton_unsupported(heads, dims, device)
        if why is None:
            return "triton"
        if _flex_usable(device):
            warn_once(("auto-triton", why), f"attention.backend=auto: the triton kernels do not run {why}; using flex")
            return "flex"
    return "blocked"


def check(backend: str, heads: tuple, dims: tuple[int, int], device: torch.device) -> None:
    """Raise PatternError (one line naming attention.backend and what is valid) when an explicitly
    named backend cannot run these heads on this device; ``auto`` always finds one."""
    name = resolve(backend, heads, device, dims)
    device = torch.device(device)
    if name == "triton":
        why = triton_unsupported(heads, dims, device)
        if why:
            raise PatternError(f"attention.backend=triton cannot run {why}; use attention.backend=auto or flex")
    elif name == "flex":
        if not _flex_usable(device):
            raise PatternError(f"attention.backend=flex needs a CUDA GPU with FlexAttention (torch >= 2.5), not {device.type}; "
                               "use attention.backend=auto or blocked")
    elif name == "sdpa" and not all(p.name == "dense" for parts in heads for p in parts):
        raise PatternError("attention.backend=sdpa runs only attention.pattern=dense; use attention.backend=auto")


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
    name = resolve(backend, heads, q.device, (q.shape[-1], v.shape[-1]))
    if name == "triton":
        return get(name).attend(q, k, v, heads, scale, fallback=backend == "auto")
    return get(name).attend(q, k, v, heads, scale)


def prepare(heads: tuple, n: int, device: torch.device, backend: str = "auto", dims: tuple[int, int] | None = None):
    """``(attend, state)`` for these heads at length n on this device (head dims ``dims``): the
    concrete backend's ``attend`` and what it precomputes (flex: block masks; triton: the kernels'
    spec; None for the others). Called outside torch.compile, so a compiled model reads a ready
    plan and traces no Python-side cache, module import or mask building:
    ``attend(q, k, v, heads, scale, prepared=state)`` is one graph."""
    name = resolve(backend, heads, device, dims)
    mod = get(name)
    if name == "triton":
        return mod.attend, mod.prepare(heads, n, device, fallback=backend == "auto")
    return mod.attend, (mod.prepare(heads, n, device) if hasattr(mod, "prepare") else None)
