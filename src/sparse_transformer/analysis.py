"""Analysis for the notebooks (``notebooks/``): what the patterns allow, what a kernel runs, and
what a trained model learned. The notebooks only call these functions and show their figures.

Pattern geometry (no model):

- ``layer_masks``        the (L, H, n, n) masks a model's layers and heads attend;
- ``reach_windows``      two-step reachability of every (i, j) through consecutive layers
                         (``connectivity.compose``, the residual path included);
- ``tile_counts`` / ``classify_tiles``  allowed pairs per (query tile, key tile), and whether each
                         tile is skipped, partial or full; computed in query chunks, never n x n;
- ``run_groups`` / ``run_layouts``  the tile layout a block-sparse kernel runs for one head: parts
                         in natural order, summary columns gathered into a compact key set, the
                         ``stride`` part in OpenAI's transposed order (design.md, "Execution");
- ``keys_per_query`` / ``pair_count`` / ``scaling_table``  attended pairs and attention FLOPs vs n
                         (closed forms for the built-in patterns, checked against the masks).

Learned attention (a ``SparseTransformer``):

- ``attention_maps``     probabilities (L, B, H, R, n) of chosen query rows in every layer, through
                         ``SparseAttention.attention_rows`` (O(R·n) memory);
- ``entropy_bits`` / ``mean_distance`` / ``head_stats``  per-head entropy and attention distance;
- ``distance_profile`` / ``part_mass`` / ``ablate_heads``  how heads divide the work;
- examples of a checkpoint's modality (``load_examples``) or synthetic ones with a small random
  model (``synthetic_examples``, ``random_model``) for images and audio;
- drawings (matplotlib; each returns a Figure): masks, reachability, tile layouts, scaling, image
  overlays, text highlights, audio over the waveform, head statistics.

Conventions: "allowed" means the pattern's mask; positions of an image are raster order with the
channels interleaved (n = H·W·C); audio tokens are 8-bit mu-law.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .attention.connectivity import compose, stack_masks
from .attention.patterns import Part, heads_mask, layer_heads, union_mask

Tensor = torch.Tensor

SKIPPED, PARTIAL, FULL = 0, 1, 2
TILE_NAMES = ("skipped", "partial", "full")
TILE_COLORS = ("#f2f2f2", "#f4a259", "#2a6f97")  # skipped, partial, full


# ================================================================================================
# Pattern geometry
# ================================================================================================
def layer_masks(
    pattern: str,
    n: int,
    stride: int,
    *,
    n_layer: int = 1,
    n_head: int = 1,
    summary: int | None = None,
    summary_heads: int = 1,
    integration: str = "interleaved",
    layout=None,
) -> Tensor:
    """Bool (L, H, n, n): what head h of residual block r attends (``patterns.layer_heads``)."""
    return torch.stack([
        heads_mask(layer_heads(pattern, n_head, stride, layer=r, summary=summary, summary_heads=summary_heads,
                               integration=integration, layout=layout), n)
        for r in range(n_layer)
    ])


def integration_panels(pattern: str, n: int, stride: int, *, n_layer: int = 2, n_head: int = 2,
                       summary: int | None = None, summary_heads: int = 1, integration: str = "interleaved",
                       layout=None) -> dict[str, Tensor]:
    """``{"L<r> H<h>: <parts>": (n, n) mask}`` for every layer r and head h of a small model."""
    out = {}
    for r in range(n_layer):
        heads = layer_heads(pattern, n_head, stride, layer=r, summary=summary, summary_heads=summary_heads,
                            integration=integration, layout=layout)
        masks = heads_mask(heads, n)
        for h, lab in enumerate(head_labels(heads)):
            out[f"L{r} H{h}: {lab}"] = masks[h]
    return out


def head_labels(heads: tuple) -> list[str]:
    """'local', 'stride', 'local+stride', 'summary[1]' (slice 1), ... for each head's parts."""
    out = []
    for parts in heads:
        names = [p.name + (f"[{p.slice}]" if p.name == "summary" and p.slice else "") for p in parts]
        out.append("+".join(names))
    return out


def reach_windows(layers: Sequence[Tensor], steps: int = 2) -> list[tuple[int, Tensor]]:
    """(first layer, bool (n, n) reach) for every window of ``steps`` consecutive layers.

    ``layers`` are per-layer reach matrices (``connectivity.stack_masks``: the union of the heads
    plus the residual path); reach[i, j] says output i of the window's last layer depends on input j.
    """
    return [(s, compose(list(layers[s : s + steps]))) for s in range(max(1, len(layers) - steps + 1))]


def reach_image(reach: Tensor) -> Tensor:
    """int (n, n) for drawing: 0 future (j > i), 1 reached, 2 causal but not reached (a failure)."""
    n = reach.shape[-1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    img = torch.zeros(n, n, dtype=torch.long)
    img[causal & reach] = 1
    img[causal & ~reach] = 2
    return img


def layer_labels(pattern: str, stride: int, n_layer: int, *, n_head: int = 1, summary: int | None = None,
                 summary_heads: int = 1, integration: str = "interleaved", layout=None) -> list[str]:
    """A short name per layer: its heads' parts, e.g. ['local', 'stride', 'local'] or ['block | summary']."""
    out = []
    for r in range(n_layer):
        heads = layer_heads(pattern, n_head, stride, layer=r, summary=summary, summary_heads=summary_heads,
                            integration=integration, layout=layout)
        out.append(" | ".join(dict.fromkeys(head_labels(heads))))
    return out


def connectivity_table(configs: dict[str, dict], n: int, stride: int, steps: int = 2) -> list[dict]:
    """For each named config (kwargs of ``stack_masks`` without n and stride), every window's result."""
    from .attention.connectivity import check_connectivity

    rows = []
    for name, kw in configs.items():
        kw = dict(kw)
        n_layer = kw.pop("n_layer", 3)
        rep = check_connectivity(stack_masks(kw.pop("pattern"), n, stride, n_layer, **kw), steps=steps)
        rows.append({"config": name, "ok": rep.ok, "stack_ok": rep.stack_ok,
                     "windows": [{"first": s, "connects": bool(c), "failing_pairs": f} for s, c, f in rep.windows],
                     "report": str(rep)})
    return rows


# ------------------------------------------------------------------------------------------------
# Tiles
# ------------------------------------------------------------------------------------------------
Allowed = Callable[[Tensor, Tensor], Tensor]


def as_allowed(spec) -> Allowed:
    """A function ``(i, j) -> bool`` (broadcast) from: such a function, a tuple of ``Part``s (one
    head: their union), or a dense bool (n, n) mask."""
    if isinstance(spec, Tensor):
        mask = spec
        return lambda i, j: mask[i, j]
    if isinstance(spec, tuple) and spec and all(isinstance(p, Part) for p in spec):
        return lambda i, j: union_mask(spec, i, j)
    if callable(spec):
        return spec
    raise TypeError(f"expected a mask (n, n), a tuple of Parts or a function (i, j) -> bool, got {type(spec).__name__}")


def tile_counts(
    allowed,
    n: int,
    tile: int,
    *,
    q_order: Tensor | None = None,
    k_order: Tensor | None = None,
    tile_k: int | None = None,
    structures: Sequence | None = None,
    budget: int = 1 << 22,
) -> tuple[Tensor, Tensor]:
    """Allowed pairs per (query tile, key tile): ``(counts, areas)``, both int64 (Tq, Tk).

    Queries are ``q_order`` (positions, default 0..n-1) cut into tiles of ``tile``; keys are
    ``k_order`` (default 0..n-1; e.g. gathered summary columns, or OpenAI's transposed order) cut
    into tiles of ``tile_k`` (default ``tile``). ``areas`` is each tile's size (edge tiles may be
    smaller). Memory O(budget), never n x n. Without ``structures`` every (query, key) is tested
    (O(n²) time); with the parts' ``Structure``s (a superset of the allowed keys, as a backend
    visits them) only their candidate keys are, in O(n · keys per query) time.
    """
    fn = as_allowed(allowed)
    q = torch.arange(n) if q_order is None else torch.as_tensor(q_order, dtype=torch.long)
    k = torch.arange(n) if k_order is None else torch.as_tensor(k_order, dtype=torch.long)
    tk = tile_k or tile
    nq, nk = len(q), len(k)
    Tq, Tk = math.ceil(nq / tile), max(1, math.ceil(nk / tk))
    if structures is not None and all(s is not None for s in structures) and structures:
        counts = _tile_counts_sparse(fn, n, q, k, tile, tk, Tq, Tk, list(structures), budget)
    else:
        counts = _tile_counts_dense(fn, q, k, tile, tk, Tq, Tk, budget)
    qs = torch.full((Tq,), tile, dtype=torch.long)
    qs[-1] = nq - (Tq - 1) * tile
    ks = torch.full((Tk,), tk, dtype=torch.long)
    ks[-1] = nk - (Tk - 1) * tk if nk else 0
    return counts, qs[:, None] * ks[None, :]


def _tile_counts_dense(fn, q, k, tile, tk, Tq, Tk, budget) -> Tensor:
    counts = torch.zeros(Tq, Tk, dtype=torch.long)
    kpad = Tk * tk - len(k)
    tiles_per_chunk = max(1, budget // max(1, tile * Tk * tk))
    for t0 in range(0, Tq, tiles_per_chunk):
        t1 = min(Tq, t0 + tiles_per_chunk)
        rows = q[t0 * tile : t1 * tile]
        m = fn(rows[:, None], k[None, :]).to(torch.bool)
        m = torch.nn.functional.pad(m, (0, kpad, 0, (t1 - t0) * tile - len(rows)))  # padding: not allowed
        counts[t0:t1] = m.view(t1 - t0, tile, Tk, tk).sum(dim=(1, 3))
    return counts


def candidate_keys(s, rows: Tensor, n: int) -> Tensor:
    """(R, K) key positions a structure visits for query positions ``rows`` (may hold positions
    outside 0..i, which the caller drops)."""
    r = rows[:, None]
    if s.kind == "full":
        return torch.arange(n)[None, :].expand(len(rows), n)
    if s.kind == "band":
        return r - torch.arange(s.width)[None, :]
    if s.kind == "block":
        return r // s.width * s.width + torch.arange(s.width)[None, :]
    if s.kind == "residue":
        return r % s.width + torch.arange(math.ceil(n / s.width))[None, :] * s.width
    cols = s.columns(n).to(torch.long)
    return cols[None, :].expand(len(rows), len(cols))


def _tile_counts_sparse(fn, n, q, k, tile, tk, Tq, Tk, structures, budget) -> Tensor:
    from .attention.patterns import structure_cover

    qinv = torch.full((n,), -1, dtype=torch.long)
    qinv[q] = torch.arange(len(q))
    kinv = torch.full((n + 1,), -1, dtype=torch.long)
    kinv[k] = torch.arange(len(k))
    width = sum(candidate_keys(s, q[:1], n).shape[1] for s in structures)
    step = max(tile, budget // max(1, width) // tile * tile)
    counts = torch.zeros(Tq * Tk, dtype=torch.long)
    for a in range(0, len(q), step):
        rows = q[a : a + step]
        i = rows[:, None]
        for si, s in enumerate(structures):
            j = candidate_keys(s, rows, n)
            ok = (j >= 0) & (j <= i) & (j < n)
            jc = j.clamp(0, n - 1)
            ok &= fn(i, jc).to(torch.bool)
            for prev in structures[:si]:  # a key two structures visit is counted once
                ok &= ~structure_cover(prev, i, jc, n)
            ii, jj = torch.broadcast_to(i, j.shape)[ok], jc[ok]
            kt = kinv[jj]
            if (kt < 0).any():
                raise ValueError("an allowed key is not in k_order: pass the keys the group attends")
            counts += torch.bincount(qinv[ii] // tile * Tk + kt // tk, minlength=Tq * Tk)
    return counts.view(Tq, Tk)


def classify_tiles(counts: Tensor, areas: Tensor) -> Tensor:
    """int8 (Tq, Tk): 0 skipped (no allowed pair), 1 partial, 2 full (every pair allowed)."""
    cls = torch.full(counts.shape, PARTIAL, dtype=torch.int8)
    cls[counts == 0] = SKIPPED
    cls[(counts == areas) & (areas > 0)] = FULL
    return cls


def tile_stats(classes: Tensor) -> dict:
    """Counts of skipped / partial / full tiles and the fraction of tiles run."""
    total = classes.numel()
    s = {name: int((classes == v).sum()) for v, name in enumerate(TILE_NAMES)}
    s["total"] = total
    s["run"] = s["partial"] + s["full"]
    s["run_fraction"] = s["run"] / total if total else 0.0
    return s


def transposed_order(n: int, stride: int) -> Tensor:
    """Positions in OpenAI's strided-transpose order: residue 0 (0, l, 2l, ...), then residue 1, ...

    In this order the ``stride`` pattern is causal attention inside contiguous chunks of about n/l.
    """
    pos = torch.arange(math.ceil(n / stride) * stride).view(-1, stride).t().reshape(-1)
    return pos[pos < n]


@dataclass
class TileGroup:
    """One call of a block-sparse kernel for one head: ``own`` parts, minus pairs an earlier group
    (``prior``) already counted, with queries in ``q_order`` and keys in ``k_order``."""

    label: str
    order: str  # natural | gathered | transposed
    own: tuple
    prior: tuple
    q_order: Tensor
    k_order: Tensor

    def allowed(self, i: Tensor, j: Tensor) -> Tensor:
        m = union_mask(self.own, i, j)
        return m & ~union_mask(self.prior, i, j) if self.prior else m


def run_groups(parts: tuple, n: int) -> list[TileGroup]:
    """How a block-sparse kernel runs one head's parts (design.md, "Execution: where peers fail"):

    - parts whose structure is a band, a block or full run in natural order;
    - ``columns`` parts (``summary``) attend their columns gathered into a compact key set
      (n/l·c keys), for all queries;
    - ``residue`` parts (``stride``) run in OpenAI's transposed order;
    groups are merged by log-sum-exp; a pair allowed by several parts is counted by the first group
    (e.g. the diagonal of ``strided``), as the ``blocked`` backend does. A part without a structure
    (a user pattern without hints) runs in natural order.
    """
    natural = tuple(p for p in parts if p.structure is None or p.structure.kind in ("full", "band", "block"))
    columns = tuple(p for p in parts if p.structure is not None and p.structure.kind == "columns")
    residue = tuple(p for p in parts if p.structure is not None and p.structure.kind == "residue")
    ar = torch.arange(n)
    groups, prior = [], ()
    if natural:
        groups.append(TileGroup("+".join(p.name for p in natural), "natural", natural, (), ar, ar))
        prior = natural
    for p in columns:
        cols = p.structure.columns(n).to(torch.long)
        groups.append(TileGroup(f"{p.name} (gathered)", "gathered", (p,), prior, ar, cols))
        prior = prior + (p,)
    for p in residue:
        t = transposed_order(n, p.structure.width)
        groups.append(TileGroup(f"{p.name} (transposed)", "transposed", (p,), prior, t, t))
        prior = prior + (p,)
    return groups


def group_mask(group: TileGroup) -> Tensor:
    """Bool (len(q_order), len(k_order)): the group's allowed pairs in its own order (small n only)."""
    return group.allowed(group.q_order[:, None], group.k_order[None, :])


def run_layouts(parts: tuple, n: int, tile: int) -> list[dict]:
    """For each group of ``run_groups``: its label, order, tile classes, counts and stats."""
    out = []
    for g in run_groups(parts, n):
        counts, areas = tile_counts(g.allowed, n, tile, q_order=g.q_order, k_order=g.k_order,
                                    structures=[p.structure for p in g.own])
        out.append(_layout(g.label, g.order, counts, areas))
    return out


def _layout(label: str, order: str, counts: Tensor, areas: Tensor) -> dict:
    cls = classify_tiles(counts, areas)
    return {"label": label, "order": order, "classes": cls, "counts": counts, "pairs": int(counts.sum()),
            "run_pairs": int(areas[cls > 0].sum()), "stats": tile_stats(cls)}


def naive_layout(parts: tuple, n: int, tile: int) -> dict:
    """The head's union mask tiled in natural order (what a naive block mask would run)."""
    counts, areas = tile_counts(parts, n, tile, structures=[p.structure for p in parts])
    return _layout("+".join(p.name for p in parts) + " (natural order)", "natural", counts, areas)


def dense_tiles(n: int, tile: int) -> dict:
    """Tile stats of dense causal attention (what FlashAttention's causal kernel runs), with
    ``run_pairs`` the pairs its run tiles hold (edge tiles are smaller)."""
    t = math.ceil(n / tile)
    sizes = torch.full((t,), tile, dtype=torch.long)
    sizes[-1] = n - (t - 1) * tile
    area = sizes[:, None] * sizes[None, :]
    return {"run": t * (t + 1) // 2, "total": t * t, "full": t * (t - 1) // 2, "partial": t,
            "run_pairs": int(area.tril().sum())}


# ------------------------------------------------------------------------------------------------
# Pair counts and FLOPs
# ------------------------------------------------------------------------------------------------
def _summary_prefix(y: Tensor, l: int, c: int, s: int) -> Tensor:
    """#{0 <= j < y : j mod l in summary slice s} (slice s = cells [l-(s+1)c, l-sc) of each block)."""
    lo = l - (s + 1) * c
    return (y // l) * c + (y % l - lo).clamp(0, c)


def keys_per_query(parts: tuple, n: int) -> Tensor:
    """int64 (n,): how many keys query i attends under the union of ``parts`` (one head).

    Closed forms for the primitives and the pairs ``strided`` and ``fixed``; anything else is
    counted from the mask in query chunks (O(n²) time, O(n) memory).
    """
    i = torch.arange(n, dtype=torch.long)
    names = tuple(sorted(p.name for p in parts))
    p0 = parts[0]
    l = p0.stride
    if len(parts) == 1:
        if p0.name == "dense":
            return i + 1
        if p0.name == "local":
            return (i + 1).clamp(max=l)
        if p0.name == "stride":
            return i // l + 1
        if p0.name == "block":
            return i % l + 1
        if p0.name == "summary":
            return _summary_prefix(i + 1, l, p0.summary, p0.slice)
    elif len(parts) == 2 and parts[0].stride == parts[1].stride:
        if names == ("local", "stride"):
            return (i + 1).clamp(max=l) + i // l  # the shared key j = i counted once
        if names == ("block", "summary"):
            sm = next(p for p in parts if p.name == "summary")
            start = (i // l) * l
            return (i - start + 1) + _summary_prefix(start, l, sm.summary, sm.slice)
    out = torch.zeros(n, dtype=torch.long)
    step = max(1, (1 << 22) // max(n, 1))
    j = torch.arange(n)[None, :]
    for a in range(0, n, step):
        out[a : a + step] = union_mask(parts, i[a : a + step, None], j).sum(1)
    return out


def pair_count(parts: tuple, n: int) -> int:
    """Attended (query, key) pairs of one head at length n."""
    return int(keys_per_query(parts, n).sum())


def attention_flops(pairs: int, d_head: int, n_head: int = 1) -> int:
    """Forward FLOPs of attention over ``pairs`` per head: QK^T and PV, 2·d_head each per pair."""
    return 4 * d_head * pairs * n_head


def paper_stride(n: int) -> int:
    """l = round(sqrt(n)) (for n = 4^k a power of two that divides n)."""
    return max(1, round(math.sqrt(n)))


def scaling_parts(name: str, n: int, summary: int = 32) -> tuple:
    """One head of pattern ``name`` (a primitive, or a pair merged) at l = paper_stride(n) and
    c = min(summary, l/4): the head used for the pairs-vs-n curves."""
    l = paper_stride(n)
    c = max(1, min(summary, l // 4))
    heads = layer_heads(name, 1, l, summary=c if name in ("fixed", "summary") else None, integration="merged")
    return heads[0]


def scaling_table(
    patterns: Sequence[str],
    ns: Sequence[int],
    *,
    d_head: int = 64,
    summary: int = 32,
    tile: int = 128,
    tile_max_n: int = 0,
) -> list[dict]:
    """Rows (pattern, n, stride, pairs, flops, dense pairs/flops, and for n <= ``tile_max_n`` the
    pairs a ``tile``-sized block-sparse kernel computes as it runs the head (``run_layouts``:
    every run tile computed whole) and the tiles of the naive natural-order layout)."""
    rows = []
    for n in ns:
        dense = n * (n + 1) // 2
        for name in patterns:
            parts = scaling_parts(name, n, summary)
            pairs = pair_count(parts, n)
            row = {"pattern": name, "n": int(n), "stride": parts[0].stride,
                   "summary": parts[-1].summary if name in ("fixed", "summary") else None,
                   "pairs": pairs, "flops": attention_flops(pairs, d_head), "dense_pairs": dense,
                   "dense_flops": attention_flops(dense, d_head), "fraction_of_dense": pairs / dense}
            if n <= tile_max_n:
                if name == "dense":
                    d = dense_tiles(n, tile)
                    run_pairs, naive_run = d["run_pairs"], d["run"]
                else:
                    run_pairs = sum(lay["run_pairs"] for lay in run_layouts(parts, n, tile))
                    naive_run = naive_layout(parts, n, tile)["stats"]["run"]
                row.update({"tile_pairs": run_pairs, "tile_flops": attention_flops(run_pairs, d_head),
                            "naive_tiles_run": naive_run, "dense_tiles_run": dense_tiles(n, tile)["run"]})
            rows.append(row)
    return rows


# ================================================================================================
# Learned attention
# ================================================================================================
@torch.no_grad()
def attention_maps(net, idx: Tensor, rows) -> Tensor:
    """Attention probabilities (L, B, H, R, n) of the query ``rows`` in every residual block.

    Runs the network block by block (eval mode) and asks each block's attention for the chosen
    rows only (``SparseAttention.attention_rows``: an explicit softmax, O(R·n) memory).
    """
    was = net.training
    net.eval()
    try:
        rows = torch.as_tensor(rows, dtype=torch.long)
        x = net.embed(idx)
        out = []
        for blk in net.blocks:
            out.append(blk.attn.attention_rows(blk.ln1(x), rows).float())
            x = blk(x)
        return torch.stack(out)
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
    for a, b in zip(edges[:-1], edges[1:]):
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


# ------------------------------------------------------------------------------------------------
# Examples of a modality
# ------------------------------------------------------------------------------------------------
MU = 255


def mu_law_encode(x: np.ndarray, mu: int = MU) -> np.ndarray:
    """Waveform in [-1, 1] -> uint8 mu-law tokens."""
    x = np.clip(np.asarray(x, dtype=np.float64), -1, 1)
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    return np.round((y + 1) / 2 * mu).astype(np.uint8)


def mu_law_decode(t, mu: int = MU) -> np.ndarray:
    """uint8 mu-law tokens -> waveform in [-1, 1]."""
    y = np.asarray(t, dtype=np.float64) / mu * 2 - 1
    return np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu


def modality_of(cfg) -> str:
    return str(cfg.data.modality)


def synthetic_examples(modality: str, shape: Sequence[int], count: int = 1, seed: int = 0) -> Tensor:
    """int64 (count, prod(shape)) tokens that look like the modality (for demos and tests):
    images: smooth colour gradients with a disc (raster order, channels interleaved); audio: mu-law
    chords with a decaying envelope; text: English bytes."""
    g = np.random.default_rng(seed)
    n = int(np.prod(shape))
    out = []
    for b in range(count):
        if modality == "image":
            H, W = shape[0], shape[1]
            C = shape[2] if len(shape) > 2 else 1
            yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
            yy, xx = yy / max(H - 1, 1), xx / max(W - 1, 1)
            cy, cx, r = g.uniform(0.3, 0.7), g.uniform(0.3, 0.7), g.uniform(0.15, 0.3)
            disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(float)
            chans = [0.6 * yy + 0.4 * disc, 0.6 * xx + 0.4 * (1 - disc), 0.5 * (1 - yy) + 0.5 * disc][:C]
            chans += [0.5 * (yy + xx)] * (C - len(chans))
            img = np.stack(chans, -1)
            out.append(np.clip(img * 255, 0, 255).astype(np.uint8).reshape(-1))
        elif modality == "audio":
            t = np.arange(n) / 12000.0
            f0 = g.uniform(180, 440)
            wave = sum(np.sin(2 * np.pi * f0 * k * t + g.uniform(0, 6.28)) / k for k in (1, 2, 3))
            wave = 0.6 * wave / 1.8 * np.exp(-3 * t / max(t[-1], 1e-9))
            out.append(mu_law_encode(wave))
        else:
            text = ("Sparse Transformers attend to a few keys per query: a local window and a strided "
                    "set, so every position reaches every earlier one in two steps. ")
            data = (text * (n // len(text) + 2)).encode()
            off = int(g.integers(0, len(text)))
            out.append(np.frombuffer(data[off : off + n], dtype=np.uint8))
    return torch.from_numpy(np.stack(out).astype(np.int64))


def random_model(shape: Sequence[int], *, pattern: str = "strided", stride: int | None = None, n_layer: int = 2,
                 n_head: int = 2, d_model: int = 32, summary: int | None = None, integration: str = "interleaved",
                 seed: int = 0, sharpen: float = 4.0):
    """A small randomly initialised ``SparseTransformer`` for data of ``shape`` (default stride:
    one image row W·C, or sqrt(n) for 1-D data), for demos and tests of the drawing paths.

    At OpenAI's initialisation attention is almost uniform over the allowed keys; ``sharpen``
    scales the q/k/v projection so that a random model's maps show some contrast, and the logit
    layer gets random weights so that removing a head changes the output."""
    from .model import NetConfig, SparseTransformer

    n = int(np.prod(shape))
    if stride is None:
        stride = int(shape[1] * shape[2]) if len(shape) == 3 else paper_stride(n)
    torch.manual_seed(seed)
    net = SparseTransformer(NetConfig(n_layer=n_layer, n_head=n_head, d_model=d_model, shape=tuple(shape),
                                      pattern=pattern, stride=stride, summary=summary, integration=integration,
                                      backend="blocked"))
    with torch.no_grad():
        for blk in net.blocks:
            for lin in (blk.attn.q, blk.attn.k, blk.attn.v):
                lin.weight.mul_(sharpen)
        torch.nn.init.normal_(net.head.weight, std=d_model**-0.5)  # zero at OpenAI's init: heads would not matter
    return net.eval()


def load_examples(cfg, count: int = 2, split: str = "validation") -> Tensor:
    """int64 (count, n) tokens of the run's own data (its DataModule's first evaluation windows).

    A relative ``data.cache_dir`` is taken from the repository root (where ``make train`` runs),
    not from the notebook's folder."""
    from .config import ROOT
    from .data import build_datamodule

    if not Path(cfg.data.cache_dir).is_absolute():
        cfg.data.cache_dir = str(ROOT / cfg.data.cache_dir)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("validate")
    loader = dm.val_dataloader() if split == "validation" else dm.test_dataloader()
    toks = []
    for batch in loader:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        toks.append(x)
        if sum(len(t) for t in toks) >= count:
            break
    return torch.cat(toks)[:count].long()


def default_queries(modality: str, shape: Sequence[int], k: int = 2) -> list[int]:
    """``k`` query positions worth drawing: for images, pixels (channel 0) in the lower half near
    the middle; for 1-D data, positions spread over the second half of the sequence."""
    n = int(np.prod(shape))
    if modality == "image":
        H, W = shape[0], shape[1]
        C = shape[2] if len(shape) > 2 else 1
        pix = [(int(H * f), int(W * g)) for f, g in ((0.6, 0.5), (0.8, 0.3), (0.5, 0.8), (0.9, 0.9))][:k]
        return [(y * W + x) * C for y, x in pix]
    return [int(n * f) - 1 for f in np.linspace(0.6, 1.0, k)]


def stat_rows(n: int, max_rows: int = 128) -> list[int]:
    """Query rows for statistics: the second half of the sequence, at most ``max_rows`` of them."""
    step = max(1, (n - n // 2) // max_rows)
    return list(range(n // 2, n, step))[:max_rows]


# ================================================================================================
# Drawing
# ================================================================================================
def _plt():
    import matplotlib.pyplot as plt  # headless machines pick Agg; notebooks keep their inline backend

    return plt


def plot_masks(masks: dict[str, Tensor], ncols: int = 4, size: float = 2.4, suptitle: str | None = None):
    """One panel per named (n, n) bool mask: query i down, key j across, allowed keys dark."""

    def draw(ax, title, m):
        m = m.to(torch.float32)
        ax.imshow(m.numpy(), cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{title}\n{int(m.sum())} pairs", fontsize=8)

    return _panel_grid(masks, draw, ncols, size, 0.3, suptitle)


def _panel_grid(panels: dict, draw, ncols: int, size: float, top: float, suptitle: str | None):
    """A grid of square panels, ``draw(ax, title, value)`` for each; spare cells blanked."""
    plt = _plt()
    k = len(panels)
    ncols = min(ncols, k)
    nrows = math.ceil(k / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + top), squeeze=False)
    for ax, (title, value) in zip(axes.flat, panels.items()):
        draw(ax, title, value)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[k:]:
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def plot_reach(panels: dict[str, Tensor], ncols: int = 4, size: float = 2.6, suptitle: str | None = None):
    """Reach matrices: reached (green), causal but not reached (red: a connectivity failure), future (white)."""
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap(["white", "#3a9d5d", "#d62728"])

    def draw(ax, title, reach):
        img = reach_image(reach)
        fails = int((img == 2).sum())
        ax.imshow(img.numpy(), cmap=cmap, vmin=0, vmax=2, interpolation="nearest")
        ax.set_title(f"{title}\n{'connects' if not fails else f'{fails} pairs unreached'}", fontsize=8,
                     color="black" if not fails else "#d62728")

    return _panel_grid(panels, draw, ncols, size, 0.4, suptitle)


def draw_tiles(ax, classes: Tensor, title: str = "", mask: Tensor | None = None, tile: int | None = None):
    """Tile classes on ``ax`` (skipped light, partial orange, full blue); with a small ``mask`` and
    its ``tile`` size, the allowed pairs drawn on top at pair resolution."""
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap(list(TILE_COLORS))
    Tq, Tk = classes.shape
    if mask is not None and tile:
        img = classes.repeat_interleave(tile, 0).repeat_interleave(tile, 1)[: mask.shape[0], : mask.shape[1]]
        ax.imshow(img.numpy(), cmap=cmap, vmin=0, vmax=2, interpolation="nearest")
        yy, xx = np.nonzero(mask.numpy())
        ax.scatter(xx, yy, s=max(0.5, 60.0 / mask.shape[0]), c="black", marker="s", linewidths=0)
        for t in range(1, Tq):
            ax.axhline(t * tile - 0.5, color="white", lw=0.6)
        for t in range(1, Tk):
            ax.axvline(t * tile - 0.5, color="white", lw=0.6)
    else:
        ax.imshow(classes.numpy(), cmap=cmap, vmin=0, vmax=2, interpolation="nearest")
    s = tile_stats(classes)
    ax.set_title(f"{title}\nrun {s['run']}/{s['total']} tiles ({s['full']} full, {s['partial']} partial)", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def tile_legend(fig):
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color=c, label=nm) for c, nm in zip(TILE_COLORS, TILE_NAMES)], loc="lower center",
               ncol=3, fontsize=8, frameon=False)


def plot_tile_layouts(heads: dict[str, tuple], n: int, tile: int, *, overlay: bool = False, size: float = 3.6,
                      suptitle: str | None = None):
    """One row per named head (a tuple of Parts): its naive natural-order layout, then each group
    as ``run_groups`` runs it. With ``overlay`` (small n only) the allowed pairs are drawn on top,
    in each group's own order. Returns (figure, {name: {"naive": stats, "run": [...], pairs...}})."""
    plt = _plt()
    groups = {name: run_groups(parts, n) for name, parts in heads.items()}
    ncols = 1 + max(len(g) for g in groups.values())
    fig, axes = plt.subplots(len(heads), ncols, figsize=(size * ncols, (size + 0.5) * len(heads) + 0.3), squeeze=False)
    info = {}
    for row, (name, parts) in enumerate(heads.items()):
        naive = naive_layout(parts, n, tile)
        full = TileGroup("", "natural", parts, (), torch.arange(n), torch.arange(n))
        draw_tiles(axes[row, 0], naive["classes"], f"{name} naive: {naive['label']}",
                   mask=group_mask(full) if overlay else None, tile=tile)
        runs = run_layouts(parts, n, tile)
        for col, (g, lay) in enumerate(zip(groups[name], runs), start=1):
            draw_tiles(axes[row, col], lay["classes"], f"{name} as run: {lay['label']}",
                       mask=group_mask(g) if overlay else None, tile=tile)
        for col in range(1 + len(runs), ncols):
            axes[row, col].axis("off")
        info[name] = {"naive": naive["stats"], "run": [{"group": lay["label"], **lay["stats"]} for lay in runs],
                      "pairs": naive["pairs"], "naive_run_pairs": naive["run_pairs"],
                      "run_pairs": sum(lay["run_pairs"] for lay in runs)}
    tile_legend(fig)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig, info


def plot_scaling(rows: list[dict], d_head: int = 64, tile: int = 128):
    """Log-log vs n: attended pairs per head for each pattern against dense (left); attention FLOPs
    of the exact pairs (solid) and of the whole tiles a ``tile``-sized block-sparse kernel runs in
    the as-run layout (dashed, where ``scaling_table`` counted them) (right)."""
    plt = _plt()
    from matplotlib.lines import Line2D

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = list(dict.fromkeys(r["pattern"] for r in rows))
    colors = dict(zip(names, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3))
    for nm in names:
        rs = [r for r in rows if r["pattern"] == nm]
        ns = [r["n"] for r in rs]
        a1.loglog(ns, [r["pairs"] for r in rs], "o-", ms=3, label=nm, color=colors[nm])
        a2.loglog(ns, [r["flops"] for r in rs], "o-", ms=3, color=colors[nm])
        tr = [r for r in rs if "tile_flops" in r]
        if tr:
            a2.loglog([r["n"] for r in tr], [r["tile_flops"] for r in tr], "s--", ms=3, color=colors[nm], alpha=0.7)
    ns = np.array(sorted({r["n"] for r in rows}), dtype=float)
    a1.loglog(ns, ns ** 1.5, ":", color="grey", label="n^1.5")
    a1.set_ylabel("attended (query, key) pairs per head")
    a1.set_title("pairs vs n (l = round(sqrt n), c = min(32, l/4))", fontsize=9)
    a1.legend(fontsize=7)
    handles = [Line2D([], [], color=colors[nm], label=nm) for nm in names]
    handles += [Line2D([], [], color="k", ls="-", marker="o", ms=3, label="exact pairs"),
                Line2D([], [], color="k", ls="--", marker="s", ms=3, label=f"{tile}x{tile} tiles run")]
    a2.legend(handles=handles, fontsize=7, ncol=2)
    a2.set_ylabel(f"attention FLOPs per head (d_head={d_head}, forward)")
    a2.set_title("FLOPs vs n: exact pairs vs whole tiles run", fontsize=9)
    for a in (a1, a2):
        a.set_xlabel("sequence length n")
        a.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def _grid(plt, L: int, H: int, w: float, h: float):
    fig, axes = plt.subplots(L, H, figsize=(w * H, h * L + 0.5), squeeze=False)
    return fig, axes


def plot_image_attention(tokens: Tensor, maps: Tensor, query: int, shape: Sequence[int], labels=None,
                         suptitle: str | None = None):
    """For one image (``tokens`` (n,)) and one query position, per layer (rows) and head (columns):
    the attention over pixels (summed over channels) laid over the image; the query pixel boxed.
    ``maps`` is (L, H, n) for that query."""
    plt = _plt()
    from matplotlib.patches import Rectangle

    H_, W_ = int(shape[0]), int(shape[1])
    C = int(shape[2]) if len(shape) > 2 else 1
    img = tokens.reshape(H_, W_, C).numpy().astype(np.float64) / 255.0
    img_show = img if C == 3 else img.mean(-1)
    L, Hh = maps.shape[0], maps.shape[1]
    fig, axes = _grid(plt, L, Hh, 2.4, 2.4)
    qy, qx, qc = query // C // W_, query // C % W_, query % C
    for r in range(L):
        for h in range(Hh):
            ax = axes[r, h]
            att = maps[r, h].reshape(H_, W_, C).sum(-1).numpy()
            ax.imshow(img_show, cmap=None if C == 3 else "gray", interpolation="nearest")
            ax.imshow(att / max(att.max(), 1e-12), cmap="inferno", alpha=0.65, interpolation="nearest", vmin=0, vmax=1)
            ax.add_patch(Rectangle((qx - 0.5, qy - 0.5), 1, 1, fill=False, ec="cyan", lw=1.5))
            lab = f" {labels[r][h]}" if labels else ""
            ax.set_title(f"layer {r} head {h}{lab}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(suptitle or f"where pixel (row {qy}, col {qx}, channel {qc}) looks", fontsize=9)
    fig.tight_layout()
    return fig


def _char(b: int) -> str:
    if b == 10:
        return "⏎"
    if b == 32:
        return " "
    if 33 <= b < 127:
        return chr(b)
    return "·"


def glyph_grid(chars: Sequence[str], greys: Sequence[float], width: int, cell: tuple[int, int] = (14, 20)) -> np.ndarray:
    """RGBA float image (rows·h, width·w, 4) of ``chars`` in a grid of ``width`` columns, one
    monospace glyph per cell (transparent background; ``greys`` = each glyph's grey level), to lay
    over a heat map with ``imshow`` (one image instead of thousands of text artists)."""
    from matplotlib import font_manager
    from PIL import Image, ImageDraw, ImageFont

    w, h = cell
    nrow = max(1, math.ceil(len(chars) / width))
    img = Image.new("LA", (width * w, nrow * h), (0, 0))
    draw = ImageDraw.Draw(img)
    try:
        font = ImageFont.truetype(font_manager.findfont("DejaVu Sans Mono"), int(h * 0.7))
    except OSError:
        font = ImageFont.load_default()
    for k, (ch, g) in enumerate(zip(chars, greys)):
        x, y = (k % width) * w + w / 2, (k // width) * h + h / 2
        draw.text((x, y), ch, fill=(int(255 * g), 255), font=font, anchor="mm")
    a = np.asarray(img, dtype=np.float64) / 255.0
    return np.dstack([a[..., 0], a[..., 0], a[..., 0], a[..., 1]])


def plot_text_attention(tokens: Tensor, maps: Tensor, query: int, width: int, labels=None,
                        suptitle: str | None = None, window: tuple[int, int] | None = None, max_rows: int = 8):
    """For one text (``tokens`` (n,) bytes) and one query, per layer (rows) and head (columns): the
    characters in rows of ``width`` (the stride: local keys sit on the query's row and the one
    above, stride keys in its column), each cell shaded by its attention weight; the query boxed.
    ``window`` = (first, last) positions to draw (default: the ``max_rows`` rows up to the query's)."""
    plt = _plt()
    from matplotlib.patches import Rectangle

    L, Hh = maps.shape[0], maps.shape[1]
    qrow = query // width
    lo, hi = window or (max(0, qrow - max_rows + 1) * width, (qrow + 1) * width)
    lo, hi = lo // width * width, min(hi, tokens.shape[0])
    nrow = math.ceil((hi - lo) / width)
    toks = tokens.tolist()
    glyphs = glyph_grid([_char(toks[p]) for p in range(lo, hi)], [0.0 if p <= query else 0.6 for p in range(lo, hi)],
                        width)
    extent = (-0.5, width - 0.5, nrow - 0.5, -0.5)
    fig, axes = _grid(plt, L, Hh, max(2.4, width * 0.16 + 0.3), max(1.2, nrow * 0.22 + 0.5))
    for r in range(L):
        for h in range(Hh):
            ax = axes[r, h]
            w = maps[r, h].numpy()
            shade = np.zeros(nrow * width)
            shade[: hi - lo] = w[lo:hi] / max(float(w.max()), 1e-12)
            ax.imshow(shade.reshape(nrow, width), cmap="YlOrRd", vmin=0, vmax=1, aspect="auto",
                      interpolation="nearest", extent=extent)
            ax.imshow(glyphs, aspect="auto", interpolation="bilinear", extent=extent)
            ax.add_patch(Rectangle(((query - lo) % width - 0.5, (query - lo) // width - 0.5), 1, 1, fill=False,
                                   ec="blue", lw=1.2))
            lab = f" {labels[r][h]}" if labels else ""
            ax.set_title(f"layer {r} head {h}{lab}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(suptitle or f"where character {query} ({_char(toks[query])!r}) looks; rows of {width}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_audio_attention(tokens: Tensor, maps: Tensor, query: int, rate: int = 12000, labels=None,
                         suptitle: str | None = None):
    """For one clip (``tokens`` (n,) mu-law) and one query sample, per layer (rows) and head
    (columns): the waveform (grey) and the attention weights over it (red stems, right axis)."""
    plt = _plt()
    L, Hh = maps.shape[0], maps.shape[1]
    wave = mu_law_decode(tokens.numpy())
    t = np.arange(len(wave)) / rate * 1000.0
    fig, axes = _grid(plt, L, Hh, 3.6, 1.9)
    for r in range(L):
        for h in range(Hh):
            ax = axes[r, h]
            ax.plot(t, wave, color="0.6", lw=0.6)
            ax.axvline(t[query], color="blue", lw=0.8)
            ax.set_ylim(-1.05, 1.05)
            ax2 = ax.twinx()
            w = maps[r, h].numpy()
            nz = np.nonzero(w > w.max() * 1e-3)[0] if w.max() > 0 else np.array([], dtype=int)
            ax2.vlines(t[nz], 0, w[nz], color="#d62728", lw=0.8)
            ax2.set_ylim(0, max(float(w.max()), 1e-12) * 1.05)
            ax2.tick_params(labelsize=6)
            ax.tick_params(labelsize=6)
            lab = f" {labels[r][h]}" if labels else ""
            ax.set_title(f"layer {r} head {h}{lab}", fontsize=7)
            if r == L - 1:
                ax.set_xlabel("ms", fontsize=7)
    fig.suptitle(suptitle or f"where sample {query} ({t[query]:.1f} ms) listens", fontsize=9)
    fig.tight_layout()
    return fig


def plot_attention(modality: str, tokens: Tensor, maps: Tensor, query: int, shape: Sequence[int], labels=None, **kw):
    """Dispatch on the modality: image overlays, text highlights or audio over the waveform."""
    if modality == "image":
        return plot_image_attention(tokens, maps, query, shape, labels=labels, **kw)
    if modality == "audio":
        return plot_audio_attention(tokens, maps, query, labels=labels, **kw)
    return plot_text_attention(tokens, maps, query, int(shape[-1]), labels=labels, **kw)


def plot_head_stats(stats: dict, labels=None):
    """Heat maps (layer x head) of entropy (with the uniform-over-allowed-keys maximum) and of the
    mean attention distance."""
    plt = _plt()
    ent, dist = stats["entropy"].numpy(), stats["distance"].numpy()
    uni = stats.get("uniform_entropy")
    L, H = ent.shape
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(3 + 2.2 * H, 1.4 + 0.9 * L))
    for ax, val, title, fmt in ((a1, ent, "entropy (bits); (max if uniform)", "{:.2f}"),
                                (a2, dist, "mean attention distance (positions)", "{:.1f}")):
        im = ax.imshow(val, cmap="viridis", aspect="auto")
        lo, hi = np.nanmin(val), np.nanmax(val)
        for r in range(L):
            for h in range(H):
                bright = hi > lo and (val[r, h] - lo) / (hi - lo) > 0.6  # viridis is light at the top
                s = fmt.format(val[r, h])
                if ax is a1 and uni is not None:
                    s += f"\n({uni[r, h]:.2f})"
                if labels:
                    s = f"{labels[r][h]}\n" + s
                ax.text(h, r, s, ha="center", va="center", fontsize=7, color="black" if bright else "white")
        ax.set_xticks(range(H))
        ax.set_yticks(range(L))
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig


def plot_work_division(profile: Tensor, edges: Sequence[int], ablation: Tensor, labels, stride: int,
                       mass: Tensor | None = None, mass_labels=None):
    """How heads divide the work: attention mass by distance per (layer, head) (lines, coloured by
    the head's parts), the loss increase when a head is removed (bars), and, for heads attending
    several parts, the mass on each part's keys."""
    plt = _plt()
    L, H = ablation.shape
    flat = [lab for row in labels for lab in row]
    kinds = list(dict.fromkeys(flat))
    colors = dict(zip(kinds, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3))
    ncols = 3 if mass is not None else 2
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 3.8))
    a1, a2 = axes[0], axes[1]
    xb = np.arange(len(edges) - 1)
    seen = set()
    for r in range(L):
        for h in range(H):
            lab = labels[r][h]
            a1.plot(xb, profile[r, h].numpy(), "o-", ms=3, color=colors[lab], alpha=0.8,
                    label=lab if lab not in seen else None)
            seen.add(lab)
    sb = next((k for k, (a, b) in enumerate(zip(edges[:-1], edges[1:])) if a <= stride < b), None)
    if sb is not None:
        a1.axvline(sb, color="grey", ls=":", lw=1)
    a1.set_xticks(xb, [f"{a}" if b - a == 1 else f"{a}-{b - 1}" for a, b in zip(edges[:-1], edges[1:])],
                  fontsize=6, rotation=60)
    a1.set_xlabel(f"distance i - j (positions; dotted: the bin holding the stride {stride})", fontsize=8)
    a1.set_ylabel("attention mass")
    a1.set_title("where each head's attention goes, by distance", fontsize=9)
    a1.legend(fontsize=7)
    xs = np.arange(L * H)
    a2.bar(xs, ablation.reshape(-1).numpy(), color=[colors[f] for f in flat])
    a2.set_xticks(xs, [f"L{r}H{h}" for r in range(L) for h in range(H)], fontsize=6, rotation=90)
    a2.set_ylabel("bits per token lost without the head")
    a2.set_title("head ablation", fontsize=9)
    if mass is not None:
        a3 = axes[2]
        bottom = np.zeros(L * H)
        for k, nm in enumerate(mass_labels):
            v = mass[:, :, k].reshape(-1).numpy()
            a3.bar(xs, v, bottom=bottom, label=nm)
            bottom += v
        a3.set_xticks(xs, [f"L{r}H{h}" for r in range(L) for h in range(H)], fontsize=6, rotation=90)
        a3.set_ylabel("attention mass")
        a3.set_title("mass on each part's keys", fontsize=9)
        a3.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------
# Saving
# ------------------------------------------------------------------------------------------------
def save_figure(fig, path: str | Path, dpi: int = 110) -> str:
    """Write ``fig`` as PNG (folders made), return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return str(path)


def _jsonable(x):
    if isinstance(x, Tensor):
        return _jsonable(x.tolist())
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (np.integer, np.floating)):
        return _jsonable(x.item())
    return x


def save_results(results: dict, path: str | Path) -> str:
    """Key numbers as JSON (tensors as lists, NaN as null), for tests and later reading."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(results), indent=1))
    return str(path)
