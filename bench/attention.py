"""Attention benchmark: one causal attention layer, forward and forward+backward, for each sparse
pattern on each sparse backend, against dense causal attention through SDPA, in the same run on the
same card.

    PYTHONPATH=src python3 bench/attention.py [--quick] [--backends flex,triton] [--dtypes bf16,fp16]
        [--qk-dim 32] [--long] [--variants] [--out bench/results] [--tag=-name]

The dense baseline is the fastest dense kernel at each shape, not a chosen one: SDPA's default choice
and each of cuDNN, FlashAttention and memory-efficient attention are timed (a kernel that refuses the
inputs is recorded with its error), and the fastest in forward+backward is the baseline
(``dense_kernel`` in every record of the shape). Every arm takes q, k, v the way the model makes
them: (B, H, n, d) views of contiguous (B, n, H, d) tensors, the upstream gradient likewise, and
calls attention the way the layer does: prepared once (triton's spec, flex's block masks), then
attend(q, k, v, ..., prepared=state) per call.

Each arm is timed two ways, both for every arm, dense included:
- ``fwd_ms``/``fwdbwd_ms`` (eager): events around one call, synchronised after it, as an eager
  training step runs it: the host's time to issue the call (Python, autograd, kernel launches) is
  inside whenever it exceeds the GPU's. The speed-up ``speedup_vs_dense`` is of these.
- ``fwd_graph_ms``/``fwdbwd_graph_ms``: the same call captured in a CUDA graph and replayed, as the
  compiled model runs it (``model.compile_mode=cudagraphs``): GPU time only. ``speedup_vs_dense_graph``
  is against the fastest dense kernel timed the same way (of those that could be captured; a failed
  capture is the record's ``graph_error``). On an H200 a sparse layer's call costs
  0.4-1.4 ms of host time, which at n = 16k is a fifth of its eager time.
A sparse backend that is unknown or fails is an error record; the bench goes on.

Runs on the GPU machine with its system python3 (no set-up step): only torch and this package;
without matplotlib there is no PNG. Prints a table and a summary against the targets of issue 14,
writes ``attention-<card><tag>.json`` (a list of records, rewritten after every shape so a killed
run keeps what it measured) and ``attention-<card><tag>.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch.nn import attention as nn_attention

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sparse_transformer.attention import backends, layer_heads  # noqa: E402
from sparse_transformer.attention.backends import flex  # noqa: E402
from sparse_transformer.attention.patterns import attended_pairs  # noqa: E402

PATTERNS = ("local", "stride", "strided", "fixed")  # strided and fixed merged (every head the union)
SUMMARY = 32  # c of fixed
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# SDPA's own choice first: on a tie in fwd+bwd time the earlier kernel wins
DENSE_KERNELS = {"default": None, "cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION",
                 "efficient": "EFFICIENT_ATTENTION"}
TOKENS = 128 * 16384  # batch*heads*n held constant: B*H = 128 at n = 16k
HEADS = 16
LONG_LENGTHS = (262144, 1048576)  # --long: one layer, B 1, H 8, strided (dense up to LONG_DENSE_MAX)
LONG_DENSE_MAX = 262144
# issue 14's targets, fwd+bwd speed-up vs the fastest dense kernel at B*H*n = 128*16384, d 64
TARGETS = {16384: dict(local=20, stride=20, strided=10, fixed=2.5),
           65536: dict(local=60, stride=60, strided=25, fixed=5)}
VARIANT_N = 16384  # --variants: flex kernel options for local and strided at this n, head dim 64
VARIANT_OPTIONS = ({"ROWS_GUARANTEED_SAFE": True}, {"BLOCKS_ARE_CONTIGUOUS": True, "ROWS_GUARANTEED_SAFE": True},
                   {"num_warps": 8, "num_stages": 2}, {"BLOCK_M": 64, "BLOCK_N": 64})


def card_name() -> str:
    if not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name().replace("NVIDIA ", "").split()[0].lower()
    return name


def commit() -> str:
    """GIT_COMMIT if set (a copied tree's .git can be stale: the GPU machine's was), else git's HEAD."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True, stderr=subprocess.DEVNULL).strip()
    except Exception:
        return os.environ.get("GIT_COMMIT", "unknown")


def pyplot():
    """matplotlib's pyplot on the headless Agg backend, or None where matplotlib is missing (no PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------
def _repeat(once, warmup: int, rep: int, min_s: float, max_rep: int) -> list[float]:
    """At least `rep` timings of once() after `warmup` calls; short calls get more reps (up to
    max_rep) so the timed reps last about min_s seconds."""
    warm = [once() for _ in range(warmup)]
    est_ms = max(min(warm) if warm else 1.0, 1e-3)
    reps = max(rep, min(max_rep, math.ceil(min_s * 1e3 / est_ms)))
    return [once() for _ in range(reps)]


def cuda_times(fn, warmup=3, rep=20, min_s=0.5, max_rep=100) -> list[float]:
    """Milliseconds of each call of fn, by CUDA events, synchronised after each call."""
    def once():
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        return a.elapsed_time(b)

    return _repeat(once, warmup, rep, min_s, max_rep)


def cpu_times(fn, warmup=3, rep=20, min_s=0.5, max_rep=100) -> list[float]:
    def once():
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3

    return _repeat(once, warmup, rep, min_s, max_rep)


@dataclass
class Env:
    """Where and how arms are timed. ``timer`` (fn -> list of ms) replaces the clock (tests)."""

    device: str = "cuda"
    warmup: int = 3
    rep: int = 20
    min_s: float = 0.5
    max_rep: int = 100
    timer: Callable | None = None
    graphs: bool = True  # also time each arm replayed from a CUDA graph (GPU only)

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def times(self, fn) -> list[float]:
        if self.timer is not None:
            return self.timer(fn)
        return (cuda_times if self.cuda else cpu_times)(fn, self.warmup, self.rep, self.min_s, self.max_rep)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def memory_baseline(self) -> int:
        if not self.cuda:
            return 0
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()

    def peak_gb(self, baseline: int) -> float | None:
        return (torch.cuda.max_memory_allocated() - baseline) / 2**30 if self.cuda else None

    def free(self, collect=False):
        if self.cuda:
            if collect:  # a failed arm's traceback may hold its tensors in reference cycles
                gc.collect()
            torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------
# Shapes, arms, records
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    n: int
    batch: int
    heads: int
    head_dim: int  # d of v (and of q, k unless qk_dim differs)
    qk_dim: int
    dtype: str  # a DTYPES key
    long: bool = False

    @property
    def stride(self) -> int:
        return 2 ** round(math.log2(math.sqrt(self.n)))

    def fields(self) -> dict:
        return dict(n=self.n, stride=self.stride, batch=self.batch, heads=self.heads, head_dim=self.head_dim,
                    qk_dim=self.qk_dim, dtype=str(DTYPES[self.dtype]).replace("torch.", ""), long=self.long)


def _csv(kind):
    return lambda s: [kind(x) for x in s.split(",") if x.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="n = 4096 and 16384 only, head dim 64, fewer repeats")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--tag", default="", help="suffix of the output file names")
    ap.add_argument("--lengths", type=_csv(int), default=None, help="n at head dim 64 (default 4096,16384,65536)")
    ap.add_argument("--extra-head-dims", type=_csv(int), default=None,
                    help="head dims timed at n = 16384 besides 64 (default 32,128; none with --quick)")
    ap.add_argument("--patterns", type=_csv(str), default=list(PATTERNS), help=f"default {','.join(PATTERNS)}")
    ap.add_argument("--backends", type=_csv(str), default=["flex", "triton"],
                    help="sparse backends, each timed on every pattern (default flex,triton)")
    ap.add_argument("--dtypes", type=_csv(str), default=["bf16"], help="bf16 and/or fp16 (default bf16)")
    ap.add_argument("--qk-dim", type=int, default=None, help="head dim of q and k (default: the head dim of v)")
    ap.add_argument("--long", action="store_true", help="also one layer at n = 262,144 and 1,048,576")
    ap.add_argument("--variants", action="store_true", help="flex with other kernel options, local and strided at n = 16k")
    ap.add_argument("--no-graphs", action="store_true", help="skip the CUDA-graph timings (eager timings only)")
    args = ap.parse_args(argv)
    if args.lengths is None:
        args.lengths = [4096, 16384] if args.quick else [4096, 16384, 65536]
    if args.extra_head_dims is None:
        args.extra_head_dims = [] if args.quick else [32, 128]
    for name, given, valid in (("--patterns", args.patterns, PATTERNS + ("dense",)), ("--dtypes", args.dtypes, tuple(DTYPES))):
        bad = [x for x in given if x not in valid]
        if bad or not given:
            ap.error(f"{name} {','.join(bad)!r}: valid are {', '.join(valid)}")
    if not args.backends:
        ap.error("--backends is empty")
    if args.qk_dim is not None and args.qk_dim < 1:
        ap.error("--qk-dim must be positive")
    return args


def plan_shapes(args, tokens=TOKENS, heads=HEADS) -> list[Shape]:
    """Every dtype at (n, 64) for each length and (16384, d) for each extra head dim; --long adds
    B 1, H 8, d 64 shapes for the first dtype."""
    shapes = []
    for dt in args.dtypes:
        for n, d in [(n, 64) for n in args.lengths] + [(16384, d) for d in args.extra_head_dims]:
            shapes.append(Shape(n, max(1, tokens // (heads * n)), heads, d, args.qk_dim or d, dt))
    if args.long:
        shapes += [Shape(n, 1, 8, 64, args.qk_dim or 64, args.dtypes[0], long=True) for n in LONG_LENGTHS]
    return shapes


def heads_for(pattern: str, shape: Shape) -> tuple:
    l = shape.stride
    if pattern == "dense":
        return layer_heads("dense", shape.heads, l)
    return layer_heads(pattern, shape.heads, l, summary=SUMMARY, summary_heads=min(4, l // SUMMARY), integration="merged")


def _attend_fn(backend: str, kernel_options: dict | None, heads: tuple, shape: Shape, device) -> Callable:
    """attend(q, k, v) of one arm as the layer calls it (attention/layer.py): prepared once for this
    length, so the timed calls pay what a training step pays, not the planning."""
    scale = shape.qk_dim ** -0.5
    if kernel_options is not None:  # flex with explicit kernel options (--variants)
        state = flex.prepare(heads, shape.n, torch.device(device))
        return lambda q, k, v: flex.attend(q, k, v, heads, scale, kernel_options=kernel_options, prepared=state)
    fn, state = backends.prepare(heads, shape.n, torch.device(device), backend, (shape.qk_dim, shape.head_dim))
    if state is None:
        return lambda q, k, v: fn(q, k, v, heads, scale)
    return lambda q, k, v: fn(q, k, v, heads, scale, prepared=state)


def graph_timings(fwd, fwdbwd, env: Env) -> dict:
    """{fwd, fwdbwd: CUDA-graph replay timings}; a direction that cannot be captured is left out and
    its error kept (the arm still has its eager timings)."""
    out = {}
    for name, fn in (("fwd", fwd), ("fwdbwd", fwdbwd)):
        try:
            out[name] = graph_times(fn, env)
        except Exception as e:  # noqa: BLE001
            out["error"] = f"{name}: {_error_text(e)}"
            env.free(collect=True)
    return out


def graph_times(fn, env: Env) -> list[float]:
    """Milliseconds of replays of fn captured in a CUDA graph (warmed up on a side stream first, as
    capture needs); the graph and its memory pool are freed before returning."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    try:
        return env.times(graph.replay)
    finally:
        del graph
        env.free()


def _sdpa_context(kernel: str | None):
    name = DENSE_KERNELS[kernel] if kernel else None
    return nn_attention.sdpa_kernel(getattr(nn_attention.SDPBackend, name)) if name else contextlib.nullcontext()


def _chosen(grad_fn_name: str) -> str:
    """The SDPA kernel an output came from, read off its autograd node (how default's choice is known)."""
    for key, name in (("Cudnn", "cudnn"), ("Flash", "flash"), ("Efficient", "efficient")):
        if key in grad_fn_name:
            return name
    return grad_fn_name


def base_record(shape: Shape, pattern: str, backend: str, *, sdpa_kernel=None, kernel_options=None, variant=False) -> dict:
    """The keys every record has, measured or not."""
    return dict(pattern=pattern, backend=backend, sdpa_kernel=sdpa_kernel, **shape.fields(),
                summary=SUMMARY if pattern == "fixed" else None, variant=variant,
                kernel_options=(kernel_options or "default") if backend == "flex" else None)


def measured_record(base: dict, *, fwd: list[float], fwdbwd: list[float], pairs: int, tiles: int | None,
                    peak_gb: float | None, recompiles: int, setup_s: float, chosen: str | None = None,
                    graph: dict | None = None) -> dict:
    """A record from raw timings (ms) and counts; ``graph``: fwd and fwdbwd timings of CUDA-graph
    replays, or an error (absent: not timed)."""
    B, dqk, dv = base["batch"], base["qk_dim"], base["head_dim"]
    flops = 2 * pairs * (dqk + dv) * B  # QK^T and PV, 2 flops per multiply-add
    fwd_ms, fb_ms = statistics.median(fwd), statistics.median(fwdbwd)
    return dict(
        base, fwd_ms=round(fwd_ms, 4), fwdbwd_ms=round(fb_ms, 4), fwdbwd_min_ms=round(min(fwdbwd), 4),
        fwdbwd_max_ms=round(max(fwdbwd), 4), reps=len(fwdbwd),
        useful_tflops=round(3.5 * flops / (fb_ms * 1e-3) / 1e12, 2), fwd_tflops=round(flops / (fwd_ms * 1e-3) / 1e12, 2),
        pairs=pairs, flop_ratio=round(tiles * flex.TILE**2 / pairs, 3) if tiles else None,
        peak_mem_gb=None if peak_gb is None else round(peak_gb, 3), recompiles_in_timed_steps=int(recompiles),
        setup_s=round(setup_s, 1), sdpa_chosen=chosen if base["backend"] == "sdpa" else None,
        **_graph_fields(graph),
    )


def _graph_fields(graph: dict | None) -> dict:
    g = graph or {}
    out = {f"{k}_graph_ms": round(statistics.median(g[k]), 4) if g.get(k) else None for k in ("fwd", "fwdbwd")}
    return {**out, "graph_error": g["error"]} if g.get("error") else out


def measure(shape: Shape, pattern: str, backend: str, env: Env, *, sdpa_kernel=None, kernel_options=None,
            variant=False) -> tuple[dict, torch.Tensor]:
    """(record, forward output) of one arm; raises whatever the backend raises."""
    from torch._dynamo.utils import counters

    heads = heads_for(pattern, shape)
    fn = _attend_fn(backend, kernel_options, heads, shape, env.device)
    B, n, H, dtype = shape.batch, shape.n, shape.heads, DTYPES[shape.dtype]
    torch.manual_seed(0)  # the same inputs for every arm of a shape (outputs are compared)
    q, k, v = (torch.randn(B, n, H, d, device=env.device, dtype=dtype, requires_grad=True)
               for d in (shape.qk_dim, shape.qk_dim, shape.head_dim))
    gout = torch.randn(B, n, H, shape.head_dim, device=env.device, dtype=dtype).transpose(1, 2)

    def call():  # the model's layout (layer.split_heads): (B, H, n, d) views of (B, n, H, d)
        return fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))

    def fwd():
        with torch.no_grad():
            call()

    def fwdbwd():  # autograd.grad: nothing accumulates into .grad (the model's q, k, v are not leaves)
        torch.autograd.grad(call(), (q, k, v), gout)

    t0 = time.perf_counter()
    out = call()  # compile both graphs and build plans outside the timed region
    chosen = _chosen(type(out.grad_fn).__name__)
    torch.autograd.grad(out, (q, k, v), gout)
    out = out.detach()
    fwd()
    env.sync()
    setup_s = time.perf_counter() - t0
    graphs = counters["stats"]["unique_graphs"]
    fwd_t = env.times(fwd)
    baseline = env.memory_baseline()
    fwdbwd_t = env.times(fwdbwd)
    peak = env.peak_gb(baseline)
    recompiles = counters["stats"]["unique_graphs"] - graphs
    graph = graph_timings(fwd, fwdbwd, env) if env.cuda and env.graphs and env.timer is None else None
    tiles = flex.computed_tiles(heads, n) if backend == "flex" else None  # flop_ratio: flex's plans only
    base = base_record(shape, pattern, backend, sdpa_kernel=sdpa_kernel, kernel_options=kernel_options, variant=variant)
    rec = measured_record(base, fwd=fwd_t, fwdbwd=fwdbwd_t, pairs=attended_pairs(heads, n), tiles=tiles, peak_gb=peak,
                          recompiles=recompiles, setup_s=setup_s, chosen=chosen, graph=graph)
    return rec, out


def _error_text(e: BaseException, caught=()) -> str:
    # SDPA says why a kernel refused only in warnings: keep them with the error
    why = [str(w.message) for w in caught]
    return " ".join(" ".join([f"{type(e).__name__}: {e}", *dict.fromkeys(why)]).split())[:600]


def run_arm(shape, pattern, backend, env, **kw) -> tuple[dict, torch.Tensor | None]:
    """measure(), or an error record where the backend is unknown, refuses the inputs or fails."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            rec, out = measure(shape, pattern, backend, env, **kw)
        except Exception as e:  # noqa: BLE001  (a failing arm is a result; the bench goes on)
            rec, out = dict(base_record(shape, pattern, backend, **kw), error=_error_text(e, caught)), None
    if "error" not in rec:  # shown as usual, once each (the timed loops repeat them)
        for w in {str(w.message): w for w in caught}.values():
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    env.free(collect="error" in rec)
    return rec, out


def fastest(dense: list[dict], key: str = "fwdbwd_ms") -> dict | None:
    """The dense record fastest in fwd+bwd by ``key`` (the first of equals), None if every kernel
    failed or none has that timing."""
    ok = [r for r in dense if "error" not in r and r.get(key) is not None]
    return min(ok, key=lambda r: r[key]) if ok else None


def target_for(r: dict) -> float | None:
    if r.get("long") or r["head_dim"] != 64 or r["qk_dim"] != 64:
        return None
    return TARGETS.get(r["n"], {}).get(r["pattern"])


def with_baseline(r: dict, best: dict | None, best_graph: dict | None = None) -> dict:
    """r with its speed-ups against the fastest dense kernel `best` (eager) and `best_graph` (fastest
    in CUDA-graph replay), and the issue's target for each."""
    ok = best is not None and "error" not in r
    speedup = round(best["fwdbwd_ms"] / r["fwdbwd_ms"], 2) if ok else None
    ok_graph = best_graph is not None and r.get("fwdbwd_graph_ms")
    speedup_graph = round(best_graph["fwdbwd_graph_ms"] / r["fwdbwd_graph_ms"], 2) if ok_graph else None
    target = target_for(r)
    return dict(
        r, dense_kernel=best and best["sdpa_kernel"], dense_fwdbwd_ms=best and best["fwdbwd_ms"],
        speedup_vs_dense=speedup, fwd_speedup_vs_dense=round(best["fwd_ms"] / r["fwd_ms"], 2) if ok else None,
        ideal_speedup=round(best["pairs"] / r["pairs"], 2) if ok else None, target_speedup=target,
        meets_target=None if target is None or speedup is None else speedup >= target,
        dense_kernel_graph=best_graph and best_graph["sdpa_kernel"],
        dense_fwdbwd_graph_ms=best_graph and best_graph["fwdbwd_graph_ms"], speedup_vs_dense_graph=speedup_graph,
        meets_target_graph=None if target is None or speedup_graph is None else speedup_graph >= target,
    )


def _max_diff(out, ref) -> float:
    return float((out.float() - ref.float()).abs().max())


def bench_shape(shape: Shape, arms: list[tuple], env: Env, meta: dict, *, dense: list[dict] | None = None,
                variant=False, show=partial(print, flush=True)) -> list[dict]:
    """Records of one shape: each dense SDPA kernel (unless `dense` records are given), then each
    (pattern, backend, kernel_options) arm, all against the fastest dense kernel. Each arm's forward
    output is compared with the first of its pattern that ran (max_abs_diff, diff_vs): a fast arm
    that computes something else shows."""
    refs: dict[str, tuple[str, torch.Tensor]] = {}
    new_dense = []
    if dense is None:
        dense = []
        if not (shape.long and shape.n > LONG_DENSE_MAX):
            for kernel in DENSE_KERNELS:
                with _sdpa_context(kernel):
                    rec, out = run_arm(shape, "dense", "sdpa", env, sdpa_kernel=kernel, variant=variant)
                new_dense.append(_compared(rec, out, refs, f"sdpa:{kernel}"))
                del out  # kept only as a reference (in refs)
                show(_row(new_dense[-1]))
        dense = new_dense
    best, best_graph = fastest(dense), fastest(dense, "fwdbwd_graph_ms")
    sparse = []
    for pattern, backend, ko in arms:
        rec, out = run_arm(shape, pattern, backend, env, kernel_options=ko, variant=variant)
        sparse.append(_compared(rec, out, refs, backend))
        del out
        show(_row(with_baseline(sparse[-1], best, best_graph)))
    refs.clear()
    env.free()
    return [with_baseline({**r, **meta}, best, best_graph) for r in new_dense + sparse]


def _compared(rec, out, refs, name) -> dict:
    rec = dict(rec, max_abs_diff=None, diff_vs=None)
    if out is not None:
        if rec["pattern"] in refs:
            rec["diff_vs"], ref = refs[rec["pattern"]]
            rec["max_abs_diff"] = round(_max_diff(out, ref), 5)
        else:
            refs[rec["pattern"]] = (name, out)
    return rec


# ------------------------------------------------------------------------------------------------
# Output: rows, table, summary, plot
# ------------------------------------------------------------------------------------------------
def _f(x, spec: str) -> str:
    """x formatted, or '-' as wide as the spec where x is None."""
    return format(x, spec) if x is not None else format("-", f">{spec.split('.')[0]}")


def _kernel_label(r: dict) -> str:
    k = r.get("sdpa_kernel")
    return f"default={r['sdpa_chosen']}" if k == "default" and r.get("sdpa_chosen") else str(k)


def _arm_label(r: dict) -> str:
    if r["backend"] == "sdpa":
        return f"sdpa:{_kernel_label(r)}"
    return r["backend"] + ("*" if r.get("variant") else "")


HEADER = (f"{'dtype':8s} {'n':>8s} {'d qk/v':>7s} {'B':>3s} {'pattern':8s} {'backend':18s} {'fwd ms':>9s} "
          f"{'fwd+bwd ms':>10s} {'(min-max)':>19s} {'vs dense':>17s} {'graph ms':>9s} {'vs dense':>17s} {'ideal':>7s} "
          f"{'target':>6s} {'mem GB':>7s} {'max diff':>8s}")


def _row(r: dict) -> str:
    d = f"{r['qk_dim']}/{r['head_dim']}"
    head = f"{r['dtype']:8s} {r['n']:>8d} {d:>7s} {r['batch']:>3d} {r['pattern']:8s} {_arm_label(r):18s}"
    if "error" in r:
        return f"{head} error: {r['error'][:200]}"
    spread = f"({r['fwdbwd_min_ms']:.3f}-{r['fwdbwd_max_ms']:.3f})"
    vs = f"x{r['speedup_vs_dense']:.2f} {r['dense_kernel']}" if r.get("speedup_vs_dense") is not None else "-"
    vs_graph = (f"x{r['speedup_vs_dense_graph']:.2f} {r['dense_kernel_graph']}"
                if r.get("speedup_vs_dense_graph") is not None else "-")
    target = "-" if r.get("target_speedup") is None else f"{r['target_speedup']:g}" + ("" if r["meets_target"] else "!")
    extra = f"  {r['kernel_options']}" if r.get("variant") and r["backend"] == "flex" else ""
    return (f"{head} {r['fwd_ms']:9.3f} {r['fwdbwd_ms']:10.3f} {spread:>19s} {vs:>17s} "
            f"{_f(r.get('fwdbwd_graph_ms'), '9.3f')} {vs_graph:>17s} {_f(r.get('ideal_speedup'), '7.2f')} "
            f"{target:>6s} {_f(r['peak_mem_gb'], '7.2f')} {_f(r.get('max_abs_diff'), '8.4f')}{extra}")


def table(records: list[dict]) -> str:
    """One row per (shape, pattern, backend; each dense kernel), vs dense = fwd+bwd speed-up against
    the fastest dense kernel (named), eager then in CUDA-graph replay; ideal = the attended-pairs
    ratio, target ending in ! = missed (eager)."""
    return "\n".join([HEADER] + [_row(r) for r in records])


def summary(records: list[dict]) -> str:
    """Speed-up vs the fastest dense kernel at n = 16384 and 65536, head dim 64, per backend: the
    issue's target table."""
    lines = ["fwd+bwd speed-up vs the fastest dense kernel, head dim 64: eager / in CUDA-graph replay "
             "(target in brackets, ! = missed)"]
    main = [r for r in records if not r.get("long") and not r.get("variant") and r["head_dim"] == 64]
    for dtype in dict.fromkeys(r["dtype"] for r in main):
        for n in TARGETS:
            here = [r for r in main if r["dtype"] == dtype and r["n"] == n]
            if not here:
                continue
            best = next((r for r in here if r["backend"] == "sdpa" and r["sdpa_kernel"] == r["dense_kernel"]), None)
            dense = f"dense {_kernel_label(best)} {best['fwdbwd_ms']:.2f} ms" if best else "no dense kernel ran"
            graph_best = next((r for r in here if r["backend"] == "sdpa" and r["sdpa_kernel"] == r.get("dense_kernel_graph")), None)
            if graph_best is not None:
                dense += f" / {_kernel_label(graph_best)} {graph_best['fwdbwd_graph_ms']:.2f} ms in a graph"
            lines.append(f"{dtype} n={n} d_qk={here[0]['qk_dim']}: {dense}")
            patterns = list(dict.fromkeys(r["pattern"] for r in here if r["backend"] != "sdpa"))
            lines.append(f"  {'backend':10s}" + "".join(f"{p:>26s}" for p in patterns))
            for backend in dict.fromkeys(r["backend"] for r in here if r["backend"] != "sdpa"):
                cells = []
                for p in patterns:
                    r = next((r for r in here if r["backend"] == backend and r["pattern"] == p), None)
                    if r is None or "error" in r or r["speedup_vs_dense"] is None:
                        cell = "-" if r is None else "error" + ("!" if r.get("target_speedup") else "")  # no result: a miss
                    else:
                        cell = f"{r['speedup_vs_dense']:.2f}x{'!' if r.get('meets_target') is False else ''}"
                        if r.get("speedup_vs_dense_graph") is not None:
                            cell += f" / {r['speedup_vs_dense_graph']:.2f}x{'!' if r.get('meets_target_graph') is False else ''}"
                    if r is not None and r.get("target_speedup") is not None:
                        cell += f" (>={r['target_speedup']:g})"
                    cells.append(f"{cell:>26s}")
                lines.append(f"  {backend:10s}" + "".join(cells))
    return "\n".join(lines)


def plot_lines(records: list[dict], dtype: str, head_dim: int = 64) -> dict[str, dict[int, float]]:
    """label -> {n: fwd+bwd ms}: the fastest dense kernel's time at each n (one line, its label names
    the kernel), then one line per (pattern, backend); main shapes at `dtype` and `head_dim` only."""
    main = [r for r in records if not r.get("long") and not r.get("variant") and "error" not in r
            and r["head_dim"] == head_dim and r["dtype"] == dtype]
    lines: dict[str, dict[int, float]] = {}
    best = sorted((r for r in main if r["backend"] == "sdpa" and r["sdpa_kernel"] == r["dense_kernel"]), key=lambda r: r["n"])
    if best:
        lines["dense, fastest SDPA kernel: " + "/".join(dict.fromkeys(map(_kernel_label, best)))] = {r["n"]: r["fwdbwd_ms"] for r in best}
    for r in main:
        if r["backend"] != "sdpa":
            lines.setdefault(f"{r['pattern']} ({r['backend']})", {})[r["n"]] = r["fwdbwd_ms"]
    return lines


def plot(records: list[dict], path, dtype: str, head_dim: int = 64) -> list[str] | None:
    """fwd+bwd ms against n, log-log, the lines of plot_lines. Returns the legend's labels (None: no
    matplotlib, no PNG)."""
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 5))
    colours, dashes = {}, {}  # a colour per pattern, a line style per backend
    for label, pts in plot_lines(records, dtype, head_dim).items():
        pattern, _, backend = label.partition(" (")
        style = dict(color="black") if label.startswith("dense, ") else dict(
            color=colours.setdefault(pattern, f"C{len(colours)}"),
            linestyle=dashes.setdefault(backend, ("-", "--", ":", "-.")[len(dashes) % 4]))
        ax.plot(*zip(*sorted(pts.items())), marker="o", label=label, **style)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length n")
    ax.set_ylabel("forward+backward ms (B*H*n constant)")
    qk = {r["qk_dim"] for r in records if r["head_dim"] == head_dim and r["qk_dim"] != head_dim}
    card = records[0].get("card", "") if records else ""
    ax.set_title(f"one attention layer, {dtype}, head dim {head_dim}" + (f", d_qk {min(qk)}" if qk else "") + f" — {card}",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    labels = ax.get_legend_handles_labels()[1]
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return labels


# ------------------------------------------------------------------------------------------------
def default_env(args) -> Env:
    """The GPU's timing settings for these arguments (--quick: fewer repeats; --no-graphs)."""
    return Env(rep=5, min_s=0.2, graphs=not args.no_graphs) if args.quick else Env(graphs=not args.no_graphs)


def setup_torch(env: Env) -> None:
    """TF32 matmuls as training sets them, and dynamo's recompile limits raised (every arm and
    shape compiles flex anew)."""
    if env.cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # as training does (float32 matmul precision "high")
    from torch._dynamo import config as dynamo_config

    for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), 1024))


def main(argv=None, *, env: Env | None = None, tokens: int = TOKENS, heads: int = HEADS) -> list[dict]:
    """The bench; tests pass a CPU `env` and small `tokens`/`heads`."""
    args = parse_args(argv)
    if env is None:
        if not torch.cuda.is_available():
            raise SystemExit("bench/attention.py needs a CUDA GPU")
        env = default_env(args)
    setup_torch(env)
    try:
        triton_version = __import__("triton").__version__
    except ImportError:
        triton_version = None
    meta = dict(card=torch.cuda.get_device_name() if env.cuda else "cpu", torch=torch.__version__,
                triton=triton_version, commit=commit())
    card = card_name() if env.cuda else "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / f"attention-{card}{args.tag}.json", out / f"attention-{card}{args.tag}.png"
    print(HEADER, flush=True)
    records = []
    for shape in plan_shapes(args, tokens, heads):
        patterns = ["strided"] if shape.long else args.patterns
        shape_env = replace(env, warmup=1, rep=3, min_s=0.0) if shape.long and env.timer is None else env
        records += bench_shape(shape, [(p, b, None) for p in patterns for b in args.backends], shape_env, meta)
        json_path.write_text(json.dumps(records, indent=1))  # after every shape: a killed run keeps its records
    if args.variants:
        n = VARIANT_N
        shape = Shape(n, max(1, tokens // (heads * n)), heads, 64, args.qk_dim or 64, args.dtypes[0])
        dense = [r for r in records if r["backend"] == "sdpa" and not r["variant"] and not r["long"]
                 and all(r[k] == v for k, v in shape.fields().items())]
        arms = [(p, "flex", ko) for ko in VARIANT_OPTIONS for p in ("local", "strided")]
        records += bench_shape(shape, arms, env, meta, dense=dense or None, variant=True)
        json_path.write_text(json.dumps(records, indent=1))
    print("\n" + table(records) + "\n\n" + summary(records))
    drawn = plot(records, png_path, dtype=str(DTYPES[args.dtypes[0]]).replace("torch.", ""))
    print(f"wrote {json_path}" + (f" and {png_path}" if drawn is not None else " (no matplotlib: no PNG)"))
    return records


if __name__ == "__main__":
    main()
