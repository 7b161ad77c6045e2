"""Dense causal attention through ``torch.nn.functional.scaled_dot_product_attention``
(FlashAttention on CUDA): the baseline every sparse path is measured against."""

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
