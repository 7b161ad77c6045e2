"""Pattern geometry, no model: the masks a model's layers and heads attend, two-step reach, and
attended pairs and attention FLOPs vs n (closed forms for the built-in patterns)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..attention.connectivity import check_connectivity, compose, stack_masks
from ..attention.patterns import heads_mask, keys_per_query, layer_heads  # keys_per_query: re-exported

Tensor = torch.Tensor


# ------------------------------------------------------------------------------------------------
# Masks of a model's layers and heads
# ------------------------------------------------------------------------------------------------
def layer_masks(
    pattern: str,
    n: int,
    stride: int,
    *,
    n_layer: int = 1,
    n_head: int = 1,
    summary: int | None = None,
    summary_heads: int = 1,
    integration: str = "interleaved",
    layout=None,
) -> Tensor:
    """Bool (L, H, n, n): what head h of residual block r attends (``patterns.layer_heads``)."""
    return torch.stack([
        heads_mask(layer_heads(pattern, n_head, stride, layer=r, summary=summary, summary_heads=summary_heads,
                               integration=integration, layout=layout), n)
        for r in range(n_layer)
    ])


def integration_panels(pattern: str, n: int, stride: int, *, n_layer: int = 2, n_head: int = 2,
                       summary: int | None = None, summary_heads: int = 1, integration: str = "interleaved",
                       layout=None) -> dict[str, Tensor]:
    """``{"L<r> H<h>: <parts>": (n, n) mask}`` for every layer r and head h of a small model."""
    out = {}
    for r in range(n_layer):
        heads = layer_heads(pattern, n_head, stride, layer=r, summary=summary, summary_heads=summary_heads,
                            integration=integration, layout=layout)
        masks = heads_mask(heads, n)
        for h, lab in enumerate(head_labels(heads)):
            out[f"L{r} H{h}: {lab}"] = masks[h]
    return out


def head_labels(heads: tuple) -> list[str]:
    """'local', 'stride', 'local+stride', 'summary[1]' (slice 1), ... for each head's parts."""
    out = []
    for parts in heads:
        names = [p.name + (f"[{p.slice}]" if p.name == "summary" and p.slice else "") for p in parts]
        out.append("+".join(names))
    return out


def layer_labels(pattern: str, stride: int, n_layer: int, *, n_head: int = 1, summary: int | None = None,
                 summary_heads: int = 1, integration: str = "interleaved", layout=None) -> list[str]:
    """A short name per layer: its heads' parts, e.g. ['local', 'stride', 'local'] or ['block | summary']."""
    out = []
    for r in range(n_layer):
        heads = layer_heads(pattern, n_head, stride, layer=r, summary=summary, summary_heads=summary_heads,
                            integration=integration, layout=layout)
        out.append(" | ".join(dict.fromkeys(head_labels(heads))))
    return out


# ------------------------------------------------------------------------------------------------
# Reach
# ------------------------------------------------------------------------------------------------
def reach_windows(layers: Sequence[Tensor], steps: int = 2) -> list[tuple[int, Tensor]]:
    """(first layer, bool (n, n) reach) for every window of ``steps`` consecutive layers.

    ``layers`` are per-layer reach matrices (``connectivity.stack_masks``: the union of the heads
    plus the residual path); reach[i, j] says output i of the window's last layer depends on input j.
    """
    return [(s, compose(list(layers[s : s + steps]))) for s in range(max(1, len(layers) - steps + 1))]


def reach_image(reach: Tensor) -> Tensor:
    """int (n, n) for drawing: 0 future (j > i), 1 reached, 2 causal but not reached (a failure)."""
    n = reach.shape[-1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    img = torch.zeros(n, n, dtype=torch.long)
    img[causal & reach] = 1
    img[causal & ~reach] = 2
    return img


def connectivity_table(configs: dict[str, dict], n: int, stride: int, steps: int = 2) -> list[dict]:
    """For each named config (kwargs of ``stack_masks`` without n and stride), every window's result."""
    rows = []
    for name, kw in configs.items():
        kw = dict(kw)
        n_layer = kw.pop("n_layer", 3)
        rep = check_connectivity(stack_masks(kw.pop("pattern"), n, stride, n_layer, **kw), steps=steps)
        rows.append({"config": name, "ok": rep.ok, "stack_ok": rep.stack_ok,
                     "windows": [{"first": s, "connects": bool(c), "failing_pairs": f} for s, c, f in rep.windows],
                     "report": str(rep)})
    return rows


# ------------------------------------------------------------------------------------------------
# Pair counts and FLOPs
# ------------------------------------------------------------------------------------------------
def pair_count(parts: tuple, n: int) -> int:
    """Attended (query, key) pairs of one head at length n."""
    return int(keys_per_query(parts, n).sum())


def attention_flops(pairs: int, d_head: int, n_head: int = 1) -> int:
    """Forward FLOPs of attention over ``pairs`` per head: QK^T and PV, 2·d_head each per pair."""
    return 4 * d_head * pairs * n_head


def paper_stride(n: int) -> int:
    """l = round(sqrt(n)) (for n = 4^k a power of two that divides n)."""
    return max(1, round(math.sqrt(n)))


def scaling_parts(name: str, n: int, summary: int = 32) -> tuple:
    """One head of pattern ``name`` (a primitive, or a pair merged) at l = paper_stride(n) and
    c = min(summary, l/4): the head used for the pairs-vs-n curves."""
    l = paper_stride(n)
    c = max(1, min(summary, l // 4))
    heads = layer_heads(name, 1, l, summary=c if name in ("fixed", "summary") else None, integration="merged")
    return heads[0]
