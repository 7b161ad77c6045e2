"""What a trained model's heads learned: attention maps of chosen query rows, entropy and
distance per head, how heads divide the work (mass by distance, by part) and what removing one
costs. ``attention_maps`` is the one extraction of attention maps (the training callback's too)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from contextlib import contextmanager

import torch

from ..attention.patterns import union_mask

Tensor = torch.Tensor


@torch.no_grad()
def attention_maps(net, idx: Tensor, rows, layers: Sequence[int] | None = None) -> Tensor:
    """Attention probabilities (L, B, H, R, n), float32 on the CPU, of the query ``rows`` of
    ``idx`` (B, n) in every residual block, or in the blocks ``layers`` (L = len(layers)).

    Runs the network block by block in eval mode, up to the last chosen block, and asks each chosen
    block's attention for the chosen rows only (``SparseAttention.attention_rows``: an explicit
    softmax, O(R·n) memory, so it works at any length).
    """
    was = net.training
    net.eval()
    try:
        layers = list(range(len(net.blocks))) if layers is None else [int(r) for r in layers]
        x = net.embed(torch.as_tensor(idx).to(next(net.parameters()).device, torch.long))
        out = {}
        for r, blk in enumerate(net.blocks):
            if r in layers:
                out[r] = blk.attn.attention_rows(blk.ln1(x), rows).float().cpu()
            if r >= max(layers):
                break
            x = blk(x)
        return torch.stack([out[r] for r in layers])
    finally:
        net.train(was)


def entropy_bits(p: Tensor) -> Tensor:
    """Entropy (bits) of each distribution over the last dim; NaN for a row with no key (all 0)."""
    p = p.double()
    h = -(torch.where(p > 0, p * torch.log2(p.clamp_min(1e-300)), torch.zeros_like(p))).sum(-1)
    return torch.where(p.sum(-1) > 0, h, torch.full_like(h, float("nan")))


def mean_distance(p: Tensor, rows) -> Tensor:
    """Mean attention distance sum_j p[.., r, j]·(rows[r] - j) in positions; NaN for empty rows.

    ``p`` has the query rows in dim -2 and the keys in dim -1.
    """
    rows = torch.as_tensor(rows, dtype=torch.double)
    n = p.shape[-1]
    dist = rows[:, None] - torch.arange(n, dtype=torch.double)[None, :]  # (R, n)
    p = p.double()
    d = (p * dist).sum(-1)
    return torch.where(p.sum(-1) > 0, d, torch.full_like(d, float("nan")))


def allowed_rows(heads: tuple, rows, n: int) -> Tensor:
    """Bool (H, R, n): the keys each head may attend for the chosen rows."""
    rows = torch.as_tensor(rows, dtype=torch.long)
    j = torch.arange(n)[None, :]
    return torch.stack([union_mask(parts, rows[:, None], j) for parts in heads])


def model_heads(net) -> list[tuple]:
    """The parts each head of each block attends (as the model was built)."""
    return [blk.attn.heads for blk in net.blocks]


def head_stats(maps: Tensor, rows, heads_per_layer: Sequence[tuple] | None = None) -> dict:
    """Per (layer, head), averaged over examples and query rows (NaN rows with no key skipped):

    ``entropy`` bits, ``distance`` mean attention distance (positions); with ``heads_per_layer``
    also ``uniform_entropy``: the entropy of attending every allowed key equally (the maximum).
    Each is an (L, H) float64 tensor.
    """
    ent = torch.nanmean(entropy_bits(maps), dim=(1, 3))  # (L, B, H, R) -> (L, H)
    dist = torch.nanmean(mean_distance(maps, rows), dim=(1, 3))
    out = {"entropy": ent, "distance": dist}
    if heads_per_layer is not None:
        n = maps.shape[-1]
        u = []
        for heads in heads_per_layer:
            cnt = allowed_rows(heads, rows, n).sum(-1).double()  # (H, R)
            u.append(torch.nanmean(torch.where(cnt > 0, torch.log2(cnt.clamp_min(1)), torch.full_like(cnt, float("nan"))), dim=1))
        out["uniform_entropy"] = torch.stack(u)
    return out


def distance_profile(maps: Tensor, rows, edges: Sequence[int]) -> Tensor:
    """(L, H, len(edges)-1): attention mass at distances i - j in [edges[k], edges[k+1]), averaged
    over examples and rows (rows with no key count as 0)."""
    rows = torch.as_tensor(rows, dtype=torch.long)
    n = maps.shape[-1]
    dist = rows[:, None] - torch.arange(n)[None, :]
    bins = []
    for a, b in itertools.pairwise(edges):
        sel = ((dist >= a) & (dist < b)).to(maps.dtype)
        bins.append((maps * sel).sum(-1).mean(dim=(1, 3)))
    return torch.stack(bins, -1)


def part_mass(maps: Tensor, heads_per_layer: Sequence[tuple], rows) -> tuple[Tensor, list[str]]:
    """(L, H, P) attention mass on keys allowed by each part name only, and on keys shared by
    several; ``labels`` names the P columns (e.g. ['local only', 'stride only', 'shared']).
    Averaged over examples and rows."""
    rows = torch.as_tensor(rows, dtype=torch.long)
    n = maps.shape[-1]
    j = torch.arange(n)[None, :]
    names = sorted({p.name for heads in heads_per_layer for parts in heads for p in parts})
    labels = [f"{nm} only" for nm in names] + ["shared"]
    out = torch.zeros(maps.shape[0], maps.shape[2], len(labels), dtype=torch.float64)
    for r, heads in enumerate(heads_per_layer):
        for h, parts in enumerate(heads):
            masks = {nm: torch.zeros(len(rows), n, dtype=torch.bool) for nm in names}
            for p in parts:
                masks[p.name] |= p.mask(rows[:, None], j)
            cover = torch.stack([masks[nm] for nm in names]).sum(0)
            ph = maps[r, :, h].double()  # (B, R, n)
            for k, nm in enumerate(names):
                out[r, h, k] = (ph * (masks[nm] & (cover == 1))).sum(-1).mean()
            out[r, h, -1] = (ph * (cover > 1)).sum(-1).mean()
    return out, labels


@contextmanager
def _zero_head(attn, head: int):
    """Zero one head's output before the attention output projection (a forward pre-hook)."""
    H = attn.n_head

    def hook(mod, args):
        (y,) = args
        y = y.clone()
        B, n, d = y.shape
        y.view(B, n, H, d // H)[:, :, head] = 0
        return (y,)

    handle = attn.proj.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def bits_per_token(net, idx: Tensor) -> float:
    """Mean next-token cross-entropy of ``idx`` (B, n) in bits."""
    was = net.training
    net.eval()
    try:
        logits = net(idx).float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), idx.reshape(-1))
        return float(nll) / math.log(2)
    finally:
        net.train(was)


@torch.no_grad()
def ablate_heads(net, idx: Tensor) -> tuple[float, Tensor]:
    """(base bits per token, (L, H) increase in bits per token when that head's output is zeroed)."""
    base = bits_per_token(net, idx)
    L, H = len(net.blocks), net.blocks[0].attn.n_head
    out = torch.zeros(L, H, dtype=torch.float64)
    for r, blk in enumerate(net.blocks):
        for h in range(blk.attn.n_head):
            with _zero_head(blk.attn, h):
                out[r, h] = bits_per_token(net, idx) - base
    return base, out
