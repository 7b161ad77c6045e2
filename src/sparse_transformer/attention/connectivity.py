"""Connectivity checker: can every input j <= i reach output i within a few attention layers?

Checked the way the network computes: one layer's reach is (A ∪ I), A the union over that layer's
heads and I the residual path; layers compose in their real order (layer r's output feeds
layer r + 1), so reach(L1 then L2) = M2 · M1 as boolean matrices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .patterns import heads_mask, layer_heads

Tensor = torch.Tensor


def layer_reach(heads: tuple, n: int) -> Tensor:
    """(n, n) bool: output i of this layer depends on input j (some head attends j, or j == i)."""
    return heads_mask(heads, n).any(0) | torch.eye(n, dtype=torch.bool)


def stack_masks(pattern: str, n: int, stride: int, n_layer: int, *, n_head: int = 1, **pattern_kw) -> list[Tensor]:
    """The reach matrix of each residual block of a model, in order. ``pattern_kw``: the pattern's
    options as ``layer_heads`` takes them (summary, summary_heads, integration, layout)."""
    if "layer" in pattern_kw:
        raise TypeError("stack_masks builds every layer: it takes no layer=")
    return [layer_reach(layer_heads(pattern, n_head, stride, layer=r, **pattern_kw), n) for r in range(n_layer)]


def compose(layers: list[Tensor]) -> Tensor:
    """Reach through the layers applied in order (boolean matrix product, last layer on the left)."""
    reach = layers[0].to(torch.float32)
    for m in layers[1:]:
        reach = (m.to(torch.float32) @ reach).clamp_(max=1.0)
    return reach > 0


@dataclass
class ConnectivityReport:
    """``ok``: every window of ``steps`` consecutive layers connects every j <= i to i.

    ``windows``: (first layer, connects?, number of failing pairs) per window start;
    ``failures``: failing (i, j) pairs of the first failing window (at most ``max_pairs``);
    ``stack_ok``: all layers composed connect every pair.
    """

    n: int
    steps: int
    ok: bool
    stack_ok: bool
    windows: list[tuple[int, bool, int]] = field(default_factory=list)
    failures: list[tuple[int, int]] = field(default_factory=list)

    def __str__(self) -> str:
        good = sum(w[1] for w in self.windows)
        s = (f"{'OK' if self.ok else 'FAIL'}: {good}/{len(self.windows)} windows of {self.steps} layers connect "
             f"every j <= i at n={self.n}; whole stack {'connects' if self.stack_ok else 'does not connect'}")
        if self.failures:
            s += f"; first failing pairs (i, j): {self.failures[:5]}"
        return s


def check_connectivity(layers: list[Tensor], steps: int = 2, max_pairs: int = 100) -> ConnectivityReport:
    """Check every window of ``steps`` consecutive layers (layers in their real order).

    ``layers`` are per-layer reach matrices (``layer_reach`` / ``stack_masks``). Pass one period of
    an interleaved stack plus ``steps - 1`` more layers to see every window of the cycle.
    """
    if not layers:
        raise ValueError("check_connectivity needs at least one layer")
    n = layers[0].shape[-1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    windows, failures = [], []
    for start in range(max(1, len(layers) - steps + 1)):
        reach = compose(layers[start : start + steps])
        bad = causal & ~reach
        count = int(bad.sum())
        windows.append((start, count == 0, count))
        if count and not failures:
            failures = [tuple(int(x) for x in p) for p in bad.nonzero()[:max_pairs]]
    stack_ok = bool((compose(layers) | ~causal).all())
    return ConnectivityReport(n, steps, all(w[1] for w in windows), stack_ok, windows, failures)


def stack_unreachable(layers: list[Tensor]) -> Tensor:
    """(n, n) bool: pairs j <= i that no depth of this stack connects. The stack is applied layer
    after layer until every layer has run and one more pass over it adds nothing (the reach of a
    periodic stack stops growing), so a short check stands for an arbitrarily deep model."""
    n = layers[0].shape[-1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    reach = torch.eye(n)
    while True:
        before = reach
        for m in layers:
            reach = (m.to(torch.float32) @ reach).clamp_(max=1.0)
        if torch.equal(reach > 0, before > 0):
            return causal & ~(reach > 0)
