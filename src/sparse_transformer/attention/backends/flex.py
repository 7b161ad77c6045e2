"""FlexAttention backend (CUDA): block-sparse kernels that skip whole 128x128 tiles.

A naive mask touches every tile for ``stride`` and ``summary``; here each pattern runs in an order
and key set where its allowed pairs are tile-dense:

- natural-order parts (``dense``, ``local``, ``block``, user ``window``/``block`` hints) run over the
  keys as they are: a band of one or two tiles per query tile for ``local``, the own block for
  ``block``;
- ``summary`` keys (c of every l) are gathered into a compact set of c·n/l keys appended to the keys
  (each head its own slice), so the fixed pattern is [own block ∪ gathered summaries] in one softmax;
- ``stride`` runs in OpenAI's transposed order (the sequence viewed as (n/l, l) and transposed):
  causal attention inside contiguous chunks of n/l;
- a union whose parts need different orders (merged ``strided`` = local ∪ stride) runs as two calls
  merged by their log-sum-exps, the shared diagonal counted once (the stride call excludes pairs
  the local call has).

The plans (tiles and block masks, flex_plans.py) are cached per (heads, n, device): steps never
rebuild them and the compiled kernel sees the same mask function every step (no recompiles). This
module runs them: views into the transposed order, the calls, the log-sum-exp merge.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from ..patterns import PRIMITIVES, registry_version
from .common import merge_softmaxes
from .flex_plans import TILE, GroupPlan, computed_tiles, groups, plan_for

Tensor = torch.Tensor

try:  # torch >= 2.5
    from torch.nn.attention.flex_attention import flex_attention
except ImportError:  # pragma: no cover
    flex_attention = None

try:
    from torch.nn.attention.flex_attention import AuxRequest
except ImportError:  # torch < 2.9 spells it return_lse=True
    AuxRequest = None


def available() -> bool:
    return flex_attention is not None and torch.cuda.is_available()


_compiled = None


def _raise_recompile_limit() -> None:
    """One compiled entry per (mask, length, head dim), and per block pattern in a compiled model: a
    model with a few patterns and lengths needs a handful; past the limit dynamo silently falls
    back to the slow eager path, so raise it."""
    import torch._dynamo

    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 64))


def _flex():
    """flex_attention compiled once per process (eager flex materialises the scores)."""
    global _compiled
    if _compiled is None:
        _raise_recompile_limit()
        _compiled = torch.compile(flex_attention, dynamic=False)
    return _compiled


# Tests set this False to check the masks and call structure on a CPU with eager FlexAttention
# (forward only; eager ignores the tile lists, which tests check separately).
COMPILE = True


_merge = None


def _merge_compiled(outs, lses):
    """The log-sum-exp merge, compiled into fused kernels (eager it is a dozen passes over n·d)."""
    global _merge
    if not COMPILE or torch.compiler.is_compiling():  # inside a compiled model: part of its graph
        return merge_softmaxes(outs, lses)
    if _merge is None:
        _merge = torch.compile(merge_softmaxes, dynamic=False)
    return _merge(outs, lses)


def _call(q, k, v, block_mask, scale, kernel_options=None):
    # eager: our own compiled flex_attention; inside a compiled model, the plain one is traced into its graph
    fn = _flex() if COMPILE and not torch.compiler.is_compiling() else flex_attention
    if AuxRequest is not None:
        out, aux = fn(q, k, v, block_mask=block_mask, scale=scale, return_aux=AuxRequest(lse=True), kernel_options=kernel_options)
        return out, aux.lse
    return fn(q, k, v, block_mask=block_mask, scale=scale, return_lse=True, kernel_options=kernel_options)


# ------------------------------------------------------------------------------------------------
def _to_residue_view(x: Tensor, w: int) -> Tensor:
    """(B, H, n, d) -> (B, l*H, n/l, d): a view when x is a transposed contiguous (B, n, H, d)."""
    xt = x.transpose(1, 2)
    if not xt.is_contiguous():
        xt = xt.contiguous()
    B, n, H, d = xt.shape
    return xt.view(B, n // w, w, H, d).permute(0, 2, 3, 1, 4).reshape(B, w * H, n // w, d)


def _from_residue_view(o: Tensor, w: int, H: int) -> Tensor:
    """(B, l*H, n/l, d) -> (B, H, n, d) as a view of a contiguous (B, n, H, d) (one copy)."""
    B, _, nb, d = o.shape
    return o.view(B, w, H, nb, d).permute(0, 3, 1, 2, 4).reshape(B, nb * w, H, d).transpose(1, 2)




def _to_transposed(x: Tensor, w: int, n_pad: int) -> Tensor:
    B, H, n, d = x.shape
    if n_pad != n:
        x = torch.nn.functional.pad(x, (0, 0, 0, n_pad - n))
    return x.view(B, H, n_pad // w, w, d).transpose(2, 3).reshape(B, H, n_pad, d)


def _from_transposed(x: Tensor, w: int, n: int) -> Tensor:
    B, H, n_pad, d = x.shape
    return x.view(B, H, w, n_pad // w, d).transpose(2, 3).reshape(B, H, n_pad, d)[:, :, :n]


def _run_group(q, k, v, plan: GroupPlan, scale, kernel_options=None):
    n = q.shape[2]
    outs, lses = [], []
    for call in plan.calls:
        if call.kind == "natural":
            kk, vv = k, v
            if call.columns is not None:
                idx = call.columns[None, :, :, None]
                pad = call.padded - n
                idx = idx.clamp(max=n - 1)  # cells past the end are masked; read any valid row
                kk = torch.cat([torch.nn.functional.pad(k, (0, 0, 0, pad)), torch.gather(k, 2, idx.expand(k.shape[0], -1, -1, k.shape[-1]))], 2)
                vv = torch.cat([torch.nn.functional.pad(v, (0, 0, 0, pad)), torch.gather(v, 2, idx.expand(v.shape[0], -1, -1, v.shape[-1]))], 2)
            o, lse = _call(q, kk, vv, call.block_mask, scale, kernel_options)
        elif call.kind == "residue_view" and call.sdpa and len(plan.calls) == 1:
            # a stride layer alone: causal attention over sequences of n/l, FlashAttention's best case
            w, H = call.width, q.shape[1]
            o = torch.nn.functional.scaled_dot_product_attention(
                _to_residue_view(q, w), _to_residue_view(k, w), _to_residue_view(v, w), is_causal=True, scale=scale)
            outs.append(_from_residue_view(o, w, H))
            lses.append(None)
            continue
        elif call.kind == "residue_view":
            w, H = call.width, q.shape[1]
            o, lse = _call(_to_residue_view(q, w), _to_residue_view(k, w), _to_residue_view(v, w), call.block_mask, scale, kernel_options)
            o = _from_residue_view(o, w, H)
            B, _, nb = lse.shape
            lse = lse.view(B, w, H, nb).permute(0, 2, 3, 1).reshape(B, H, n)
        else:
            w, n_pad = call.width, call.padded
            o, lse = _call(_to_transposed(q, w, n_pad), _to_transposed(k, w, n_pad), _to_transposed(v, w, n_pad),
                           call.block_mask, scale, kernel_options)
            o = _from_transposed(o, w, n)
            lse = _from_transposed(lse.unsqueeze(-1), w, n).squeeze(-1)
        outs.append(o)
        lses.append(lse.unsqueeze(-1))
    if len(outs) == 1:
        return outs[0]
    out, _ = _merge_compiled(outs, lses)
    return out




@dataclass
class Prepared:
    """Everything ``attend`` needs for one layer's heads at one length: per group of heads, their
    indices (a device tensor when there are several groups) and plan; the inverse permutation."""
    n: int
    groups: list
    inverse: Tensor | None


def prepare(heads: tuple, n: int, device) -> Prepared:
    """Plans for every group of heads at length n. Cached: layers with the same heads get the same
    object, so a compiled model's blocks with one pattern share one graph (no recompiles)."""
    _raise_recompile_limit()
    device = torch.device(device)
    key = tuple(tuple(p.key() for p in parts) for parts in heads)
    return _prepared(key, n, str(device), registry_version(), heads)


@lru_cache(maxsize=64)
def _prepared(key: tuple, n: int, device: str, version: int, heads: tuple) -> Prepared:
    device = torch.device(device)
    gs = groups(heads)
    if len(gs) == 1:
        return Prepared(n, [(None, plan_for(gs[0][1], n, device))], None)
    order = [h for idx, _ in gs for h in idx]
    inv = torch.empty(len(order), dtype=torch.long)
    inv[torch.tensor(order)] = torch.arange(len(order))
    return Prepared(n, [(torch.tensor(idx, device=device), plan_for(parts, n, device)) for idx, parts in gs],
                    inv.to(device))


_prepare_outside_graph = torch.compiler.disable(prepare)  # a graph break, only where nothing was prepared


def attend(q: Tensor, k: Tensor, v: Tensor, heads: tuple, scale: float, kernel_options=None,
           prepared: Prepared | None = None) -> Tensor:
    """With ``prepared`` (``prepare`` for this n, built outside torch.compile) the whole call traces
    into a compiled model's graph: plan lookups are attribute reads, flex_attention and the merge
    are traced ops. Without it, plans are looked up (and built once) here."""
    if min(q.shape[-1], v.shape[-1]) < 16:  # FlexAttention's kernels need head dims >= 16
        from ..patterns import warn_once
        from . import blocked

        warn_once(("flex-small-head", q.shape[-1], v.shape[-1]),
                  f"backend 'flex' needs head dims >= 16 (got {q.shape[-1]} and {v.shape[-1]}): running 'blocked' instead")
        return blocked.attend(q, k, v, heads, scale)
    if q.device.type != "cuda" and COMPILE and not torch.compiler.is_compiling():
        raise ValueError("attention.backend 'flex' needs a CUDA device (FlexAttention has no backward on CPU); use blocked")
    n = q.shape[2]
    if prepared is None or prepared.n != n:
        prepared = _prepare_outside_graph(heads, n, q.device)
    if prepared.inverse is None:
        return _run_group(q, k, v, prepared.groups[0][1], scale, kernel_options)
    pieces = [_run_group(q.index_select(1, sel), k.index_select(1, sel), v.index_select(1, sel), plan, scale, kernel_options)
              for sel, plan in prepared.groups]
    return torch.cat(pieces, 1).index_select(1, prepared.inverse)




__all__ = ["attend", "available", "computed_tiles", "plan_for", "prepare", "Prepared", "TILE", "PRIMITIVES"]
