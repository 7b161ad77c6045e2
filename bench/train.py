"""End-to-end training steps at the paper's shapes: the sparse model against the *same* model with
dense causal attention on the fastest SDPA kernel, both with the same precision (bf16 autocast),
optimizer (fused AdamW), clipping (1.0, ``clip_grad_norm_(foreach=True)``), recompute setting,
compile mode and batch, on one card.

    PYTHONPATH=src python3 bench/train.py [--shapes imagenet64,enwik8,classical] [--modes model,cudagraphs]
        [--batches 2,4,8] [--backend auto] [--steps 10] [--repeats 3] [--time-budget 540]
        [--append bench/results/train-h200.json] [--out bench/results] [--tag -x]
    PYTHONPATH=src python3 bench/train.py --report bench/results/train-h200.json   # table + PNG again, no GPU

Modes: ``eager`` and the three of ``model.compile_network``: ``blocks`` (each block compiled),
``model`` (the whole network one graph), ``cudagraphs`` (that graph replayed as CUDA graphs).

Per (shape, batch), before the dense arm, dense causal SDPA forward+backward is timed at the model's
attention shape (q/k/v transposed views of (B, n, H, d) bf16 tensors, as the model makes them) with
SDPA's default choice and each of cuDNN, flash and efficient; the dense arm runs inside
``sdpa_kernel(<fastest>)`` (no context when the default is fastest; the next fastest if the arm
fails on it) and records ``dense_kernel`` and every kernel's time. The sparse arm runs on
``--backend``; its records say which backends the layers resolved to.

Per arm: 3 warm-up steps (compilation, autotuning, CUDA-graph capture), then ``--steps`` steps timed
with CUDA events (fewer, at least 2, where that would exceed ``--max-timed-s``), ``--repeats`` times
(median and spread), then a few steps under torch.profiler:
``gpu_busy`` = union of the device-kernel intervals per step ÷ the unprofiled median step time (not
a sum of kernel times); kernel time by group and idle time per step. MFU = (6·N_params per token +
the FLOPs of the attended pairs only) × tokens/s ÷ 989 TFLOP/s (H100/H200 SXM dense bf16),
recomputation not counted. Writes ``train-<card><tag>.json`` ({"runs": [...], "meta": {...}}) after
every arm (a cut run keeps what it did), the PNG and a table at the end. Runs on the GPU machine with
its system python3 (torch only; matplotlib for the PNG if present).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import re
import statistics
import sys
import tempfile
import textwrap
import time
import traceback
import warnings
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from attention import card_name, commit, pyplot  # noqa: E402
from sparse_transformer import files  # noqa: E402
from sparse_transformer.attention import backends  # noqa: E402
from sparse_transformer.attention.patterns import attended_pairs  # noqa: E402
from sparse_transformer.config.schema import AttentionConfig, ModelConfig  # noqa: E402
from sparse_transformer.model import COMPILE_MODES, NetSpec, SparseTransformer, compile_network  # noqa: E402

PEAK = 989e12
WARMUP_STEPS = 3
MODES = ("eager", *COMPILE_MODES)

SHAPES = {
    # the paper's ImageNet 64x64 model; integration not stated: OpenAI's CIFAR cycle (chosen)
    "imagenet64": dict(model=dict(n_layer=48, n_head=16, d_model=512), shape=(64, 64, 3), batch=2, recompute=False,
                       attention=dict(pattern="strided", stride=128, layout=["stride", "local", "local", "local"])),
    # enwik8: fixed l = 128, c = 32, merged heads with distinct summary slices
    "enwik8": dict(model=dict(n_layer=30, n_head=8, d_model=512), shape=(96, 128), batch=2, recompute=False,
                   attention=dict(pattern="fixed", stride=128, summary=32, summary_heads=4, integration="merged")),
    # CIFAR-10: 128 layers, d 256, 2 heads, half-size FF and QK, stride 96, the [stride, local x3] cycle
    "cifar10": dict(model=dict(n_layer=128, n_head=2, d_model=256, ffn_mult=2.0, qk_ratio=0.5), shape=(32, 32, 3),
                    attention=dict(pattern="strided", stride=96, layout=["stride", "local", "local", "local"]),
                    batch=4, recompute=False),
    # classical music (conf/exp/classical_music.yaml): n 65,536 as (256, 256), strided l 256 interleaved
    "classical": dict(model=dict(n_layer=48, n_head=16, d_model=512), shape=(256, 256), batch=1, recompute=True,
                      attention=dict(pattern="strided", stride=256, integration="interleaved")),
}
TARGETS = {"imagenet64": 3.5, "enwik8": 2.0, "classical": 20.0}  # sparse ÷ dense tokens/s (issue 14)

# SDPA kernels tried for the dense arm; "default" is SDPA's own choice (no sdpa_kernel context)
DENSE_KERNELS = {"default": None, "cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION"}

# Kernel groups, first match wins (lower-case names). Attention comes before matmul (memory-efficient
# SDPA kernels are "fmha_cutlass...") and before Inductor's "triton_" (flex kernels are
# "triton_tem_fused_flex_attention..."); this package's own @triton.jit kernels count as attention.
GROUPS = (
    ("optimizer", r"adam|multi_tensor_apply|foreach|lpnorm"),  # fused AdamW and the foreach clipping
    ("attention", r"flex_attention|flash|fmha|sdpa|attention|attn|cudnn"),
    ("matmul", r"gemm|gemv|nvjet|xmma|cutlass|cublas|splitkreduce|triton_tem_fused_(?:add)?b?mm"),
    ("triton fused (inductor)", r"^triton_"),
    ("elementwise+copies", r"memcpy|memset|elementwise|at::native|copy|fill"),
)
GROUP_NAMES = [g for g, _ in GROUPS] + ["other"]
DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")  # chrome-trace categories of device work


# ------------------------------------------------------------------------------------------------
# Models and FLOPs
# ------------------------------------------------------------------------------------------------
def net_config(spec: dict, dense: bool, recompute: bool, backend: str = "auto") -> NetSpec:
    """A shape's network: its sparse arm, or the dense arm (the same model, dense attention)."""
    attention = AttentionConfig(**spec["attention"], backend=backend)
    if dense:
        attention = replace(attention, pattern="dense", layout=None, summary=None, backend="auto")
    return NetSpec(ModelConfig(**spec["model"], recompute=recompute), attention, tuple(spec["shape"]))


def build(cfg: NetSpec) -> SparseTransformer:
    return SparseTransformer(cfg.model, cfg.attention, cfg.shape)


def attention_flops_per_step(net: SparseTransformer, n: int, batch: int) -> float:
    """Forward + backward FLOPs of the attended pairs only: 3 × (2·pairs·d_qk + 2·pairs·d_v) per layer."""
    total = 0.0
    cache: dict = {}  # layers share a few head layouts; counting pairs at n = 65,536 takes seconds
    for blk in net.blocks:
        a = blk.attn
        if a.heads not in cache:
            cache[a.heads] = attended_pairs(a.heads, n)
        pairs = cache[a.heads] / a.n_head  # per head, averaged
        dh_qk, dh_v = a.d_qk // a.n_head, a.d_model // a.n_head
        total += 3 * 2 * pairs * (dh_qk + dh_v) * a.n_head
    return total * batch


def resolved_backends(net: SparseTransformer, device) -> list[str]:
    """The backends the layers actually run on: read from each layer's prepared plan (what ``auto``
    or a fallback resolved to), else ``backends.resolve`` per layer."""
    prefix = backends.__name__ + "."
    names = set()
    for blk in net.blocks:
        found = set()
        for plan in blk.attn._prepared.values():
            mod = getattr(plan[0] if isinstance(plan, tuple) else plan, "__module__", "") or ""
            if mod.startswith(prefix):
                found.add(mod[len(prefix):].split(".")[0])
        names |= found or {backends.resolve(blk.attn.backend, blk.attn.heads, torch.device(device))}
    return sorted(names)


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------
def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, steps: int, device) -> float:
    """Seconds per call of fn over ``steps`` calls: CUDA events on a GPU, the wall clock otherwise."""
    if torch.device(device).type == "cuda":
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(steps):
            fn()
        b.record()
        torch.cuda.synchronize()
        return a.elapsed_time(b) / 1e3 / steps
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t) / steps


def sdpa_context(kernel: str | None):
    """``sdpa_kernel(<backend>)`` for a named kernel, no context for SDPA's default."""
    backend = DENSE_KERNELS.get(kernel) if kernel else None
    if backend is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(getattr(SDPBackend, backend))


def time_dense_kernels(B: int, H: int, n: int, d_qk: int, d_v: int, device, rep: int = 5) -> dict:
    """Causal SDPA forward+backward ms per kernel at the model's attention shape and layout (q/k/v
    transposed views of (B, n, H, d) bf16 tensors), or the error a kernel gave (it may not apply)."""
    dtype = torch.bfloat16
    base = [torch.randn(B, n, H, d, device=device, dtype=dtype, requires_grad=True) for d in (d_qk, d_qk, d_v)]
    q, k, v = (t.transpose(1, 2) for t in base)
    gout = torch.randn(B, n, H, d_v, device=device, dtype=dtype).transpose(1, 2)

    def fwdbwd():
        F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=d_qk ** -0.5).backward(gout)

    out = {}
    for name in DENSE_KERNELS:
        try:
            with sdpa_context(name), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "<kernel> not used because ...": the error below says it
                fwdbwd()
                fwdbwd()
                sync(device)
                out[name] = round(statistics.median(timed(fwdbwd, 1, device) for _ in range(rep)) * 1e3, 4)
        except Exception as e:  # noqa: BLE001  "No available kernel", an unsupported head dim, ...
            out[name] = f"error: {str(e).strip().splitlines()[0][:160]}" if str(e).strip() else "error"
    return out


def ranked_kernels(times: dict) -> list[str]:
    """The kernels that ran, fastest first (ties: the earlier, i.e. the default)."""
    ok = {k: v for k, v in times.items() if isinstance(v, (int, float))}
    return sorted(ok, key=ok.get)


def run_dense(name: str, spec: dict, mode: str, batch: int, rc: bool, args, device, times: dict, over_budget) -> dict:
    """The dense arm inside ``sdpa_kernel(<fastest kernel>)``; should the arm fail on it (a kernel
    that times alone but not, say, under CUDA-graph capture), on the next fastest, and so on."""
    failed = {}
    for kernel in ranked_kernels(times) or [None]:
        try:
            with sdpa_context(kernel):
                r = run_arm(name, spec, True, mode, batch, rc, args, device)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001
            traceback.print_exc(limit=4)
            failed[kernel or "default"] = error_text(e)
            release(device)
            if over_budget():
                break
            continue
        r.update(dense_kernel=kernel or "default", dense_kernel_ms=times)
        if failed:
            r["dense_kernels_failed"] = failed
        return r
    raise RuntimeError(f"the dense arm failed on every SDPA kernel tried: {failed}")


# ------------------------------------------------------------------------------------------------
# Profiler: the union of device-kernel intervals, and kernel time by group
# ------------------------------------------------------------------------------------------------
def device_events(trace) -> list[tuple[str, float, float]]:
    """(name, start µs, end µs) of every kernel, memcpy and memset in a chrome trace (a dict with
    "traceEvents" or the list itself)."""
    events = trace.get("traceEvents", []) if isinstance(trace, dict) else trace
    out = []
    for ev in events:
        if ev.get("ph") == "X" and ev.get("cat") in DEVICE_CATEGORIES and "dur" in ev:
            start = float(ev["ts"])
            out.append((ev.get("name", ""), start, start + float(ev["dur"])))
    return out


def union_length(intervals) -> float:
    """Total length covered by (start, end) intervals: overlaps (other streams) count once."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted((s, e) for s, e in intervals if e > s):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def own_kernel_names() -> set[str]:
    """Names of the @triton.jit kernels defined in this package's attention modules (a Triton
    backend's kernels are attention whatever they are called)."""
    try:
        from triton.runtime.jit import KernelInterface  # JITFunction, Autotuner, the interpreter's function
    except ImportError:
        return set()
    names = set()
    for mod_name, mod in list(sys.modules.items()):
        if mod is None or not mod_name.startswith("sparse_transformer.attention"):
            continue
        for obj in list(vars(mod).values()):
            if not isinstance(obj, KernelInterface):
                continue
            for _ in range(4):  # autotune / heuristics wrap the kernel, the kernel the Python function, in .fn
                if not hasattr(obj, "fn"):
                    break
                obj = obj.fn
            names.add(getattr(obj, "__name__", ""))
    return names - {""}


def kernel_group(name: str, own: set[str] = frozenset()) -> str:
    if name in own:
        return "attention"
    low = name.lower()
    for group, pattern in GROUPS:
        if re.search(pattern, low):
            return group
    return "other"


def breakdown(events, steps: int, step_s: float | None, own: set[str] = frozenset()) -> dict:
    """Per step: the union of device intervals (busy ms), kernel ms by group (sums), idle ms (step −
    union) and ``gpu_busy`` = union ÷ step time of the unprofiled run; the top kernels."""
    busy_ms = union_length((s, e) for _, s, e in events) / 1e3 / steps
    groups = dict.fromkeys(GROUP_NAMES, 0.0)
    per_kernel: dict = {}
    for name, s, e in events:
        groups[kernel_group(name, own)] += (e - s) / 1e3 / steps
        per_kernel[name] = per_kernel.get(name, 0.0) + (e - s) / 1e3 / steps
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1])[:8]
    out = dict(kernel_union_ms_per_step=round(busy_ms, 3), kernels_per_step=round(len(events) / steps, 1),
               kernel_ms_per_step={g: round(v, 3) for g, v in groups.items()},
               top_kernels=[dict(name=k[:120], group=kernel_group(k, own), ms_per_step=round(v, 3)) for k, v in top])
    if step_s and events:
        out["gpu_busy"] = round(busy_ms / (step_s * 1e3), 4)
        out["idle_ms_per_step"] = round(step_s * 1e3 - busy_ms, 3)
    else:
        out["gpu_busy"] = None
    return out


def profile_trace(fn, steps: int, device) -> dict:
    """A chrome trace (parsed) of ``steps`` calls of fn under torch.profiler (device activity on a GPU)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.device(device).type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            fn()
        sync(device)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            return json.load(f)


# ------------------------------------------------------------------------------------------------
# One arm
# ------------------------------------------------------------------------------------------------
def make_step(net: SparseTransformer, opt, x: torch.Tensor, mode: str):
    """One training step as both arms run it: bf16 autocast, clipping 1.0 (foreach), fused AdamW.
    Plans are prepared outside the compiled graph; CUDA graphs are told where a step begins."""
    n, device = x.shape[1], x.device
    params = [p for p in net.parameters() if p.requires_grad]

    def step():
        if mode == "cudagraphs":
            torch.compiler.cudagraph_mark_step_begin()
        net.prepare(n, device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = net(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), x.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def run_arm(name: str, spec: dict, dense: bool, mode: str, batch: int, recompute: bool, args, device="cuda") -> dict:
    """Build, compile, warm up, time (repeats) and profile one arm; a record."""
    device = torch.device(device)
    torch._dynamo.reset()  # every arm compiles afresh: no recompile limit reached across arms
    torch.manual_seed(0)
    cfg = net_config(spec, dense, recompute, args.backend)
    n = cfg.seq_len
    net = build(cfg).to(device)
    if mode != "eager":
        compile_network(net, mode)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.01, fused=True)
    x = torch.randint(0, cfg.model.vocab_size, (batch, n), device=device)
    step = make_step(net, opt, x, mode)

    from torch._dynamo.utils import counters

    counters.clear()
    t0 = time.perf_counter()
    for _ in range(WARMUP_STEPS - 1):
        step()
    sync(device)
    t1 = time.perf_counter()
    step()
    sync(device)
    last_warmup_s = time.perf_counter() - t1
    setup_s = time.perf_counter() - t0
    graph_breaks = sum(counters["graph_break"].values())  # compiled: 0 means one graph per block/model
    # slow arms (classical dense: seconds per step) time fewer steps, at least 2 per repeat
    steps = max(2, min(args.steps, int(args.max_timed_s / args.repeats / max(last_warmup_s, 1e-6))))
    if device.type == "cuda":
        torch.cuda.empty_cache()  # drop warm-up leftovers; the graph pools and live tensors stay reserved
        torch.cuda.reset_peak_memory_stats()
    runs = [timed(step, steps, device) for _ in range(args.repeats)]
    loss = step().detach()
    step_s = statistics.median(runs)
    prof_steps = min(args.profile_steps, steps)
    prof = {}
    if prof_steps:
        try:  # a profiler failure costs the diagnostic, not the timing
            prof = breakdown(device_events(profile_trace(step, prof_steps, device)), prof_steps, step_s, own_kernel_names())
        except Exception as e:  # noqa: BLE001
            prof = dict(gpu_busy=None, profile_error=error_text(e))
    params = sum(p.numel() for p in net.parameters())
    tokens = batch * n
    attn_flops = attention_flops_per_step(net, n, batch)
    flops = 6 * params * tokens + attn_flops
    m = cfg.model
    rec = dict(shape=name, arm="dense-sdpa" if dense else cfg.attention.pattern, mode=mode, recompute=recompute, n=n,
               batch=batch, n_layer=m.n_layer, d_model=m.d_model, n_head=m.n_head, params=params,
               backend=resolved_backends(net, device), step_s=round(step_s, 5),
               step_s_runs=[round(s, 5) for s in runs], step_s_spread=round((max(runs) - min(runs)) / step_s, 4),
               steps_timed=steps, repeats=args.repeats, tokens_per_s=round(tokens / step_s),
               mfu=round(flops / step_s / PEAK, 4), attn_flop_share=round(attn_flops / flops, 3),
               # reserved, not allocated: a CUDA graph's private pool is allocated at capture (before the
               # reset) and its replays allocate nothing, so max_memory_allocated misses it
               peak_mem_gb=round(torch.cuda.max_memory_reserved() / 2**30, 2) if device.type == "cuda" else None,
               loss=round(loss.item(), 4), setup_s=round(setup_s, 1), graph_breaks=graph_breaks, profiled_steps=prof_steps,
               **prof)
    del net, opt, step, x, loss
    return rec


def release(device) -> None:
    gc.collect()
    torch._dynamo.reset()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def error_text(e: BaseException) -> str:
    if isinstance(e, torch.OutOfMemoryError):
        return "out of memory"
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}"[:300]


# ------------------------------------------------------------------------------------------------
# Records, summaries, report
# ------------------------------------------------------------------------------------------------
def pair_key(r: dict) -> tuple:
    """What a dense and a sparse record share: (shape, mode, batch, recompute)."""
    return (r["shape"], r["mode"], r.get("batch"), r.get("recompute"))


def compare(dense: dict, sparse: dict) -> None:
    """Add speedup_vs_dense, target_speedup and meets_target to the sparse record."""
    target = TARGETS.get(sparse["shape"])
    sparse["target_speedup"] = target
    if "tokens_per_s" in dense and "tokens_per_s" in sparse:
        sparse["speedup_vs_dense"] = round(sparse["tokens_per_s"] / dense["tokens_per_s"], 3)
        sparse["meets_target"] = None if target is None else sparse["speedup_vs_dense"] >= target


def pairs(recs: list[dict]) -> list[tuple[dict | None, dict | None]]:
    """(dense, sparse) records per (shape, mode, batch, recompute), in first-seen order."""
    out: dict = {}
    for r in recs:
        out.setdefault(pair_key(r), [None, None])[0 if r["arm"] == "dense-sdpa" else 1] = r
    return [tuple(v) for v in out.values()]


def best_batches(recs: list[dict]) -> list[dict]:
    """Per (shape, mode, recompute): the batch that maximises sparse tokens/s, with both arms there."""
    best: dict = {}
    for dense, sparse in pairs(recs):
        if not sparse or "tokens_per_s" not in sparse:
            continue
        key = (sparse["shape"], sparse["mode"], sparse["recompute"])
        if key not in best or sparse["tokens_per_s"] > best[key][1]["tokens_per_s"]:
            best[key] = (dense, sparse)
    out = []
    for (shape, mode, rc), (dense, sparse) in best.items():
        batches = sorted({r["batch"] for r in recs if (r["shape"], r["mode"], r.get("recompute")) == (shape, mode, rc)
                          and "tokens_per_s" in r and r["arm"] != "dense-sdpa"})
        out.append(dict(shape=shape, mode=mode, recompute=rc, batch=sparse["batch"], batches_tried=batches,
                        sparse_tokens_per_s=sparse["tokens_per_s"],
                        dense_tokens_per_s=dense.get("tokens_per_s") if dense else None,
                        speedup_vs_dense=sparse.get("speedup_vs_dense"), target_speedup=sparse.get("target_speedup"),
                        meets_target=sparse.get("meets_target")))
    return out


def _fmt(x, spec: str, none: str = "–") -> str:
    return none if x is None else format(x, spec)


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def row(r: dict) -> str:
    """One arm, as printed while running: figures, then the profiler breakdown."""
    head = f"{r['shape']:10s} {r['arm']:10s} {r['mode']:10s} B={r.get('batch')} rc={r.get('recompute')!s:5s}"
    if "error" in r or "skipped" in r:
        return f"{head} {r.get('error') or 'skipped: ' + r['skipped']}"
    kernel = f" kernel={r['dense_kernel']}" if r["arm"] == "dense-sdpa" else f" backend={'+'.join(r['backend'])}"
    line = (f"{head} n={r['n']} {r['params'] / 1e6:.1f}M{kernel}  step {r['step_s'] * 1e3:.1f} ms "
            f"(±{100 * r['step_s_spread'] / 2:.1f}%, {r['repeats']}×{r['steps_timed']})  {r['tokens_per_s']:,d} tok/s  "
            f"MFU {100 * r['mfu']:.1f}%  mem {_fmt(r['peak_mem_gb'], '.1f')} GB  setup {r['setup_s']} s  "
            f"breaks {r['graph_breaks']}  gpu_busy {_pct(r.get('gpu_busy'))}")
    if r.get("kernels_per_step"):
        groups = ", ".join(f"{g} {v:.1f}" for g, v in r["kernel_ms_per_step"].items() if v >= 0.05)
        line += (f"\n{'':12s}per step: kernels (union) {r['kernel_union_ms_per_step']:.1f} ms + idle "
                 f"{_fmt(r.get('idle_ms_per_step'), '.1f')} ms; by group (ms): {groups}")
    return line


def table(recs: list[dict]) -> str:
    """The final table: one line per (shape, mode, batch, recompute), dense and sparse side by side."""
    lines = ["| shape | mode | batch | recompute | dense tok/s (kernel) | sparse tok/s (backend) | sparse/dense (target) "
             "| MFU dense / sparse | gpu_busy dense / sparse | peak GB dense / sparse |", "|" + "---|" * 10]
    for dense, sparse in pairs(recs):
        d, s = dense or {}, sparse or {}
        any_ = d or s

        def tok(r, what):
            if "tokens_per_s" in r:
                return f"{r['tokens_per_s']:,d} ({what})"
            return r.get("error") or ("skipped" if "skipped" in r else "–")

        ratio = s.get("speedup_vs_dense")
        tgt = s.get("target_speedup")
        verdict = "" if s.get("meets_target") is None else (" ✓" if s["meets_target"] else " ✗")
        lines.append(
            f"| {any_['shape']} | {any_['mode']} | {any_.get('batch')} | {any_.get('recompute')} "
            f"| {tok(d, d.get('dense_kernel'))} | {tok(s, '+'.join(s.get('backend') or []))} "
            f"| {_fmt(ratio, '.2f')}× ({_fmt(tgt, 'g')}×){verdict} "
            f"| {_pct(d.get('mfu'))} / {_pct(s.get('mfu'))} | {_pct(d.get('gpu_busy'))} / {_pct(s.get('gpu_busy'))} "
            f"| {_fmt(d.get('peak_mem_gb'), '.1f')} / {_fmt(s.get('peak_mem_gb'), '.1f')} |")
    return "\n".join(lines)


def plot(recs: list[dict], path: Path) -> None:
    plt = pyplot()
    ps = [(d, s) for d, s in pairs(recs) if (d and "tokens_per_s" in d) or (s and "tokens_per_s" in s)]
    if plt is None or not ps:
        return
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(ps) + 2), 4.8))
    w = 0.38
    for i, (d, s) in enumerate(ps):
        for off, r, color in ((-w / 2, d, "tab:gray"), (w / 2, s, "tab:blue")):
            if r and "tokens_per_s" in r:
                ax.bar(i + off, r["tokens_per_s"] / 1e3, w, color=color)
        if s and s.get("speedup_vs_dense") is not None:
            tgt = f"\n(target {s['target_speedup']:g}×)" if s.get("target_speedup") else ""
            ax.text(i + w / 2, s["tokens_per_s"] / 1e3, f"{s['speedup_vs_dense']:.2f}×{tgt}", ha="center", va="bottom", fontsize=7)
    labels = []
    for d, s in ps:
        r = s if s and "tokens_per_s" in s else d
        kern = d.get("dense_kernel") if d else None
        labels.append(textwrap.fill(f"{r['shape']} {r['mode']} B{r['batch']}{' rc' if r['recompute'] else ''}"
                                    f"{' dense ' + kern if kern else ''}", 16))
    ax.set_xticks(range(len(ps)), labels, fontsize=7)
    ax.set_ylabel("thousand tokens / s")
    top = max(r["tokens_per_s"] for pair in ps for r in pair if r and "tokens_per_s" in r) / 1e3
    ax.set_ylim(0, top * 1.4)  # room for the ratios and the legend above the tallest bar
    ax.bar(0, 0, color="tab:gray", label="dense (fastest SDPA kernel)")
    ax.bar(0, 0, color="tab:blue", label="sparse (ratio to dense, target)")
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    card = next((r.get("card") for pair in ps for r in pair if r and r.get("card")), "")
    width = fig.get_size_inches()[0]
    ax.set_title(textwrap.fill(f"training tokens/s, sparse vs dense, same settings — {card}", int(width * 11)), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(path: Path, recs: list[dict], meta: dict, **extra) -> None:
    files.write_json(path, {"runs": recs, "meta": meta, "best_batch": best_batches(recs), **extra})  # a cut run leaves the last whole file


def report(recs: list[dict], png: Path | None) -> None:
    print("\n" + table(recs))
    best = best_batches(recs)
    if best:
        print("\nbatch that maximises sparse tokens/s (same batch for both arms):")
        for b in best:
            print(f"  {b['shape']} {b['mode']} rc={b['recompute']}: batch {b['batch']} of {b['batches_tried']}: "
                  f"sparse {b['sparse_tokens_per_s']:,d} tok/s, dense {_fmt(b['dense_tokens_per_s'], ',d')}, "
                  f"{_fmt(b['speedup_vs_dense'], '.2f')}× (target {_fmt(b['target_speedup'], 'g')}×)")
    if png is not None:
        plot(recs, png)


# ------------------------------------------------------------------------------------------------
# The longest sequence a small strided model trains at
# ------------------------------------------------------------------------------------------------
def longest(d_model=256, n_layer=4, n_head=4, start=2**20, limit=2**22) -> list[dict]:
    """Longest sequence a ~3M-parameter strided model trains at (one step, recompute, bf16)."""
    out = []
    n = start
    while n <= limit:
        l = 2 ** round(math.log2(math.sqrt(n)))
        model = ModelConfig(n_layer=n_layer, n_head=n_head, d_model=d_model, recompute=True)
        attention = AttentionConfig(pattern="strided", stride=l, integration="interleaved")
        rec = dict(n=n, stride=l, d_model=d_model, n_layer=n_layer)
        try:
            torch.manual_seed(0)
            net = SparseTransformer(model, attention, (n,)).cuda()  # positions (n/l, l)
            rec["params"] = sum(p.numel() for p in net.parameters())
            opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
            x = torch.randint(0, 256, (1, n), device="cuda")
            torch.cuda.reset_peak_memory_stats()
            for _ in range(2):
                t = time.time()
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    logits = net(x)
                loss = F.cross_entropy(logits.float().view(-1, 256), x.view(-1))
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                torch.cuda.synchronize()
            rec.update(ok=True, step_s=round(time.time() - t, 3), peak_mem_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                       loss=round(float(loss), 4))
        except torch.OutOfMemoryError:
            rec.update(ok=False, error="out of memory")
        out.append(rec)
        print("longest", rec, flush=True)
        net = opt = None
        torch.cuda.empty_cache()
        if not rec.get("ok"):
            break
        n *= 2
    return out


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------
def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="imagenet64,enwik8", help=f"comma-separated: {', '.join(SHAPES)}")
    ap.add_argument("--modes", default="model,cudagraphs", help=f"comma-separated: {', '.join(MODES)}")
    ap.add_argument("--backend", default="auto", help="sparse arm's attention backend: auto, flex, triton, ...")
    ap.add_argument("--batches", default="shape", help="comma-separated batch sizes (both arms), or 'shape': "
                    + ", ".join(f"{k} {v['batch']}" for k, v in SHAPES.items()))
    ap.add_argument("--recompute", default="shape", help="shape (each shape's own: classical true, others false), "
                    "true, false or both")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per repeat (after 3 warm-up steps)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per arm (median and spread)")
    ap.add_argument("--max-timed-s", type=float, default=30.0,
                    help="cap on the timed seconds per arm: slow arms time fewer steps (at least 2 per repeat)")
    ap.add_argument("--profile-steps", type=int, default=3, help="steps under torch.profiler for gpu_busy (0: none)")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="seconds: arms not started by then are recorded as skipped")
    ap.add_argument("--append", default=None, help="a train JSON whose runs are kept (those re-run here replaced)")
    ap.add_argument("--longest", action="store_true")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--tag", default="", help="suffix of the output file names")
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: the tests' smoke run
    ap.add_argument("--report", default=None, help="print the table and write the PNG of this JSON; run nothing")
    args = ap.parse_args(argv)
    args.shapes, args.modes = _csv(args.shapes), _csv(args.modes)
    for key, vals, valid in (("--shapes", args.shapes, SHAPES), ("--modes", args.modes, MODES)):
        bad = [v for v in vals if v not in valid]
        if bad or not vals:
            ap.error(f"{key} {','.join(bad) or '(empty)'} is unknown; valid: {', '.join(valid)}")
    if args.batches != "shape":
        try:
            args.batches = [int(b) for b in _csv(args.batches)]
        except ValueError:
            args.batches = []
        if not args.batches or min(args.batches) < 1:
            ap.error("--batches must be 'shape' or comma-separated positive integers, e.g. 2,4,8")
    if args.recompute not in ("shape", "true", "false", "both"):
        ap.error(f"--recompute {args.recompute} is unknown; valid: shape, true, false, both")
    if args.steps < 1 or args.repeats < 1 or args.profile_steps < 0:
        ap.error("--steps and --repeats must be >= 1, --profile-steps >= 0")
    return args


def plan(args) -> list[tuple[str, int, str, bool]]:
    """(shape, batch, mode, recompute) in run order: per shape and batch, every mode and recompute."""
    out = []
    for name in args.shapes:
        spec = SHAPES[name]
        rcs = {"shape": [spec["recompute"]], "true": [True], "false": [False], "both": [False, True]}[args.recompute]
        for batch in ([spec["batch"]] if args.batches == "shape" else args.batches):
            for mode in args.modes:
                for rc in rcs:
                    out.append((name, batch, mode, rc))
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        path = Path(args.report)
        report(json.loads(path.read_text())["runs"], path.with_suffix(".png"))
        return
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench/train.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    meta = dict(card=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", torch=torch.__version__,
                triton=triton_version, commit=commit(), peak_flops=PEAK,
                precision="bf16 autocast, fp32 weights, fused AdamW, clip_grad_norm_(1.0, foreach=True)",
                steps_timed=args.steps, repeats=args.repeats, warmup_steps=WARMUP_STEPS, profile_steps=args.profile_steps,
                backend_requested=args.backend, argv=sys.argv[1:] if argv is None else list(argv))
    card = card_name() if device.type == "cuda" else "cpu"
    out = Path(args.out) / f"train-{card}{args.tag}.json"
    todo = plan(args)
    redo = {(s, m, b, rc) for s, b, m, rc in todo}
    recs = []
    if args.append:
        recs = [r for r in json.loads(Path(args.append).read_text())["runs"] if pair_key(r) not in redo]
    t_start = time.time()
    dense_times: dict = {}  # (shape, batch) -> per-kernel ms

    def over_budget() -> bool:
        return args.time_budget is not None and time.time() - t_start > args.time_budget

    for name, batch, mode, rc in todo:
        spec = SHAPES[name]
        pair = []
        for dense in (True, False):
            base = dict(shape=name, arm="dense-sdpa" if dense else spec["attention"]["pattern"], mode=mode, batch=batch, recompute=rc, **meta)
            if over_budget():
                r = {**base, "skipped": f"time budget of {args.time_budget:g} s spent"}
            else:
                try:
                    if dense and (name, batch) not in dense_times:
                        cfg = net_config(spec, True, rc)
                        m = cfg.model
                        d_qk = round(m.d_model * m.qk_ratio) // m.n_head
                        dense_times[name, batch] = time_dense_kernels(batch, m.n_head, cfg.seq_len, d_qk,
                                                                      m.d_model // m.n_head, device)
                        print(f"dense causal SDPA fwd+bwd at {name} B={batch} (ms): {dense_times[name, batch]}", flush=True)
                    if dense:
                        r = run_dense(name, spec, mode, batch, rc, args, device, dense_times[name, batch], over_budget)
                    else:
                        r = run_arm(name, spec, False, mode, batch, rc, args, device)
                    r.update(meta)
                except Exception as e:  # noqa: BLE001  an arm that fails (OOM, a backend missing) is a result too
                    traceback.print_exc(limit=4)
                    r = {**base, "error": error_text(e)}
                release(device)
            if not dense:
                r["dense_kernel"] = pair[0].get("dense_kernel")
                compare(pair[0], r)
            pair.append(r)
            recs.append(r)
            print(row(r), flush=True)
            write(out, recs, meta)
        s = pair[1]
        if s.get("speedup_vs_dense") is not None:
            print(f"  {name} {mode} B={batch} rc={rc}: sparse/dense tokens/s = {s['speedup_vs_dense']:.2f}× "
                  f"(target {_fmt(s['target_speedup'], 'g')}×)", flush=True)
    extra = {"longest": longest()} if args.longest and not over_budget() else {}
    write(out, recs, meta, **extra)
    report(recs, out.with_suffix(".png"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
