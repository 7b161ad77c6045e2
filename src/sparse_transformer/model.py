"""The Sparse Transformer network (Child et al. 2019, sections 5-6), top to bottom.

    tokens ─ shift right ─ token embedding + Σ factorized positional embeddings ─ dropout
           ─ N × [ x += dropout(attention(LN(x))) ; x += dropout(FF(LN(x))) ]   (pre-LayerNorm)
           ─ LN ─ logits (zero-initialised)

Attention in block r follows the pattern's integration (patterns.layer_heads). Initialisation is
OpenAI's: every linear weight N(0, 0.125/d_in), biases 0, the attention output projection and the
second FF layer further × 1/sqrt(2N), token embedding std sqrt(0.125/d), each of the n_emb
positional embeddings std sqrt(0.125/(d·n_emb)), logit layer 0.

Generation (``generate``) runs one position at a time through a KV cache in which each step
attends only the keys its pattern allows (attention/cache.py): O(l + n/l) keys per strided step.

The network's config is the run's ``model`` and ``attention`` sections (``ModelConfig``,
``AttentionConfig`` in config/schema.py, which imports neither torch nor omegaconf, so a command line
is checked before torch loads) plus the data's shape, which ``positions`` factorizes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import SparseAttention, layer_heads
from .attention.cache import KVCache, Planner
from .config.schema import COMPILE_MODES, AttentionConfig, ModelConfig, section

Tensor = torch.Tensor


def positions(shape: Sequence[int], stride: int) -> tuple[int, ...]:
    """The factorized positions of data of ``shape``: a sequence ((n,): text, audio) as the rows and
    columns of a width-``stride`` matrix, the paper's (n/l, l); other shapes ((H, W, C)) as they are."""
    shape = tuple(int(s) for s in shape)
    if len(shape) > 1:
        return shape
    if shape[0] % stride:
        raise ValueError(f"a sequence of {shape[0]} positions does not fill rows of attention.stride={stride}")
    return (shape[0] // stride, stride)


@dataclass(frozen=True)
class NetSpec:
    """What a network was built from (``net.cfg``): the run's model and attention sections and the
    factorized positions."""

    model: ModelConfig
    attention: AttentionConfig
    shape: tuple[int, ...]

    @property
    def seq_len(self) -> int:
        return math.prod(self.shape)


def NetConfig(shape: Sequence[int] = (8, 32), **kw) -> NetSpec:  # it was a class: the name stays
    """Deprecated (for one release): the network's settings as flat keywords, each a field of
    ModelConfig or AttentionConfig, and ``shape`` the positions' (as before: not factorized again);
    ``SparseTransformer(NetConfig(...))``. Write
    ``SparseTransformer(ModelConfig(...), AttentionConfig(...), shape)``."""
    warnings.warn("NetConfig is deprecated: use SparseTransformer(ModelConfig(...), AttentionConfig(...), shape)",
                  DeprecationWarning, stacklevel=2)
    model = {f.name for f in fields(ModelConfig)}
    return NetSpec(ModelConfig(**{k: v for k, v in kw.items() if k in model}),
                   AttentionConfig(**{k: v for k, v in kw.items() if k not in model}), tuple(shape))


def filter_logits(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Float32 logits divided by the temperature, -inf outside the top k and outside the nucleus (the
    fewest most likely tokens whose probability reaches top_p; always at least one)."""
    x = logits.float() / max(temperature, 1e-8)
    if top_k and top_k < x.shape[-1]:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        srt, order = torch.sort(x, dim=-1, descending=True)
        p = torch.softmax(srt, dim=-1)
        before = p.cumsum(-1) - p  # the probability mass of the better tokens
        drop = before >= top_p  # the best token has 0 before it: never dropped
        x = x.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    return x


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> Tensor:
    """One token per row of ``logits`` (B, vocab); temperature 0 is greedy (argmax)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def gelu(x: Tensor) -> Tensor:
    """The paper's GELU approximation x·sigmoid(1.702x)."""
    return x * torch.sigmoid(1.702 * x)


class FeedForward(nn.Module):
    def __init__(self, d: int, mult: float):
        super().__init__()
        self.fc1 = nn.Linear(d, int(round(d * mult)))
        self.fc2 = nn.Linear(int(round(d * mult)), d)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-LayerNorm residual block; dropout only at the end of each branch."""

    def __init__(self, m: ModelConfig, a: AttentionConfig, layer: int):
        super().__init__()
        heads = layer_heads(a.pattern, m.n_head, a.stride, layer=layer, summary=a.summary,
                            summary_heads=a.summary_heads, integration=a.integration, layout=a.layout)
        self.ln1 = nn.LayerNorm(m.d_model)
        self.attn = SparseAttention(m.d_model, m.n_head, heads, qk_ratio=m.qk_ratio, backend=a.backend)
        self.drop1 = nn.Dropout(m.dropout)
        self.ln2 = nn.LayerNorm(m.d_model)
        self.ff = FeedForward(m.d_model, m.ffn_mult)
        self.drop2 = nn.Dropout(m.dropout)
        self.recompute = m.recompute

    def _forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        x = x + self.drop1(self.attn(self.ln1(x), cache))
        return x + self.drop2(self.ff(self.ln2(x)))

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        if self.recompute and self.training and torch.is_grad_enabled() and cache is None:
            # Only the block input is kept; attention and FF are recomputed in backward (paper Fig. 4).
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x, cache)


class SparseTransformer(nn.Module):
    """The network for data of ``shape`` (the DataModule's: (n,) for a sequence, (H, W, C) for images),
    sized by ``model`` and attending as ``attention`` says: the run's model and attention sections.
    (``attention`` and ``shape`` default to None only for the deprecated ``SparseTransformer(NetConfig(...))``.)"""

    def __init__(self, model: ModelConfig, attention: AttentionConfig | None = None,
                 shape: Sequence[int] | None = None):
        super().__init__()
        if isinstance(model, NetSpec):  # the deprecated form, for one release: its shape is the positions'
            self.cfg, model, attention = model, model.model, model.attention
        else:
            self.cfg = NetSpec(model, attention, positions(shape, attention.stride))
        d, shape = model.d_model, self.cfg.shape
        self.tok_emb = nn.Embedding(model.vocab_size, d)
        self.pos_emb = nn.ModuleList(nn.Embedding(size, d) for size in shape)
        self.register_buffer("coords", self._coords(shape), persistent=False)  # (n, len(shape))
        self.drop = nn.Dropout(model.emb_dropout)
        self.blocks = nn.ModuleList(Block(model, attention, r) for r in range(model.n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, model.vocab_size, bias=False)
        self.reset_parameters()

    @classmethod
    def from_config(cls, cfg, shape: Sequence[int]) -> "SparseTransformer":
        """The network of a run's config (its ``model`` and ``attention`` sections) for data of ``shape``."""
        return cls(section(ModelConfig, cfg.model), section(AttentionConfig, cfg.attention), shape)

    @staticmethod
    def _coords(shape) -> Tensor:
        """Row-major coordinates of every position in the data's shape, e.g. (row, col, channel)."""
        grids = torch.meshgrid(*[torch.arange(s) for s in shape], indexing="ij")
        return torch.stack([g.reshape(-1) for g in grids], dim=-1)

    def reset_parameters(self) -> None:
        N, d = self.cfg.model.n_layer, self.cfg.model.d_model
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                nn.init.normal_(mod.weight, std=math.sqrt(0.125 / mod.in_features))
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
        for blk in self.blocks:  # residual outputs: × 1/sqrt(2N)
            for lin in (blk.attn.proj, blk.ff.fc2):
                nn.init.normal_(lin.weight, std=math.sqrt(0.125 / lin.in_features) / math.sqrt(2 * N))
        nn.init.normal_(self.tok_emb.weight, std=math.sqrt(0.125 / d))
        for emb in self.pos_emb:
            nn.init.normal_(emb.weight, std=math.sqrt(0.125 / (d * len(self.pos_emb))))
        nn.init.zeros_(self.head.weight)

    def embed(self, idx: Tensor) -> Tensor:
        """Input of position t: the embedding of the *previous* token (shifted right; zero at t = 0,
        as OpenAI's code does) plus the factorized positional embeddings of position t."""
        tok = F.pad(self.tok_emb(idx[:, :-1]), (0, 0, 1, 0))
        return self.drop(tok + self.pos(0, idx.shape[1]))

    def pos(self, start: int, stop: int) -> Tensor:
        """Summed factorized positional embeddings of positions start..stop-1: (stop-start, d)."""
        coords = self.coords[start:stop]
        return sum(emb(coords[:, k]) for k, emb in enumerate(self.pos_emb))

    def forward(self, idx: Tensor, cache: list[KVCache] | None = None) -> Tensor:
        """Logits (B, n, vocab) for p(x_t | x_<t) at every position t of ``idx`` (B, n).

        With an empty ``cache`` (``new_cache``), ``idx`` is a prefix whose keys and values it keeps."""
        if idx.shape[1] > self.coords.shape[0]:
            raise ValueError(f"sequence of {idx.shape[1]} tokens is longer than the model's {self.coords.shape[0]} positions")
        x = self.embed(idx)
        if cache is None and not torch.compiler.is_compiling():
            self.prepare(idx.shape[1], idx.device)
        for r, blk in enumerate(self.blocks):
            x = blk(x, cache[r] if cache is not None else None)
        return self.head(self.ln_f(x))

    def prepare(self, n: int, device) -> None:
        """Build every layer's attention plan for length n (flex block masks) outside torch.compile.
        ``forward`` does it itself when not compiled; a caller of a compiled network (see
        ``compile_network``) calls it first, so the compiled graph only reads ready plans."""
        for blk in self.blocks:
            blk.attn.prepare(n, device)

    # ------------------------------------------------------------------------------------------
    # Generation
    # ------------------------------------------------------------------------------------------
    def new_cache(self, batch: int, length: int | None = None, *, mode: str = "sparse", device=None, dtype=None) -> list[KVCache]:
        """One empty KV cache per block for ``length`` positions (default: all). ``mode``: ``sparse``
        (each step visits only its pattern's keys) or ``dense`` (every cached key, masked)."""
        n = length or self.cfg.seq_len
        device = device or self.tok_emb.weight.device
        planner = Planner(n, mode, device)  # shared: a step's key plan is built once for all blocks
        return [blk.attn.new_cache(batch, n, planner, device=device, dtype=dtype) for blk in self.blocks]

    def step(self, prev: Tensor | None, cache: list[KVCache]) -> Tensor:
        """Logits (B, vocab) at the next position t (the cache's length), given the tokens at t - 1
        (B,) (None at t = 0, whose input has no token embedding, as in ``embed``)."""
        t = cache[0].length
        x = self.pos(t, t + 1).expand(cache[0].batch, 1, -1)
        if prev is not None:
            x = x + self.tok_emb(prev)[:, None]
        x = self.drop(x)
        for blk, c in zip(self.blocks, cache):
            x = blk(x, c)
        return self.head(self.ln_f(x))[:, 0]

    @torch.no_grad()
    def generate(self, prefix: Tensor | None = None, length: int | None = None, *, batch: int | None = None,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None,
                 cache: str = "sparse", callback=None) -> Tensor:
        """Sample (B, length) tokens, the first ones given by ``prefix`` (B, P) (or ``batch`` rows from
        scratch). ``cache``: ``sparse`` | ``dense`` | ``none`` (recompute the whole prefix per token).
        ``callback(t)`` runs after position t is sampled (e.g. a progress bar)."""
        n = length or self.cfg.seq_len
        device = self.tok_emb.weight.device
        if prefix is None:
            prefix = torch.zeros(batch or 1, 0, dtype=torch.long, device=device)
        B, P = prefix.shape
        if not 0 <= P < n <= self.cfg.seq_len:
            raise ValueError(f"a prefix of {P} tokens and length {n} need 0 <= prefix < length <= {self.cfg.seq_len}")
        out = torch.zeros(B, n, dtype=torch.long, device=device)
        out[:, :P] = prefix
        caches = None if cache == "none" else self.new_cache(B, n, mode=cache)
        if caches is not None and P:
            self(out[:, :P], cache=caches)
        for t in range(P, n):
            if caches is None:
                logits = self(out[:, : t + 1])[:, t]  # the input at t uses tokens < t only
            else:
                logits = self.step(out[:, t - 1] if t else None, caches)
            out[:, t] = sample_next(logits, temperature, top_k, top_p, generator)
            if callback is not None:
                callback(t)
        return out

    def set_backend(self, backend: str) -> None:
        """Run every attention layer on ``backend`` (checkpoints do not depend on it)."""
        for blk in self.blocks:
            blk.attn.backend = backend

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel() + sum(e.weight.numel() for e in self.pos_emb)
        return n


def compile_network(net: SparseTransformer, mode: str = "model") -> SparseTransformer:
    """torch.compile ``net`` in place (``nn.Module.compile``: parameter names, hence checkpoints,
    are unchanged) with static shapes (a new length or batch compiles once more, never dynamically).

    - ``blocks``: each residual block its own graph (48 guard checks and launches per step);
    - ``model``: the whole network one graph (forward and backward);
    - ``cudagraphs``: the whole network, its forward and backward replayed as CUDA graphs
      (``mode="reduce-overhead"``): no launch or Python cost per kernel. Callers mark each new
      step with ``torch.compiler.cudagraph_mark_step_begin()``.

    Attention plans must be ready before a compiled call: call ``net.prepare(n, device)`` first
    (a missing plan is built in a graph break, not wrongly)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode {mode!r} is unknown; valid: {', '.join(COMPILE_MODES)}")
    if mode == "blocks":
        for blk in net.blocks:
            blk.compile(dynamic=False)
    else:
        net.compile(dynamic=False, mode="reduce-overhead" if mode == "cudagraphs" else None)
    return net
