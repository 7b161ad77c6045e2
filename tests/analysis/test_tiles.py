"""analysis.tiles: exact tile counts against brute force, and the layouts asked from the flex
backend's plans against the backend itself, against exact masks and against the numbers the
analysis derived on its own before it asked the backend."""

import math

import pytest
import torch
from torch.nn.attention.flex_attention import create_mask

from sparse_transformer import analysis as A
from sparse_transformer.attention import heads_mask, layer_heads, pattern_mask
from sparse_transformer.attention.backends import flex_plans
from tests.analysis.helpers import ALL, brute_tiles, heads_of


def merged_head(pattern, l, c):
    return layer_heads(pattern, 1, l, summary=c if pattern in ("fixed", "summary") else None, integration="merged")[0]


# ------------------------------------------------------------------------------------------------
# exact counts in natural order
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern", ALL)
@pytest.mark.parametrize("n,tile", [(64, 8), (100, 16), (37, 5)])
def test_tile_counts_match_brute_force(pattern, n, tile):
    for parts in heads_of(pattern):
        mask = heads_mask((parts,), n)[0]
        want = brute_tiles(mask, tile)
        dense_path, areas = A.tile_counts(parts, n, tile)
        sparse_path, _ = A.tile_counts(parts, n, tile, structures=[p.structure for p in parts])
        assert torch.equal(dense_path, want) and torch.equal(sparse_path, want)
        assert torch.equal(A.tile_counts(mask, n, tile)[0], want)  # a dense mask works too
        assert int(areas.sum()) == n * n and (dense_path <= areas).all()


def test_classify_tiles_and_stats():
    counts = torch.tensor([[0, 3, 4], [4, 0, 2]])
    areas = torch.tensor([[4, 4, 4], [4, 4, 2]])
    cls = A.classify_tiles(counts, areas)
    assert cls.tolist() == [[A.SKIPPED, A.PARTIAL, A.FULL], [A.FULL, A.SKIPPED, A.FULL]]
    s = A.tile_stats(cls)
    assert (s["skipped"], s["partial"], s["full"], s["total"], s["run"]) == (2, 1, 3, 6, 4)
    s3 = A.tile_stats(cls, repeats=3)  # a layout that runs for 3 sequences
    assert (s3["run"], s3["total"], s3["run_fraction"]) == (12, 18, s["run_fraction"])


def test_dense_tiles_match_counts():
    for n, tile in ((128, 32), (100, 32), (20, 32)):
        counts, areas = A.tile_counts(pattern_mask("dense", n, 4), n, tile)
        cls = A.classify_tiles(counts, areas)
        d = A.dense_tiles(n, tile)
        s = A.tile_stats(cls)
        assert (s["run"], s["full"], s["partial"]) == (d["run"], d["full"], d["partial"])
        assert d["run_pairs"] == int(areas[cls > 0].sum())


def test_naive_stride_runs_every_causal_tile():
    parts = merged_head("stride", 32, None)
    assert A.naive_layout(parts, 1024)["stats"]["run"] == A.dense_tiles(1024)["run"]  # a naive mask skips nothing


# ------------------------------------------------------------------------------------------------
# as run: the flex backend's plans
# ------------------------------------------------------------------------------------------------
SIZES = [(300, 16, 4), (1024, 32, 8), (640, 256, 32), (200, 8, 2)]  # l | n, l ∤ n, l > TILE, several


@pytest.mark.parametrize("n,l,c", SIZES)
@pytest.mark.parametrize("pattern", ALL)
def test_run_layouts_are_the_backends_calls_exactly(pattern, n, l, c):
    """Tiles run = the backend's own count; the calls' pairs partition the head's pairs; each
    tile's count = the pairs of the call's own mask (every head of it), every such tile listed."""
    parts = merged_head(pattern, l, c)
    layouts = A.run_layouts(parts, n)
    assert sum(lay["stats"]["run"] for lay in layouts) == flex_plans.computed_tiles((parts,), n)
    assert sum(lay["pairs"] for lay in layouts) == A.pair_count(parts, n)
    for lay in layouts:
        bm = lay["call"].block_mask
        Q, KV = bm.seq_lengths
        exact = create_mask(bm.mask_mod, 1, lay["repeats"], Q, KV, device="cpu")[0]  # (heads, Q, KV)
        want = sum(brute_tiles(m, A.TILE) for m in exact)
        assert torch.equal(lay["counts"], want), lay["label"]
        assert not ((want > 0) & (lay["classes"] == A.SKIPPED)).any()
        assert torch.equal(A.call_mask(lay["call"]), exact.any(0))
        assert lay["pairs"] <= lay["run_pairs"]


# Tiles run per head as the analysis derived them itself, before it asked the backend (commit
# cb67b12, run_layouts at tile 128): natural-order parts and gathered summary columns. The backend
# runs exactly these. (strided: its local call; its stride call is below.)
BEFORE = {
    (8192, 128, 32): {"dense": 2080, "local": 127, "block": 64, "summary": 544, "fixed": 592, "strided": 127},
    (2048, 64, 16): {"dense": 136, "local": 31, "block": 16, "summary": 40, "fixed": 56, "strided": 31},
    (1000, 10, 5): {"dense": 36, "local": 15, "block": 14, "summary": 20, "fixed": 34, "strided": 15},
    (640, 256, 32): {"dense": 15, "local": 12, "block": 7, "summary": 4, "fixed": 10, "strided": 12},
    (4096, 256, 64): {"dense": 528, "local": 93, "block": 48, "summary": 136, "fixed": 176, "strided": 93},
}


@pytest.mark.parametrize("size", list(BEFORE))
def test_natural_tiles_run_are_what_the_analysis_counted_before(size):
    n, l, c = size
    for pattern, before in BEFORE[size].items():
        layouts = A.run_layouts(merged_head(pattern, l, c), n)
        natural = [lay for lay in layouts if lay["order"] == "natural"]
        assert len(natural) == 1 and natural[0]["stats"]["run"] == before, (pattern, size)


@pytest.mark.parametrize("n,l,before", [(8192, 128, 64), (2048, 64, 16), (1024, 32, 8), (16384, 128, 128)])
def test_stride_runs_one_causal_sequence_per_residue(n, l, before):
    """With l | n the backend views stride as l sequences of n/l (causal inside each), and each
    sequence costs whole tiles: l·t(t+1)/2 for t = ceil(n/l / TILE). The analysis used to tile the
    transposed order as one sequence (``before``), which undercounts when n/l < TILE."""
    (lay,) = A.run_layouts(merged_head("stride", l, None), n)
    t = math.ceil(n // l / A.TILE)
    assert lay["order"] == "transposed view" and lay["repeats"] == l
    assert lay["stats"]["run"] == l * t * (t + 1) // 2
    assert (lay["stats"]["run"] == before) == (n // l >= A.TILE)


def test_scaling_table():
    rows = A.scaling_table(["dense", "strided", "fixed"], [64, 256, 1024], tile_max_n=256)
    by = {(r["pattern"], r["n"]): r for r in rows}
    assert by[("dense", 256)]["pairs"] == 256 * 257 // 2 == by[("dense", 256)]["dense_pairs"]
    fr = [by[("strided", n)]["fraction_of_dense"] for n in (64, 256, 1024)]
    assert fr[0] > fr[1] > fr[2]
    for r in rows:
        assert r["flops"] == 4 * 64 * r["pairs"]
        if "tile_pairs" in r:
            assert r["tile_pairs"] >= r["pairs"]
    parts = A.scaling_parts("strided", 256)
    assert by[("strided", 256)]["pairs"] == int(heads_mask((parts,), 256)[0].sum())
    assert by[("dense", 256)]["tile_pairs"] == A.dense_tiles(256)["run_pairs"]
    assert "tile_pairs" not in by[("strided", 1024)]
