"""Pieces every backend shares: a masked softmax that gives exact zeros for rows with no allowed
key, and the log-sum-exp merge of partial softmaxes (one softmax over a union computed in parts).

Both are written so that empty rows produce 0 output and 0 gradient, never NaN: the row maximum is
a detached shift (the softmax does not depend on it), and every log/divide sees a safe operand
selected by ``torch.where`` (the "double where" trick), so no inf * 0 reaches autograd.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor
NEG_INF = float("-inf")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax statistics run in float32 for half types, else in the input dtype."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def scores(q: Tensor, kt: Tensor) -> Tensor:
    """q @ kt in the softmax's dtype. fp16 inputs multiply in fp32, as the paper's kernels do: their
    product overflows fp16 once |q·k| > 65504 (q = k = 100 at head dim 8 does)."""
    if q.dtype == torch.float16:
        return torch.matmul(q.float(), kt.float())
    return torch.matmul(q, kt).to(compute_dtype(q.dtype))


def masked_softmax(s: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax of ``s`` over the last dim restricted to ``mask``.

    Returns (p, lse): p is 0 on masked entries and on rows with no allowed entry; lse is the
    log-sum-exp of the allowed scores (keepdim), -inf on empty rows.
    """
    s = s.masked_fill(~mask, NEG_INF)
    m = s.detach().amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(s - m)
    z = e.sum(-1, keepdim=True)
    nonempty = z > 0
    z_safe = torch.where(nonempty, z, torch.ones_like(z))
    p = e / z_safe
    lse = torch.where(nonempty, m + torch.log(z_safe), torch.full_like(z, NEG_INF))
    return p, lse


def merge_softmaxes(outs: list[Tensor], lses: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Combine softmax-attention outputs over disjoint key sets into the softmax over their union.

    ``outs[p]`` (..., dv) is normalised over its own keys with log-sum-exp ``lses[p]`` (..., 1).
    """
    if len(outs) == 1:
        return outs[0], lses[0]
    L = torch.stack([x.to(torch.float32) if x.dtype in (torch.float16, torch.bfloat16) else x for x in lses])
    m = L.amax(0).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w = torch.exp(L - m)
    z = w.sum(0)
    nonempty = z > 0
    z_safe = torch.where(nonempty, z, torch.ones_like(z))
    out = sum(w[p] * outs[p].to(w.dtype) for p in range(len(outs))) / z_safe
    lse = torch.where(nonempty, m + torch.log(z_safe), torch.full_like(z, NEG_INF))
    return out.to(outs[0].dtype), lse


def group_heads(heads: tuple) -> list[tuple[list[int], tuple]]:
    """Group head indices whose parts are identical up to the head index (builtin patterns)."""
    groups: dict[tuple, list[int]] = {}
    first: dict[tuple, tuple] = {}
    for h, parts in enumerate(heads):
        key = tuple(p.key() for p in parts)
        groups.setdefault(key, []).append(h)
        first.setdefault(key, parts)
    return [(idx, first[key]) for key, idx in groups.items()]


def run_by_groups(fn, q: Tensor, k: Tensor, v: Tensor, heads: tuple, scale: float) -> Tensor:
    """Call ``fn(q, k, v, parts, scale)`` once per group of heads sharing their parts."""
    groups = group_heads(heads)
    if len(groups) == 1:
        return fn(q, k, v, groups[0][1], scale)
    out = q.new_empty(q.shape[:-1] + (v.shape[-1],))
    pieces, order = [], []
    for idx, parts in groups:
        sel = torch.tensor(idx, device=q.device)
        pieces.append(fn(q.index_select(1, sel), k.index_select(1, sel), v.index_select(1, sel), parts, scale))
        order.extend(idx)
    out = torch.cat(pieces, dim=1)
    inv = torch.empty(len(order), dtype=torch.long)
    inv[torch.tensor(order)] = torch.arange(len(order))
    return out.index_select(1, inv.to(q.device))
