"""The oracle: dense masked softmax over the (n, n) pattern mask. O(n^2) time and memory.

Run it in float64 to check every other backend. Rows with no allowed key output exactly 0.
"""

from __future__ import annotations

import torch

from ..patterns import heads_mask, union_mask
from .common import masked_softmax, scores

Tensor = torch.Tensor


def attend(q: Tensor, k: Tensor, v: Tensor, heads: tuple, scale: float) -> Tensor:
    n = q.shape[-2]
    mask = heads_mask(heads, n, device=q.device)  # (H, n, n)
    s = scores(q, k.transpose(-1, -2)) * scale
    p, _ = masked_softmax(s, mask)
    return torch.matmul(p.to(v.dtype), v)


def attention_rows(q: Tensor, k: Tensor, heads: tuple, rows, scale: float) -> Tensor:
    """Attention probabilities of the chosen query rows: (B, H, len(rows), n).

    Memory O(len(rows) * n), so it works at any length: for analysis and attention maps.
    """
    rows = torch.as_tensor(rows, device=q.device, dtype=torch.long)
    n = k.shape[-2]
    i = rows[:, None]
    j = torch.arange(n, device=q.device)[None, :]
    mask = torch.stack([union_mask(parts, i, j) for parts in heads])  # (H, R, n)
    s = scores(q[:, :, rows], k.transpose(-1, -2)) * scale
    p, _ = masked_softmax(s, mask)
    return p
