"""Where a few query positions attend, per layer and head, for one fixed input.

Computed by ``analysis.attention_maps`` (each layer's explicit softmax for the chosen rows only,
``SparseAttention.attention_rows``: O(queries · n) memory, so it works at any length), and drawn
as heatmaps over the data's layout: images as H×W maps laid over the image (channels summed),
text and audio as the (n/l, l) matrix of the factorized positions, where ``local`` is a diagonal
band, ``stride`` a column and ``summary`` a set of columns.

For notebooks: ``attention_image`` (one row -> a 2-D map), ``plot_attention_maps`` (one query: a
layers × heads figure), ``draw_attention_maps`` (all of it from a model and an input).
matplotlib is imported where a figure is drawn (as in ``analysis``): a run that draws none never loads it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from ...analysis import attention_maps
from .outside_step import forward_blocked

MAX_LAYERS = 8


def default_queries(n: int, shape) -> list[int]:
    """Three query positions spread over the sequence, the last one included; for images, at the
    first channel of a pixel."""
    c = int(shape[-1]) if len(shape) == 3 else 1
    qs = [n // 3 - (n // 3) % c, 2 * n // 3 - (2 * n // 3) % c, n - 1]
    return sorted(set(qs))


def default_layers(n_layer: int, limit: int = MAX_LAYERS) -> list[int]:
    """All blocks, or ``limit`` of them spread evenly (first and last included)."""
    if n_layer <= limit:
        return list(range(n_layer))
    return sorted({round(k * (n_layer - 1) / (limit - 1)) for k in range(limit)})


def attention_image(probs, shape) -> np.ndarray:
    """One query's probabilities over the n keys -> a 2-D map: (H, W) for images (channels
    summed), (n/l, l) for text and audio."""
    p = np.asarray(probs, dtype=np.float64).reshape([int(s) for s in shape])
    if p.ndim == 1:
        return p[None]
    return p.reshape(p.shape[0], p.shape[1], -1).sum(-1)


def _cell(q: int, shape) -> tuple[int, int]:
    """(row, column) of position q in the 2-D layout of ``attention_image``."""
    shape = [int(s) for s in shape]
    if len(shape) == 1:
        return 0, q
    inner = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return q // (shape[1] * inner), (q // inner) % shape[1]


def plot_attention_maps(maps, queries, shape, q: int = 0, *, layers=None, image=None, gamma: float = 0.5,
                        title: str | None = None):
    """A matplotlib Figure: rows = layers, columns = heads, each panel where query ``queries[q]``
    attends (``maps`` from ``attention_maps``). ``image`` (H, W, C) uint8 draws images underneath;
    colours use a power norm (``gamma``) so that small weights stay visible."""
    from matplotlib import colormaps, colors, figure  # lazy: see the module docstring

    maps = np.asarray(maps)
    L, H = maps.shape[0], maps.shape[1]
    layers = list(range(L)) if layers is None else list(layers)
    query = int(queries[q])
    qr, qc = _cell(query, shape)
    fig = figure.Figure(figsize=(2.2 * H + 0.6, 2.0 * L + 0.6), dpi=100, layout="constrained")
    axes = fig.subplots(L, H, squeeze=False)
    cmap = colormaps["inferno"]
    if image is not None:
        image = np.asarray(image, dtype=np.uint8)
        image = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
    for i in range(L):
        for h in range(H):
            ax = axes[i, h]
            heat = attention_image(maps[i, h, q], shape)
            vmax = heat.max() if heat.max() > 0 else 1.0
            norm = colors.PowerNorm(gamma, vmin=0.0, vmax=vmax)
            if image is not None:
                ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
                rgba = cmap(norm(heat))
                rgba[..., 3] = np.clip(norm(heat), 0, 1) * 0.85
                ax.imshow(rgba, interpolation="nearest")
            else:
                ax.imshow(heat, cmap=cmap, norm=norm, interpolation="nearest", aspect="auto")
            ax.scatter([qc], [qr], s=18, c="cyan", marker="s", edgecolors="none")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"head {h}", fontsize=9)
            if h == 0:
                ax.set_ylabel(f"layer {layers[i]}", fontsize=9)
    fig.suptitle(title or f"attention of query {query} (cyan)", fontsize=10)
    return fig


def save_figure(fig, path: str | Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: see the module docstring

    FigureCanvasAgg(fig)
    fig.savefig(path)
    return Path(path)


def draw_attention_maps(net, tokens, shape, queries=None, layers=None, image=None, title: str = "") -> list:
    """[(query, Figure)] for ``tokens`` (n,): every query's layers × heads figure, the net in eval mode."""
    n = int(np.prod([int(s) for s in shape]))
    queries = list(queries) if queries else default_queries(n, shape)
    layers = list(layers) if layers is not None else default_layers(len(net.blocks))
    maps = attention_maps(net, torch.as_tensor(tokens).reshape(-1, n)[:1], queries, layers)[:, 0].numpy()
    return [(qq, plot_attention_maps(maps, queries, shape, k, layers=layers, image=image,
                                     title=f"{title}query {qq} (cyan)")) for k, qq in enumerate(queries)]


class AttentionMapsCallback(Callback):
    """At the start of training (the untrained model: the pattern itself shows), every
    ``every_n_steps`` steps and at the end: attention maps of validation window ``example`` into
    ``<out_dir>/step-<step>-q<query>.png`` and, with a W&B logger, ``attention/q<query>`` images."""

    def __init__(self, out_dir: str | Path, every_n_steps: int = 0, example: int = 0, queries=(), layers=None):
        self.out_dir = Path(out_dir)
        self.every, self.example = every_n_steps, example
        self.queries, self.layers = list(queries), (list(layers) if layers is not None else None)
        self._tokens = None
        self._last_step = -1
        self.files: list[Path] = []

    def _example_tokens(self, trainer):
        if self._tokens is None:
            dm = trainer.datamodule
            if dm is None:
                rank_zero_warn("attention maps need a DataModule for their validation example; skipped")
                return None
            ds = dm.val_dataloader().dataset
            tokens, _ = ds[min(self.example, len(ds) - 1)]
            self._tokens = torch.as_tensor(tokens)
        return self._tokens

    def on_train_start(self, trainer, pl_module):
        self.draw(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every and step > 0 and step % self.every == 0 and step != self._last_step:
            self.draw(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        if trainer.global_step != self._last_step:
            self.draw(trainer, pl_module)

    @rank_zero_only
    def draw(self, trainer, pl_module) -> list[Path]:
        if forward_blocked(trainer, "attention maps"):
            return []
        tokens = self._example_tokens(trainer)
        if tokens is None:
            return []
        step = trainer.global_step
        self._last_step = step
        shape = [int(s) for s in pl_module.net.cfg.shape]
        image = tokens.numpy().astype(np.uint8).reshape(shape) if pl_module.cfg.data.modality == "image" else None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        files = []
        for query, fig in draw_attention_maps(pl_module.net, tokens, shape, self.queries, self.layers, image,
                                              title=f"step {step}: "):
            files.append(save_figure(fig, self.out_dir / f"step-{step:06d}-q{query}.png"))
            for lg in trainer.loggers:
                if isinstance(lg, WandbLogger):
                    lg.log_image(f"attention/q{query}", [str(files[-1])], step=step, caption=[f"step {step}"])
        self.files += files
        return files
