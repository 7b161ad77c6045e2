"""The attention layer: q/k/v projections (optionally half-size Q and K), the heads' patterns,
a backend, the output projection, and a KV cache for generation."""

from __future__ import annotations

import torch
from torch import nn

from . import backends
from .backends import reference
from .cache import KVCache, Planner
from .patterns import PatternError

Tensor = torch.Tensor


class SparseAttention(nn.Module):
    """Multi-head causal attention in which head h attends the union of ``heads[h]``.

    ``heads`` comes from ``patterns.layer_heads`` (it encodes the integration: interleaved,
    merged or multi-head). ``qk_ratio`` shrinks Q and K (the paper's half-size QK: 0.5).
    """

    def __init__(self, d_model: int, n_head: int, heads: tuple, *, qk_ratio: float = 1.0, backend: str = "auto"):
        super().__init__()
        d_qk = int(round(d_model * qk_ratio))
        if d_model % n_head or d_qk % n_head or d_qk < n_head:
            raise PatternError(
                f"d_model={d_model} and d_model*qk_ratio={d_qk} must be positive multiples of n_head={n_head}"
            )
        if len(heads) != n_head:
            raise PatternError(f"heads describes {len(heads)} heads, expected n_head={n_head}")
        self.n_head, self.d_model, self.d_qk = n_head, d_model, d_qk
        self.heads = heads
        self.backend = backend
        # separate projections: each output is a contiguous (B, n, H*dh) tensor, so the flex backend
        # can view a stride layer's keys in OpenAI's transposed order without copying them
        self.q = nn.Linear(d_model, d_qk)
        self.k = nn.Linear(d_model, d_qk)
        self.v = nn.Linear(d_model, d_model)
        self.proj = nn.Linear(d_model, d_model)
        self._prepared: dict = {}  # (n, device, backend) -> (backend attend, its precomputed state)

    @property
    def scale(self) -> float:
        return (self.d_qk // self.n_head) ** -0.5

    def split_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v as (B, H, n, dh) views of contiguous (B, n, H, dh) tensors."""
        B, n, _ = x.shape
        H = self.n_head
        return tuple(f(x).view(B, n, H, -1).transpose(1, 2) for f in (self.q, self.k, self.v))

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        """Attention of x (B, n, d). With a ``cache``: x is a prefix from position 0 or the one next
        position, whose keys and values the cache keeps (see ``new_cache``)."""
        q, k, v = self.split_heads(x)
        if cache is None:
            key = (x.shape[1], x.device.type, x.device.index, self.backend)
            attend, state = self._prepared[key] if key in self._prepared else self.prepare(x.shape[1], x.device)
            y = attend(q, k, v, self.heads, self.scale, prepared=state) if state is not None else attend(q, k, v, self.heads, self.scale)
        else:
            y = cache.attend(q, k, v, self.scale, self.backend)
        B, _, n, _ = y.shape
        return self.proj(y.transpose(1, 2).reshape(B, n, self.d_model))

    def __getstate__(self):  # plans hold local mask functions (not picklable) and are rebuilt on demand
        return {**super().__getstate__(), "_prepared": {}}

    @torch.compiler.disable  # Python-side caches and mask building: never traced (SparseTransformer.forward calls it first)
    def prepare(self, n: int, device) -> tuple:
        """The backend and its plan for length n on ``device``, kept on the layer so a compiled
        forward only reads them: ``SparseTransformer.forward`` calls this before its blocks run."""
        device = torch.device(device)
        key = (n, device.type, device.index, self.backend)  # set_backend must not reuse another backend's plan
        if key not in self._prepared:
            if len(self._prepared) >= 16:  # many lengths (a caller growing a prefix): keep the newest
                self._prepared.pop(next(iter(self._prepared)))
            if len(self.heads) != self.n_head:
                raise PatternError(f"heads describes {len(self.heads)} heads but the layer has {self.n_head}")
            dims = (self.d_qk // self.n_head, self.d_model // self.n_head)
            self._prepared[key] = backends.prepare(self.heads, n, device, self.backend, dims)
        return self._prepared[key]

    def new_cache(self, batch: int, n: int, planner: Planner, *, device=None, dtype=None) -> KVCache:
        """An empty cache of n positions for a batch; layers sharing ``planner`` share per-step key plans."""
        w = self.q.weight
        return KVCache(self.heads, batch, n, self.d_qk // self.n_head, self.d_model // self.n_head, planner,
                       device=device or w.device, dtype=dtype or w.dtype)

    @torch.no_grad()
    def attention_rows(self, x: Tensor, rows) -> Tensor:
        """Attention probabilities (B, H, len(rows), n) of the chosen query rows, for analysis.

        An explicit softmax over the pattern's keys for those rows only: O(rows · n) memory.
        """
        q, k, _ = self.split_heads(x)
        return reference.attention_rows(q.float(), k.float(), self.heads, rows, self.scale)

    def extra_repr(self) -> str:
        names = sorted({"+".join(p.name for p in parts) for parts in self.heads})
        return f"d_model={self.d_model}, n_head={self.n_head}, d_qk={self.d_qk}, heads={names}, backend={self.backend}"
