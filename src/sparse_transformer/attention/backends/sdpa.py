"""Dense causal attention through ``torch.nn.functional.scaled_dot_product_attention`` with SDPA's
own kernel choice (cuDNN attention on Hopper with torch 2.11, FlashAttention or memory-efficient
elsewhere). Benchmarks time every SDPA kernel and measure sparse paths against the fastest."""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def supports(heads: tuple) -> bool:
    return all(p.name == "dense" for parts in heads for p in parts)


def attend(q: Tensor, k: Tensor, v: Tensor, heads: tuple, scale: float) -> Tensor:
    if not supports(heads):
        names = sorted({p.name for parts in heads for p in parts})
        raise ValueError(f"attention.backend 'sdpa' runs only the dense pattern, got {names}; use auto, blocked, flex or reference")
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
