"""Triton backend (CUDA): kernels specialised to the paper's patterns (backends/_triton_kernels.py).

Where FlexAttention runs a generic block mask (one program per 128-row tile, a mask function per
score, copies for the transposed stride order and the gathered summary keys), these kernels know
the pattern's structure: ``local`` loops over its band only, ``stride`` reads OpenAI's transposed
order in place with a row stride of l·H·d, merged ``strided`` is a band pass and a stride pass
whose epilogue merges the two softmaxes, and ``fixed`` reads the summary cells in place by index.

A stride pass whose residue sequences are short (n / l <= 128 rows) runs one program per sequence,
forward and backward (the backward computes each pair of tiles once for dq, dk and dv); fp32 with
IEEE dots keeps the row-tile and key-tile kernels (the one-program ones spill heavily there). Flat
pipelined loops over several row tiles (local band) or residues (short stride passes) per program
were tried and measured slower than these on an H200 (bench/results/tune-h200-flat.json); persistent
seq kernels (a program an SM slot walking its tiles as one pipelined loop) are opt-in
(SPARSE_TRANSFORMER_TRITON_PERSISTENT=1): slower or tied on an H200 (bench/results/persist-ab-h200.json).

They are ``torch.library`` custom ops with fake (meta) implementations, so a compiled model traces
them as single nodes (no graph break) and CUDA graphs capture them; autotuning happens at the
first call, which must therefore run before any capture (warm-up steps do). Heads whose parts are
not one of local, stride, strided (local ∪ stride), block, summary or fixed (block ∪ summary), head
dims other than 16/32/64/128, or other dtypes than fp16/bf16/fp32 are not supported here:
``unsupported`` says why (``auto`` then runs flex). fp32 inputs use IEEE dot products unless
``torch.set_float32_matmul_precision`` allows TF32.

On a CPU the kernels run only under ``TRITON_INTERPRET=1`` (set before this module is imported):
that is how the CPU tests check their arithmetic and masks against the float64 reference.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from functools import lru_cache

import torch

Tensor = torch.Tensor
HEAD_DIMS = (16, 32, 64, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LOG2E = 1.4426950408889634


def importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available(device: torch.device | str | None = None) -> bool:
    """Kernels can run on ``device``: CUDA with Triton, or the CPU under the Triton interpreter."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not importable():
        return False
    if dev.type == "cuda":
        return torch.cuda.is_available()
    return dev.type == "cpu" and interpreting()


# ------------------------------------------------------------------------------------------------
# Which heads run how: groups of heads with the same parts, one kernel family each
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Group:
    kind: str  # local | stride | strided | fixed
    heads: tuple  # layer head indices
    width: int = 0  # local window (local, strided)
    stride: int = 0  # l (stride, strided, fixed)
    summary: int = 0  # c (fixed with a summary part)
    block: bool = False  # fixed: the own block part
    has_summary: bool = False  # fixed: the summary part
    slices: tuple = ()  # fixed: each head's summary slice
    slice_mod: int = 1  # fixed: head h takes slice h % slice_mod (the kernels compute it: no device tables)


def _group_of(parts: tuple) -> tuple[str, dict] | str:
    """(kind, parameters) for one head's parts, or why they are not supported."""
    names = tuple(sorted(p.name for p in parts))
    by = {p.name: p for p in parts}
    if names == ("local",):
        return "local", dict(width=by["local"].stride)
    if names == ("stride",):
        return "stride", dict(stride=by["stride"].stride)
    if names == ("local", "stride"):
        return "strided", dict(width=by["local"].stride, stride=by["stride"].stride)
    if names in (("block",), ("summary",), ("block", "summary")):
        ls = {p.stride for p in parts}
        if len(ls) != 1:
            return f"block and summary parts with different strides {sorted(ls)}"
        s = by.get("summary")
        return "fixed", dict(stride=ls.pop(), summary=s.summary if s else 0, block="block" in by, has_summary=s is not None,
                             slices=(s.slice if s else 0,))
    return f"the parts {'+'.join(names)} (the triton kernels run local, stride, strided, block, summary and fixed)"


def plan(heads: tuple) -> tuple[Group, ...] | str:
    """The groups of a layer's heads, or a one-line reason the kernels do not apply."""
    found: dict[tuple, dict] = {}
    for h, parts in enumerate(heads):
        g = _group_of(parts)
        if isinstance(g, str):
            return g
        kind, params = g
        slices = params.pop("slices", ())
        key = (kind, tuple(sorted(params.items())))
        entry = found.setdefault(key, dict(kind=kind, heads=[], slices=[], **params))
        entry["heads"].append(h)
        entry["slices"].extend(slices)
    groups = []
    for e in found.values():
        heads_, slices = tuple(e.pop("heads")), tuple(e.pop("slices"))
        # the kernels take a group as a first head and a count, and a summary slice as h % S (what
        # layer_heads makes), so they read no device table: a CUDA graph pool never owns one
        if heads_ != tuple(range(heads_[0], heads_[0] + len(heads_))):
            return f"heads {list(heads_)} with one pattern that are not consecutive"
        mod = next((m for m in range(1, len(heads_) + max(heads_) + 2) if all(h % m == x for h, x in zip(heads_, slices))), None)
        if mod is None:
            return f"summary slices {list(slices)} of heads {list(heads_)} that are not head % summary_heads"
        groups.append(Group(**e, heads=heads_, slices=slices, slice_mod=mod))
    return tuple(groups)


def unsupported(heads: tuple, dims: tuple[int, int] | None = None, dtype: torch.dtype | None = None,
                device: torch.device | str | None = None) -> str | None:
    """Why the kernels cannot run these heads (head dims (d_qk, d_v), dtype, device), or None."""
    if not importable():
        return "Triton is not installed"
    if device is not None and not available(device):
        return f"device {torch.device(device).type} (the triton kernels need a CUDA GPU)"
    p = plan(heads)
    if isinstance(p, str):
        return p
    if dims is not None and any(d not in HEAD_DIMS for d in dims):
        return f"head dims {dims[0]} (q, k) and {dims[1]} (v): each must be one of {', '.join(map(str, HEAD_DIMS))}"
    if dtype is not None and dtype not in DTYPES:
        return f"dtype {dtype} (fp16, bf16 or fp32)"
    return None


def spec(heads: tuple, fallback: bool = False) -> str:
    """A layer's plan as the string the custom ops take (hashable, a constant to torch.compile).
    ``fallback`` (backend ``auto``): inputs of a dtype the kernels do not take run elsewhere."""
    p = plan(heads)
    if isinstance(p, str):
        raise ValueError(f"attention.backend 'triton' cannot run {p}; use flex or auto")
    return json.dumps({"groups": [asdict(g) for g in p], "fallback": bool(fallback)}, separators=(",", ":"))


@lru_cache(maxsize=256)
def _spec(spec_str: str) -> tuple[tuple[Group, ...], bool]:
    """(groups, fallback) of a prepared spec string."""
    d = json.loads(spec_str)
    groups = tuple(Group(**{**g, "heads": tuple(g["heads"]), "slices": tuple(g["slices"])}) for g in d["groups"])
    return groups, d["fallback"]


def _groups(spec_str: str) -> tuple[Group, ...]:
    return _spec(spec_str)[0]


# ------------------------------------------------------------------------------------------------
# Kernel launch: autotuned on a GPU, fixed small tiles under the interpreter
# ------------------------------------------------------------------------------------------------
INTERPRET_TILES = (16, 16)  # (BM, BN) under TRITON_INTERPRET; tests vary it to cross tile edges
# Autotuning candidates (BM, BN, warps, stages), chosen by SPARSE_TRANSFORMER_TRITON_CONFIGS:
# ``tuned`` (default) the few that won somewhere in bench/tune_kernels.py on an H200; ``one`` the
# first of those (no tuning: GPU tests, fast start); ``wide`` the sweep that picked them.
_WIDE = [(32, 32, 2, 3), (32, 64, 4, 3), (64, 32, 4, 3), (64, 64, 4, 2), (64, 64, 4, 3), (64, 64, 8, 3),
         (128, 32, 4, 3), (128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3)]
_TUNED_FWD = [(64, 64, 4, 2), (64, 32, 4, 3), (128, 64, 4, 3), (32, 32, 2, 3), (64, 64, 4, 3)]
_TUNED_BWD = [(32, 64, 4, 3), (64, 32, 4, 3), (64, 64, 4, 2), (128, 64, 4, 3), (32, 32, 2, 3)]
CONFIG_SETS = {"tuned": dict(fwd=_TUNED_FWD, bwd=_TUNED_BWD), "one": dict(fwd=_TUNED_FWD[:1], bwd=_TUNED_BWD[:1]),
               "wide": dict(fwd=_WIDE, bwd=_WIDE)}
CONFIG_ENV = "SPARSE_TRANSFORMER_TRITON_CONFIGS"
# The one-program forward and backward of a short problem (a stride pass with n / l rows, at most
# SHORT_ROWS; the environment variable lowers it, 0 turns them off): two tiles of T/2 rows (HALF),
# 4 or 8 warps, autotuned. One whole tile of T rows (HALF 0) never won on an H200
# (tune-h200-band.json: 16k stride backward 1.74 vs 1.62 ms) and its fp32 d 128 variant takes
# minutes to compile; the kernels keep it for tiles the interpreter's one tile covers.
SHORT_ROWS_ENV = "SPARSE_TRANSFORMER_TRITON_SHORT_ROWS"
SHORT_ROWS = 128
_SHORT = [(1, 4), (1, 8)]
# The band's one-kernel backward (a local pass with l <= 2·64 + 1; key tiles per program, warps,
# stages autotuned) is opt-in, SPARSE_TRANSFORMER_TRITON_BAND=fused: on an H200 it lost to the dq
# and dk/dv kernels (16k, l 128, d 64: 1.68 vs 1.46 ms; bench/results/tune-h200-band.json): at 255
# registers with spills, two programs an SM, its three dependent pairs a step are latency-bound.
BAND_ENV = "SPARSE_TRANSFORMER_TRITON_BAND"
BAND_TILE = 64
_BAND = [(8, 4, 1), (8, 8, 1), (4, 4, 1), (16, 4, 1), (8, 4, 2)]
# SPARSE_TRANSFORMER_TRITON_PERSISTENT=1 (or fwd, bwd; opt-in: on an H200 slower than the seq kernels
# or tied, both directions, 16k and 64k, d 32 and 64; bench/results/persist-ab-h200.json): the seq passes
# that are not short run on persistent kernels, OCC programs an SM each walking its tiles as one
# pipelined loop (_triton_kernels.py). Candidates (BM, BN, warps, stages, OCC), OCC what fits an SM by the
# registers and shared memory that bench/kernel_resources.py reports for sm_90 at d 64.
PERSISTENT_ENV = "SPARSE_TRANSFORMER_TRITON_PERSISTENT"
# SPARSE_TRANSFORMER_TRITON_FULL_TILES=1 (opt-in until timed on a GPU): the row-tile and key-tile seq
# kernels branch around the mask on tile pairs that every row wholly attends (the band's interior,
# every tile of a stride pass below its diagonal). Compiled for sm_90 (64x64, d 64) a full tile's
# loop body is 345 SASS instructions instead of 436 (the mask's subtract, compare and select are
# 109 of a masked tile's 454); registers go up in some dk/dv candidates (band 64x32: 128 -> 154).
FULL_ENV = "SPARSE_TRANSFORMER_TRITON_FULL_TILES"
# (d 32 fits more: OCC 4-5 where d 64 fits 2-3; 8 warps split a tile's columns over two warpgroups.)
_PERSISTENT_FWD = [(64, 64, 4, 2, 3), (64, 64, 4, 3, 2), (64, 32, 4, 3, 3), (32, 64, 4, 3, 3), (64, 64, 4, 2, 2),
                   (64, 64, 4, 2, 5), (64, 64, 8, 2, 2), (128, 64, 8, 2, 1)]
_PERSISTENT_BWD = [(64, 64, 4, 2, 2), (64, 64, 4, 3, 2), (64, 32, 4, 3, 2), (32, 64, 4, 3, 2), (64, 64, 4, 2, 3),
                   (64, 64, 4, 2, 4), (64, 64, 8, 2, 1)]
INTERPRET_PROGRAMS = 3  # persistent programs under TRITON_INTERPRET: each walks several tiles


def _patch_interpreter() -> None:
    """Triton 3.6's interpreter turns a scalar into a loop bound with ``int(array)``, which NumPy
    >= 2.4 refuses for its 1-element arrays; read the element instead (interpreter only)."""
    from triton.runtime import interpreter

    if getattr(interpreter, "_sparse_transformer_patched", False) or not hasattr(interpreter, "_patch_lang_tensor"):
        return
    original = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched
    interpreter._sparse_transformer_patched = True


@lru_cache(maxsize=None)
def _kernels():
    import triton
    import triton.testing

    if interpreting():
        _patch_interpreter()

    from . import _triton_kernels as K

    def cfg(bm, bn, w, s):
        return triton.Config({"BM": bm, "BN": bn}, num_warps=w, num_stages=s)

    configs = os.environ.get(CONFIG_ENV, "tuned")
    if configs not in CONFIG_SETS:
        raise ValueError(f"{CONFIG_ENV}={configs} is unknown; valid: {', '.join(CONFIG_SETS)}")
    fwd = [cfg(*c) for c in CONFIG_SETS[configs]["fwd"]]
    first = 1 if configs == "one" else None
    short = [triton.Config({"HALF": h}, num_warps=w, num_stages=1) for h, w in _SHORT[:first]]
    band = [triton.Config({"TILE": BAND_TILE, "CH": c}, num_warps=w, num_stages=st) for c, w, st in _BAND[:first]]
    bwd = [cfg(*c) for c in CONFIG_SETS[configs]["bwd"]]
    persistent = {kind: [triton.Config({"BM": bm, "BN": bn, "OCC": occ}, num_warps=w, num_stages=st)
                         for bm, bn, w, st, occ in cands[:first]]
                  for kind, cands in (("fwd", _PERSISTENT_FWD), ("bwd", _PERSISTENT_BWD))}
    seq_key = ["n", "H", "RS", "W", "DQK", "DV", "EXCL"]
    fixed_key = ["n", "H", "L", "C", "DQK", "DV", "HAS_BLOCK"]

    def bench(kernel_call, quantiles):  # shorter than Triton's default (25 + 100 ms per candidate): ms-scale kernels
        return triton.testing.do_bench(kernel_call, warmup=5, rep=25, quantiles=quantiles)

    def tune(fn, configs, key, restore=()):
        if interpreting():
            return fn
        # cache_results: a second process on the machine (tests, then a bench) reuses the choice
        return triton.autotune(configs=configs, key=key, restore_value=list(restore), do_bench=bench,
                               cache_results=True)(fn)

    return dict(
        seq_fwd=tune(K._seq_fwd, fwd, seq_key + ["MERGE", "FULL"], ("O", "LSE")),
        seq_dq=tune(K._seq_bwd_dq, bwd, seq_key + ["ACCUM", "FULL"], ("DQ",)),
        seq_dkdv=tune(K._seq_bwd_dkdv, bwd, seq_key + ["ACCUM", "FULL"], ("DK", "DV_")),
        seq_fwd_short=tune(K._seq_fwd_short, short, seq_key + ["MERGE", "T"], ("O", "LSE")),
        band_bwd=tune(K._band_bwd, band, ["n", "H", "W", "DQK", "DV"]),
        persistent_fwd=tune(K._persistent_fwd, persistent["fwd"], seq_key + ["MERGE", "B"], ("O", "LSE")),
        persistent_dq=tune(K._persistent_dq, persistent["bwd"], seq_key + ["ACCUM", "B"], ("DQ",)),
        persistent_dkdv=tune(K._persistent_dkdv, persistent["bwd"], seq_key + ["ACCUM", "B"], ("DK", "DV_")),
        seq_short=tune(K._seq_bwd_short, short, seq_key + ["ACCUM", "T"], ("DQ", "DK", "DV_")),
        fixed_fwd=tune(K._fixed_fwd, fwd, fixed_key + ["HAS_SUMMARY"]),
        fixed_dq=tune(K._fixed_bwd_dq, bwd, fixed_key + ["HAS_SUMMARY"]),
        fixed_dkdv_own=tune(K._fixed_bwd_dkdv_own, bwd, fixed_key),
        fixed_dkdv_summary=tune(K._fixed_bwd_dkdv_summary, bwd, ["n", "H", "L", "C", "G", "DQK", "DV"], ("DK", "DV_")),
    )


def _launch(name: str, programs, *args, **kw):
    """Launch kernel ``name`` on a 1-D grid of ``programs(BM, BN)`` programs."""
    kern = _kernels()[name]
    if interpreting():
        bm, bn = INTERPRET_TILES
        kern[(programs(bm, bn),)](*args, **kw, BM=bm, BN=bn, num_warps=1)
    else:
        kern[lambda meta: (programs(meta["BM"], meta["BN"]),)](*args, **kw)


def _short_rows(ieee: bool) -> int:
    """The longest problem (rows) the one-program kernels take: SHORT_ROWS on a GPU (tuned up to
    there), two of the interpreter's row tiles under it; the environment variable can only lower it
    (0: off). 0 for fp32 with IEEE dots on a GPU: compiled for sm_90 they spill tens of KB a
    thread and take minutes to compile (the row-tile and key-tile kernels take seconds)."""
    cap = min(int(os.environ.get(SHORT_ROWS_ENV, str(SHORT_ROWS))), SHORT_ROWS)
    if interpreting():
        return min(cap, 2 * INTERPRET_TILES[0])
    return 0 if ieee else cap


def _launch_short(name: str, problems: int, rows: int, *args, **kw):
    """One-program kernel ``name`` over ``problems`` problems of at most ``rows`` rows."""
    from triton import next_power_of_2

    kern = _kernels()[name]
    if interpreting():
        T = max(16, next_power_of_2(rows))
        kern[(problems,)](*args, **kw, T=T, HALF=T > INTERPRET_TILES[0], num_warps=1)
    else:  # at least 32 rows: half a tile is then >= 16, the smallest MMA tile
        kern[(problems,)](*args, **kw, T=max(32, next_power_of_2(rows)))


@lru_cache(maxsize=8)
def _sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _launch_persistent(name: str, tiles, device: torch.device, *args, **kw):
    """Persistent kernel ``name`` on min(tiles(BM, BN), OCC programs an SM) programs."""
    kern = _kernels()[name]
    if interpreting():
        bm, bn = INTERPRET_TILES
        kern[(min(tiles(bm, bn), INTERPRET_PROGRAMS),)](*args, **kw, BM=bm, BN=bn, OCC=1, num_warps=1)
    else:
        kern[lambda meta: (min(tiles(meta["BM"], meta["BN"]), _sms(device) * meta["OCC"]),)](*args, **kw)


def _persistent(ieee: bool, direction: str) -> bool:
    """Whether the seq passes of ``direction`` (fwd, bwd) run on the persistent kernels (opt-in:
    PERSISTENT_ENV 1 for both, or fwd or bwd); not fp32 with IEEE dots on a GPU, where compiled for
    sm_90 they spill 0.5-5 KB a thread (as the one-program kernels do)."""
    return os.environ.get(PERSISTENT_ENV, "0") in ("1", direction) and (interpreting() or not ieee)


def _full_tiles() -> bool:
    """Whether the row-tile and key-tile seq kernels skip the mask on tiles every row wholly attends
    (opt-in until timed: FULL_ENV=1)."""
    return os.environ.get(FULL_ENV, "0") == "1"


def _band_tile() -> int | None:
    """The band kernel's tile (its l may be up to 2·tile + 1), or None where it is turned off."""
    if os.environ.get(BAND_ENV, "split") != "fused":
        return None
    return INTERPRET_TILES[0] if interpreting() else BAND_TILE


def _launch_band(n: int, heads: int, *args, **kw):
    """The band's one-kernel backward over ``heads`` (b, h) sequences of n rows."""
    kern = _kernels()["band_bwd"]
    if interpreting():  # two key tiles a program: every program after the first recomputes its prologue
        tile = INTERPRET_TILES[0]
        kern[(_cdiv(_cdiv(n, tile), 2) * heads,)](*args, **kw, TILE=tile, CH=2, num_warps=1)
    else:
        kern[lambda meta: (_cdiv(_cdiv(n, meta["TILE"]), meta["CH"]) * heads,)](*args, **kw)


def _strides(x: Tensor) -> tuple[int, int, int]:
    """(batch, position, head) strides of a (B, n, H, d) tensor."""
    return x.stride(0), x.stride(1), x.stride(2)


def _ieee(q: Tensor) -> bool:
    return q.dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest"


def _seq_passes(g: Group, n: int) -> list[dict]:
    """The seq-kernel passes of a group: (RS, P, W, EXCL) each; strided's second pass merges/adds."""
    band = dict(RS=1, P=1, W=g.width, EXCL=0)
    col = dict(RS=g.stride, P=min(g.stride, n), W=n + 1, EXCL=0)
    if g.kind == "local":
        return [band]
    if g.kind == "stride":
        return [col]
    return [band, {**col, "EXCL": math.ceil(g.width / g.stride)}]  # keys i - j < width are the band's


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pass_plan(g: Group, p: int, ps: dict, n: int, B: int, H: int, second: str, consts: dict):
    """How pass ``p`` (``ps``) of group ``g`` launches on the seq kernels, alike for the forward and
    both backward kernels: (its int arguments after the strides, its constexprs, the grid over row
    tiles, the grid over key tiles, and (problems, rows) where its problems are short enough for the
    one-program kernels, else None); grids take (BM, BN). ``second`` names the flag of a second pass
    (MERGE forward, ACCUM backward)."""
    rows, nprob = _cdiv(n, ps["RS"]), ps["P"] * B * len(g.heads)
    ints = (n, H, len(g.heads), ps["RS"], ps["P"], ps["W"])
    short = (nprob, rows) if rows <= _short_rows(consts["IEEE"]) else None
    consts = {**consts, "EXCL": ps["EXCL"], second: p > 0}
    return ints, consts, lambda bm, bn: _cdiv(rows, bm) * nprob, lambda bm, bn: _cdiv(rows, bn) * nprob, short


def forward(q: Tensor, k: Tensor, v: Tensor, spec_str: str, scale: float) -> tuple[Tensor, Tensor]:
    """o (B, n, H, dv) and lse (B, H, n, float32, natural log) for q, k (B, n, H, dqk), v (B, n, H, dv)."""
    B, n, H, DQK = q.shape
    DV = v.shape[-1]
    o = torch.empty(B, n, H, DV, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, H, n, dtype=torch.float32, device=q.device)
    common = (*_strides(q), *_strides(k), *_strides(v), *_strides(o))
    for g in _groups(spec_str):
        h0, Hg = g.heads[0], len(g.heads)
        if g.kind == "fixed":
            _launch("fixed_fwd", lambda bm, bn: _cdiv(n, bm) * B * Hg, q, k, v, o, lse, h0, g.slice_mod, *common,
                    n, H, Hg, g.stride, max(g.summary, 1), scale * LOG2E,
                    HAS_BLOCK=g.block, HAS_SUMMARY=g.has_summary, IEEE=_ieee(q), DQK=DQK, DV=DV)
            continue
        for p, ps in enumerate(_seq_passes(g, n)):
            ints, consts, rows, _keys, short = _pass_plan(g, p, ps, n, B, H, "MERGE",
                                                          dict(IEEE=_ieee(q), DQK=DQK, DV=DV))
            if short:
                _launch_short("seq_fwd_short", *short, q, k, v, o, lse, h0, *common, *ints, scale * LOG2E, **consts)
            elif _persistent(_ieee(q), "fwd"):
                _launch_persistent("persistent_fwd", rows, q.device, q, k, v, o, lse, h0, *common, *ints, B,
                                   scale * LOG2E, **consts)
            else:
                _launch("seq_fwd", rows, q, k, v, o, lse, h0, *common, *ints, scale * LOG2E, **consts, FULL=_full_tiles())
    return o, lse


def backward(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, spec_str: str,
             scale: float) -> tuple[Tensor, Tensor, Tensor]:
    B, n, H, DQK = q.shape
    DV = v.shape[-1]
    if do.stride(-1) != 1:
        do = do.contiguous()
    dq, dk, dv = (torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in (q, k, v))
    delta = torch.empty(B, H, n, dtype=torch.float32, device=q.device)
    qkv = (*_strides(q), *_strides(k), *_strides(v))
    for g in _groups(spec_str):
        h0, Hg, S = g.heads[0], len(g.heads), g.slice_mod
        ieee = _ieee(q)
        if g.kind == "fixed":
            L, C = g.stride, max(g.summary, 1)
            fx = dict(IEEE=ieee, DQK=DQK, DV=DV)
            _launch("fixed_dq", lambda bm, bn: _cdiv(n, bm) * B * Hg, q, k, v, o, do, dq, lse, delta, h0, S,
                    *qkv, *_strides(o), *_strides(do), *_strides(dq), n, H, Hg, L, C, scale * LOG2E, scale,
                    HAS_BLOCK=g.block, HAS_SUMMARY=g.has_summary, **fx)
            kv_args = (*qkv, *_strides(do), *_strides(dk), *_strides(dv))
            _launch("fixed_dkdv_own", lambda bm, bn: _cdiv(n, bn) * B * Hg, q, k, v, do, dk, dv, lse, delta, h0, S,
                    *kv_args, n, H, Hg, L, C, scale * LOG2E, scale, HAS_BLOCK=g.block, **fx)
            G = (_cdiv(n, L) - 1) * C  # summary cells with a later block to serve
            if g.has_summary and G > 0:
                _launch("fixed_dkdv_summary", lambda bm, bn: _cdiv(G, bn) * B * Hg, q, k, v, do, dk, dv, lse, delta,
                        h0, S, *kv_args, n, H, Hg, L, C, G, scale * LOG2E, scale, **fx)
            continue
        for p, ps in enumerate(_seq_passes(g, n)):
            ints, consts, rows, keys, short = _pass_plan(g, p, ps, n, B, H, "ACCUM", dict(IEEE=ieee, DQK=DQK, DV=DV))
            shape = (*ints, scale * LOG2E, scale)
            tile = _band_tile()
            one_program = (q, k, v, o, do, dq, dk, dv, lse, delta, h0, *qkv, *_strides(o), *_strides(do), *_strides(dq),
                           *_strides(dk), *_strides(dv))  # what the band and short kernels take first
            if ps["RS"] == 1 and p == 0 and tile and ps["W"] <= 2 * tile + 1:
                _launch_band(n, B * Hg, *one_program, n, H, Hg, ps["W"], scale * LOG2E, scale,
                             IEEE=ieee, DQK=DQK, DV=DV)
                continue
            if short:
                _launch_short("seq_short", *short, *one_program, *shape, **consts)
                continue
            if _persistent(ieee, "bwd"):
                _launch_persistent("persistent_dq", rows, q.device, q, k, v, o, do, dq, lse, delta, h0, *qkv, *_strides(o),
                                   *_strides(do), *_strides(dq), *ints, B, scale * LOG2E, scale, **consts)
                _launch_persistent("persistent_dkdv", keys, q.device, q, k, v, do, dk, dv, lse, delta, h0, *qkv,
                                   *_strides(do), *_strides(dk), *_strides(dv), *ints, B, scale * LOG2E, scale, **consts)
                continue
            full = _full_tiles()
            _launch("seq_dq", rows, q, k, v, o, do, dq, lse, delta, h0, *qkv, *_strides(o), *_strides(do), *_strides(dq),
                    *shape, **consts, FULL=full)
            _launch("seq_dkdv", keys, q, k, v, do, dk, dv, lse, delta, h0, *qkv, *_strides(do), *_strides(dk),
                    *_strides(dv), *shape, **consts, FULL=full)
    return dq, dk, dv


# ------------------------------------------------------------------------------------------------
# Custom ops: opaque to torch.compile (fake implementations give the shapes), autograd-aware
# ------------------------------------------------------------------------------------------------
def _last_dim_contiguous(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


@torch.library.custom_op("sparse_transformer::triton_attention", mutates_args=())
def _attention_op(q: Tensor, k: Tensor, v: Tensor, spec_str: str, scale: float) -> tuple[Tensor, Tensor]:
    return forward(_last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v), spec_str, scale)


@_attention_op.register_fake
def _(q, k, v, spec_str, scale):
    B, n, H, _ = q.shape
    return q.new_empty(B, n, H, v.shape[-1]), q.new_empty(B, H, n, dtype=torch.float32)


@torch.library.custom_op("sparse_transformer::triton_attention_backward", mutates_args=())
def _attention_backward_op(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, spec_str: str,
                           scale: float) -> tuple[Tensor, Tensor, Tensor]:
    return backward(do, _last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v), o, lse, spec_str, scale)


@_attention_backward_op.register_fake
def _(do, q, k, v, o, lse, spec_str, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, spec_str, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse)
    ctx.spec, ctx.scale = spec_str, scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, do, _dlse):
    q, k, v, o, lse = ctx.saved_tensors
    dq, dk, dv = _attention_backward_op(do, q, k, v, o, lse, ctx.spec, ctx.scale)
    return dq, dk, dv, None, None


_attention_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerAttention(torch.autograd.Function):
    """The same forward and backward without the custom op's dispatch, which costs more host time
    per call than a kernel launch (eager training is launch-bound at the models' shapes); the
    custom op is what torch.compile traces."""

    @staticmethod
    def forward(ctx, q, k, v, spec_str, scale):
        q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
        o, lse = forward(q, k, v, spec_str, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.spec, ctx.scale = spec_str, scale
        return o, lse

    @staticmethod
    def backward(ctx, do, _dlse):
        q, k, v, o, lse = ctx.saved_tensors
        return (*backward(do, q, k, v, o, lse, ctx.spec, ctx.scale), None, None)


def _attention(q: Tensor, k: Tensor, v: Tensor, spec_str: str, scale: float) -> tuple[Tensor, Tensor]:
    """(o, lse) for (B, n, H, d) inputs: the custom op under torch.compile, else the Function."""
    if torch.compiler.is_compiling():
        return torch.ops.sparse_transformer.triton_attention(q, k, v, spec_str, scale)
    return _EagerAttention.apply(q, k, v, spec_str, scale)


# ------------------------------------------------------------------------------------------------
# The backend interface
# ------------------------------------------------------------------------------------------------
def prepare(heads: tuple, n: int, device, fallback: bool = False) -> str:
    """The layer's spec (independent of n: the kernels take the length from the tensors)."""
    return spec(heads, fallback)


def _fallback(q, k, v, heads, scale, why: str) -> Tensor:
    from ..patterns import warn_once
    from . import _flex_usable, blocked, flex

    name = "flex" if _flex_usable(q.device) else "blocked"
    warn_once(("triton-fallback", why, name), f"attention.backend=auto: the triton kernels do not run {why}; using {name}")
    return (flex if name == "flex" else blocked).attend(q, k, v, heads, scale)


def attend(q: Tensor, k: Tensor, v: Tensor, heads: tuple, scale: float, prepared: str | None = None,
           fallback: bool = False) -> Tensor:
    """q, k (B, H, n, dqk), v (B, H, n, dv) — views of (B, n, H, d) tensors, as the layer makes
    them — to (B, H, n, dv), a view of a (B, n, H, dv) tensor (the layer's merge of heads is free)."""
    if prepared is None:
        why = unsupported(heads, (q.shape[-1], v.shape[-1]), device=q.device)
        if why:
            raise ValueError(f"attention.backend 'triton' cannot run {why}; use flex or auto")
        prepared = spec(heads, fallback)
    if q.dtype not in DTYPES or not (q.dtype == k.dtype == v.dtype):
        why = f"dtype {q.dtype} (fp16, bf16 or fp32, the same for q, k and v)"
        if _spec(prepared)[1]:
            return _fallback(q, k, v, heads, scale, why)
        raise ValueError(f"attention.backend 'triton' cannot run {why}; use flex or auto")
    o, _ = _attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), prepared, float(scale))
    return o.transpose(1, 2)


def attend_with_lse(q: Tensor, k: Tensor, v: Tensor, heads: tuple, scale: float) -> tuple[Tensor, Tensor]:
    """(o (B, H, n, dv), lse (B, H, n)) — for tests of the merged statistics."""
    o, lse = _attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), spec(heads), float(scale))
    return o.transpose(1, 2), lse
