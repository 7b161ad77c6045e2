"""A key/value cache for generation in which each step attends only the keys its pattern allows.

The cache keeps every position's keys and values per layer. At step t the query of position t needs, per head, the union of its parts' keys among 0..t; the cache visits only the
positions the parts' *structures* name (patterns.Structure):

- ``band(w)``     the last w positions                  local:   l keys
- ``residue(w)``  t mod w, t mod w + w, ..., t          stride:  about t/l keys
- ``block(w)``    the own block so far                  block:   at most l keys
- ``columns``     the fixed key set, up to t            summary: about c·t/l keys
- ``full``        every position 0..t                   dense, and user patterns without a hint

so a strided step costs O(l + n/l) and a fixed step O(l + c·n/l), not O(n). The parts' exact masks
decide among the visited keys (a hint promises to cover the pattern, not to equal it), and a key
allowed by two parts (the diagonal of ``strided``) is used once. A step with no allowed key
(a ``summary`` query in the first block) outputs exactly 0, as in every backend.

Modes: ``sparse`` (the above) and ``dense`` (every step scores all t + 1 cached keys and masks
them: the usual KV cache, kept as the baseline the benchmark compares against).

Layout follows the access: a cache that gathers keys is position-major (n, B, H, d), so a gathered
key is one row of B·H·d values rather than B·H scattered rows of d (2-3x faster on a CPU); one that
reads every key (dense) is head-major (B, H, n, d), each head's keys contiguous, as usual.

The keys a step visits depend only on (parts, t), so a ``Planner`` shared by all layers builds
them once per step on the host (a few small index tensors) and ships one index vector to the
device without waiting for it (``non_blocking``: nothing the GPU is running is synchronised).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .backends.common import group_heads, masked_softmax, scores
from .constants import PRIMITIVES
from .patterns import PatternError, registry_version, union_mask

Tensor = torch.Tensor

MODES = ("sparse", "dense")


@dataclass
class Plan:
    """The keys one step of one head group visits.

    ``index`` None: the contiguous positions 0..t (``mask`` over them, or None when all are allowed);
    else the sorted allowed positions themselves (``size`` of them, no mask needed).
    """

    index: Tensor | None
    mask: Tensor | None
    size: int


class Planner:
    """Builds (and, within one step, shares between layers) the key plans of a sequence of n."""

    def __init__(self, n: int, mode: str = "sparse", device=None):
        if mode not in MODES:
            raise PatternError(f"cache mode {mode!r} is unknown; valid: {', '.join(MODES)}")
        self.n, self.mode = n, mode
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._t = -1
        self._memo: dict = {}
        self._columns: dict = {}

    def plan(self, parts: tuple, t: int) -> Plan:
        if t != self._t:  # plans of earlier steps are never needed again
            self._memo.clear()
            self._t = t
        key = (tuple(p.key() for p in parts), registry_version())
        if key not in self._memo:
            self._memo[key] = self._build(parts, t)
        return self._memo[key]

    # --------------------------------------------------------------------------------------
    def _build(self, parts: tuple, t: int) -> Plan:
        structures = []
        for p in parts:
            s = p.structure
            if s not in structures:
                structures.append(s)
        if self.mode == "dense" or any(s is None or s.kind == "full" for s in structures):
            if all(p.name == "dense" for p in parts):
                return Plan(None, None, t + 1)
            j = torch.arange(t + 1, device=self.device)
            # new_full fills on the device: torch.tensor(t, device=cuda) would be a synchronising copy
            return Plan(None, union_mask(parts, j.new_full((), t), j), t + 1)
        cands = [self._candidates(s, t) for s in structures]
        idx = torch.unique(torch.cat(cands)) if len(cands) > 1 else cands[0]  # sorted, each key once
        if not all(p.name in PRIMITIVES for p in parts):  # a hint only covers a user pattern: its mask decides
            idx = idx[union_mask(parts, torch.tensor(t), idx)]
        return Plan(idx.to(self.device, non_blocking=True), None, int(idx.numel()))

    def _candidates(self, s, t: int) -> Tensor:
        """Host positions <= t that structure ``s`` names (a superset of its parts' keys)."""
        w = s.width
        if s.kind == "band":
            return torch.arange(max(0, t - w + 1), t + 1)
        if s.kind == "block":
            return torch.arange(t - t % w, t + 1)
        if s.kind == "residue":
            return torch.arange(t % w, t + 1, w)
        cols = self._columns.get(s)
        if cols is None:  # a columns function costs O(n): once per sequence, not per step
            cols = torch.unique(torch.as_tensor(s.columns(self.n), dtype=torch.long).cpu())
            self._columns[s] = cols
        return cols[: int(torch.searchsorted(cols, t, right=True))]


def _head_slices(idx: list[int]) -> list[slice]:
    """Head indices as slices (views of the cache, never copies of it): one if evenly spaced."""
    if len(idx) == 1:
        return [slice(idx[0], idx[0] + 1)]
    step = idx[1] - idx[0]
    if step > 0 and all(b - a == step for a, b in zip(idx, idx[1:])):
        return [slice(idx[0], idx[-1] + 1, step)]
    return [slice(h, h + 1) for h in idx]


class KVCache:
    """Keys and values of one attention layer for positions 0..length-1 of a batch.

    ``attend(q, k, v, scale, backend)`` takes either a whole prefix from position 0 (a prefill:
    computed by the layer's backend) or one new position (a decode step: computed here over the
    keys the pattern allows), stores the new keys and values, and returns the attention output.
    """

    def __init__(self, heads: tuple, batch: int, n: int, d_k: int, d_v: int, planner: Planner, *, device=None, dtype=None):
        H = len(heads)
        self.heads, self.planner, self.n = heads, planner, n
        self.groups = [(_head_slices(idx), parts) for idx, parts in group_heads(heads)]
        self.position_major = planner.mode == "sparse" and all(
            p.structure is not None and p.structure.kind != "full" for _, parts in self.groups for p in parts)
        shape = (n, batch, H) if self.position_major else (batch, H, n)
        self.k = torch.zeros(*shape, d_k, device=device, dtype=dtype)
        self.v = torch.zeros(*shape, d_v, device=device, dtype=dtype)
        self.length = 0

    @property
    def batch(self) -> int:
        return self.k.shape[1 if self.position_major else 0]

    def positions(self, buf: Tensor, a: int, b: int) -> Tensor:
        """Positions a..b-1 of ``self.k`` or ``self.v`` as a (B, H, b - a, d) view, whatever the layout."""
        return buf[a:b].permute(1, 2, 0, 3) if self.position_major else buf[:, :, a:b]

    def attend(self, q: Tensor, k: Tensor, v: Tensor, scale: float, backend: str = "auto") -> Tensor:
        T = q.shape[2]
        if q.shape[0] != self.batch:
            raise ValueError(f"the cache holds a batch of {self.batch}, got {q.shape[0]}")
        if self.length + T > self.n:
            raise ValueError(f"the cache holds {self.n} positions; {self.length} are used, {T} more do not fit")
        t = self.length
        if T != 1 and t != 0:
            raise ValueError("the cache takes a prefix from position 0, then one position at a time")
        self.positions(self.k, t, t + T).copy_(k)
        self.positions(self.v, t, t + T).copy_(v)
        self.length = t + T
        if T == 1:
            return self.step(q, t, scale)
        from . import backends

        return backends.attend(q, k, v, self.heads, backend=backend, scale=scale)

    def step(self, q: Tensor, t: int, scale: float) -> Tensor:
        """Attention (B, H, 1, dv) of position t's query q (B, H, 1, dk) over its allowed cached keys."""
        if len(self.groups) == 1 and self.groups[0][0] == [slice(0, q.shape[1], 1)]:  # all heads alike
            plan = self.planner.plan(self.groups[0][1], t)
            if plan.size:
                return self._heads(q, plan, slice(None), t, scale)
        out = q.new_zeros(q.shape[0], q.shape[1], 1, self.v.shape[-1])
        for slices, parts in self.groups:
            plan = self.planner.plan(parts, t)
            if plan.size == 0:
                continue  # no allowed key: exactly 0
            for hs in slices:
                out[:, hs] = self._heads(q, plan, hs, t, scale)
        return out

    def _heads(self, q: Tensor, plan: Plan, hs: slice, t: int, scale: float) -> Tensor:
        if plan.index is None:
            kk, vv = self.positions(self.k, 0, t + 1)[:, hs], self.positions(self.v, 0, t + 1)[:, hs]
        elif self.position_major:
            kk = self.k[:, :, hs].index_select(0, plan.index).permute(1, 2, 0, 3)  # (B, h, K, d)
            vv = self.v[:, :, hs].index_select(0, plan.index).permute(1, 2, 0, 3)
        else:
            kk, vv = self.k[:, hs].index_select(2, plan.index), self.v[:, hs].index_select(2, plan.index)
        s = scores(q[:, hs] * scale, kk.transpose(-1, -2))  # (B, h, 1, K)
        if plan.mask is None:
            p = torch.softmax(s, dim=-1)
        else:
            p, _ = masked_softmax(s, plan.mask)
        return torch.matmul(p.to(vv.dtype), vv)
