"""Block-sparse attention in plain PyTorch, for any device, with autograd.

Queries are taken in tiles of C positions; each tile attends only the keys its pattern's
*structure* names (patterns.Structure), gathered as views:

- ``band``     the tile and the m tiles before it (an ``unfold`` window of (m+1)·C keys);
- ``block``    the tile itself (C = the block length);
- ``columns``  one shared set of key positions (e.g. the summary cells, c·n/l keys);
- ``full``     every key (dense);
- ``residue``  OpenAI's transpose: the sequence viewed as (n/l, l) and transposed, so each residue
               class mod l is a contiguous chunk of n/l positions with causal attention inside.

Structures in natural order share one softmax (their scores are concatenated); a residue group
runs in transposed order and is merged with the rest by log-sum-exp. A key allowed by several
parts is counted once (by the first part, in order), e.g. the diagonal of ``strided``.
Memory is O(n · (keys per query)), e.g. O(n·(l + c·n/l)) for ``fixed``, never O(n²) for sparse
patterns. Exact: the pattern's own mask decides every visited pair.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from ..patterns import Part, Structure, registry_version, warn_once
from . import reference
from .common import NEG_INF, compute_dtype, merge_softmaxes, run_by_groups, scores

Tensor = torch.Tensor


def attend(q: Tensor, k: Tensor, v: Tensor, heads: tuple, scale: float) -> Tensor:
    slow = sorted({p.name for parts in heads for p in parts if p.structure is None})
    if slow:
        warn_once(
            ("blocked-fallback", tuple(slow)),
            f"pattern {', '.join(slow)} has no structure hint: backend 'blocked' falls back to the dense "
            "reference (O(n^2) memory); register it with window=, block=, residue= or columns= to run it sparsely",
        )
        return reference.attend(q, k, v, heads, scale)
    return run_by_groups(_attend_group, q, k, v, heads, scale)


def _structures(parts: tuple) -> tuple[list[Structure], dict]:
    """Distinct structures in order of first use, and the parts that use each."""
    order, owners = [], {}
    for p in parts:
        s = p.structure
        if s not in owners:
            order.append(s)
            owners[s] = []
        owners[s].append(p)
    return order, owners


def _allowed(parts, i: Tensor, j: Tensor) -> Tensor | None:
    m = None
    for p in parts:
        m = p.mask(i, j) if m is None else m | p.mask(i, j)
    return m


def _slot_mask(own: tuple, prior: tuple, i: Tensor, j: Tensor, n: int) -> Tensor:
    """Visited (i, j) is used iff a part of this structure allows it and no earlier part does."""
    m = _allowed(own, i, j) & (j >= 0) & (j < n) & (i < n)
    before = _allowed(prior, i, j)
    return m if before is None else m & ~before


def _tile(order: list[Structure], parts: tuple) -> int:
    blocks = {s.width for s in order if s.kind == "block"}
    if len(blocks) > 1:
        raise ValueError(f"backend 'blocked' cannot combine block structures of different lengths {sorted(blocks)}")
    if blocks:
        return blocks.pop()
    bands = [s.width for s in order if s.kind == "band"]
    if bands:
        return max(bands[0], 1)
    builtin = [p.stride for p in parts if p.name in ("summary", "dense", "local", "stride", "block")]
    return builtin[0] if builtin else 64


def _natural_keys(s: Structure, n: int, N: int, C: int) -> Tensor:
    """Key positions each tile visits: (nb, K) or (1, K) when shared by all tiles."""
    nb = N // C
    blk = torch.arange(nb)[:, None] * C
    if s.kind == "full":
        return torch.arange(N)[None, :]
    if s.kind == "band":
        m = math.ceil((s.width - 1) / C)
        return blk - m * C + torch.arange((m + 1) * C)[None, :]
    if s.kind == "block":
        return blk + torch.arange(C)[None, :]
    return s.columns(n).reshape(1, -1).to(torch.long)


@lru_cache(maxsize=128)
@torch.inference_mode(False)  # cached across validation (inference mode) and training
def _natural_masks(order: tuple, owners: tuple, n: int, C: int, device: str, version: int) -> tuple:
    N = math.ceil(n / C) * C
    nb = N // C
    qpos = (torch.arange(nb)[:, None] * C + torch.arange(C)[None, :])[:, :, None]  # (nb, C, 1)
    masks, prior = [], ()
    for s, own in zip(order, owners):
        kpos = _natural_keys(s, n, N, C)[:, None, :]  # (nb|1, 1, K)
        masks.append(_slot_mask(own, prior, qpos, kpos, n).to(device))
        prior = prior + own
    return tuple(masks)


@lru_cache(maxsize=128)
@torch.inference_mode(False)
def _residue_mask(own: tuple, prior: tuple, n: int, w: int, device: str, version: int) -> Tensor:
    nb = math.ceil(n / w)
    pos = torch.arange(nb)[None, :] * w + torch.arange(w)[:, None]  # (w, nb): row m of residue r
    return _slot_mask(own, prior, pos[:, :, None], pos[:, None, :], n).to(device)


def _natural(q, k, v, order, owners, scale):
    B, H, n, d = q.shape
    C = _tile(order, sum(owners, ()))
    N = math.ceil(n / C) * C
    nb = N // C
    pad = (0, 0, 0, N - n)
    qp, kp, vp = F.pad(q, pad), F.pad(k, pad), F.pad(v, pad)
    masks = _natural_masks(tuple(order), tuple(owners), n, C, str(q.device), registry_version())
    qb = (qp * scale).view(B, H, nb, C, d)  # scale the n·d queries, not the n·K scores
    kts, vts = [], []
    for s in order:
        if s.kind == "full":
            kt, vt = kp.transpose(-1, -2).unsqueeze(2), vp.unsqueeze(2)
        elif s.kind == "band":
            m = math.ceil((s.width - 1) / C)
            K = (m + 1) * C
            kk, vv = F.pad(kp, (0, 0, m * C, 0)), F.pad(vp, (0, 0, m * C, 0))
            kt, vt = kk.unfold(2, K, C), vv.unfold(2, K, C).transpose(-1, -2)  # (B,H,nb,d,K), (B,H,nb,K,dv)
        elif s.kind == "block":
            kt, vt = kp.view(B, H, nb, C, d).transpose(-1, -2), vp.view(B, H, nb, C, -1)
        else:  # columns
            cols = s.columns(n).to(q.device)
            kt, vt = kp.index_select(2, cols).transpose(-1, -2).unsqueeze(2), vp.index_select(2, cols).unsqueeze(2)
        kts.append(kt)
        vts.append(vt)
    keep = [i for i, kt in enumerate(kts) if kt.shape[-1] > 0]  # e.g. no summary cell yet in a short input
    if not keep:  # no query has a key: exact zeros, lse -inf
        return (v * 0, torch.full((B, H, n, 1), float("-inf"), device=q.device,
                                                                dtype=compute_dtype(q.dtype)))
    kts, vts = [kts[i] for i in keep], [vts[i] for i in keep]
    masks = [masks[i].expand(nb, C, masks[i].shape[-1]) for i in keep]
    out, lse = TileAttention.apply(qb, len(kts), *kts, *vts, *masks)
    return out.reshape(B, H, N, -1)[:, :, :n], lse.reshape(B, H, N, 1)[:, :, :n]


def _residue(q, k, v, s, own, prior, scale):
    B, H, n, d = q.shape
    w = s.width
    nb = math.ceil(n / w)
    N = nb * w
    pad = (0, 0, 0, N - n)

    def t(x):  # (B,H,N,d) -> (B,H,w,nb,d): residue-major (OpenAI's strided_transpose)
        return F.pad(x, pad).view(B, H, nb, w, x.shape[-1]).transpose(2, 3)

    qt, kt, vt = t(q * scale), t(k), t(v)
    mask = _residue_mask(own, prior, n, w, str(q.device), registry_version())
    out, lse = TileAttention.apply(qt, 1, kt.transpose(-1, -2), vt, mask)
    out = out.transpose(2, 3).reshape(B, H, N, -1)[:, :, :n]
    return out, lse.transpose(2, 3).reshape(B, H, N, 1)[:, :, :n]


class TileAttention(torch.autograd.Function):
    """Softmax attention of query tiles over several key sets in one softmax, recomputed in backward.

    Inputs: ``qb`` (..., T, C, d) pre-scaled queries; for each of ``m`` key sets ``kt`` (..., T|1, d, K)
    and ``vt`` (..., T|1, K, dv) (views: band windows, blocks, shared columns), then the ``m`` bool
    masks (T|1, C, K). Returns (out, lse). Only the inputs, out and lse are saved; the
    probabilities are rebuilt in backward (FlashAttention's trick), so memory stays at a few n·K
    tensors at the peak and none between forward and backward. Written by hand because autograd
    would keep several n·K intermediates per layer.
    """

    @staticmethod
    def _probs(qb, kts, masks, lse=None):
        s = torch.cat([scores(qb, kt) for kt in kts], -1) if len(kts) > 1 else scores(qb, kts[0])
        mask = torch.cat(masks, -1) if len(masks) > 1 else masks[0]
        if lse is None:  # forward, no autograd here: a masked softmax in place
            s.masked_fill_(~mask, NEG_INF)
            mx = s.amax(-1, keepdim=True)
            mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
            z = s.sub_(mx).exp_().sum(-1, keepdim=True)
            nonempty = z > 0
            z = torch.where(nonempty, z, torch.ones_like(z))
            return s.div_(z), torch.where(nonempty, mx + z.log(), torch.full_like(z, NEG_INF))
        lse_safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
        return torch.exp(s.masked_fill_(~mask, NEG_INF).sub_(lse_safe)), None

    @staticmethod
    def forward(ctx, qb, m, *rest):
        kts, vts, masks = rest[:m], rest[m : 2 * m], rest[2 * m :]
        p, lse = TileAttention._probs(qb, kts, masks)
        sizes = [kt.shape[-1] for kt in kts]
        out = sum(torch.matmul(pt.to(vt.dtype), vt) for pt, vt in zip(p.split(sizes, -1), vts))
        ctx.m, ctx.sizes = m, sizes
        ctx.save_for_backward(qb, *kts, *vts, *masks, out, lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        m, sizes = ctx.m, ctx.sizes
        saved = ctx.saved_tensors
        qb, kts, vts, masks = saved[0], saved[1 : 1 + m], saved[1 + m : 1 + 2 * m], saved[1 + 2 * m : 1 + 3 * m]
        out, lse = saved[-2], saved[-1]
        p, _ = TileAttention._probs(qb, kts, masks, lse)
        ct = p.dtype
        dout_c = dout.to(ct)
        delta = (dout_c * out.to(ct)).sum(-1, keepdim=True)
        if dlse is not None:
            delta = delta - dlse.to(ct).masked_fill(~torch.isfinite(lse), 0)
        dq = torch.zeros_like(qb, dtype=ct)
        grads_k, grads_v = [], []
        for pt, kt, vt in zip(p.split(sizes, -1), kts, vts):
            ds = pt * (torch.matmul(dout_c, vt.to(ct).transpose(-1, -2)) - delta)
            dq += torch.matmul(ds, kt.to(ct).transpose(-1, -2))
            dk = torch.matmul(qb.to(ct).transpose(-1, -2), ds)
            dv = torch.matmul(pt.transpose(-1, -2), dout_c)
            if kt.shape[-3] == 1 and qb.shape[-3] != 1:  # a key set shared by all tiles
                dk, dv = dk.sum(-3, keepdim=True), dv.sum(-3, keepdim=True)
            grads_k.append(dk.to(kt.dtype))
            grads_v.append(dv.to(vt.dtype))
        return (dq.to(qb.dtype), None, *grads_k, *grads_v, *([None] * m))


def _attend_group(q: Tensor, k: Tensor, v: Tensor, parts: tuple[Part, ...], scale: float) -> Tensor:
    order, owners = _structures(parts)
    natural = [s for s in order if s.kind != "residue"]
    residues = [s for s in order if s.kind == "residue"]
    outs, lses, prior = [], [], ()
    if natural:
        o, l = _natural(q, k, v, natural, [tuple(owners[s]) for s in natural], scale)
        outs.append(o)
        lses.append(l)
        prior = sum((tuple(owners[s]) for s in natural), ())
    for s in residues:
        o, l = _residue(q, k, v, s, tuple(owners[s]), prior, scale)
        outs.append(o)
        lses.append(l)
        prior = prior + tuple(owners[s])
    out, _ = merge_softmaxes(outs, lses)
    return out
