"""Small heads and oracles shared by the analysis tests."""

import math

import torch

from sparse_transformer import analysis as A
from sparse_transformer.attention import layer_heads

L_, C_ = 8, 2
ALL = ["dense", "local", "stride", "block", "summary", "strided", "fixed"]


def heads_of(pattern, n_head=2, l=L_, c=C_, summary_heads=2):
    """One merged layer's heads (summary patterns: one c-wide slice per head)."""
    needs = pattern in ("fixed", "summary")
    return layer_heads(pattern, n_head, l, summary=c if needs else None, summary_heads=summary_heads if needs else 1,
                       integration="merged")


def brute_tiles(mask, tile):
    """Allowed pairs per tile by plain loops: the oracle."""
    nq, nk = mask.shape
    Tq, Tk = math.ceil(nq / tile), math.ceil(nk / tile)
    out = torch.zeros(Tq, Tk, dtype=torch.long)
    for a in range(Tq):
        for b in range(Tk):
            out[a, b] = int(mask[a * tile : (a + 1) * tile, b * tile : (b + 1) * tile].sum())
    return out


def uniform_maps(heads_per_layer, rows, n, B=2):
    """(L, B, H, R, n): every head attends its allowed keys uniformly."""
    out = []
    for heads in heads_per_layer:
        m = A.allowed_rows(heads, rows, n).double()
        p = m / m.sum(-1, keepdim=True).clamp_min(1)
        out.append(p[None].expand(B, *p.shape))
    return torch.stack(out)
