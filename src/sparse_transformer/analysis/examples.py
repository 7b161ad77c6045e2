"""Examples to analyse: a run's own data (``load_examples``), or synthetic images, audio and text
with a small random model (``synthetic_examples``, ``random_model``) for demos and tests; and
which query rows to draw or average over."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..config import ROOT
from ..data import build_datamodule
from ..media import mulaw_encode
from ..model import NetConfig, SparseTransformer
from .geometry import paper_stride

Tensor = torch.Tensor


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
            out.append(mulaw_encode(wave))
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
