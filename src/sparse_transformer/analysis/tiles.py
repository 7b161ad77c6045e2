"""Tiles: which TILE x TILE blocks of (query, key) scores a block-sparse kernel computes.

- **as run** (``run_layouts``): asked from the ``flex`` backend's own plans
  (``flex_plans.plan_for``), nothing re-derived: per call of its kernels, the tiles its block mask
  lists as *partial* (mask evaluated) or *full* (no mask), in the call's own order (natural keys,
  then the gathered summary columns; ``stride`` in OpenAI's transposed order, as one padded
  sequence or as l sequences of n/l), and the exact pairs in each tile from the call's own mask;
- **naive** (``naive_layout``): the head's union mask in natural order (what a plain block mask
  would run), counted exactly; **dense** (``dense_tiles``): causal FlashAttention's tiles.

Memory stays O(budget), never n x n: counts run in query chunks, or over the listed tiles only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ..attention.backends import flex_plans
from ..attention.patterns import Part, structure_cover, union_mask
from .geometry import attention_flops, pair_count, scaling_parts

Tensor = torch.Tensor
TILE = flex_plans.TILE  # the kernels' tile: 128 queries x 128 keys

SKIPPED, PARTIAL, FULL = 0, 1, 2
TILE_NAMES = ("skipped", "partial", "full")
CALL_ORDERS = {"natural": "natural", "residue": "transposed", "residue_view": "transposed view"}


# ------------------------------------------------------------------------------------------------
# Exact counts in natural order
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


def tile_areas(n_q: int, n_k: int, tile: int) -> Tensor:
    """int64 (Tq, Tk): pairs in each tile of an n_q x n_k score matrix (edge tiles are smaller)."""
    def sizes(m):
        t = torch.full((max(1, math.ceil(m / tile)),), tile, dtype=torch.long)
        t[-1] = m - (len(t) - 1) * tile
        return t

    return sizes(n_q)[:, None] * sizes(n_k)[None, :]


def tile_counts(allowed, n: int, tile: int = TILE, *, structures: Sequence | None = None,
                budget: int = 1 << 22) -> tuple[Tensor, Tensor]:
    """Allowed pairs per (query tile, key tile) in natural order: ``(counts, areas)``, both int64
    (Tq, Tk), ``areas`` each tile's size. Memory O(budget), never n x n. Without ``structures``
    every (query, key) is tested (O(n²) time); with the parts' ``Structure``s (a superset of the
    allowed keys, as a backend visits them) only their candidate keys are, in O(n · keys per query)."""
    fn = as_allowed(allowed)
    T = math.ceil(n / tile)
    if structures and all(s is not None for s in structures):
        counts = _tile_counts_sparse(fn, n, tile, T, list(structures), budget)
    else:
        counts = _tile_counts_dense(fn, n, tile, T, budget)
    return counts, tile_areas(n, n, tile)


def _tile_counts_dense(fn, n, tile, T, budget) -> Tensor:
    counts = torch.zeros(T, T, dtype=torch.long)
    ar = torch.arange(n)
    tiles_per_chunk = max(1, budget // max(1, tile * T * tile))
    for t0 in range(0, T, tiles_per_chunk):
        t1 = min(T, t0 + tiles_per_chunk)
        rows = ar[t0 * tile : t1 * tile]
        m = fn(rows[:, None], ar[None, :]).to(torch.bool)
        m = torch.nn.functional.pad(m, (0, T * tile - n, 0, (t1 - t0) * tile - len(rows)))  # padding: not allowed
        counts[t0:t1] = m.view(t1 - t0, tile, T, tile).sum(dim=(1, 3))
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


def _tile_counts_sparse(fn, n, tile, T, structures, budget) -> Tensor:
    ar = torch.arange(n)
    width = sum(candidate_keys(s, ar[:1], n).shape[1] for s in structures)
    step = max(tile, budget // max(1, width) // tile * tile)
    counts = torch.zeros(T * T, dtype=torch.long)
    for a in range(0, n, step):
        i = ar[a : a + step, None]
        for si, s in enumerate(structures):
            j = candidate_keys(s, ar[a : a + step], n)
            ok = (j >= 0) & (j <= i) & (j < n)
            jc = j.clamp(0, n - 1)
            ok &= fn(i, jc).to(torch.bool)
            for prev in structures[:si]:  # a key two structures visit is counted once
                ok &= ~structure_cover(prev, i, jc, n)
            ii, jj = torch.broadcast_to(i, j.shape)[ok], jc[ok]
            counts += torch.bincount(ii // tile * T + jj // tile, minlength=T * T)
    return counts.view(T, T)


def classify_tiles(counts: Tensor, areas: Tensor) -> Tensor:
    """int8 (Tq, Tk): 0 skipped (no allowed pair), 1 partial, 2 full (every pair allowed)."""
    cls = torch.full(counts.shape, PARTIAL, dtype=torch.int8)
    cls[counts == 0] = SKIPPED
    cls[(counts == areas) & (areas > 0)] = FULL
    return cls


def tile_stats(classes: Tensor, repeats: int = 1) -> dict:
    """Counts of skipped / partial / full tiles and the fraction of tiles run; ``repeats``: how many
    sequences share this layout (a transposed view runs one per residue)."""
    s = {name: int((classes == v).sum()) * repeats for v, name in enumerate(TILE_NAMES)}
    s["total"] = classes.numel() * repeats
    s["run"] = s["partial"] + s["full"]
    s["run_fraction"] = s["run"] / s["total"] if s["total"] else 0.0
    return s


# ------------------------------------------------------------------------------------------------
# Layouts
# ------------------------------------------------------------------------------------------------
def _layout(label: str, order: str, counts: Tensor, classes: Tensor, areas: Tensor, repeats: int = 1) -> dict:
    return {"label": label, "order": order, "classes": classes, "counts": counts, "pairs": int(counts.sum()),
            "run_pairs": int(areas[classes > 0].sum()) * repeats, "repeats": repeats,
            "stats": tile_stats(classes, repeats)}


def naive_layout(parts: tuple, n: int) -> dict:
    """The head's union mask tiled in natural order (what a naive block mask would run)."""
    counts, areas = tile_counts(parts, n, structures=[p.structure for p in parts])
    return _layout("+".join(p.name for p in parts) + " (natural order)", "natural", counts,
                   classify_tiles(counts, areas), areas)


def dense_tiles(n: int, tile: int = TILE) -> dict:
    """Tile stats of dense causal attention (what FlashAttention's causal kernel runs), with
    ``run_pairs`` the pairs its run tiles hold (edge tiles are smaller)."""
    t = math.ceil(n / tile)
    return {"run": t * (t + 1) // 2, "total": t * t, "full": t * (t - 1) // 2, "partial": t,
            "run_pairs": int(tile_areas(n, n, tile).tril().sum())}


def _call_heads(call) -> int:
    """Heads of a call's mask function for one analysed head: a transposed view's are its l residues."""
    return call.width if call.kind == "residue_view" else 1


def call_classes(call) -> Tensor:
    """int8 (Tq, Tk): the tiles the call's block mask lists as partial or full; the rest skipped."""
    bm = call.block_mask
    Q, KV = bm.seq_lengths
    cls = torch.zeros(math.ceil(Q / TILE), math.ceil(KV / TILE), dtype=torch.int8)
    lists = ((bm.kv_num_blocks, bm.kv_indices, PARTIAL), (bm.full_kv_num_blocks, bm.full_kv_indices, FULL))
    for num, idx, value in lists:
        if num is None:
            continue
        num, idx = num[0, 0].long(), idx[0, 0].long()  # one analysed head: the block mask has H = 1
        listed = torch.arange(idx.shape[-1])[None, :] < num[:, None]
        rows = torch.arange(len(num))[:, None].expand_as(idx)
        cls[rows[listed], idx[listed]] = value
    return cls


def _mask_tiles(call, qb: Tensor, kb: Tensor, chunk: int = 64) -> Tensor:
    """Allowed pairs (summed over the call's heads) in the tiles (qb, kb), by its own mask function."""
    Q, KV = call.block_mask.seq_lengths
    r = torch.arange(TILE)
    out = torch.zeros(len(qb), dtype=torch.long)
    b = torch.zeros((), dtype=torch.long)
    for a in range(0, len(qb), chunk):
        qi = qb[a : a + chunk, None, None] * TILE + r[None, :, None]
        kj = kb[a : a + chunk, None, None] * TILE + r[None, None, :]
        valid = (qi < Q) & (kj < KV)
        for h in range(_call_heads(call)):
            m = call.block_mask.mask_mod(b, torch.tensor(h), qi, kj)
            out[a : a + chunk] += (m & valid).sum(dim=(1, 2))
    return out


def call_counts(call, classes: Tensor) -> Tensor:
    """int64 (Tq, Tk): the pairs the call computes in each tile: a full tile's every pair (the block
    mask's promise, tests/attention/test_flex_plans.py), a partial tile's by the mask function."""
    Q, KV = call.block_mask.seq_lengths
    counts = torch.where(classes == FULL, tile_areas(Q, KV, TILE) * _call_heads(call), 0)
    qb, kb = (classes == PARTIAL).nonzero(as_tuple=True)
    counts[qb, kb] = _mask_tiles(call, qb, kb)
    return counts


def call_mask(call) -> Tensor:
    """Bool (Q, KV): the call's allowed pairs in its own order, any of its heads (small n only)."""
    Q, KV = call.block_mask.seq_lengths
    qi, kj = torch.arange(Q)[:, None], torch.arange(KV)[None, :]
    b = torch.zeros((), dtype=torch.long)
    return torch.stack([call.block_mask.mask_mod(b, torch.tensor(h), qi, kj)
                        for h in range(_call_heads(call))]).any(0)


def _call_labels(parts: tuple, calls: list) -> list[str]:
    """What each call runs: flex runs every non-residue part in its first call (summary columns
    gathered after the keys), then one call per residue part (stride), in order."""
    natural = [p for p in parts if p.structure is None or p.structure.kind != "residue"]
    residue = [p for p in parts if p.structure is not None and p.structure.kind == "residue"]
    gathered = lambda p: p.structure is not None and p.structure.kind == "columns"
    names = [" + ".join(f"gathered {p.name}" if gathered(p) else p.name for p in natural)] if natural else []
    names += [p.name for p in residue]
    assert len(names) == len(calls), (names, [c.kind for c in calls])
    where = {"natural": "natural order", "residue": "transposed, padded to {Q}",
             "residue_view": "transposed view: {w} sequences of {Q}"}
    return [f"{name} ({where[c.kind].format(Q=c.block_mask.seq_lengths[0], w=c.width)})"
            for name, c in zip(names, calls)]


def run_layouts(parts: tuple, n: int) -> list[dict]:
    """How the flex kernels run one head at length n: one layout per call of its plan, with the
    call (``"call"``, for ``call_mask``), its label and order, tile classes, exact counts and stats.
    A transposed view's classes are those of one of its ``repeats`` = l sequences; its counts and
    stats cover all of them. The calls' pairs partition the head's pairs; ``run_pairs`` counts the
    pairs of the tiles run, each tile clipped to its call's sequence lengths."""
    plan = flex_plans.plan_for((parts,), n, "cpu")
    out = []
    for label, call in zip(_call_labels(parts, plan.calls), plan.calls):
        Q, KV = call.block_mask.seq_lengths
        classes = call_classes(call)
        lay = _layout(label, CALL_ORDERS[call.kind], call_counts(call, classes), classes, tile_areas(Q, KV, TILE),
                      _call_heads(call))
        out.append({**lay, "call": call})
    return out


# ------------------------------------------------------------------------------------------------
# Scaling
# ------------------------------------------------------------------------------------------------
def scaling_table(
    patterns: Sequence[str],
    ns: Sequence[int],
    *,
    d_head: int = 64,
    summary: int = 32,
    tile_max_n: int = 0,
) -> list[dict]:
    """Rows (pattern, n, stride, pairs, flops, dense pairs/flops, and for n <= ``tile_max_n`` the
    pairs the flex kernels compute as they run the head (``run_layouts``: every run tile computed
    whole) and the tiles of the naive natural-order layout)."""
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
                run_pairs = sum(lay["run_pairs"] for lay in run_layouts(parts, n))
                # the naive mask of dense is dense: its closed form spares an O(n²) count
                naive_run = dense_tiles(n)["run"] if name == "dense" else naive_layout(parts, n)["stats"]["run"]
                row.update({"tile_pairs": run_pairs, "tile_flops": attention_flops(run_pairs, d_head),
                            "naive_tiles_run": naive_run, "dense_tiles_run": dense_tiles(n)["run"]})
            rows.append(row)
    return rows
