"""Attention benchmark: the flex backend's sparse patterns against dense causal FlashAttention
(``scaled_dot_product_attention``), measured in the same run on the same card.

    PYTHONPATH=src python3 bench/attention.py [--quick] [--out bench/results]

Runs on the GPU machine with its system python3 (no set-up step): only torch and this package.
Prints a table and writes ``attention-<card>.json`` (a list of records) and ``attention-<card>.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sparse_transformer.attention import layer_heads  # noqa: E402
from sparse_transformer.attention.backends import flex  # noqa: E402
from sparse_transformer.attention.patterns import attended_pairs  # noqa: E402

PATTERNS = ["dense", "local", "stride", "strided", "fixed"]


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


def bench_ms(fn, warmup=3, rep=10) -> float:
    """Median milliseconds of fn() with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rep):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def heads_for(pattern: str, H: int, l: int, c: int):
    if pattern == "dense":
        return layer_heads("dense", H, l)
    return layer_heads(pattern, H, l, summary=c, summary_heads=min(4, l // c), integration="merged")


def measure(pattern, n, l, c, B, H, d, dtype, backend, rep, kernel_options=None):
    heads = heads_for(pattern, H, l, c)
    if kernel_options is not None:
        def attend(q, k, v, heads, backend):  # noqa: F811  (flex with explicit kernel options)
            return flex.attend(q, k, v, heads, q.shape[-1] ** -0.5, kernel_options=kernel_options)
    else:
        from sparse_transformer.attention import attend
    q, k, v = (torch.randn(B, H, n, d, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    gout = torch.randn(B, H, n, d, device="cuda", dtype=dtype)

    def fwd():
        with torch.no_grad():
            attend(q, k, v, heads, backend=backend)

    def fwdbwd():
        out = attend(q, k, v, heads, backend=backend)
        out.backward(gout)

    fwdbwd()  # compile (both graphs) and build the block masks outside the timed region
    fwd()
    torch.cuda.synchronize()
    from torch._dynamo.utils import counters

    graphs_before = counters["stats"]["unique_graphs"]
    fwd_ms = bench_ms(fwd, rep=rep)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fwdbwd_ms = bench_ms(fwdbwd, rep=rep)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    recompiles = counters["stats"]["unique_graphs"] - graphs_before
    pairs = attended_pairs(heads, n)  # per batch element, summed over heads
    flops = 4 * pairs * d * B  # QK^T and PV, 2 flops per multiply-add
    tiles = flex.computed_tiles(heads, n) if backend == "flex" else None
    return dict(
        pattern=pattern, backend=backend, n=n, stride=l, summary=c if pattern == "fixed" else None, batch=B, heads=H,
        head_dim=d, dtype=str(dtype).replace("torch.", ""), fwd_ms=round(fwd_ms, 4), fwdbwd_ms=round(fwdbwd_ms, 4),
        useful_tflops=round(3.5 * flops / (fwdbwd_ms * 1e-3) / 1e12, 2), fwd_tflops=round(flops / (fwd_ms * 1e-3) / 1e12, 2),
        pairs=pairs, flop_ratio=round(tiles * flex.TILE**2 / pairs, 3) if tiles else None, peak_mem_gb=round(peak, 3),
        recompiles_in_timed_steps=int(recompiles), kernel_options=kernel_options or "default",
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="n = 4096 and 16384 only, head dim 64, fewer repeats")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--long", action="store_true", help="also one layer at n = 262,144 and 1,048,576")
    ap.add_argument("--patterns", default=",".join(PATTERNS))
    ap.add_argument("--variants", action="store_true", help="local and strided at n = 16k with other kernel options")
    ap.add_argument("--lengths", default="4096,16384,65536")
    ap.add_argument("--extra-head-dims", default="32,128", help="head dims timed at n = 16384 besides 64")
    ap.add_argument("--tag", default="", help="suffix of the output file names")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench/attention.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    dtype = torch.bfloat16
    card = card_name()
    meta = dict(card=torch.cuda.get_device_name(), torch=torch.__version__,
                triton=__import__("triton").__version__, commit=commit(),
                sdpa_kernel="flash (torch.nn.attention.sdpa_kernel(FLASH_ATTENTION))", kernel_options="default (BLOCK 128x128)")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    lengths = [4096, 16384] if args.quick else [int(x) for x in args.lengths.split(",") if x]
    extra = [] if args.quick else [int(x) for x in args.extra_head_dims.split(",") if x]
    rep = 5 if args.quick else 10
    tokens = 128 * 16384  # batch*heads*n held constant: B*H = 128 at n = 16k
    H = 16
    shapes = [(n, 64) for n in lengths] + [(16384, d) for d in extra]
    records = []
    patterns = args.patterns.split(",")
    for n, d in shapes:
        B = max(1, tokens // (H * n))
        l = 2 ** round(math.log2(math.sqrt(n)))
        c = 32
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            dense = measure("dense", n, l, c, B, H, d, dtype, "sdpa", rep)
        dense.update(meta)
        dense["dense_fwdbwd_ms"] = dense["fwdbwd_ms"]
        dense["speedup_vs_dense"] = 1.0
        dense["ideal_speedup"] = 1.0
        records.append(dense)
        print(_row(dense), flush=True)
        for pattern in patterns:
            t0 = time.time()
            r = measure(pattern, n, l, c, B, H, d, dtype, "flex", rep)
            r.update(meta)
            r["dense_fwdbwd_ms"] = dense["fwdbwd_ms"]
            r["speedup_vs_dense"] = round(dense["fwdbwd_ms"] / r["fwdbwd_ms"], 2)
            r["fwd_speedup_vs_dense"] = round(dense["fwd_ms"] / r["fwd_ms"], 2)
            r["ideal_speedup"] = round(dense["pairs"] / r["pairs"], 2)
            r["setup_s"] = round(time.time() - t0, 1)
            records.append(r)
            print(_row(r), flush=True)
    if args.variants:
        n, d, l = 16384, 64, 128
        B = tokens // (H * n)
        dense_ms = next(r["fwdbwd_ms"] for r in records if r["pattern"] == "dense" and r["backend"] == "sdpa" and r["n"] == n and r["head_dim"] == d)
        for ko in ({"ROWS_GUARANTEED_SAFE": True}, {"BLOCKS_ARE_CONTIGUOUS": True, "ROWS_GUARANTEED_SAFE": True},
                   {"num_warps": 8, "num_stages": 2}, {"BLOCK_M": 64, "BLOCK_N": 64}):
            for pattern in ("local", "strided"):
                try:
                    r = measure(pattern, n, l, 32, B, H, d, dtype, "flex", rep, kernel_options=ko)
                    r.update(meta)
                    r["kernel_options"] = ko
                    r["dense_fwdbwd_ms"] = dense_ms
                    r["speedup_vs_dense"] = round(dense_ms / r["fwdbwd_ms"], 2)
                    r["variant"] = True
                except Exception as e:  # an option the kernel rejects is a result too
                    r = dict(pattern=pattern, backend="flex", n=n, kernel_options=ko, variant=True, error=f"{type(e).__name__}: {e}"[:300])
                records.append(r)
                print(_row(r), ko, flush=True)
    if args.long:
        for n in (262144, 1048576):
            l = 2 ** round(math.log2(math.sqrt(n)))
            for pattern, backend in (("strided", "flex"), ("dense", "sdpa")):
                if pattern == "dense" and n > 262144:
                    continue
                try:
                    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                        r = measure(pattern, n, l, 32, 1, 8, 64, dtype, backend, 3)
                    r.update(meta)
                    r["long"] = True
                except torch.OutOfMemoryError as e:
                    r = dict(pattern=pattern, backend=backend, n=n, stride=l, long=True, error=f"out of memory: {e}"[:200], **meta)
                records.append(r)
                print(_row(r), flush=True)
                torch.cuda.empty_cache()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"attention-{card}{args.tag}.json").write_text(json.dumps(records, indent=1))
    _plot(records, out / f"attention-{card}{args.tag}.png")
    print(f"wrote {out / f'attention-{card}{args.tag}.json'}")
    return records


def _row(r) -> str:
    if "error" in r:
        return f"{r['pattern']:8s} {r['backend']:5s} n={r['n']:>8d} {r['error']}"
    r = {**r, "recompiles_in_timed_steps": r.get("recompiles_in_timed_steps", -1)}
    return (f"{r['pattern']:8s} {r['backend']:5s} n={r['n']:>8d} l={r['stride']:>4d} d={r['head_dim']:>3d} B={r['batch']:>3d} "
            f"fwd {r['fwd_ms']:8.3f} ms  fwd+bwd {r['fwdbwd_ms']:8.3f} ms  {r['useful_tflops']:6.1f} TFLOP/s  "
            f"x{r.get('speedup_vs_dense', float('nan')):6.2f} (ideal x{r.get('ideal_speedup', float('nan')):6.2f})  "
            f"flop_ratio {r.get('flop_ratio')}  mem {r['peak_mem_gb']:.2f} GB  recompiles {r['recompiles_in_timed_steps']}")


def pyplot():
    """matplotlib's pyplot on the headless Agg backend, or None where matplotlib is missing (no PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _plot(records, path):
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for pattern in ["dense"] + PATTERNS:
        for backend in ("sdpa", "flex"):
            pts = sorted((r["n"], r["fwdbwd_ms"]) for r in records if r.get("pattern") == pattern and r.get("backend") == backend
                         and r.get("head_dim") == 64 and "error" not in r and not r.get("long") and not r.get("variant"))
            if pts and not (pattern == "dense" and backend == "flex" and False):
                label = "dense SDPA (FlashAttention)" if backend == "sdpa" else f"{pattern} (flex)"
                if backend == "sdpa" and pattern != "dense":
                    continue
                ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length n")
    ax.set_ylabel("forward+backward ms (B*H*n constant)")
    ax.set_title(f"attention, bf16, head dim 64 — {records[0].get('card', '')}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
