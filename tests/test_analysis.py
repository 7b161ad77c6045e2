"""sparse_transformer.analysis: tile layouts against brute force, pair counts against masks,
entropy and distance on known distributions, attention maps of small random models, drawings."""

import math

import matplotlib
import pytest
import torch

from sparse_transformer import analysis as A
from sparse_transformer.attention import (
    check_connectivity,
    heads_mask,
    layer_heads,
    pattern_mask,
    register_pattern,
    stack_masks,
    unregister_pattern,
)

from .helpers import brute_mask

matplotlib.use("Agg")  # pyplot is imported lazily by the drawing functions

L_, C_ = 8, 2


def heads_of(pattern, n_head=2, l=L_, c=C_, summary_heads=2):
    needs = pattern in ("fixed", "summary")
    return layer_heads(pattern, n_head, l, summary=c if needs else None, summary_heads=summary_heads if needs else 1,
                       integration="merged")


ALL = ["dense", "local", "stride", "block", "summary", "strided", "fixed"]


def brute_tiles(mask, tile, tile_k=None):
    """Counts per tile by plain loops: the oracle."""
    tk = tile_k or tile
    nq, nk = mask.shape
    Tq, Tk = math.ceil(nq / tile), math.ceil(nk / tk)
    out = torch.zeros(Tq, Tk, dtype=torch.long)
    for a in range(Tq):
        for b in range(Tk):
            out[a, b] = int(mask[a * tile : (a + 1) * tile, b * tk : (b + 1) * tk].sum())
    return out


# ------------------------------------------------------------------------------------------------
# tiles
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


def test_tile_counts_in_other_orders_match_brute_force():
    n, l, tile = 96, 8, 16
    for parts in heads_of("strided", l=l) + heads_of("fixed", l=l):
        mask = heads_mask((parts,), n)[0]
        t = A.transposed_order(n, l)
        cols = torch.tensor([j for j in range(n) if j % l >= l - C_])
        for q, k in ((t, t), (torch.arange(n), cols), (t, torch.arange(n))):
            want = brute_tiles(mask[q][:, k], tile)
            got, _ = A.tile_counts(parts, n, tile, q_order=q, k_order=k)
            assert torch.equal(got, want)


def test_classify_tiles_and_stats():
    counts = torch.tensor([[0, 3, 4], [4, 0, 2]])
    areas = torch.tensor([[4, 4, 4], [4, 4, 2]])
    cls = A.classify_tiles(counts, areas)
    assert cls.tolist() == [[A.SKIPPED, A.PARTIAL, A.FULL], [A.FULL, A.SKIPPED, A.FULL]]
    s = A.tile_stats(cls)
    assert (s["skipped"], s["partial"], s["full"], s["total"], s["run"]) == (2, 1, 3, 6, 4)


def test_transposed_order_makes_stride_causal_chunks():
    n, l = 64, 8
    t = A.transposed_order(n, l)
    assert sorted(t.tolist()) == list(range(n))
    m = pattern_mask("stride", n, l)[t][:, t]
    chunk = n // l
    want = torch.block_diag(*[torch.ones(chunk, chunk, dtype=torch.bool).tril()] * l)
    assert torch.equal(m, want)
    assert sorted(A.transposed_order(70, l).tolist()) == list(range(70))  # n not a multiple of l


@pytest.mark.parametrize("pattern", ["strided", "fixed", "local", "stride", "block", "summary"])
def test_run_groups_partition_the_pairs(pattern):
    n = 100
    for parts in heads_of(pattern):
        groups = A.run_groups(parts, n)
        total = sum(int(A.group_mask(g).sum()) for g in groups)
        assert total == int(heads_mask((parts,), n)[0].sum()) == A.pair_count(parts, n)
        layouts = A.run_layouts(parts, n, 16)
        assert sum(lay["pairs"] for lay in layouts) == total
        assert all(lay["run_pairs"] >= lay["pairs"] for lay in layouts)


def test_naive_stride_runs_every_causal_tile_and_transposed_runs_the_diagonal():
    n, l, tile = 1024, 32, 128
    parts = heads_of("stride", l=l)[0]
    naive = A.naive_layout(parts, n, tile)
    dense = A.dense_tiles(n, tile)
    assert naive["stats"]["run"] == dense["run"]  # the naive stride mask skips nothing causal
    (run,) = A.run_layouts(parts, n, tile)
    T = n // tile
    assert run["stats"]["run"] == T and (run["classes"].diagonal() > 0).all()  # only the diagonal


def test_dense_tiles_match_counts():
    for n, tile in ((128, 32), (100, 32), (20, 32)):
        counts, areas = A.tile_counts(pattern_mask("dense", n, 4), n, tile)
        cls = A.classify_tiles(counts, areas)
        d = A.dense_tiles(n, tile)
        s = A.tile_stats(cls)
        assert (s["run"], s["full"], s["partial"]) == (d["run"], d["full"], d["partial"])
        assert d["run_pairs"] == int(areas[cls > 0].sum())


# ------------------------------------------------------------------------------------------------
# pair counts
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 7, 64, 77])
def test_keys_per_query_match_the_masks(n):
    for pattern in ALL:
        for parts in heads_of(pattern):
            assert torch.equal(A.keys_per_query(parts, n), heads_mask((parts,), n)[0].sum(1)), (pattern, parts)


def test_keys_per_query_against_the_design_definitions():
    n = 50
    for pattern in ("dense", "local", "stride", "block"):
        (parts,) = heads_of(pattern, n_head=1)
        assert torch.equal(A.keys_per_query(parts, n), brute_mask(pattern, n, L_).sum(1))
    for s in (0, 1):
        parts = heads_of("summary")[s]
        assert torch.equal(A.keys_per_query(parts, n), brute_mask("summary", n, L_, C_, s).sum(1))


def test_keys_per_query_fallback_for_a_user_pattern():
    name = "analysis_test_every_third"
    register_pattern(name, lambda q, k, h: (q - k) % 3 == 0, overwrite=True)
    try:
        (parts,) = layer_heads(name, 1, 4)
        n = 40
        assert torch.equal(A.keys_per_query(parts, n), torch.arange(n) // 3 + 1)
    finally:
        unregister_pattern(name)


def test_scaling_table():
    rows = A.scaling_table(["dense", "strided", "fixed"], [64, 256, 1024], tile=32, tile_max_n=256)
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
    assert "tile_pairs" not in by[("strided", 1024)]


# ------------------------------------------------------------------------------------------------
# reachability
# ------------------------------------------------------------------------------------------------
def test_reach_windows_agree_with_the_checker():
    n = 64
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    for kw in (dict(pattern="fixed", summary=C_), dict(pattern="strided"), dict(pattern="local")):
        layers = stack_masks(kw.pop("pattern"), n, L_, 3, n_head=2, **kw)
        rep = check_connectivity(layers)
        wins = A.reach_windows(layers)
        assert [int((causal & ~r).sum()) for _, r in wins] == [w[2] for w in rep.windows]
        img = A.reach_image(wins[0][1])
        assert int((img == 2).sum()) == rep.windows[0][2] and not (img[~causal] != 0).any()


def test_layer_labels_and_connectivity_table():
    assert A.layer_labels("strided", 8, 3) == ["local", "stride", "local"]
    assert A.layer_labels("fixed", 8, 1, n_head=2, summary=2, summary_heads=2, integration="merged") == [
        "block+summary | block+summary[1]"]
    rows = A.connectivity_table({"s": dict(pattern="strided", n_layer=3), "l": dict(pattern="local", n_layer=2)}, 64, 8)
    assert rows[0]["ok"] and not rows[1]["ok"] and not rows[1]["stack_ok"]


# ------------------------------------------------------------------------------------------------
# entropy, distance, masses on known distributions
# ------------------------------------------------------------------------------------------------
def test_entropy_bits_known_distributions():
    p = torch.tensor([[0.25, 0.25, 0.25, 0.25], [1.0, 0, 0, 0], [0.5, 0.25, 0.25, 0], [0, 0, 0, 0]])
    h = A.entropy_bits(p)
    assert h[:3].tolist() == pytest.approx([2.0, 0.0, 1.5])
    assert math.isnan(h[3])


def test_mean_distance_known_distributions():
    n = 10
    rows = [9, 4, 0]
    p = torch.zeros(3, n)
    p[0, 9] = 1  # self: distance 0
    p[1, :5] = 0.2  # uniform over 0..4: mean distance 2
    d = A.mean_distance(p, rows)
    assert d[:2].tolist() == pytest.approx([0.0, 2.0]) and math.isnan(d[2])
    one = torch.zeros(1, n)
    one[0, 3] = 1
    assert A.mean_distance(one, [7]).item() == pytest.approx(4.0)


def uniform_maps(heads_per_layer, rows, n, B=2):
    """(L, B, H, R, n): every head attends its allowed keys uniformly."""
    out = []
    for heads in heads_per_layer:
        m = A.allowed_rows(heads, rows, n).double()
        p = m / m.sum(-1, keepdim=True).clamp_min(1)
        out.append(p[None].expand(B, *p.shape))
    return torch.stack(out)


def test_head_stats_uniform_attention_reaches_the_maximum():
    n = 64
    heads = [layer_heads("strided", 2, L_, layer=r) for r in range(2)]
    rows = list(range(32, 64))
    maps = uniform_maps(heads, rows, n)
    st = A.head_stats(maps, rows, heads)
    assert torch.allclose(st["entropy"], st["uniform_entropy"])
    assert torch.allclose(st["entropy"][0], torch.full((2,), 3.0, dtype=torch.float64))  # local: log2(8)
    assert torch.allclose(st["distance"][0], torch.full((2,), 3.5, dtype=torch.float64))  # mean of 0..7
    # stride: keys i, i-8, ... -> mean distance 8 * (#keys - 1) / 2
    want = sum(8 * (r // 8) / 2 for r in rows) / len(rows)
    assert st["distance"][1, 0].item() == pytest.approx(want)


def test_distance_profile_and_part_mass():
    n = 64
    heads = [layer_heads("strided", 2, L_, integration="merged")]
    rows = list(range(32, 64))
    maps = uniform_maps(heads, rows, n)
    prof = A.distance_profile(maps, rows, [0, 1, L_, n])
    assert torch.allclose(prof.sum(-1), torch.ones(1, 2, dtype=prof.dtype))
    mass, labels = A.part_mass(maps, heads, rows)
    assert labels == ["local only", "stride only", "shared"]
    assert torch.allclose(mass.sum(-1), torch.ones(1, 2, dtype=torch.float64))
    # uniform over the union: local-only has l-1 keys, shared 1 (j = i), stride-only i // l
    cnt = torch.tensor([[L_ - 1, r // L_, 1] for r in rows], dtype=torch.float64)
    want = (cnt / cnt.sum(1, keepdim=True)).mean(0)
    assert torch.allclose(mass[0, 0], want)


# ------------------------------------------------------------------------------------------------
# models and examples
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("modality,shape,pattern", [("image", (6, 6, 3), "strided"), ("audio", (8, 8), "fixed"),
                                                    ("text", (4, 16), "strided")])
def test_attention_maps_of_a_random_model(modality, shape, pattern):
    net = A.random_model(shape, pattern=pattern, summary=2 if pattern == "fixed" else None,
                         integration="merged" if pattern == "fixed" else "interleaved")
    n = math.prod(shape)
    idx = A.synthetic_examples(modality, shape, count=2)
    assert idx.shape == (2, n) and idx.min() >= 0 and idx.max() < 256
    rows = [0, n // 3, n - 1]
    maps = A.attention_maps(net, idx, rows)
    assert maps.shape == (2, 2, 2, 3, n)
    for r, heads in enumerate(A.model_heads(net)):
        allowed = A.allowed_rows(heads, rows, n)  # (H, R, n)
        assert (maps[r][:, ~allowed] == 0).all()  # nothing outside the pattern (so nothing in the future)
        sums = maps[r].sum(-1)
        empty = allowed.sum(-1) == 0
        assert torch.allclose(sums[:, ~empty], torch.ones_like(sums[:, ~empty]), atol=1e-5)
        assert (sums[:, empty] == 0).all()
    # rows asked one by one give the same probabilities
    assert torch.allclose(A.attention_maps(net, idx, rows[1:2])[..., 0, :], maps[..., 1, :], atol=1e-6)


def test_ablate_heads():
    net = A.random_model((4, 8), n_head=2)
    idx = A.synthetic_examples("text", (4, 8), count=2)
    base, delta = A.ablate_heads(net, idx)
    assert delta.shape == (2, 2) and torch.isfinite(delta).all() and (delta.abs() > 0).any()
    assert A.bits_per_token(net, idx) == pytest.approx(base)  # the hooks are gone


def test_mu_law_round_trip():
    x = torch.linspace(-1, 1, 1001).numpy()
    y = A.mu_law_decode(A.mu_law_encode(x))
    err = abs(y - x)
    assert err.max() < 0.025 and err[abs(x) <= 0.01].max() < 3e-4  # half a step: ~0.022 at |x| = 1, finer near 0
    assert A.mu_law_encode(x).dtype.name == "uint8"


def test_default_queries_and_stat_rows():
    q = A.default_queries("image", (10, 12, 3), 3)
    assert all(0 <= p < 360 and p % 3 == 0 for p in q)
    q = A.default_queries("text", (8, 16), 2)
    assert q[-1] == 127 and all(0 <= p < 128 for p in q)
    rows = A.stat_rows(1000, 64)
    assert len(rows) <= 64 and rows[0] == 500 and rows[-1] < 1000


# ------------------------------------------------------------------------------------------------
# drawings and saving
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("modality,shape", [("image", (6, 6, 3)), ("image", (6, 6, 1)), ("audio", (8, 8)),
                                            ("text", (4, 16))])
def test_plot_attention_every_modality(modality, shape, tmp_path):
    net = A.random_model(shape)
    idx = A.synthetic_examples(modality, shape)
    q = A.default_queries(modality, shape, 1)[0]
    maps = A.attention_maps(net, idx, [q])
    labels = [A.head_labels(h) for h in A.model_heads(net)]
    fig = A.plot_attention(modality, idx[0], maps[:, 0, :, 0], q, shape, labels=labels)
    assert len(fig.axes) >= 4
    path = A.save_figure(fig, tmp_path / "m" / f"{modality}.png")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_pattern_drawings(tmp_path):
    import matplotlib.pyplot as plt

    figs = [
        A.plot_masks({"a": pattern_mask("local", 16, 4), "b": pattern_mask("stride", 16, 4)}),
        A.plot_reach({"w": A.reach_windows(stack_masks("strided", 16, 4, 2))[0][1]}),
        A.plot_tile_layouts({"s": heads_of("strided", l=4)[0]}, 32, 8, overlay=True)[0],
        A.plot_scaling(A.scaling_table(["dense", "strided"], [64, 256], tile=32, tile_max_n=64)),
    ]
    net = A.random_model((4, 8))
    idx = A.synthetic_examples("text", (4, 8), count=2)
    rows = A.stat_rows(32)
    maps = A.attention_maps(net, idx, rows)
    heads = A.model_heads(net)
    labels = [A.head_labels(h) for h in heads]
    figs.append(A.plot_head_stats(A.head_stats(maps, rows, heads), labels))
    edges = [0, 1, 2, 4, 8, 16, 32]
    mass, ml = A.part_mass(maps, heads, rows)
    figs.append(A.plot_work_division(A.distance_profile(maps, rows, edges), edges, A.ablate_heads(net, idx)[1], labels,
                                     8, mass=mass, mass_labels=ml))
    for k, f in enumerate(figs):
        assert A.save_figure(f, tmp_path / f"{k}.png")
    plt.close("all")


def test_save_results_handles_tensors_and_nan(tmp_path):
    import json

    path = A.save_results({"t": torch.tensor([1.0, float("nan")]), "x": {"y": (1, 2)}}, tmp_path / "r.json")
    assert json.load(open(path)) == {"t": [1.0, None], "x": {"y": [1, 2]}}


def test_layer_masks_and_integration_panels():
    m = A.layer_masks("strided", 32, 4, n_layer=2, n_head=2, integration="multihead")
    assert m.shape == (2, 2, 32, 32)
    assert torch.equal(m[0, 0], pattern_mask("local", 32, 4)) and torch.equal(m[1, 1], pattern_mask("stride", 32, 4))
    panels = A.integration_panels("strided", 32, 4, n_layer=2, n_head=2, integration="interleaved")
    assert list(panels) == ["L0 H0: local", "L0 H1: local", "L1 H0: stride", "L1 H1: stride"]
