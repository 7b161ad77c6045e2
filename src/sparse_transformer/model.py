"""The Sparse Transformer network (Child et al. 2019, sections 5-6), top to bottom.

    tokens ─ shift right ─ token embedding + Σ factorized positional embeddings ─ dropout
           ─ N × [ x += dropout(attention(LN(x))) ; x += dropout(FF(LN(x))) ]   (pre-LayerNorm)
           ─ LN ─ logits (zero-initialised)

Attention in block r follows the pattern's integration (patterns.layer_heads). Initialisation is
OpenAI's: every linear weight N(0, 0.125/d_in), biases 0, the attention output projection and the
second FF layer further × 1/sqrt(2N), token embedding std sqrt(0.125/d), each of the n_emb
positional embeddings std sqrt(0.125/(d·n_emb)), logit layer 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import SparseAttention, layer_heads

Tensor = torch.Tensor


@dataclass
class NetConfig:
    """What the network needs (a subset of the run's config, plus the data's shape)."""

    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    ffn_mult: float = 4.0
    qk_ratio: float = 1.0
    dropout: float = 0.0
    emb_dropout: float = 0.0
    recompute: bool = False
    vocab_size: int = 256
    shape: tuple = (8, 32)  # factorized positions: (H, W, C) for images, (n/l, l) for text and audio
    pattern: str = "strided"
    stride: int = 32
    summary: int | None = None
    summary_heads: int = 1
    integration: str = "interleaved"
    layout: list | None = None
    backend: str = "auto"
    extra: dict = field(default_factory=dict)

    @property
    def seq_len(self) -> int:
        return math.prod(self.shape)

    @classmethod
    def from_config(cls, cfg, shape) -> "NetConfig":
        m, a = cfg.model, cfg.attention
        return cls(
            n_layer=m.n_layer, n_head=m.n_head, d_model=m.d_model, ffn_mult=m.ffn_mult, qk_ratio=m.qk_ratio,
            dropout=m.dropout, emb_dropout=m.emb_dropout, recompute=m.recompute, vocab_size=m.vocab_size,
            shape=tuple(int(s) for s in shape), pattern=a.pattern, stride=a.stride, summary=a.summary,
            summary_heads=a.summary_heads, integration=a.integration,
            layout=list(a.layout) if a.layout else None, backend=a.backend,
        )


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

    def __init__(self, cfg: NetConfig, layer: int):
        super().__init__()
        heads = layer_heads(cfg.pattern, cfg.n_head, cfg.stride, layer=layer, summary=cfg.summary,
                            summary_heads=cfg.summary_heads, integration=cfg.integration, layout=cfg.layout)
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = SparseAttention(cfg.d_model, cfg.n_head, heads, qk_ratio=cfg.qk_ratio, backend=cfg.backend)
        self.drop1 = nn.Dropout(cfg.dropout)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.ff = FeedForward(cfg.d_model, cfg.ffn_mult)
        self.drop2 = nn.Dropout(cfg.dropout)
        self.recompute = cfg.recompute

    def _forward(self, x: Tensor) -> Tensor:
        x = x + self.drop1(self.attn(self.ln1(x)))
        return x + self.drop2(self.ff(self.ln2(x)))

    def forward(self, x: Tensor) -> Tensor:
        if self.recompute and self.training and torch.is_grad_enabled():
            # Only the block input is kept; attention and FF are recomputed in backward (paper Fig. 4).
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class SparseTransformer(nn.Module):
    def __init__(self, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.pos_emb = nn.ModuleList(nn.Embedding(size, d) for size in cfg.shape)
        self.register_buffer("coords", self._coords(cfg.shape), persistent=False)  # (n, len(shape))
        self.drop = nn.Dropout(cfg.emb_dropout)
        self.blocks = nn.ModuleList(Block(cfg, r) for r in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.reset_parameters()

    @staticmethod
    def _coords(shape) -> Tensor:
        """Row-major coordinates of every position in the data's shape, e.g. (row, col, channel)."""
        grids = torch.meshgrid(*[torch.arange(s) for s in shape], indexing="ij")
        return torch.stack([g.reshape(-1) for g in grids], dim=-1)

    def reset_parameters(self) -> None:
        N, d = self.cfg.n_layer, self.cfg.d_model
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

    def forward(self, idx: Tensor) -> Tensor:
        """Logits (B, n, vocab) for p(x_t | x_<t) at every position t of ``idx`` (B, n)."""
        if idx.shape[1] > self.coords.shape[0]:
            raise ValueError(f"sequence of {idx.shape[1]} tokens is longer than the model's {self.coords.shape[0]} positions")
        x = self.embed(idx)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x))

    def set_backend(self, backend: str) -> None:
        """Run every attention layer on ``backend`` (checkpoints do not depend on it)."""
        for blk in self.blocks:
            blk.attn.backend = backend

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel() + sum(e.weight.numel() for e in self.pos_emb)
        return n
