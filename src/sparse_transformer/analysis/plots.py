"""Drawings of the analysis (matplotlib; each returns a Figure), and saving figures and numbers.

matplotlib is imported inside the functions: importing the package (as the training callbacks do
for ``attention_maps``) stays free of it, and pyplot picks its backend only when a figure is drawn
(headless machines get Agg; notebooks keep their inline backend).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..attention.patterns import heads_mask
from ..media import glyph_grid, mulaw_decode, printable
from .geometry import reach_image
from .tiles import TILE, TILE_NAMES, call_mask, naive_layout, run_layouts, tile_stats

Tensor = torch.Tensor
TILE_COLORS = ("#f2f2f2", "#f4a259", "#2a6f97")  # skipped, partial, full


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


def draw_tiles(ax, classes: Tensor, title: str = "", mask: Tensor | None = None, repeats: int = 1):
    """Tile classes on ``ax`` (skipped light, partial orange, full blue); with a small ``mask`` (in
    the same order), the allowed pairs drawn on top at pair resolution. ``repeats``: sequences that
    share this layout (counted in the title)."""
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap(list(TILE_COLORS))
    Tq, Tk = classes.shape
    if mask is not None:  # pairs in a frame of whole tiles: what lies past the sequence stays blank
        Q, KV = mask.shape
        img = classes.repeat_interleave(TILE, 0).repeat_interleave(TILE, 1)[:Q, :KV]
        extent = (-0.5, KV - 0.5, Q - 0.5, -0.5)
        ax.imshow(img.numpy(), cmap=cmap, vmin=0, vmax=2, interpolation="nearest", extent=extent)
        pairs = np.zeros((Q, KV, 4))
        pairs[..., 3] = mask.numpy()
        ax.imshow(pairs, interpolation="antialiased", extent=extent)
        ax.set_xlim(-0.5, Tk * TILE - 0.5)
        ax.set_ylim(Tq * TILE - 0.5, -0.5)
        for t in range(1, Tq):
            ax.axhline(t * TILE - 0.5, color="white" if t * TILE < Q else "0.8", lw=0.6)
        for t in range(1, Tk):
            ax.axvline(t * TILE - 0.5, color="white" if t * TILE < KV else "0.8", lw=0.6)
    else:
        ax.imshow(classes.numpy(), cmap=cmap, vmin=0, vmax=2, interpolation="nearest")
    s = tile_stats(classes, repeats)
    ax.set_title(f"{title}\nrun {s['run']}/{s['total']} tiles ({s['full']} full, {s['partial']} partial)", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def tile_legend(fig):
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color=c, label=nm) for c, nm in zip(TILE_COLORS, TILE_NAMES)], loc="lower center",
               ncol=3, fontsize=8, frameon=False)


def plot_tile_layouts(heads: dict[str, tuple], n: int, *, overlay: bool = False, size: float = 3.6,
                      suptitle: str | None = None):
    """One row per named head (a tuple of Parts): its naive natural-order layout, then each call of
    the flex kernels as they run it (``run_layouts``), in TILE x TILE tiles. With ``overlay`` (small
    n only) the allowed pairs are drawn on top, in each call's own order.
    Returns (figure, {name: {"naive": stats, "run": [{"group": label, **stats}, ...], pairs...}})."""
    plt = _plt()
    runs = {name: run_layouts(parts, n) for name, parts in heads.items()}
    ncols = 1 + max(len(r) for r in runs.values())
    fig, axes = plt.subplots(len(heads), ncols, figsize=(size * ncols, (size + 0.9) * len(heads) + 0.3), squeeze=False)
    info = {}
    for row, (name, parts) in enumerate(heads.items()):
        naive = naive_layout(parts, n)
        draw_tiles(axes[row, 0], naive["classes"], f"{name} naive:\n{naive['label']}",
                   mask=heads_mask((parts,), n)[0] if overlay else None)
        for col, lay in enumerate(runs[name], start=1):
            draw_tiles(axes[row, col], lay["classes"], f"{name} as run:\n{lay['label']}",
                       mask=call_mask(lay["call"]) if overlay else None, repeats=lay["repeats"])
        for col in range(1 + len(runs[name]), ncols):
            axes[row, col].axis("off")
        info[name] = {"naive": naive["stats"], "run": [{"group": lay["label"], **lay["stats"]} for lay in runs[name]],
                      "pairs": naive["pairs"], "naive_run_pairs": naive["run_pairs"],
                      "run_pairs": sum(lay["run_pairs"] for lay in runs[name])}
    tile_legend(fig)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig, info


def plot_scaling(rows: list[dict], d_head: int = 64):
    """Log-log vs n: attended pairs per head for each pattern against dense (left); attention FLOPs
    of the exact pairs (solid) and of the whole tiles the flex kernels run (dashed, where
    ``scaling_table`` counted them) (right)."""
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
                Line2D([], [], color="k", ls="--", marker="s", ms=3, label=f"{TILE}x{TILE} tiles run")]
    a2.legend(handles=handles, fontsize=7, ncol=2)
    a2.set_ylabel(f"attention FLOPs per head (d_head={d_head}, forward)")
    a2.set_title("FLOPs vs n: exact pairs vs whole tiles run", fontsize=9)
    for a in (a1, a2):
        a.set_xlabel("sequence length n")
        a.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def _head_title(ax, r: int, h: int, labels, ticks: bool = True):
    """Name a (layer, head) panel, with the head's parts when ``labels`` are given."""
    lab = f" {labels[r][h]}" if labels else ""
    ax.set_title(f"layer {r} head {h}{lab}", fontsize=7)
    if not ticks:
        ax.set_xticks([])
        ax.set_yticks([])


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
            _head_title(ax, r, h, labels, ticks=False)
    fig.suptitle(suptitle or f"where pixel (row {qy}, col {qx}, channel {qc}) looks", fontsize=9)
    fig.tight_layout()
    return fig


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
    glyphs = glyph_grid([printable(toks[p]) for p in range(lo, hi)], [0.0 if p <= query else 0.6 for p in range(lo, hi)],
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
            _head_title(ax, r, h, labels, ticks=False)
    fig.suptitle(suptitle or f"where character {query} ({printable(toks[query])!r}) looks; rows of {width}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_audio_attention(tokens: Tensor, maps: Tensor, query: int, rate: int = 12000, labels=None,
                         suptitle: str | None = None):
    """For one clip (``tokens`` (n,) mu-law) and one query sample, per layer (rows) and head
    (columns): the waveform (grey) and the attention weights over it (red stems, right axis)."""
    plt = _plt()
    L, Hh = maps.shape[0], maps.shape[1]
    wave = mulaw_decode(tokens.numpy())
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
            _head_title(ax, r, h, labels)
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
    sb = next((k for k, (a, b) in enumerate(itertools.pairwise(edges)) if a <= stride < b), None)
    if sb is not None:
        a1.axvline(sb, color="grey", ls=":", lw=1)
    a1.set_xticks(xb, [f"{a}" if b - a == 1 else f"{a}-{b - 1}" for a, b in itertools.pairwise(edges)],
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
