"""FlexAttention backend (CUDA): block-sparse kernels that skip whole 128x128 tiles.

A naive mask touches every tile for ``stride`` and ``summary``; here each pattern runs in an order
and key set where its allowed pairs are tile-dense:

- natural-order parts (``dense``, ``local``, ``block``, user ``window``/``block`` hints) run over the
  keys as they are: a band of one or two tiles per query tile for ``local``, the own block for
  ``block``;
- ``summary`` keys (c of every l) are gathered into a compact set of c·n/l keys appended to the keys
  (each head its own slice), so the fixed pattern is [own block ∪ gathered summaries] in one softmax;
- ``stride`` runs in OpenAI's transposed order (the sequence viewed as (n/l, l) and transposed):
  causal attention inside contiguous chunks of n/l;
- a union whose parts need different orders (merged ``strided`` = local ∪ stride) runs as two calls
  merged by their log-sum-exps, the shared diagonal counted once (the stride call excludes pairs
  the local call has).

Block masks are built straight from tile indices (``BlockMask.from_kv_blocks``), never from an n×n
mask, and cached per (heads, n, device): steps never rebuild them and the compiled kernel sees the
same mask function every step (no recompiles). Tiles wholly inside the pattern are marked *full*
(no mask evaluation); the rest *partial*. User patterns without a hint get a block mask built by
the compiled ``create_block_mask`` from their mask function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from ..patterns import _USER, PRIMITIVES, Part, registry_version
from .common import merge_softmaxes

Tensor = torch.Tensor
TILE = 128

try:  # torch >= 2.5
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
except ImportError:  # pragma: no cover
    flex_attention = None

try:
    from torch.nn.attention.flex_attention import AuxRequest
except ImportError:  # torch < 2.9 spells it return_lse=True
    AuxRequest = None


def available() -> bool:
    return flex_attention is not None and torch.cuda.is_available()


_compiled = None


def _raise_recompile_limit() -> None:
    """One compiled entry per (mask, length, head dim), and per block pattern in a compiled model: a
    model with a few patterns and lengths needs a handful; past the limit dynamo silently falls
    back to the slow eager path, so raise it."""
    import torch._dynamo

    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 64))


def _flex():
    """flex_attention compiled once per process (eager flex materialises the scores)."""
    global _compiled
    if _compiled is None:
        _raise_recompile_limit()
        _compiled = torch.compile(flex_attention, dynamic=False)
    return _compiled


# Tests set this False to check the masks and call structure on a CPU with eager FlexAttention
# (forward only; eager ignores the tile lists, which tests check separately).
COMPILE = True


_merge = None


def _merge_compiled(outs, lses):
    """The log-sum-exp merge, compiled into fused kernels (eager it is a dozen passes over n·d)."""
    global _merge
    if not COMPILE or torch.compiler.is_compiling():  # inside a compiled model: part of its graph
        return merge_softmaxes(outs, lses)
    if _merge is None:
        _merge = torch.compile(merge_softmaxes, dynamic=False)
    return _merge(outs, lses)


def _call(q, k, v, block_mask, scale, kernel_options=None):
    # eager: our own compiled flex_attention; inside a compiled model, the plain one is traced into its graph
    fn = _flex() if COMPILE and not torch.compiler.is_compiling() else flex_attention
    if AuxRequest is not None:
        out, aux = fn(q, k, v, block_mask=block_mask, scale=scale, return_aux=AuxRequest(lse=True), kernel_options=kernel_options)
        return out, aux.lse
    return fn(q, k, v, block_mask=block_mask, scale=scale, return_lse=True, kernel_options=kernel_options)


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
    Hg = len(heads)
    hmap = torch.tensor([parts[0].head for parts in heads], dtype=torch.long, device=device)
    calls = []

    if hintless:  # user patterns without a hint: compiled block mask from the whole mask function
        def mask_mod(b, h, q_idx, kv_idx):
            return _union(hintless + natural, q_idx, kv_idx, hmap[h])

        bm = create_block_mask(mask_mod, 1, Hg, n, n, device=device, _compile=True)
        calls.append(Call("natural", bm, tiles=int(bm.kv_num_blocks.sum() + (bm.full_kv_num_blocks.sum() if bm.full_kv_num_blocks is not None else 0)) // Hg))
        natural = []

    if natural:
        non_col = [p for p in natural if p.structure.kind != "columns"]
        col_parts = [p for p in natural if p.structure.kind == "columns"]
        union_with_block = bool(col_parts) and [p.name for p in natural] == ["block", "summary"]
        cols = None
        n_region = n
        if col_parts:
            if len(col_parts) > 1:
                raise ValueError("backend 'flex' takes at most one columns part per head")
            n_region = math.ceil(n / TILE) * TILE
            cols = torch.stack([_summary_cols(parts[[p.name for p in template].index(col_parts[0].name)], n) for parts in heads])
            cols_dev = cols.to(device)
        col_part_by_head = [parts[[p.name for p in template].index(col_parts[0].name)] for parts in heads] if col_parts else None
        partial, full = _natural_tiles(natural, n, n_region, cols[0] if cols is not None else None, union_with_block)
        kv_len = n_region + (cols.shape[1] if cols is not None else 0)
        kv_num, kv_idx, f_num, f_idx, tiles = _tiles_from_lists(partial, full, device, math.ceil(kv_len / TILE))

        if cols is None:
            def mask_mod(b, h, q_idx, kv_idx):
                return _union(non_col, q_idx, kv_idx, hmap[h])
        else:
            G = cols.shape[1]
            cp = col_parts[0]
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
                g = torch.clamp(kv_idx - n_region, 0, G - 1)
                j_col = col_pos(h, g)
                nat = _union(non_col, q_idx, kv_idx, hmap[h]) if non_col else torch.zeros_like(in_nat)
                nat = nat & (kv_idx < n)
                prior = _union(non_col, q_idx, j_col, hmap[h]) if non_col else torch.zeros_like(in_nat)
                if cp.name == "summary":
                    colm = j_col <= q_idx
                else:
                    colm = (j_col <= q_idx) & _USER[cp.name].fn(q_idx, j_col, hmap[h]).to(torch.bool)
                return torch.where(in_nat, nat, colm & ~prior)

        bm = BlockMask.from_kv_blocks(kv_num, kv_idx, f_num, f_idx, BLOCK_SIZE=TILE, mask_mod=mask_mod, seq_lengths=(n, kv_len))
        calls.append(Call("natural", bm, padded=n_region, columns=cols_dev if cols is not None else None, tiles=tiles))

    prior_parts = natural + hintless
    for p in residue:
        w = p.structure.width
        prior = [x for x in prior_parts if x.structure is None or x.structure.kind != "columns"]
        if n % w == 0:
            calls.append(_residue_view_call(p, prior, n, w, Hg, hmap, device))
        else:
            calls.append(_residue_padded_call(p, prior, n, w, hmap, device))
        prior_parts = prior_parts + [p]
    return GroupPlan(calls, n)


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


def _to_residue_view(x: Tensor, w: int) -> Tensor:
    """(B, H, n, d) -> (B, l*H, n/l, d): a view when x is a transposed contiguous (B, n, H, d)."""
    xt = x.transpose(1, 2)
    if not xt.is_contiguous():
        xt = xt.contiguous()
    B, n, H, d = xt.shape
    return xt.view(B, n // w, w, H, d).permute(0, 2, 3, 1, 4).reshape(B, w * H, n // w, d)


def _from_residue_view(o: Tensor, w: int, H: int) -> Tensor:
    """(B, l*H, n/l, d) -> (B, H, n, d) as a view of a contiguous (B, n, H, d) (one copy)."""
    B, _, nb, d = o.shape
    return o.view(B, w, H, nb, d).permute(0, 3, 1, 2, 4).reshape(B, nb * w, H, d).transpose(1, 2)


def plan_for(parts_per_head: tuple, n: int, device) -> GroupPlan:
    key = tuple(tuple(p.key() for p in parts) for parts in parts_per_head)
    return _plan(key, n, str(device), registry_version(), parts_per_head)


def _to_transposed(x: Tensor, w: int, n_pad: int) -> Tensor:
    B, H, n, d = x.shape
    if n_pad != n:
        x = torch.nn.functional.pad(x, (0, 0, 0, n_pad - n))
    return x.view(B, H, n_pad // w, w, d).transpose(2, 3).reshape(B, H, n_pad, d)


def _from_transposed(x: Tensor, w: int, n: int) -> Tensor:
    B, H, n_pad, d = x.shape
    return x.view(B, H, w, n_pad // w, d).transpose(2, 3).reshape(B, H, n_pad, d)[:, :, :n]


def _run_group(q, k, v, plan: GroupPlan, scale, kernel_options=None):
    n = q.shape[2]
    outs, lses = [], []
    for call in plan.calls:
        if call.kind == "natural":
            kk, vv = k, v
            if call.columns is not None:
                idx = call.columns[None, :, :, None]
                pad = call.padded - n
                idx = idx.clamp(max=n - 1)  # cells past the end are masked; read any valid row
                kk = torch.cat([torch.nn.functional.pad(k, (0, 0, 0, pad)), torch.gather(k, 2, idx.expand(k.shape[0], -1, -1, k.shape[-1]))], 2)
                vv = torch.cat([torch.nn.functional.pad(v, (0, 0, 0, pad)), torch.gather(v, 2, idx.expand(v.shape[0], -1, -1, v.shape[-1]))], 2)
            o, lse = _call(q, kk, vv, call.block_mask, scale, kernel_options)
        elif call.kind == "residue_view" and call.sdpa and len(plan.calls) == 1:
            # a stride layer alone: causal attention over sequences of n/l, FlashAttention's best case
            w, H = call.width, q.shape[1]
            o = torch.nn.functional.scaled_dot_product_attention(
                _to_residue_view(q, w), _to_residue_view(k, w), _to_residue_view(v, w), is_causal=True, scale=scale)
            outs.append(_from_residue_view(o, w, H))
            lses.append(None)
            continue
        elif call.kind == "residue_view":
            w, H = call.width, q.shape[1]
            o, lse = _call(_to_residue_view(q, w), _to_residue_view(k, w), _to_residue_view(v, w), call.block_mask, scale, kernel_options)
            o = _from_residue_view(o, w, H)
            B, _, nb = lse.shape
            lse = lse.view(B, w, H, nb).permute(0, 2, 3, 1).reshape(B, H, n)
        else:
            w, n_pad = call.width, call.padded
            o, lse = _call(_to_transposed(q, w, n_pad), _to_transposed(k, w, n_pad), _to_transposed(v, w, n_pad),
                           call.block_mask, scale, kernel_options)
            o = _from_transposed(o, w, n)
            lse = _from_transposed(lse.unsqueeze(-1), w, n).squeeze(-1)
        outs.append(o)
        lses.append(lse.unsqueeze(-1))
    if len(outs) == 1:
        return outs[0]
    out, _ = _merge_compiled(outs, lses)
    return out


def groups(heads: tuple) -> list[tuple[list[int], tuple]]:
    """Heads sharing part names run together (summary slices and user heads vary inside a call)."""
    g: dict[tuple, list[int]] = {}
    for h, parts in enumerate(heads):
        g.setdefault(_signature(parts), []).append(h)
    return [(idx, tuple(heads[h] for h in idx)) for idx in g.values()]


@dataclass
class Prepared:
    """Everything ``attend`` needs for one layer's heads at one length: per group of heads, their
    indices (a device tensor when there are several groups) and plan; the inverse permutation."""
    n: int
    groups: list
    inverse: Tensor | None


def prepare(heads: tuple, n: int, device) -> Prepared:
    """Plans for every group of heads at length n. Cached: layers with the same heads get the same
    object, so a compiled model's blocks with one pattern share one graph (no recompiles)."""
    _raise_recompile_limit()
    device = torch.device(device)
    key = tuple(tuple(p.key() for p in parts) for parts in heads)
    return _prepared(key, n, str(device), registry_version(), heads)


@lru_cache(maxsize=64)
def _prepared(key: tuple, n: int, device: str, version: int, heads: tuple) -> Prepared:
    device = torch.device(device)
    gs = groups(heads)
    if len(gs) == 1:
        return Prepared(n, [(None, plan_for(gs[0][1], n, device))], None)
    order = [h for idx, _ in gs for h in idx]
    inv = torch.empty(len(order), dtype=torch.long)
    inv[torch.tensor(order)] = torch.arange(len(order))
    return Prepared(n, [(torch.tensor(idx, device=device), plan_for(parts, n, device)) for idx, parts in gs],
                    inv.to(device))


_prepare_outside_graph = torch.compiler.disable(prepare)  # a graph break, only where nothing was prepared


def attend(q: Tensor, k: Tensor, v: Tensor, heads: tuple, scale: float, kernel_options=None,
           prepared: Prepared | None = None) -> Tensor:
    """With ``prepared`` (``prepare`` for this n, built outside torch.compile) the whole call traces
    into a compiled model's graph: plan lookups are attribute reads, flex_attention and the merge
    are traced ops. Without it, plans are looked up (and built once) here."""
    if min(q.shape[-1], v.shape[-1]) < 16:  # FlexAttention's kernels need head dims >= 16
        from ..patterns import warn_once
        from . import blocked

        warn_once(("flex-small-head", q.shape[-1], v.shape[-1]),
                  f"backend 'flex' needs head dims >= 16 (got {q.shape[-1]} and {v.shape[-1]}): running 'blocked' instead")
        return blocked.attend(q, k, v, heads, scale)
    if q.device.type != "cuda" and COMPILE and not torch.compiler.is_compiling():
        raise ValueError("attention.backend 'flex' needs a CUDA device (FlexAttention has no backward on CPU); use blocked")
    n = q.shape[2]
    if prepared is None or prepared.n != n:
        prepared = _prepare_outside_graph(heads, n, q.device)
    if prepared.inverse is None:
        return _run_group(q, k, v, prepared.groups[0][1], scale, kernel_options)
    pieces = [_run_group(q.index_select(1, sel), k.index_select(1, sel), v.index_select(1, sel), plan, scale, kernel_options)
              for sel, plan in prepared.groups]
    return torch.cat(pieces, 1).index_select(1, prepared.inverse)


def computed_tiles(heads: tuple, n: int, device="cpu") -> int:
    """Tiles (TILE x TILE score blocks) the kernels compute for one batch element, summed over heads."""
    total = 0
    for idx, parts in groups(heads):
        plan = plan_for(parts, n, device)
        total += sum(c.tiles for c in plan.calls) * len(idx)
    return total


__all__ = ["attend", "available", "computed_tiles", "plan_for", "prepare", "Prepared", "TILE", "PRIMITIVES"]
