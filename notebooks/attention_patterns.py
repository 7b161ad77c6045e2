# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The Sparse Transformer's attention patterns
#
# What may attend to what (Child et al. 2019, sec. 4), computed by the package itself
# (`sparse_transformer.attention` and `sparse_transformer.analysis`; no pattern code in this notebook):
#
# 1. each primitive (`dense`, `local`, `stride`, `block`, `summary`), the two pairs (`strided`,
#    `fixed`) and the three ways of integrating a pair into a model (interleaved, merged, multi-head),
#    drawn at a small n;
# 2. two-step reachability of every (i, j) from the connectivity checker (residual path included,
#    layers in their real order);
# 3. the tile layout a block-sparse GPU kernel runs (128 x 128 tiles: skipped, partial, full), at a
#    realistic n and zoomed at a small one: the union mask in natural order against the way the
#    `flex` backend's own plans run it (stride transposed, summary columns gathered);
# 4. attended pairs and attention FLOPs vs n for each pattern against dense (log-log).
#
# Query i runs down, key j across; every mask is causal (j <= i).

# %% tags=["parameters"]
N = 64  # small n for the drawings
STRIDE = 8  # l
SUMMARY = 2  # c
SUMMARY_HEADS = 2  # distinct summary slices across heads
N_ZOOM, STRIDE_ZOOM, SUMMARY_ZOOM = 1024, 32, 8  # the zoomed tile picture (8 x 8 tiles)
N_REAL, STRIDE_REAL, SUMMARY_REAL = 8192, 128, 32  # enwik8-like: l = 128, c = 32
SCALING_NS = [2**k for k in range(8, 21)]  # n = 256 .. 1M for the pairs-vs-n curves (closed forms: any n)
TILE_MAX_N = 8192  # tiles run are counted for n up to this
D_HEAD = 64
FIG_DIR = "out/figures/attention_patterns"
TORCH_THREADS = 1  # None: torch's default. Small models: on a busy 2-core machine 2 threads ran 10-20x slower (spinning)

# %%
import time

import pandas as pd
import torch

from sparse_transformer import analysis as A

if TORCH_THREADS:
    torch.set_num_threads(TORCH_THREADS)
from sparse_transformer.attention import layer_heads, pattern_mask, stack_masks

t_start = time.time()
figures, results = {}, {}


def keep(fig, name):
    """Save a figure under FIG_DIR and remember its path (the cell shows it inline)."""
    figures[name] = A.save_figure(fig, f"{FIG_DIR}/{name}.png")


# %% [markdown]
# ## 1. Primitives
#
# `local`: the last l keys (i included); `stride`: every l-th key back from i; `block`: the query's
# own block of l; `summary`: the last c cells of every block (slice 0), or another c-wide slice
# for another head (slice 1 = the c cells before them).

# %%
prim = {
    "dense": pattern_mask("dense", N, STRIDE),
    f"local (l={STRIDE})": pattern_mask("local", N, STRIDE),
    f"stride (l={STRIDE})": pattern_mask("stride", N, STRIDE),
    f"block (l={STRIDE})": pattern_mask("block", N, STRIDE),
    f"summary slice 0 (c={SUMMARY})": pattern_mask("summary", N, STRIDE, summary=SUMMARY, head=0, summary_heads=SUMMARY_HEADS),
    f"summary slice 1 (c={SUMMARY})": pattern_mask("summary", N, STRIDE, summary=SUMMARY, head=1, summary_heads=SUMMARY_HEADS),
}
keep(A.plot_masks(prim, ncols=6, size=2.2, suptitle=f"primitives at n={N}"), "primitives")
results["primitive_pairs"] = {k: int(v.sum()) for k, v in prim.items()}

# %% [markdown]
# ## 2. Pairs and their integration
#
# `strided` = local + stride, `fixed` = block + summary. **Interleaved**: block r uses part r mod 2;
# **merged**: every head attends the union; **multi-head**: half the heads take each part. Two
# layers of two heads each; for `fixed` the heads take distinct summary slices.

# %%
for pattern, kw in (("strided", {}), ("fixed", {"summary": SUMMARY, "summary_heads": SUMMARY_HEADS})):
    panels = {}
    for integ in ("interleaved", "merged", "multihead"):
        for title, m in A.integration_panels(pattern, N, STRIDE, n_layer=2, n_head=2, integration=integ, **kw).items():
            panels[f"{integ}\n{title}"] = m
    keep(A.plot_masks(panels, ncols=4, size=2.3, suptitle=f"{pattern}: rows = interleaved, merged, multi-head"),
         f"integration_{pattern}")

# %% [markdown]
# OpenAI's CIFAR-10 model cycles `[stride, local, local, local]` over its residual blocks:

# %%
cycle = A.integration_panels("strided", N, STRIDE, n_layer=4, n_head=1, layout=["stride", "local", "local", "local"])
keep(A.plot_masks(cycle, ncols=4, size=2.3, suptitle="layout [stride, local, local, local]"), "layout_openai")

# %% [markdown]
# ## 3. Two-step reachability
#
# One layer's reach is the union of its heads plus the residual path; windows of two consecutive
# layers are composed in their real order (`connectivity.compose`). Green: j reaches i in two
# steps; red: a causal pair (j <= i) that does not (a connectivity failure).

# %%
conn = {
    "strided interleaved": dict(pattern="strided", n_layer=3, n_head=2),
    "strided merged": dict(pattern="strided", n_layer=2, n_head=2, integration="merged"),
    "strided multihead": dict(pattern="strided", n_layer=2, n_head=2, integration="multihead"),
    "fixed interleaved": dict(pattern="fixed", n_layer=3, n_head=2, summary=SUMMARY),
    "fixed merged": dict(pattern="fixed", n_layer=2, n_head=2, summary=SUMMARY, summary_heads=SUMMARY_HEADS,
                         integration="merged"),
    "[stride, local, local, local]": dict(pattern="strided", n_layer=5, n_head=1,
                                          layout=["stride", "local", "local", "local"]),
    "local alone": dict(pattern="local", n_layer=2, n_head=1),
}
table = A.connectivity_table(conn, N, STRIDE)
results["connectivity"] = table
pd.DataFrame([{"config": r["config"], "every window connects": r["ok"], "whole stack connects": r["stack_ok"],
               "windows (first layer: failing pairs)": ", ".join(f"{w['first']}: {w['failing_pairs']}" for w in r["windows"])}
              for r in table])

# %%
panels = {}
for name, kw in conn.items():
    kw = dict(kw)
    pattern, n_layer = kw.pop("pattern"), kw.pop("n_layer")
    layers = stack_masks(pattern, N, STRIDE, n_layer, **kw)
    names = A.layer_labels(pattern, STRIDE, n_layer, **kw)
    for first, reach in A.reach_windows(layers, steps=2):
        panels[f"{name}\nlayers {first}-{first + 1}: {names[first]} -> {names[first + 1]}"] = reach
keep(A.plot_reach(panels, ncols=5, size=2.4, suptitle=f"two-step reach at n={N}, l={STRIDE}, c={SUMMARY}"), "reachability")

# %% [markdown]
# The fixed pattern interleaved connects only when `block` precedes `summary`: after a summary layer,
# a non-summary key of an earlier block is seen by nobody in the query's block. `local` alone never
# reaches keys 2l - 1 or more back.
#
# ## 4. The tile layout a block-sparse kernel runs
#
# A kernel works on tiles of queries x keys (FlexAttention: 128 x 128) and skips a tile only if no pair
# in it is allowed. Drawn as **naive** (the head's union mask in natural order: what a plain block mask
# runs) and **as run**: the calls the `flex` backend's own plans make (`flex_plans.plan_for`), as its block
# masks list their tiles (partial: mask evaluated; full: no mask). Local/block run in natural order with
# the `summary` columns gathered after the keys (a compact set of n/l·c keys); `stride` runs in OpenAI's
# transposed order, where each residue class mod l is a contiguous chunk with causal attention inside
# (with l | n as l sequences of n/l, each costing whole tiles). A pair two calls allow is counted by
# the first.
#
# First zoomed in (small n; black: the allowed pairs, in each call's own order):

# %%
def merged_head(pattern, n, stride, summary=None):
    return layer_heads(pattern, 1, stride, summary=summary, integration="merged")[0]


zoom = {"strided": merged_head("strided", N_ZOOM, STRIDE_ZOOM), "fixed": merged_head("fixed", N_ZOOM, STRIDE_ZOOM, SUMMARY_ZOOM)}
fig, zoom_info = A.plot_tile_layouts(zoom, N_ZOOM, overlay=True, suptitle=(
    f"one merged head at n={N_ZOOM}, l={STRIDE_ZOOM}, c={SUMMARY_ZOOM}, tiles of {A.TILE}"))
keep(fig, "tiles_zoom")

# %% [markdown]
# At a realistic length (n = N_REAL, l = 128, c = 32, 128 x 128 tiles):

# %%
real = {"strided": merged_head("strided", N_REAL, STRIDE_REAL), "fixed": merged_head("fixed", N_REAL, STRIDE_REAL, SUMMARY_REAL)}
fig, real_info = A.plot_tile_layouts(real, N_REAL, suptitle=(
    f"{A.TILE}x{A.TILE} tiles at n={N_REAL}, l={STRIDE_REAL}, c={SUMMARY_REAL} (one merged head)"))
keep(fig, "tiles_real")
dense = A.dense_tiles(N_REAL)
results["tiles_real"] = {"n": N_REAL, "stride": STRIDE_REAL, "summary": SUMMARY_REAL, "tile": A.TILE, "dense": dense,
                         **real_info}
pd.DataFrame(
    [{"pattern": "dense (causal)", "layout": "natural", "tiles run": dense["run"], "of": dense["total"],
      "full": dense["full"], "partial": dense["partial"]}]
    + [{"pattern": p, "layout": "naive", "tiles run": r["naive"]["run"], "of": r["naive"]["total"],
        "full": r["naive"]["full"], "partial": r["naive"]["partial"]} for p, r in real_info.items()]
    + [{"pattern": p, "layout": g["group"], "tiles run": g["run"], "of": g["total"], "full": g["full"],
        "partial": g["partial"]} for p, r in real_info.items() for g in r["run"]]
)

# %% [markdown]
# The naive `strided` mask touches every causal tile (each has a stride diagonal in it) and
# `summary` columns fall in every tile too: a block-sparse kernel on the plain mask skips nothing
# and does dense work. Transposed, `stride` runs only its causal chunks (but each of its l sequences
# costs at least one tile: while n/l < 128 those tiles are mostly empty); gathered, the summary keys
# fill whole tiles.
#
# ## 5. Attended pairs and FLOPs vs n
#
# One head per pattern with l = round(sqrt n) and c = min(32, l/4). Solid: exact pairs
# (closed forms, checked against the masks in `tests/analysis/test_geometry.py`) and their FLOPs (QK^T and PV,
# 4·d_head per pair); dashed: the FLOPs of the whole 128 x 128 tiles the flex kernels compute.

# %%
scaling = A.scaling_table(["dense", "local", "stride", "block", "summary", "strided", "fixed"], SCALING_NS,
                          d_head=D_HEAD, tile_max_n=TILE_MAX_N)
results["scaling"] = scaling
keep(A.plot_scaling(scaling, d_head=D_HEAD), "scaling")
pd.DataFrame([{"n": r["n"], "pattern": r["pattern"], "l": r["stride"], "pairs": r["pairs"],
               "% of dense": round(100 * r["fraction_of_dense"], 3),
               "tile FLOPs / exact": round(r["tile_flops"] / r["flops"], 2) if "tile_flops" in r else None}
              for r in scaling if r["n"] in (SCALING_NS[0], min(TILE_MAX_N, SCALING_NS[-1]), SCALING_NS[-1])])

# %% [markdown]
# `stride` and `block` attend the same number of pairs (their lines coincide). `strided` grows
# like n·(l + n/l) ~ n^1.5; `fixed` with a constant c adds n²·c/(2l) summary pairs,
# also ~ n^1.5 but with a larger constant. At small n a 128-tile kernel computes several times the
# exact pairs (the local band is thinner than a tile); the waste shrinks as l approaches the tile.
# l = round(sqrt n) is a power of two only at n = 4^k: in between, blocks straddle tile edges and the
# tile cost wobbles (a stride that is a multiple of the tile runs cheapest).

# %%
results["figures"] = figures
results["seconds"] = round(time.time() - t_start, 1)
A.save_results(results, f"{FIG_DIR}/results.json")
print(f"{len(figures)} figures in {FIG_DIR}, {results['seconds']} s")
