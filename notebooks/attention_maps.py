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
# # What a trained Sparse Transformer attends to
#
# Load a checkpoint (or, with none given, train a tiny model here on the embedded default data:
# the English text of Python's own documentation, no download), take examples of its modality and
# show, per layer and head, where chosen queries attend: text highlights, image overlays (which
# pixels a pixel looks at) or audio over the waveform. Then per-head entropy and mean attention
# distance, and how the heads divide the work (for a strided model: the local and the stride heads).
#
# Everything is computed by `sparse_transformer.analysis` through each layer's explicit-softmax
# path for the chosen rows (`SparseAttention.attention_rows`: no n x n memory).

# %% tags=["parameters"]
CHECKPOINT = None  # a .ckpt path; None: train a tiny model below (or DEMO)
TRAIN_STEPS = 150  # steps of the tiny model trained when CHECKPOINT is None
TRAIN_ARGS = ["model.n_layer=2", "model.n_head=4", "model.d_model=64", "data.seq_len=256", "data.batch_size=8",
              "attention.stride=16", "optim.warmup_steps=20", "data.val_windows=4"]
DEMO = None  # "image" or "audio": a small *random* model on synthetic data of that modality (no training)
DEMO_SHAPE = None  # its data shape: default (16, 16, 3) for images, (32, 32) for audio (n = 1024 as (n/l, l))
N_EXAMPLES = 2  # examples for the statistics (the first one is drawn)
N_QUERIES = 2  # query positions drawn per example
DATA_DIR = None  # overrides the checkpoint's data.cache_dir (where its prepared data lives)
WORK_DIR = "out/work"  # the tiny model's run folder and data cache
FIG_DIR = "out/figures/attention_maps"
TORCH_THREADS = 1  # None: torch's default. Small models: on a busy 2-core machine 2 threads ran 10-20x slower (spinning)

# %%
import shutil
import time
from pathlib import Path

import pandas as pd
import torch

from sparse_transformer import analysis as A

if TORCH_THREADS:
    torch.set_num_threads(TORCH_THREADS)

t_start = time.time()
figures, results = {}, {}


def keep(fig, name):
    """Save a figure under FIG_DIR and remember its path (the cell shows it inline)."""
    figures[name] = A.save_figure(fig, f"{FIG_DIR}/{name}.png")


# %% [markdown]
# ## The model and its examples
#
# With `DEMO` the model is random (its q/k projections scaled up for contrast): the drawings then
# show the pattern and the drawing path for that modality, not anything learned.

# %%
if DEMO:
    shape = tuple(DEMO_SHAPE or ((16, 16, 3) if DEMO == "image" else (32, 32)))
    modality = DEMO
    net = A.random_model(shape, n_layer=2, n_head=2)
    examples = A.synthetic_examples(modality, shape, count=N_EXAMPLES)
    stride = net.cfg.attention.stride
    print(f"DEMO: a randomly initialised model (not trained) on synthetic {modality} of shape {shape}")
else:
    from sparse_transformer import load_checkpoint

    if CHECKPOINT is None:
        from sparse_transformer.cli.train import main as train

        work = Path(WORK_DIR).resolve()
        run = work / "run"
        shutil.rmtree(run, ignore_errors=True)  # a fresh run folder (this notebook's own)
        t0 = time.time()
        summary = train(["exp=default", f"trainer.max_steps={TRAIN_STEPS}", "logger.kind=none",
                         "trainer.enable_progress_bar=false", f"run_dir={run}", f"data.cache_dir={work / 'data'}",
                         *TRAIN_ARGS])
        results["training"] = {**summary, "seconds": round(time.time() - t0, 1)}
        CHECKPOINT = str(run / "checkpoints" / "last.ckpt")
    lit = load_checkpoint(CHECKPOINT, backend="blocked")
    cfg = lit.cfg
    if DATA_DIR:
        cfg.data.cache_dir = DATA_DIR
    net = lit.net.eval()
    modality, shape, stride = A.modality_of(cfg), tuple(net.cfg.shape), net.cfg.attention.stride
    examples = A.load_examples(cfg, count=N_EXAMPLES)

n = examples.shape[1]
heads = A.model_heads(net)
labels = [A.head_labels(h) for h in heads]
print(f"modality {modality}, data shape {shape}, n = {n}, {net.num_params() / 1e6:.2f}M parameters")
print(f"pattern {net.cfg.attention.pattern}, stride {stride}, integration {net.cfg.attention.integration}; heads per layer:")
for r, lab in enumerate(labels):
    print(f"  layer {r}: {lab}")
results.update({"modality": modality, "shape": list(shape), "n": n, "stride": stride, "labels": labels,
                "pattern": net.cfg.attention.pattern, "integration": net.cfg.attention.integration})

# %% [markdown]
# ## Where chosen queries attend
#
# One figure per query of the first example: rows are layers, columns heads. Text is laid out in
# rows of l characters (local keys sit on the query's row and the one above, stride keys in its
# column); images show attention summed over a pixel's channels over the picture; audio shows the
# attention weights (red) over the waveform (grey) with the query as a blue line.

# %%
queries = A.default_queries(modality, shape, N_QUERIES)
maps_q = A.attention_maps(net, examples[:1], queries)  # (L, 1, H, R, n)
for k, q in enumerate(queries):
    keep(A.plot_attention(modality, examples[0], maps_q[:, 0, :, k], q, shape, labels=labels), f"maps_query{k}")
results["queries"] = queries

# %% [markdown]
# ## Per-head entropy and mean attention distance
#
# Over the second half of every example's positions: the entropy of each head's attention (bits; in
# brackets the entropy of attending every allowed key equally, the most a head can have) and the
# mean distance i - j it looks back (positions).

# %%
rows = A.stat_rows(n)
maps = A.attention_maps(net, examples, rows)  # (L, B, H, R, n)
row_sums = maps.sum(-1)
stats = A.head_stats(maps, rows, heads)
keep(A.plot_head_stats(stats, labels=labels), "head_stats")
results.update({"row_sum_min": float(row_sums.min()), "row_sum_max": float(row_sums.max()),
                "entropy": stats["entropy"], "uniform_entropy": stats["uniform_entropy"], "distance": stats["distance"]})
pd.DataFrame([{"layer": r, "head": h, "parts": labels[r][h], "entropy (bits)": round(float(stats["entropy"][r, h]), 3),
               "uniform (bits)": round(float(stats["uniform_entropy"][r, h]), 3),
               "mean distance": round(float(stats["distance"][r, h]), 1)}
              for r in range(len(heads)) for h in range(len(heads[r]))])

# %% [markdown]
# ## How the heads divide the work
#
# Left: each head's attention mass by distance (log bins; dotted: the stride). Middle: the bits per
# token lost when one head's output is zeroed (on the same examples). For a strided model, local
# heads look within the last l positions and stride heads at multiples of l; heads that attend
# several parts (merged) also get the mass on each part's own keys (right).

# %%
edges = [0, 1] + [2**k for k in range(1, max(2, (n - 1).bit_length()) + 1)]
profile = A.distance_profile(maps, rows, edges)
base_bits, ablation = A.ablate_heads(net, examples)
multi = any(len(parts) > 1 for h in heads for parts in h)
mass, mass_labels = A.part_mass(maps, heads, rows) if multi else (None, None)
keep(A.plot_work_division(profile, edges, ablation, labels, stride, mass=mass, mass_labels=mass_labels), "work_division")
local_window = A.distance_profile(maps, rows, [0, stride])[..., 0]  # mass on the last l positions
results.update({"bits_per_token": base_bits, "ablation": ablation, "distance_edges": edges, "profile": profile,
                "mass_within_stride": local_window})
pd.DataFrame([{"layer": r, "head": h, "parts": labels[r][h],
               f"mass at distance < {stride}": round(float(local_window[r, h]), 3),
               "bits lost without it": round(float(ablation[r, h]), 4)}
              for r in range(len(heads)) for h in range(len(heads[r]))])

# %%
results["figures"] = figures
results["seconds"] = round(time.time() - t_start, 1)
A.save_results(results, f"{FIG_DIR}/results.json")
print(f"{len(figures)} figures in {FIG_DIR}, {results['seconds']} s; {base_bits:.3f} bits per token on the examples")
