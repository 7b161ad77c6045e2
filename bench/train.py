"""End-to-end training steps at the paper's shapes: the sparse model against the *same* model with
dense causal SDPA (FlashAttention), same precision, compile and recompute settings, one card, one run.

    PYTHONPATH=src python3 bench/train.py [--shapes imagenet64,enwik8] [--modes eager,compiled] [--longest]

Runs on the GPU machine with its system python3 (torch only). MFU = (6·N_params per token + the
FLOPs of the attended pairs only) × tokens/s ÷ the card's dense bf16 peak (989 TFLOP/s for H100 and
H200 SXM, passed explicitly), recomputation not counted. Writes ``train-<card>.json`` and a PNG.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from attention import card_name, commit, pyplot  # noqa: E402
from sparse_transformer.attention.patterns import attended_pairs  # noqa: E402
from sparse_transformer.model import NetConfig, SparseTransformer  # noqa: E402

PEAK = 989e12

SHAPES = {
    # the paper's ImageNet 64x64 model; integration not stated: OpenAI's CIFAR cycle (chosen)
    "imagenet64": dict(n_layer=48, n_head=16, d_model=512, shape=(64, 64, 3), pattern="strided", stride=128,
                       layout=["stride", "local", "local", "local"], batch=2),
    # enwik8: fixed l = 128, c = 32, merged heads with distinct summary slices
    "enwik8": dict(n_layer=30, n_head=8, d_model=512, shape=(96, 128), pattern="fixed", stride=128, summary=32,
                   summary_heads=4, integration="merged", batch=2),
    # CIFAR-10: 128 layers, d 256, 2 heads, half-size FF and QK, stride 96, the [stride, local x3] cycle
    "cifar10": dict(n_layer=128, n_head=2, d_model=256, ffn_mult=2.0, qk_ratio=0.5, shape=(32, 32, 3), pattern="strided",
                    stride=96, layout=["stride", "local", "local", "local"], batch=4),
}


def net_config(spec: dict, dense: bool, recompute: bool) -> tuple[NetConfig, int]:
    spec = dict(spec)
    batch = spec.pop("batch")
    cfg = NetConfig(**spec, recompute=recompute, backend="auto")
    if dense:
        cfg = replace(cfg, pattern="dense", layout=None, summary=None)
    return cfg, batch


def attention_flops_per_step(net: SparseTransformer, n: int, batch: int) -> float:
    """Forward + backward FLOPs of the attended pairs only: 3 × (2·pairs·d_qk + 2·pairs·d_v) per layer."""
    total = 0.0
    for blk in net.blocks:
        a = blk.attn
        pairs = attended_pairs(a.heads, n) / a.n_head  # per head, averaged
        dh_qk, dh_v = a.d_qk // a.n_head, a.d_model // a.n_head
        total += 3 * 2 * pairs * (dh_qk + dh_v) * a.n_head
    return total * batch


def run(name: str, spec: dict, dense: bool, mode: str, recompute: bool, steps: int) -> dict:
    torch.manual_seed(0)
    cfg, batch = net_config(spec, dense, recompute)
    n = cfg.seq_len
    net = SparseTransformer(cfg).cuda()
    if mode == "compiled":
        for blk in net.blocks:
            blk.compile()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.01, fused=True)
    x = torch.randint(0, 256, (batch, n), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = net(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), x.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    from torch._dynamo.utils import counters

    counters.clear()
    t0 = time.time()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    setup_s = time.time() - t0
    graph_breaks = sum(counters["graph_break"].values())  # compiled: 0 means every block is one graph
    torch.cuda.reset_peak_memory_stats()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(steps):
        loss = step()
    b.record()
    torch.cuda.synchronize()
    step_s = a.elapsed_time(b) / 1e3 / steps
    params = sum(p.numel() for p in net.parameters())
    tokens = batch * n
    flops = 6 * params * tokens + attention_flops_per_step(net, n, batch)
    rec = dict(shape=name, arm="dense-sdpa" if dense else cfg.pattern, mode=mode, recompute=recompute, n=n, batch=batch,
               n_layer=cfg.n_layer, d_model=cfg.d_model, n_head=cfg.n_head, params=params, step_s=round(step_s, 4),
               tokens_per_s=round(tokens / step_s), mfu=round(flops / step_s / PEAK, 4),
               attn_flop_share=round(attention_flops_per_step(net, n, batch) / flops, 3),
               peak_mem_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2), loss=round(float(loss), 4),
               setup_s=round(setup_s, 1), graph_breaks=graph_breaks)
    del net, opt
    torch.cuda.empty_cache()
    return rec


def longest(d_model=256, n_layer=4, n_head=4, start=2**20, limit=2**22) -> list[dict]:
    """Longest sequence a ~3M-parameter strided model trains at (one step, recompute, bf16)."""
    out = []
    n = start
    while n <= limit:
        l = 2 ** round(math.log2(math.sqrt(n)))
        cfg = NetConfig(n_layer=n_layer, n_head=n_head, d_model=d_model, shape=(n // l, l), pattern="strided",
                        stride=l, integration="interleaved", recompute=True)
        rec = dict(n=n, stride=l, d_model=d_model, n_layer=n_layer)
        try:
            torch.manual_seed(0)
            net = SparseTransformer(cfg).cuda()
            rec["params"] = sum(p.numel() for p in net.parameters())
            opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
            x = torch.randint(0, 256, (1, n), device="cuda")
            torch.cuda.reset_peak_memory_stats()
            for i in range(2):
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shapes", default="imagenet64,enwik8")
    ap.add_argument("--modes", default="eager,compiled")
    ap.add_argument("--recompute", default="false", help="false, true or both")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--longest", action="store_true")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench/train.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    meta = dict(card=torch.cuda.get_device_name(), torch=torch.__version__, commit=commit(), peak_flops=PEAK,
                precision="bf16 autocast, fp32 weights, fused AdamW", steps_timed=args.steps)
    recs = []
    recomputes = {"false": [False], "true": [True], "both": [False, True]}[args.recompute]
    for name in args.shapes.split(","):
        for mode in args.modes.split(","):
            for rc in recomputes:
                pair = []
                for dense in (True, False):
                    try:
                        r = run(name, SHAPES[name], dense, mode, rc, args.steps)
                    except torch.OutOfMemoryError:
                        r = dict(shape=name, arm="dense-sdpa" if dense else "sparse", mode=mode, recompute=rc, error="out of memory")
                        torch.cuda.empty_cache()
                    r.update(meta)
                    pair.append(r)
                    recs.append(r)
                    print(_row(r), flush=True)
                if all("error" not in r for r in pair):
                    pair[1]["speedup_vs_dense"] = round(pair[1]["tokens_per_s"] / pair[0]["tokens_per_s"], 2)
                    print(f"  {name} {mode} recompute={rc}: sparse/dense tokens/s = {pair[1]['speedup_vs_dense']}x", flush=True)
                Path(args.out).mkdir(parents=True, exist_ok=True)  # kept if a later shape runs out of time
                (Path(args.out) / f"train-{card_name()}.json").write_text(json.dumps({"runs": recs, "meta": meta}, indent=1))
    result = {"runs": recs, "meta": meta}
    if args.longest:
        result["longest"] = longest()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    card = card_name()
    (out / f"train-{card}.json").write_text(json.dumps(result, indent=1))
    _plot(recs, out / f"train-{card}.png")
    print(f"wrote {out / f'train-{card}.json'}")


def _row(r) -> str:
    if "error" in r:
        return f"{r['shape']:10s} {r['arm']:10s} {r['mode']:8s} rc={r['recompute']!s:5s} {r['error']}"
    return (f"{r['shape']:10s} {r['arm']:10s} {r['mode']:8s} rc={r['recompute']!s:5s} n={r['n']} B={r['batch']} "
            f"{r['params'] / 1e6:6.1f}M  step {r['step_s'] * 1e3:8.1f} ms  {r['tokens_per_s']:>9,d} tok/s  "
            f"MFU {100 * r['mfu']:5.1f}%  mem {r['peak_mem_gb']:6.1f} GB  setup {r['setup_s']} s  breaks {r['graph_breaks']}")


def _plot(recs, path):
    plt = pyplot()
    if plt is None:
        return
    ok = [r for r in recs if "error" not in r]
    labels = [f"{r['shape']}\n{r['mode']}{' rc' if r['recompute'] else ''}\n{r['arm']}" for r in ok]
    fig, ax = plt.subplots(figsize=(max(6, len(ok) * 0.9), 4))
    ax.bar(range(len(ok)), [r["tokens_per_s"] / 1e3 for r in ok], color=["tab:gray" if r["arm"] == "dense-sdpa" else "tab:blue" for r in ok])
    ax.set_xticks(range(len(ok)), labels, fontsize=7)
    ax.set_ylabel("thousand tokens / s")
    ax.set_title(f"training throughput, sparse vs dense SDPA — {ok[0]['card'] if ok else ''}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
