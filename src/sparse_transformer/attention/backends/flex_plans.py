"""FlexAttention plans: which tiles each call computes and the block masks that say so.

Each pattern runs in an order and key set where its allowed pairs are tile-dense (see flex.py):
natural-order parts as a band / own block / all keys, a columns part (summary cells) gathered and
appended to the keys, residue parts (stride) in OpenAI's transposed order. Block masks are built
straight from tile indices (``BlockMask.from_kv_blocks``), never from an n×n mask; tiles wholly
inside the pattern are *full* (no mask evaluation), the rest *partial*. User patterns without a
hint get a block mask built by the compiled ``create_block_mask`` from their mask function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from ..patterns import _USER, Part, registry_version

try:  # torch >= 2.5
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask
except ImportError:  # pragma: no cover
    BlockMask = create_block_mask = None

Tensor = torch.Tensor
TILE = 128


# ------------------------------------------------------------------------------------------------
# Mask functions (traceable: tensor ops on q_idx / kv_idx and captured ints only)
# ------------------------------------------------------------------------------------------------
def _fdiv(a, b):
    return torch.div(a, b, rounding_mode="floor")


def _union(parts, i, j, h):
    m = None
    for p in parts:
        x = p.mask(i, j, h)  # traceable: tensor ops on the indices only
        m = x if m is None else m | x
    return m


def _residue_pairs(m, p, prior, i, j, h):
    """``m`` (a stride-like tile's causal pairs) narrowed to part ``p``'s own pairs (a user
    residue pattern's function; stride is all of them) that no ``prior`` part already covers."""
    if p.name != "stride":
        m = m & _USER[p.name].fn(i, j, h).to(torch.bool)
    if prior:
        m = m & ~_union(prior, i, j, h)
    return m


# ------------------------------------------------------------------------------------------------
# Plans: the calls one group of heads needs, with their block masks
# ------------------------------------------------------------------------------------------------
@dataclass
class Call:
    kind: str  # "natural", "residue" (padded, permuted) or "residue_view" (a free view)
    block_mask: object
    width: int = 0  # residue: l
    padded: int = 0  # residue: n padded to a multiple of l; natural with columns: n padded to a tile multiple
    columns: Tensor | None = None  # natural: (H_g, |S|) gathered key positions per head
    tiles: int = 0  # computed tiles (partial + full), for flop_ratio
    sdpa: bool = False  # residue_view with plain causal structure: FlashAttention can run it


def _tiles_from_lists(partial: list[list[int]], full: list[list[int]], device, n_kv_tiles: int):
    # BlockMask wants index rows as wide as the number of kv tiles (it transposes them for backward)
    nq = len(partial)
    width = fwidth = n_kv_tiles
    kv_num = torch.tensor([len(x) for x in partial], dtype=torch.int32)
    kv_idx = torch.zeros(nq, width, dtype=torch.int32)
    for r, x in enumerate(partial):
        if x:
            kv_idx[r, : len(x)] = torch.tensor(x, dtype=torch.int32)
    f_num = torch.tensor([len(x) for x in full], dtype=torch.int32)
    f_idx = torch.zeros(nq, fwidth, dtype=torch.int32)
    for r, x in enumerate(full):
        if x:
            f_idx[r, : len(x)] = torch.tensor(x, dtype=torch.int32)
    shape = lambda t: t.reshape(1, 1, *t.shape).to(device)  # noqa: E731  (B = H = 1: broadcast)
    return shape(kv_num), shape(kv_idx), shape(f_num), shape(f_idx), int(kv_num.sum() + f_num.sum())


def _natural_tiles(parts, n: int, n_region: int, col_pos: Tensor | None, union_with_block: bool):
    """Partial and full kv tiles per query tile for natural-order parts (+ a gathered region)."""
    T = TILE
    nq = math.ceil(n / T)
    partial, full = [], []
    structs = [p.structure for p in parts if p.structure.kind != "columns"]
    for qb in range(nq):
        i0, i1 = qb * T, min(qb * T + T, n) - 1
        cand, isfull = set(), set()
        for s in structs:
            if s.kind == "full":
                lo = 0
                for kb in range(lo, qb + 1):
                    cand.add(kb)
                    if kb < qb:
                        isfull.add(kb)
            elif s.kind == "band":
                lo = max(0, (i0 - (s.width - 1)) // T)
                for kb in range(lo, qb + 1):
                    cand.add(kb)
                    if kb < qb and i1 - kb * T < s.width:
                        isfull.add(kb)
            elif s.kind == "block":
                L = s.width
                lo = ((i0 // L) * L) // T
                for kb in range(lo, qb + 1):
                    cand.add(kb)
                    j0, j1 = kb * T, kb * T + T - 1
                    if kb < qb and i0 // L == i1 // L == j0 // L == j1 // L:
                        isfull.add(kb)
            elif s.kind == "residue":
                raise AssertionError("residue structures run in their own call")
        if col_pos is not None:
            base = n_region // T
            G = col_pos.numel()
            # gathered keys are in increasing position; candidates: j_g <= i1 (those before the own block
            # when the block part has the own block)
            limit = (i1 // parts_block_width(parts)) * parts_block_width(parts) if union_with_block else i1 + 1
            g_hi = int(torch.searchsorted(col_pos, torch.tensor(limit), right=False)) if union_with_block else int(
                torch.searchsorted(col_pos, torch.tensor(i1), right=True))
            first_block_i0 = (i0 // parts_block_width(parts)) * parts_block_width(parts) if union_with_block else None
            for gb in range(math.ceil(g_hi / T)):
                cand.add(base + gb)
                g_last = min(gb * T + T, G) - 1
                jmax = int(col_pos[g_last])
                ok = jmax < first_block_i0 if union_with_block else jmax <= i0
                if ok and gb * T + T <= G:
                    isfull.add(base + gb)
        partial.append(sorted(cand - isfull))
        full.append(sorted(isfull))
    return partial, full


def parts_block_width(parts) -> int:
    for p in parts:
        if p.structure.kind == "block":
            return p.structure.width
    return 1


def _residue_tiles(n_pad: int, nb: int):
    """Tiles for causal attention inside contiguous chunks of nb (transposed order, length n_pad)."""
    T = TILE
    nq = math.ceil(n_pad / T)
    partial, full = [], []
    for qb in range(nq):
        t0, t1 = qb * T, min(qb * T + T, n_pad) - 1
        lo = ((t0 // nb) * nb) // T
        cand, isfull = [], []
        for kb in range(lo, qb + 1):
            k0, k1 = kb * T, kb * T + T - 1
            if kb < qb and t0 // nb == t1 // nb == k0 // nb == k1 // nb:
                isfull.append(kb)
            else:
                cand.append(kb)
        partial.append(cand)
        full.append(isfull)
    return partial, full


def _signature(parts: tuple) -> tuple:
    return tuple((p.name, p.stride, p.summary) for p in parts)


@dataclass
class GroupPlan:
    calls: list
    n: int
    pairs: int = 0


def _summary_cols(p: Part, n: int) -> Tensor:
    """Gathered key positions; summary cells of the last, partial block too (masked: j > every i),
    so every head's slice has the same count."""
    if p.name == "summary":
        return p.structure.columns(math.ceil(n / p.stride) * p.stride)
    return p.structure.columns(n)


@lru_cache(maxsize=64)
def _plan(heads_key: tuple, n: int, device: str, version: int, heads: tuple) -> GroupPlan:
    """Calls and block masks for one group of heads (all with the same part names)."""
    template = heads[0]
    natural = [p for p in template if p.structure is not None and p.structure.kind != "residue"]
    residue = [p for p in template if p.structure is not None and p.structure.kind == "residue"]
    hintless = [p for p in template if p.structure is None]
    hmap = torch.tensor([parts[0].head for parts in heads], dtype=torch.long, device=device)
    calls = []
    if hintless:  # user patterns without a hint: compiled block mask from the whole mask function
        calls.append(_hintless_call(hintless + natural, n, len(heads), hmap, device))
        natural = []
    elif natural:
        calls.append(_natural_call(natural, heads, n, hmap, device))
    prior_parts = natural + hintless
    for p in residue:
        w = p.structure.width
        prior = [x for x in prior_parts if x.structure is None or x.structure.kind != "columns"]
        if n % w == 0:
            calls.append(_residue_view_call(p, prior, n, w, len(heads), hmap, device))
        else:
            calls.append(_residue_padded_call(p, prior, n, w, hmap, device))
        prior_parts = prior_parts + [p]
    return GroupPlan(calls, n)


def _hintless_call(parts, n: int, Hg: int, hmap: Tensor, device) -> Call:
    def mask_mod(b, h, q_idx, kv_idx):
        return _union(parts, q_idx, kv_idx, hmap[h])

    bm = create_block_mask(mask_mod, 1, Hg, n, n, device=device, _compile=True)
    full = bm.full_kv_num_blocks.sum() if bm.full_kv_num_blocks is not None else 0
    return Call("natural", bm, tiles=int(bm.kv_num_blocks.sum() + full) // Hg)


def _natural_call(natural, heads, n: int, hmap: Tensor, device) -> Call:
    """Natural-order parts in one call; a columns part's keys (e.g. summary cells) gathered and
    appended after the tile-padded natural keys, each head its own."""
    template = heads[0]
    non_col = [p for p in natural if p.structure.kind != "columns"]
    col_parts = [p for p in natural if p.structure.kind == "columns"]
    if len(col_parts) > 1:
        raise ValueError("backend 'flex' takes at most one columns part per head")
    if not col_parts:
        partial, full = _natural_tiles(natural, n, n, None, False)
        kv_num, kv_idx, f_num, f_idx, tiles = _tiles_from_lists(partial, full, device, math.ceil(n / TILE))

        def mask_mod(b, h, q_idx, kv_idx):
            return _union(non_col, q_idx, kv_idx, hmap[h])

        bm = BlockMask.from_kv_blocks(kv_num, kv_idx, f_num, f_idx, BLOCK_SIZE=TILE, mask_mod=mask_mod, seq_lengths=(n, n))
        return Call("natural", bm, padded=n, tiles=tiles)
    cp = col_parts[0]
    at = [p.name for p in template].index(cp.name)
    col_part_by_head = [parts[at] for parts in heads]
    union_with_block = [p.name for p in natural] == ["block", "summary"]
    n_region = math.ceil(n / TILE) * TILE
    cols = torch.stack([_summary_cols(p, n) for p in col_part_by_head])
    cols_dev = cols.to(device)
    partial, full = _natural_tiles(natural, n, n_region, cols[0], union_with_block)
    kv_len = n_region + cols.shape[1]
    kv_num, kv_idx, f_num, f_idx, tiles = _tiles_from_lists(partial, full, device, math.ceil(kv_len / TILE))
    mask_mod = _columns_mask_mod(cp, col_part_by_head, cols_dev, non_col, n, n_region, hmap, device)
    bm = BlockMask.from_kv_blocks(kv_num, kv_idx, f_num, f_idx, BLOCK_SIZE=TILE, mask_mod=mask_mod, seq_lengths=(n, kv_len))
    return Call("natural", bm, padded=n_region, columns=cols_dev, tiles=tiles)


def _columns_mask_mod(cp, col_part_by_head, cols_dev, non_col, n: int, n_region: int, hmap: Tensor, device):
    """Mask over [natural keys (padded to n_region) ∪ gathered column keys]; a column key the
    natural parts already cover is excluded (counted once)."""
    G = cols_dev.shape[1]
    if cp.name == "summary":
        l, c = cp.stride, cp.summary
        slices = torch.tensor([p.slice for p in col_part_by_head], dtype=torch.long, device=device)

        def col_pos(h, g):  # position of gathered key g of head h: block g // c, its slice's cells
            return _fdiv(g, c) * l + (l - (slices[h] + 1) * c) + torch.remainder(g, c)
    else:
        def col_pos(h, g):
            return cols_dev[h, g]

    def mask_mod(b, h, q_idx, kv_idx):
        in_nat = kv_idx < n_region
        j_col = col_pos(h, torch.clamp(kv_idx - n_region, 0, G - 1))
        nat = _union(non_col, q_idx, kv_idx, hmap[h]) if non_col else torch.zeros_like(in_nat)
        nat = nat & (kv_idx < n)
        prior = _union(non_col, q_idx, j_col, hmap[h]) if non_col else torch.zeros_like(in_nat)
        colm = j_col <= q_idx
        if cp.name != "summary":
            colm = colm & _USER[cp.name].fn(q_idx, j_col, hmap[h]).to(torch.bool)
        return torch.where(in_nat, nat, colm & ~prior)

    return mask_mod


def _residue_padded_call(p, prior, n, w, hmap, device) -> Call:
    """Stride-like part at a length that is not a multiple of l: pad, permute into the transposed
    order (copies), causal attention inside chunks of n_pad/l."""
    nb = math.ceil(n / w)
    n_pad = nb * w
    partial, full = _residue_tiles(n_pad, nb)
    kv_num, kv_idx, f_num, f_idx, tiles = _tiles_from_lists(partial, full, device, math.ceil(n_pad / TILE))

    def mask_mod(b, h, q_idx, kv_idx):
        i = torch.remainder(q_idx, nb) * w + _fdiv(q_idx, nb)  # transposed index -> position
        j = torch.remainder(kv_idx, nb) * w + _fdiv(kv_idx, nb)
        m = (_fdiv(q_idx, nb) == _fdiv(kv_idx, nb)) & (j <= i) & (i < n) & (j < n)
        return _residue_pairs(m, p, prior, i, j, hmap[h])

    bm = BlockMask.from_kv_blocks(kv_num, kv_idx, f_num, f_idx, BLOCK_SIZE=TILE, mask_mod=mask_mod, seq_lengths=(n_pad, n_pad))
    return Call("residue", bm, width=w, padded=n_pad, tiles=tiles)


def _residue_view_call(p, prior, n, w, Hg, hmap, device) -> Call:
    """Stride-like part when l divides n: OpenAI's transpose as a free view. Position m*l + r of
    head h becomes row m of sequence (r, h): q, k, v viewed as (B, l*H, n/l, dh), no copy, and the
    pattern is plain causal attention over sequences of n/l (strict when the diagonal belongs to an
    earlier part, e.g. the local half of merged strided)."""
    nb = n // w
    simple_strict = p.name == "stride" and [x.name for x in prior] == ["local"] and prior[0].stride >= w
    simple = p.name == "stride" and not prior
    T = TILE
    nq = math.ceil(nb / T)
    partial = [[qb] for qb in range(nq)]
    full = [list(range(qb)) if (simple or simple_strict) else [] for qb in range(nq)]
    if not (simple or simple_strict):
        partial = [list(range(qb + 1)) for qb in range(nq)]
    kv_num, kv_idx, f_num, f_idx, tiles = _tiles_from_lists(partial, full, device, nq)

    def mask_mod(b, h, q_idx, kv_idx):
        if simple:
            return kv_idx <= q_idx
        if simple_strict:
            return kv_idx < q_idx
        r, hh = _fdiv(h, Hg), torch.remainder(h, Hg)
        i, j = q_idx * w + r, kv_idx * w + r
        return _residue_pairs(kv_idx <= q_idx, p, prior, i, j, hmap[hh])

    bm = BlockMask.from_kv_blocks(kv_num, kv_idx, f_num, f_idx, BLOCK_SIZE=TILE, mask_mod=mask_mod, seq_lengths=(nb, nb))
    return Call("residue_view", bm, width=w, padded=n, tiles=tiles * w, sdpa=simple)  # tiles repeat per residue r




def plan_for(parts_per_head: tuple, n: int, device) -> GroupPlan:
    key = tuple(tuple(p.key() for p in parts) for parts in parts_per_head)
    return _plan(key, n, str(device), registry_version(), parts_per_head)


def groups(heads: tuple) -> list[tuple[list[int], tuple]]:
    """Heads sharing part names run together (summary slices and user heads vary inside a call)."""
    g: dict[tuple, list[int]] = {}
    for h, parts in enumerate(heads):
        g.setdefault(_signature(parts), []).append(h)
    return [(idx, tuple(heads[h] for h in idx)) for idx in g.values()]


def computed_tiles(heads: tuple, n: int, device="cpu") -> int:
    """Tiles (TILE x TILE score blocks) the kernels compute for one batch element, summed over heads."""
    total = 0
    for idx, parts in groups(heads):
        plan = plan_for(parts, n, device)
        total += sum(c.tiles for c in plan.calls) * len(idx)
    return total
