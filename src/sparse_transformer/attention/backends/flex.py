"""FlexAttention backend (CUDA). Filled in by the fast-GPU work; see README."""

from __future__ import annotations


def available() -> bool:
    return False


def attend(q, k, v, heads, scale):
    raise NotImplementedError("attention.backend 'flex' is not implemented yet; use auto, blocked or sdpa")
