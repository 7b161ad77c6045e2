"""Tile-shape sweep of the triton backend's kernels (a development tool behind the autotuning lists).

    PYTHONPATH=src python3 bench/tune_kernels.py [--configs wide|tuned|one] [--shapes 16k,64k,in64,enwik8]

For each shape and pattern it runs the triton backend once (autotuning every kernel over the
chosen candidate list and recording each candidate's median time), checks the result against
flex on the same inputs (forward and dq/dk/dv, norm-wise relative error), then times triton,
flex and dense causal SDPA (its default choice and each kernel; the fastest is the baseline)
forward and forward+backward. q/k/v are views of (B, n, H, d) tensors, as the model makes them.
Prints the per-kernel winners and a table; writes ``bench/results/tune-<card>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--configs", default="wide", help="candidate list: wide | tuned | one")
ap.add_argument("--shapes", default="16k,64k,in64,enwik8")
ap.add_argument("--patterns", default="local,stride,strided,fixed")
ap.add_argument("--out", default="bench/results")
ap.add_argument("--reps", type=int, default=20)
ap.add_argument("--tag", default="", help="suffix of the output file name")
ap.add_argument("--compile-only", action="store_true",
                help="only compile every candidate (run several of these in parallel to fill Triton's cache, "
                     "then delete its *.autotune.json: the timings of a compile-only run are not real)")
args = ap.parse_args()
os.environ["SPARSE_TRANSFORMER_TRITON_CONFIGS"] = args.configs  # read when the kernels are first built

import torch  # noqa: E402
import triton  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention import card_name, commit  # noqa: E402
from sparse_transformer.attention import attend, layer_heads  # noqa: E402
from sparse_transformer.attention.patterns import attended_pairs  # noqa: E402

SHAPES = {  # name: (B, H, n, d_qk, d_v, l, patterns it runs)
    "16k": (8, 16, 16384, 64, 64, 128, None),
    "64k": (2, 16, 65536, 64, 64, 256, None),
    "in64": (2, 16, 12288, 32, 32, 128, ("local", "stride")),  # the ImageNet64 model's layers
    "enwik8": (2, 8, 12288, 64, 64, 128, ("fixed",)),  # the enwik8 model's layers
}

# record every candidate's timing: the autotuner keeps only the last kernel's
TIMINGS: list[dict] = []
_bench = Autotuner._bench


def _recording_bench(self, *a, config, **meta):
    t = _bench(self, *a, config=config, **meta)
    TIMINGS.append(dict(kernel=self.base_fn.__name__, meta={k: v for k, v in meta.items() if k.isupper()},
                        config=dict(**config.kwargs, warps=config.num_warps, stages=config.num_stages), ms=t[0]))
    return t


Autotuner._bench = _recording_bench
if args.compile_only:
    def _once(fn, *a, quantiles=None, **kw):
        fn()
        return [1.0] * len(quantiles) if quantiles else 1.0

    triton.testing.do_bench = _once


def label(cfg: dict) -> str:
    """A candidate's short name: tiles (BMxBN, or a one-program kernel's constexprs), warps, stages."""
    tiles = f"{cfg['BM']}x{cfg['BN']}" if "BM" in cfg else ",".join(
        f"{k}{v}" for k, v in cfg.items() if k not in ("warps", "stages"))
    return f"{tiles}w{cfg['warps']}s{cfg['stages']}"


def median_ms(fn, reps):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return sorted(ts)[len(ts) // 2]


def heads_for(pattern, H, l):
    if pattern == "fixed":
        return layer_heads("fixed", H, l, summary=32, summary_heads=min(4, l // 32), integration="merged")
    return layer_heads(pattern, H, l, integration="merged")


def time_arm(fn, q, k, v, go, reps):
    def fwd():
        with torch.no_grad():
            fn(q, k, v)

    def fwdbwd():
        torch.autograd.grad(fn(q, k, v), (q, k, v), go)

    return median_ms(fwd, reps), median_ms(fwdbwd, reps)


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def main():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    records, card = [], card_name()
    for shape in args.shapes.split(","):
        B, H, n, dk, dv, l, only = SHAPES[shape]
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(B, n, H, d, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_() for d in (dk, dk, dv))
        go = torch.randn(B, n, H, dv, device="cuda", dtype=torch.bfloat16, generator=g).transpose(1, 2)
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))

        if args.compile_only:
            for pattern in (only or args.patterns.split(",")):
                out = attend(qt, kt, vt, heads_for(pattern, H, l), backend="triton")
                torch.autograd.grad(out, (q, k, v), go)
                print(f"compiled {shape} {pattern}", flush=True)
            continue
        dense = {}
        for name, kern in (("default", None), ("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
            def sdpa(a, b, c, kern=kern):
                if kern is None:
                    return torch.nn.functional.scaled_dot_product_attention(a, b, c, is_causal=True)
                with sdpa_kernel(kern):
                    return torch.nn.functional.scaled_dot_product_attention(a, b, c, is_causal=True)
            try:
                dense[name] = time_arm(sdpa, qt, kt, vt, go, args.reps)
            except RuntimeError as e:
                dense[name] = (float("nan"), float("nan"))
                print(f"{shape} dense {name}: {str(e)[:100]}")
        best = min((x for x in dense if dense[x][1] == dense[x][1]), key=lambda x: dense[x][1])
        print(f"{shape}: dense " + "  ".join(f"{x} {f:.3f}/{fb:.3f} ms" for x, (f, fb) in dense.items()) + f"  -> {best}", flush=True)
        for pattern in (only or args.patterns.split(",")):
            heads = heads_for(pattern, H, l)
            t0 = time.time()
            n_before = len(TIMINGS)
            tri = lambda a, b, c: attend(a, b, c, heads, backend="triton")  # noqa: E731
            flx = lambda a, b, c: attend(a, b, c, heads, backend="flex")  # noqa: E731
            out = tri(qt, kt, vt)
            got = (out, *torch.autograd.grad(out, (q, k, v), go))
            tune_s = time.time() - t0
            ref = flx(qt, kt, vt)
            want = (ref, *torch.autograd.grad(ref, (q, k, v), go))
            errs = [rel(a, b) for a, b in zip(got, want)]
            tf, tfb = time_arm(tri, qt, kt, vt, go, args.reps)
            ff, ffb = time_arm(flx, qt, kt, vt, go, args.reps)
            pairs = attended_pairs(heads, n)
            rec = dict(shape=shape, pattern=pattern, B=B, H=H, n=n, d_qk=dk, d_v=dv, stride=l, configs=args.configs,
                       triton_fwd_ms=tf, triton_fwdbwd_ms=tfb, flex_fwd_ms=ff, flex_fwdbwd_ms=ffb,
                       dense_kernel=best, dense_fwd_ms=dense[best][0], dense_fwdbwd_ms=dense[best][1], dense_all=dense,
                       speedup_vs_dense=dense[best][1] / tfb, flex_speedup_vs_dense=dense[best][1] / ffb,
                       ideal_speedup=(B * H * n * (n + 1) / 2) / (pairs * B), err_vs_flex=errs, tune_s=tune_s,
                       candidates=TIMINGS[n_before:], card=torch.cuda.get_device_name(), torch=torch.__version__,
                       triton=triton.__version__, commit=commit())
            records.append(rec)
            print(f"{shape:6s} {pattern:8s} triton {tf:7.3f}/{tfb:7.3f} ms  flex {ff:7.3f}/{ffb:7.3f} ms  "
                  f"x{rec['speedup_vs_dense']:.2f} vs {best} (flex x{rec['flex_speedup_vs_dense']:.2f}, ideal x{rec['ideal_speedup']:.2f})  "
                  f"err {max(errs):.1e}  tune {tune_s:.0f}s", flush=True)
            for kern in sorted({c["kernel"] for c in rec["candidates"]}):
                for meta in {json.dumps(c["meta"], sort_keys=True) for c in rec["candidates"] if c["kernel"] == kern}:
                    cands = sorted((c for c in rec["candidates"] if c["kernel"] == kern and json.dumps(c["meta"], sort_keys=True) == meta),
                                   key=lambda c: c["ms"])
                    print(f"    {kern:24s} {meta:40s} " + "  ".join(f"{label(c['config'])}:{c['ms']:.3f}" for c in cands[:4]))
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / f"tune-{card}{args.tag}.json").write_text(json.dumps(records, indent=1))
        del q, k, v, go, qt, kt, vt
        torch.cuda.empty_cache()


if __name__ == "__main__":
    if not torch.cuda.is_available():
        raise SystemExit("bench/tune_kernels.py needs a CUDA GPU")
    main()
