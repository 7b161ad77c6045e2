"""Sampling benchmark: per-token latency and tokens/s vs sequence length, per attention pattern, for
the pattern-aware (sparse) KV cache, a dense KV cache and no cache; attention time apart from the rest.

    PYTHONPATH=src python3 bench/sample.py                 # GPU: batch 64, n = 4k .. 64k, l = 128, c = 32
    PYTHONPATH=src python3 bench/sample.py --quick         # CPU smoke run at tiny sizes (seconds; sets
                                                           # batch 4, l 16, c 4, 2 x 2 heads, d 64)

Needs only torch (no omegaconf, datasets, wandb, Lightning): the network is built from
``model.NetConfig``. Weights and cached keys are random: latency does not depend on values.

What is timed, at the last positions of a sequence of n (the cache holds n - 1 - steps positions
filled with random keys and values, then each step appends one):

- ``step``   one whole decode step: embedding, every block (attention through the cache, FF), logits,
             sampling; wall clock over ``--steps`` steps, synchronised at both ends;
- ``attn``   the attention of every block for one step alone (``KVCache.step``: key plan, gather,
             scores, softmax, weighted sum), timed the same way; ``rest`` = step - attn;
- ``kernel`` (CUDA) the GPU time of the kernels inside ``attn``, summed by the profiler;
- ``none``   no cache: a full forward pass over the n positions per new token.

Target (issue 7): the sparse cache's per-token attention time for ``strided`` grows at most 1.3x from
n = 4k to 64k (``fixed`` grows with n/l by design: c·n/l summary keys).
Writes ``<out>/sample-<card>[-quick][-<modes>].json`` after every point (default out: bench/results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sparse_transformer.attention.backends import resolve  # noqa: E402
from sparse_transformer.model import NetConfig, SparseTransformer, sample_next  # noqa: E402

PATTERNS = ("strided", "fixed", "dense")
MODES = ("sparse", "dense", "none")


def card_name(device) -> str:
    """'h100', 'h200' or 'cpu': the file name's tag (as bench/attention.py names it)."""
    if device.type != "cuda":
        return "cpu"
    return torch.cuda.get_device_name(device).replace("NVIDIA ", "").split()[0].lower()


def commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True, stderr=subprocess.DEVNULL).strip()
    except Exception:
        return os.environ.get("GIT_COMMIT", "unknown")


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(pattern: str, n: int, a, device, dtype) -> SparseTransformer:
    cfg = NetConfig(n_layer=a.layers, n_head=a.heads, d_model=a.d_model, vocab_size=256, shape=(n // a.stride, a.stride),
                    pattern=pattern, stride=a.stride, summary=a.summary if pattern == "fixed" else None,
                    integration=a.integration, backend=a.backend)
    torch.manual_seed(0)
    net = SparseTransformer(cfg)
    torch.nn.init.normal_(net.head.weight, std=0.02)
    return net.to(device=device, dtype=dtype).eval()


def filled_cache(net, B: int, n: int, mode: str, start: int):
    cache = net.new_cache(B, n, mode=mode)
    for c in cache:  # random keys and values for positions 0..start-1, as if a prefix had run
        c.positions(c.k, 0, start).normal_()
        c.positions(c.v, 0, start).normal_()
        c.length = start
    return cache


def keys_per_step(cache, t: int) -> int:
    """Keys the widest head group of any block visits at position t."""
    return max(c.planner.plan(parts, t).size for c in cache for _, parts in c.groups)


def time_cached(net, B: int, n: int, mode: str, a, device) -> dict:
    W, R = a.warmup, a.steps
    start = n - W - R
    g = torch.Generator(device=device).manual_seed(0)
    prev = torch.randint(0, 256, (B,), device=device)
    with torch.no_grad():
        cache = filled_cache(net, B, n, mode, start)
        for i in range(W + R):
            if i == W:
                sync(device)
                t0 = time.perf_counter()
            prev = sample_next(net.step(prev, cache), 1.0, 0, 1.0, g)
        sync(device)
        step_s = (time.perf_counter() - t0) / R
        keys = keys_per_step(cache, n - 1)
        # attention alone, over the same positions: every block's KVCache.step with a fixed query
        blocks = [blk.attn for blk in net.blocks]
        qs = [torch.randn(B, at.n_head, 1, at.d_qk // at.n_head, device=device, dtype=next(net.parameters()).dtype)
              for at in blocks]

        def attention(t):
            for at, c, q in zip(blocks, cache, qs):
                c.step(q, t, at.scale)

        for t in range(start, start + W):
            attention(t)
        sync(device)
        t0 = time.perf_counter()
        for t in range(start + W, n):
            attention(t)
        sync(device)
        attn_s = (time.perf_counter() - t0) / R
        kernel_s = kernel_time(lambda: [attention(t) for t in range(start + W, n)], device)
        kernel_s = None if kernel_s is None else kernel_s / R
    return {"step_ms": step_s * 1e3, "attn_ms": attn_s * 1e3, "rest_ms": (step_s - attn_s) * 1e3,
            "kernel_ms": None if kernel_s is None else kernel_s * 1e3, "tokens_per_s": B / step_s, "keys_per_step": keys}


def kernel_time(fn, device) -> float | None:
    """Seconds of GPU kernel time inside fn (CUDA only, from the profiler), or None."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            sync(device)
    except Exception as e:  # no CUPTI and the like: wall time still reported
        print(f"(kernel times unavailable: {type(e).__name__}: {e})", file=sys.stderr)
        return None
    total = 0.0
    for e in prof.key_averages():
        total += getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0)
    return total * 1e-6


def time_uncached(net, B: int, n: int, a, device) -> dict:
    """One full forward pass of (B, n) per new token: the cost of sampling without a cache."""
    x = torch.randint(0, 256, (B, n), device=device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        sample_next(net(x)[:, -1], 1.0, 0, 1.0, g)  # warm-up (plans, kernels)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(a.nocache_steps):
            sample_next(net(x)[:, -1], 1.0, 0, 1.0, g)
        sync(device)
    s = (time.perf_counter() - t0) / a.nocache_steps
    heads = net.blocks[0].attn.heads
    return {"step_ms": s * 1e3, "attn_ms": None, "rest_ms": None, "kernel_ms": None, "tokens_per_s": B / s,
            "keys_per_step": n, "backend": resolve(net.cfg.backend, heads, device)}


def measure(pattern, n, mode, a, device, dtype) -> dict:
    row = {"pattern": pattern, "n": n, "mode": mode, "batch": a.batch}
    if mode == "none" and n > a.nocache_max_n:
        return {**row, "skipped": f"n > --nocache-max-n={a.nocache_max_n}"}
    net = None
    try:
        net = build(pattern, n, a, device, dtype)
        row.update(time_uncached(net, a.batch, n, a, device) if mode == "none" else time_cached(net, a.batch, n, mode, a, device))
    except torch.cuda.OutOfMemoryError:
        row["skipped"] = "out of GPU memory"
    except RuntimeError as e:  # CPU allocation failures and the like: report, go on
        if "memory" not in str(e).lower():
            raise
        row["skipped"] = "out of memory"
    finally:
        del net
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def fmt(v, spec=".3f") -> str:
    return "-" if v is None else format(v, spec)


def table(rows) -> str:
    head = f"{'pattern':8s} {'n':>6s} {'cache':6s} {'keys/step':>9s} {'step ms':>9s} {'attn ms':>9s} {'kernel ms':>9s} {'rest ms':>9s} {'tokens/s':>10s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['pattern']:8s} {r['n']:6d} {r['mode']:6s} skipped: {r['skipped']}")
            continue
        lines.append(f"{r['pattern']:8s} {r['n']:6d} {r['mode']:6s} {r['keys_per_step']:9d} {fmt(r['step_ms']):>9s} "
                     f"{fmt(r['attn_ms']):>9s} {fmt(r['kernel_ms']):>9s} {fmt(r['rest_ms']):>9s} {fmt(r['tokens_per_s'], '.0f'):>10s}")
    return "\n".join(lines)


def flatness(rows, pattern="strided", mode="sparse") -> dict | None:
    """attention time per token at the largest n over the smallest n (the issue's target: <= 1.3)."""
    pts = sorted((r["n"], r) for r in rows if r["pattern"] == pattern and r["mode"] == mode and "skipped" not in r)
    if len(pts) < 2:
        return None
    (n0, a), (n1, b) = pts[0], pts[-1]
    out = {"pattern": pattern, "mode": mode, "n_from": n0, "n_to": n1, "attn_ratio": b["attn_ms"] / a["attn_ms"]}
    if a["kernel_ms"]:
        out["kernel_ratio"] = b["kernel_ms"] / a["kernel_ms"]
    out["target"] = 1.3
    out["met"] = out["attn_ratio"] <= 1.3
    return out


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny CPU-sized run: n 256..1024, batch 4, l 16, c 4")
    p.add_argument("--patterns", default=",".join(PATTERNS))
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--n", default=None, help="comma-separated sequence lengths (default 4096,...,65536; --quick: 256,512,1024)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--stride", type=int, default=128, help="l (the paper's enwik8 value)")
    p.add_argument("--summary", type=int, default=32, help="c for fixed")
    p.add_argument("--integration", default="merged", help="merged: every head attends the pair's union (strided's widest)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--backend", default="auto", help="backend of full passes (no cache): auto = triton (or flex) on CUDA, blocked on CPU")
    p.add_argument("--dtype", default=None, help="bfloat16 (CUDA default) or float32 (CPU default)")
    p.add_argument("--device", default=None)
    p.add_argument("--steps", type=int, default=32, help="timed decode steps per point")
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--nocache-steps", type=int, default=2)
    p.add_argument("--nocache-max-n", type=int, default=65536, help="skip no-cache points above this n")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = p.parse_args(argv)
    if a.quick:
        a.batch, a.stride, a.summary, a.layers, a.heads, a.d_model = 4, 16, 4, 2, 2, 64
        a.steps, a.warmup, a.nocache_steps = 8, 2, 1
    a.n = a.n or ("256,512,1024" if a.quick else "4096,8192,16384,32768,65536")
    a.n = [int(x) for x in a.n.split(",")]
    a.patterns = [x for x in a.patterns.split(",") if x]
    a.modes = [x for x in a.modes.split(",") if x]
    for x in a.patterns:
        if x not in PATTERNS:
            p.error(f"--patterns: {x!r} is not one of {', '.join(PATTERNS)}")
    for x in a.modes:
        if x not in MODES:
            p.error(f"--modes: {x!r} is not one of {', '.join(MODES)}")
    for n in a.n:
        if n % a.stride or n < a.warmup + a.steps + 1:
            p.error(f"--n: {n} must be a multiple of --stride={a.stride} and > warmup + steps")
    return a


def main(argv=None) -> dict:
    a = parse(argv)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, a.dtype) if a.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device {name}; torch {torch.__version__}; {dtype}; batch {a.batch}; l={a.stride}, c={a.summary}; "
          f"{a.layers} blocks x {a.heads} heads, d={a.d_model}; integration {a.integration}", flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    modes = "" if a.modes == list(MODES) else "-" + "+".join(a.modes)
    path = out / f"sample-{card_name(device)}{'-quick' if a.quick else ''}{modes}.json"
    result = {"device": name, "torch": torch.__version__, "dtype": str(dtype), "python": sys.version.split()[0],
              "commit": commit(), "args": {k: v for k, v in vars(a).items() if k != "out"}, "rows": [],
              "flatness": [], "complete": False, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    rows = result["rows"]
    for pattern in a.patterns:
        for n in a.n:
            for mode in a.modes:
                if pattern == "dense" and mode == "dense":
                    continue  # the same cache as sparse for the dense pattern
                rows.append(measure(pattern, n, mode, a, device, dtype))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
                write(path, result)  # after every point: a run cut short keeps what it measured
    print()
    print(table(rows))
    result["flatness"] = [f for f in (flatness(rows, "strided"), flatness(rows, "fixed")) if f]
    for f in result["flatness"]:
        extra = f", kernels {f['kernel_ratio']:.2f}x" if "kernel_ratio" in f else ""
        verdict = ("met" if f["met"] else "NOT met") if f["pattern"] == "strided" else "grows with n/l by design"
        print(f"{f['pattern']} sparse cache: attention per token {f['attn_ratio']:.2f}x from n={f['n_from']} to "
              f"n={f['n_to']}{extra} (target <= 1.3 for strided: {verdict})")
    result["complete"] = True
    write(path, result)
    print(f"wrote {path}")
    return result


def write(path: Path, result: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)


if __name__ == "__main__":
    main()
