"""What may attend to what: the paper's sparse patterns, exactly.

Every mask here is a pure function of broadcastable integer tensors (query index ``i``, key index
``j``) returning True where query i may attend key j. All masks are causal (j <= i).

Primitives (l = stride, c = summary width), following OpenAI's code (see docs/attention.md, "Conventions"):

- ``dense``   every j <= i
- ``local``   0 <= i - j < l                 (l keys including i; the paper's text says l + 1)
- ``stride``  (i - j) mod l == 0
- ``block``   floor(j / l) == floor(i / l)
- ``summary`` j mod l in slice s of width c counted from the block's end (slice 0 = the last c cells;
              the paper's text lists c + 1 cells)

Pairs (the paper-level patterns): ``strided`` = local + stride, ``fixed`` = block + summary.

Each primitive also names a *structure*: which keys a backend must visit for a tile of queries
(a band of the last few blocks, the own block, a fixed set of columns, the keys of the same residue
mod l, or all). Backends use the structure to skip work; the mask decides exactly.
"""

from __future__ import annotations

import difflib
import inspect
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

Tensor = torch.Tensor
MaskFn = Callable[[Tensor, Tensor, Tensor], Tensor]

from .constants import INTEGRATIONS, PAIRS, PRIMITIVES  # noqa: E402  (torch-free, for the config)


class PatternError(ValueError):
    """A pattern argument is invalid; the message names the argument and what is valid."""


# --------------------------------------------------------------------------------------------
# Structures: which keys a query tile must look at (a superset of the allowed keys).
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Structure:
    """How the allowed keys of a primitive are laid out, so a backend can skip the rest.

    kind:
      ``full``     all keys j <= i (dense).
      ``band``     keys in (i - width, i]: the query's tile and the tiles just before it.
      ``block``    keys in the query's own block of ``width`` positions.
      ``columns``  a fixed set of key positions, the same for every query (``columns(n)``).
      ``residue``  keys with the query's residue mod ``width`` (the transposed order makes these
                   contiguous: OpenAI's ``strided_transpose``).
    """

    kind: str
    width: int = 0
    columns: Callable[[int], Tensor] | None = field(default=None, compare=False, hash=False)
    key: tuple = ()  # identifies a columns function (its parameters), for equality and caching

    def __post_init__(self):
        if self.kind not in ("full", "band", "block", "columns", "residue"):
            raise PatternError(f"structure kind {self.kind!r} is unknown: use full, band, block, columns or residue")
        if self.kind in ("band", "block", "residue") and self.width < 1:
            raise PatternError(f"structure {self.kind!r} needs width >= 1, got {self.width}")
        if self.kind == "columns" and self.columns is None:
            raise PatternError("structure 'columns' needs a columns(n) function")


# --------------------------------------------------------------------------------------------
# Parts: one primitive with its parameters, bound to a head. A head attends the union of its parts.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Part:
    """One primitive with concrete parameters, as one head uses it.

    ``name`` is a primitive or a registered user pattern; ``slice`` is the summary slice
    (0 = the last c cells of each block); ``head`` is passed to user mask functions.
    """

    name: str
    stride: int = 1
    summary: int | None = None
    slice: int = 0
    head: int = 0

    def mask(self, i: Tensor, j: Tensor, head: Tensor | None = None) -> Tensor:
        """Bool tensor, True where query i may attend key j (broadcast shapes). ``head`` (a tensor)
        replaces this part's head index for user patterns, e.g. inside a kernel's mask function."""
        l = self.stride
        causal = j <= i
        if self.name == "dense":
            return causal
        if self.name == "local":
            return causal & (i - j < l)
        if self.name == "stride":
            return causal & (torch.remainder(i - j, l) == 0)
        if self.name == "block":
            return causal & (torch.div(i, l, rounding_mode="floor") == torch.div(j, l, rounding_mode="floor"))
        if self.name == "summary":
            c = self.summary
            r = torch.remainder(j, l)
            hi = l - self.slice * c
            return causal & (r >= hi - c) & (r < hi)
        h = head if head is not None else torch.as_tensor(self.head, device=i.device if isinstance(i, Tensor) else None)
        return causal & _USER[self.name].fn(i, j, h).to(torch.bool)

    @property
    def structure(self) -> Structure | None:
        """The keys a backend must visit; None for a user pattern registered without hints."""
        l = self.stride
        if self.name == "dense":
            return Structure("full")
        if self.name == "local":
            return Structure("band", l)
        if self.name == "stride":
            return Structure("residue", l)
        if self.name == "block":
            return Structure("block", l)
        if self.name == "summary":
            c, s = self.summary, self.slice

            def columns(n: int, l=l, c=c, s=s) -> Tensor:
                j = torch.arange(n)
                r = j % l
                return j[(r >= l - (s + 1) * c) & (r < l - s * c)]

            return Structure("columns", 0, columns, key=("summary", l, c, s))
        return _USER[self.name].structure

    def key(self) -> tuple:
        """A hashable identity for caching backend plans."""
        if self.name in _USER:
            return (self.name, self.head, id(_USER[self.name]))
        return (self.name, self.stride, self.summary, self.slice)


HeadParts = tuple  # tuple[Part, ...]: the union one head attends


# --------------------------------------------------------------------------------------------
# User-defined patterns
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UserPattern:
    name: str
    fn: MaskFn
    structure: Structure | None
    doc: str = ""


_USER: dict[str, UserPattern] = {}
_VERSION = [0]  # bumped on every (un)registration, so backends' cached plans never go stale


def registry_version() -> int:
    return _VERSION[0]


def register_pattern(
    name: str,
    fn: MaskFn | None = None,
    *,
    window: int | None = None,
    block: int | None = None,
    residue: int | None = None,
    columns: Callable[[int], Tensor] | None = None,
    overwrite: bool = False,
):
    """Register a pattern ``fn(q_idx, kv_idx, head) -> bool tensor`` under ``name``.

    The function receives broadcastable integer tensors and must be vectorised (no Python
    branching on values); causality (j <= i) is always added. Optional hints let a backend run it
    fast; each promises that every allowed key lies inside it:

    - ``window=w``: allowed keys are within the last w positions (i - w < j <= i);
    - ``block=b``: allowed keys are in the query's own block of b positions;
    - ``residue=l``: allowed keys have the query's residue mod l (run in the transposed order);
    - ``columns=f``: allowed keys are among the positions ``f(n)`` (a 1-D index tensor).

    Without a hint the pattern still works everywhere: CPU backends fall back to the dense
    reference (with a one-time warning) and the GPU backend builds a block mask from ``fn``.
    A hint that does not cover the pattern is caught by ``check_hints``. Usable as a decorator.
    """
    if fn is None:
        return lambda f: register_pattern(
            name, f, window=window, block=block, residue=residue, columns=columns, overwrite=overwrite
        )
    if not isinstance(name, str) or not name.isidentifier():
        raise PatternError(f"pattern name must be an identifier, got {name!r}")
    if name in PRIMITIVES or name in PAIRS:
        raise PatternError(f"pattern name {name!r} is built in; choose another name")
    if name in _USER and not overwrite:
        raise PatternError(f"pattern {name!r} is already registered; pass overwrite=True to replace it")
    try:
        n_params = len(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        n_params = 3
    if n_params != 3:
        raise PatternError(f"pattern {name!r}: the mask function must take (q_idx, kv_idx, head), got {n_params} parameters")
    hints = [(k, v) for k, v in (("window", window), ("block", block), ("residue", residue), ("columns", columns)) if v is not None]
    if len(hints) > 1:
        raise PatternError(f"pattern {name!r}: give at most one hint (window, block, residue or columns), got {[k for k, _ in hints]}")
    structure = None
    if hints:
        k, v = hints[0]
        if k == "columns":
            structure = Structure("columns", 0, v, key=(name, id(v)))
        else:
            if not isinstance(v, int) or v < 1:
                raise PatternError(f"pattern {name!r}: hint {k} must be an int >= 1, got {v!r}")
            structure = Structure({"window": "band", "block": "block", "residue": "residue"}[k], v)
    _USER[name] = UserPattern(name, fn, structure, (fn.__doc__ or "").strip())
    _VERSION[0] += 1
    return fn


def unregister_pattern(name: str) -> None:
    _USER.pop(name, None)
    _VERSION[0] += 1


def registered_patterns() -> list[str]:
    return sorted(_USER)


def pattern_names() -> list[str]:
    """Every name ``attention.pattern`` accepts."""
    return list(PRIMITIVES) + list(PAIRS) + registered_patterns()


def _unknown(kind: str, name, valid) -> PatternError:
    close = difflib.get_close_matches(str(name), list(valid), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return PatternError(f"{kind} {name!r} is unknown{hint}; valid: {', '.join(valid)}")


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def needs_summary(pattern: str) -> bool:
    return pattern in ("summary", "fixed")


def validate(pattern: str, stride: int, summary: int | None = None, summary_heads: int = 1, n: int | None = None) -> None:
    """Raise PatternError with a one-line message naming the bad argument and what is valid."""
    if pattern not in pattern_names():
        raise _unknown("pattern", pattern, pattern_names())
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise PatternError(f"stride must be an int >= 1, got {stride!r}")
    if needs_summary(pattern):
        if summary is None:
            raise PatternError(f"summary must be set for pattern {pattern!r}: an int in 1..stride (the paper uses 8, 16 or 32)")
        if isinstance(summary, bool) or not isinstance(summary, int) or not 1 <= summary <= stride:
            raise PatternError(f"summary must be an int in 1..stride={stride}, got {summary!r}")
        if isinstance(summary_heads, bool) or not isinstance(summary_heads, int) or not 1 <= summary_heads <= stride // summary:
            raise PatternError(
                f"summary_heads must be an int in 1..stride/summary={stride // summary} "
                f"(distinct {summary}-wide slices of a {stride}-long block), got {summary_heads!r}"
            )
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise PatternError(f"sequence length n must be an int >= 1, got {n!r}")


# --------------------------------------------------------------------------------------------
# Head layouts: which parts each head of a layer attends
# --------------------------------------------------------------------------------------------
def _part(name: str, stride: int, summary: int | None, head: int, summary_heads: int) -> Part:
    if name == "summary":
        return Part("summary", stride, summary, head % summary_heads, head)
    if name in _USER:
        return Part(name, stride, summary, 0, head)
    return Part(name, stride, None, 0, head)


def _expand(name: str) -> tuple[str, ...]:
    return PAIRS.get(name, (name,))


def layer_heads(
    pattern: str,
    n_head: int,
    stride: int,
    *,
    layer: int = 0,
    summary: int | None = None,
    summary_heads: int = 1,
    integration: str = "interleaved",
    layout: list[str] | tuple[str, ...] | None = None,
) -> tuple[HeadParts, ...]:
    """The parts each head of residual block ``layer`` attends (a tuple of n_head unions).

    - an explicit ``layout`` cycle wins: block r uses ``layout[r % len(layout)]`` for all heads
      (a pair in a layout means its merged union);
    - ``interleaved``: block r uses part ``r mod 2`` of the pair for every head;
    - ``merged``: every head attends the pair's union;
    - ``multihead``: heads [0, H/2) take the first part, [H/2, H) the second.
    Summary heads use slice ``head % summary_heads``. Primitives and user patterns ignore the
    integration (every head uses them; user functions get the head index).
    """
    if integration not in INTEGRATIONS:
        raise _unknown("integration", integration, INTEGRATIONS)
    if layout:
        names = list(layout)
        for name in names:
            if name not in pattern_names():
                raise _unknown("layout entry", name, pattern_names())
        chosen = names[layer % len(names)]
        validate(chosen, stride, summary, summary_heads)
        return tuple(tuple(_part(p, stride, summary, h, summary_heads) for p in _expand(chosen)) for h in range(n_head))
    validate(pattern, stride, summary, summary_heads)
    parts = _expand(pattern)
    if len(parts) == 1 or integration == "merged":
        return tuple(tuple(_part(p, stride, summary, h, summary_heads) for p in parts) for h in range(n_head))
    if integration == "interleaved":
        name = parts[layer % len(parts)]
        return tuple((_part(name, stride, summary, h, summary_heads),) for h in range(n_head))
    if n_head < 2:
        raise PatternError(f"integration 'multihead' needs n_head >= 2 to split {pattern!r} between heads, got {n_head}")
    half = n_head // 2
    return tuple((_part(parts[0] if h < half else parts[1], stride, summary, h, summary_heads),) for h in range(n_head))


def union_mask(parts: HeadParts, i: Tensor, j: Tensor) -> Tensor:
    m = parts[0].mask(i, j)
    for p in parts[1:]:
        m = m | p.mask(i, j)
    return m


def pattern_mask(
    pattern: str,
    n: int,
    stride: int,
    *,
    summary: int | None = None,
    head: int = 0,
    summary_heads: int = 1,
    device=None,
) -> Tensor:
    """Bool tensor (n, n), True where query i may attend key j, for one head.

    Primitives give their own mask; the pairs ``strided`` and ``fixed`` give the union of their
    two parts (as a merged head attends it). ``head`` picks the summary slice
    ``head % summary_heads`` and is passed to user patterns.
    """
    validate(pattern, stride, summary, summary_heads, n)
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    parts = tuple(_part(p, stride, summary, head, summary_heads) for p in _expand(pattern))
    return union_mask(parts, i, j)


def heads_mask(heads: tuple[HeadParts, ...], n: int, device=None) -> Tensor:
    """Bool tensor (H, n, n): the union each head of a layer attends."""
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    return torch.stack([union_mask(parts, i, j) for parts in heads])


def check_hints(name: str, n: int, n_head: int = 1, stride: int = 1) -> None:
    """Raise PatternError if a user pattern's hint misses keys its mask allows (checked densely at n)."""
    user = _USER[name]
    if user.structure is None:
        return
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    cover = structure_cover(user.structure, i, j, n)
    for h in range(n_head):
        m = Part(name, stride, None, 0, h).mask(i, j)
        bad = m & ~cover
        if bad.any():
            q, k = (int(x) for x in bad.nonzero()[0])
            raise PatternError(f"pattern {name!r}: its hint does not cover query {q} -> key {k} (head {h}); fix the hint or drop it")


def structure_cover(s: Structure, i: Tensor, j: Tensor, n: int) -> Tensor:
    """Dense bool of the keys a structure visits (for tests and hint checks)."""
    causal = j <= i
    if s.kind == "full":
        return causal
    if s.kind == "band":
        return causal & (i - j < s.width)
    if s.kind == "block":
        return causal & (i // s.width == j // s.width)
    if s.kind == "residue":
        return causal & ((i - j) % s.width == 0)
    cols = torch.zeros(n, dtype=torch.bool)
    cols[s.columns(n)] = True
    return causal & cols[j.clamp(max=n - 1)]


_warned: set = set()


def warn_once(key, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


# --------------------------------------------------------------------------------------------
# Counting attended pairs (for FLOPs, MFU and flop ratios)
# --------------------------------------------------------------------------------------------
def _row_count(p: Part, i: Tensor) -> Tensor:
    l = p.stride
    if p.name == "dense":
        return i + 1
    if p.name == "local":
        return torch.clamp(i + 1, max=l)
    if p.name == "stride":
        return i // l + 1
    if p.name == "block":
        return i % l + 1
    c, lo = p.summary, l - (p.slice + 1) * p.summary
    return (i // l) * c + torch.clamp(i % l - lo + 1, min=0, max=c)


def keys_per_query(parts: HeadParts, n: int) -> Tensor:
    """(n,) int64: how many keys each query of one head attends (exact; analytic for the built-ins)."""
    i = torch.arange(n, dtype=torch.int64)
    names = [p.name for p in parts]
    if all(x in PRIMITIVES for x in names):
        if len(parts) == 1:
            return _row_count(parts[0], i)
        if names == ["local", "stride"] and parts[0].stride == parts[1].stride:
            return _row_count(parts[0], i) + _row_count(parts[1], i) - 1  # the diagonal is in both
        if names == ["block", "summary"] and parts[0].stride == parts[1].stride:
            return _row_count(parts[0], i) + (i // parts[0].stride) * parts[1].summary  # own-block cells in both
    out = torch.empty(n, dtype=torch.int64)
    j = torch.arange(n)[None, :]
    for s in range(0, n, 1024):  # chunked: O(n) memory per chunk
        out[s : s + 1024] = union_mask(parts, i[s : s + 1024, None], j).sum(1)
    return out


def attended_pairs(heads: tuple, n: int) -> int:
    """Allowed (query, key) pairs summed over the heads of a layer."""
    return int(sum(int(keys_per_query(parts, n).sum()) for parts in heads))
