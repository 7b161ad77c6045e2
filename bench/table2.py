"""The paper's Table 2 in miniature: dense vs fixed vs strided attention, the same model trained for
the same wall-clock budget on one GPU, evaluated on the same held-out windows.

    PYTHONPATH=src python3 bench/table2.py --data text=<prepared folder> --data image=<folder> \
        [--budget 120] [--gpus 4] [--out bench/results]

Each ``--data`` names a folder written by ``make data`` (format ``raw`` or ``arrow``, capped with
``data.max_bytes`` to carry it to the GPU machine). Same seeds, same learning-rate schedule (linear
warm-up, then cosine over the *time* budget) and the same evaluation for every arm; compilation and
block-mask construction happen before the clock starts. Writes ``table2-<card>.json``, ``.md`` and
``.png`` (val bpd vs wall-clock per pattern). ``--gpus k`` trains k arms at a time, each alone on its
own GPU (a subprocess per arm, pinned with CUDA_VISIBLE_DEVICES), so every arm still has one GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from attention import card_name, commit, pyplot  # noqa: E402
from sparse_transformer.data.store import open_store  # noqa: E402
from sparse_transformer.config.schema import AttentionConfig, ModelConfig  # noqa: E402
from sparse_transformer.model import SparseTransformer  # noqa: E402

LN2 = math.log(2)


class Source:
    """Training and validation windows from a prepared folder (a stream or items)."""

    def __init__(self, path: str, seq_len: int | None, seed: int):
        self.meta, self.splits = open_store(path)
        self.modality = self.meta.get("modality", "text")
        self.kind = self.meta.get("kind", "stream")
        self.rng = np.random.default_rng(seed)
        if self.kind == "items":
            self.shape = tuple(self.meta.get("shape") or self.meta["key"]["shape"])
            self.n = int(np.prod(self.shape))
        else:
            self.n = seq_len
            self.shape = None

    def batch(self, split: str, B: int, idx=None) -> torch.Tensor:
        s = self.splits[split]
        if self.kind == "items":
            ids = idx if idx is not None else self.rng.integers(0, len(s), B)
            arr = np.stack([np.asarray(s[int(i)]) for i in ids])
        else:
            starts = idx if idx is not None else self.rng.integers(0, len(s) - self.n + 1, B)
            arr = np.stack([np.asarray(s.read(int(o), self.n)) for o in starts])
        return torch.from_numpy(arr.astype(np.int64))

    def eval_batches(self, B: int, count: int):
        s = self.splits["validation"]
        if self.kind == "items":
            ids = np.arange(min(len(s), count * B))
        else:
            ids = np.arange(0, len(s) - self.n + 1, self.n)[: count * B]
        for k in range(0, len(ids), B):
            yield self.batch("validation", B, ids[k : k + B])


def arm_network(pattern: str, src: Source, args) -> SparseTransformer:
    if src.shape is not None:
        shape = src.shape
        l = shape[1] * shape[2] if len(shape) == 3 else shape[-1]  # one image row
    else:
        l = 2 ** round(math.log2(math.sqrt(src.n)))
        shape = (src.n,)  # positions (n/l, l)
    c = max(1, l // 4)
    if pattern == "dense":
        attention = AttentionConfig(pattern="dense", stride=l)
    elif pattern == "fixed":  # the paper's enwik8 choice: merged heads, distinct summary slices
        attention = AttentionConfig(pattern="fixed", stride=l, summary=c, summary_heads=min(args.heads, l // c),
                                    integration="merged")
    else:
        attention = AttentionConfig(pattern="strided", stride=l, integration="interleaved")
    return SparseTransformer(ModelConfig(n_layer=args.layers, n_head=args.heads, d_model=args.d_model, dropout=0.0),
                             attention, shape)


@torch.no_grad()
def evaluate(net, src: Source, B: int, count: int) -> float:
    net.eval()
    nll = tokens = 0.0
    for x in src.eval_batches(B, count):
        x = x.cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = net(x)
        nll += F.cross_entropy(logits.float().reshape(-1, 256), x.reshape(-1), reduction="sum").item()
        tokens += x.numel()
    net.train()
    return nll / tokens / LN2


def train_arm(name: str, pattern: str, src: Source, args) -> dict:
    B = args.batch_image if src.shape is not None else args.batch_seq
    torch.manual_seed(args.seed)
    net = arm_network(pattern, src, args).cuda()
    m, a = net.cfg.model, net.cfg.attention
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, betas=(0.9, 0.999), weight_decay=0.01, fused=True)
    state = {k: v.clone() for k, v in net.state_dict().items()}

    def step(x, lr):
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = net(x)
        loss = F.cross_entropy(logits.float().reshape(-1, 256), x.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(2):  # compile kernels and build block masks before the clock starts
        step(src.batch("train", B).cuda(), 0.0)
    evaluate(net, src, B, 1)
    net.load_state_dict(state)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, betas=(0.9, 0.999), weight_decay=0.01, fused=True)
    src.rng = np.random.default_rng(args.seed)
    curve = [(0.0, evaluate(net, src, B, args.eval_batches))]
    torch.cuda.synchronize()
    trained, steps, next_eval = 0.0, 0, args.eval_every
    while trained < args.budget:
        t0 = time.perf_counter()
        frac = trained / args.budget
        lr = args.lr * min(1.0, (steps + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * frac))
        x = src.batch("train", B).cuda(non_blocking=True)
        step(x, lr)
        steps += 1
        if steps % 10 == 0 or trained + (time.perf_counter() - t0) >= next_eval:
            torch.cuda.synchronize()
        trained += time.perf_counter() - t0
        if trained >= next_eval:
            curve.append((round(trained, 2), evaluate(net, src, B, args.eval_batches)))
            next_eval += args.eval_every
    torch.cuda.synchronize()
    final = evaluate(net, src, B, args.eval_batches)
    curve.append((round(trained, 2), final))
    n_tok = steps * B * src.n
    rec = dict(data=name, modality=src.modality, pattern=pattern, n=src.n, stride=a.stride, summary=a.summary,
               integration=a.integration, n_layer=m.n_layer, d_model=m.d_model, n_head=m.n_head, batch=B,
               params=sum(p.numel() for p in net.parameters()), budget_s=args.budget, steps=steps,
               s_per_iter=round(trained / steps, 4), tokens_per_s=round(n_tok / trained), val_bpd=round(final, 4),
               eval_tokens=args.eval_batches * B * src.n, curve=curve)
    del net, opt
    torch.cuda.empty_cache()
    return rec


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", action="append", help="name=prepared folder (repeat)")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="no training: join table2 JSON files of the same card "
                    "(runs split over several calls) into one JSON/Markdown/PNG under --out")
    ap.add_argument("--patterns", default="dense,fixed,strided")
    ap.add_argument("--budget", type=float, default=120.0, help="training seconds per arm")
    ap.add_argument("--seq-len", type=int, default=8192, help="window length for text and audio")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--batch-seq", type=int, default=8)
    ap.add_argument("--batch-image", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--eval-every", type=float, default=20.0)
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gpus", type=int, default=1, help="arms trained at once, one GPU each")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, Path(args.out))
    if not args.data:
        ap.error("--data name=folder is required (or --merge)")
    if not torch.cuda.is_available():
        raise SystemExit("bench/table2.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    meta = dict(card=torch.cuda.get_device_name(), torch=torch.__version__, commit=commit(), budget_s=args.budget)
    records = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    card = card_name()
    arms = [(*spec.split("=", 1), pattern) for spec in args.data for pattern in args.patterns.split(",")]
    if args.gpus > 1:
        records = run_parallel(arms, argv if argv is not None else sys.argv[1:], args, out / f"table2-{card}.json")
        for r in records:
            r["arms_at_once"] = args.gpus  # on separate GPUs of one host
    for name, path, pattern in arms if args.gpus <= 1 else []:
        src = Source(path, args.seq_len, args.seed)
        r = train_arm(name, pattern, src, args)
        r.update(meta)
        records.append(r)
        report(r)
        (out / f"table2-{card}.json").write_text(json.dumps(records, indent=1))  # kept if a later arm times out
    (out / f"table2-{card}.json").write_text(json.dumps(records, indent=1))
    (out / f"table2-{card}.md").write_text(markdown(records))
    plot(records, out / f"table2-{card}.png")
    print(markdown(records))


def report(r: dict) -> None:
    print(f"{r['data']:8s} {r['pattern']:8s} n={r['n']:>6d} steps {r['steps']:>5d}  {r['s_per_iter']:.3f} s/iter  "
          f"{r['tokens_per_s']:>9,d} tok/s  val bpd {r['val_bpd']:.3f}", flush=True)


def run_parallel(arms, argv, args, partial: Path) -> list[dict]:
    """Each arm in its own process on its own GPU, ``args.gpus`` at a time; records in the arms' order."""
    if torch.cuda.device_count() < args.gpus:
        raise SystemExit(f"--gpus {args.gpus}: this machine has {torch.cuda.device_count()} GPUs")
    keep = []  # the command line without --data/--patterns/--gpus/--out (each arm gets its own)
    it = iter(argv)
    for a in it:
        if a.split("=")[0] in ("--data", "--patterns", "--gpus", "--out"):
            if "=" not in a:
                next(it, None)
        else:
            keep.append(a)
    tmp = Path(tempfile.mkdtemp(prefix="table2-"))
    free, running, done = list(range(args.gpus)), {}, {}
    todo = list(enumerate(arms))
    while todo or running:
        while todo and free:
            i, (name, path, pattern) = todo.pop(0)
            gpu = free.pop(0)
            cmd = [sys.executable, __file__, "--data", f"{name}={path}", "--patterns", pattern, "--out", str(tmp / str(i)), *keep]
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu)}
            running[i] = (gpu, subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / f"{i}.err", "w")))
        time.sleep(1)
        for i, (gpu, p) in list(running.items()):
            if p.poll() is None:
                continue
            del running[i]
            free.append(gpu)
            found = list((tmp / str(i)).glob("table2-*.json"))
            if p.returncode or not found:
                print(f"arm {arms[i]} failed (exit {p.returncode}):\n{(tmp / f'{i}.err').read_text()[-3000:]}", flush=True)
                continue
            done[i] = json.loads(found[0].read_text())[0]
            report(done[i])
            partial.write_text(json.dumps([done[k] for k in sorted(done)], indent=1))
    return [done[k] for k in sorted(done)]


def merge(files, out: Path) -> None:
    records = [r for f in files for r in json.loads(Path(f).read_text())]
    cards = {r["card"] for r in records}
    if len(cards) != 1:
        raise SystemExit(f"--merge: the files come from different cards ({', '.join(sorted(cards))}); merge one card's")
    card = next(iter(cards)).replace("NVIDIA ", "").split()[0].lower()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"table2-{card}.json").write_text(json.dumps(records, indent=1))
    (out / f"table2-{card}.md").write_text(markdown(records))
    plot(records, out / f"table2-{card}.png")
    print(markdown(records))


def markdown(records) -> str:
    r0 = records[0]
    lines = [f"Table 2 in miniature — {r0['card']}, torch {r0['torch']}, {r0['budget_s']:.0f} s of training per arm, "
             f"commit {r0['commit']}", "", "| data | n | pattern | val bpd | s/iter | tokens/s | steps |", "|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['data']} | {r['n']} | {r['pattern']} | {r['val_bpd']:.3f} | {r['s_per_iter']:.3f} | "
                     f"{r['tokens_per_s']:,} | {r['steps']} |")
    return "\n".join(lines) + "\n"


def plot(records, path):
    plt = pyplot()
    if plt is None:
        return
    names = sorted({r["data"] for r in records})
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        for r in records:
            if r["data"] == name:
                t, b = zip(*r["curve"][1:]) if len(r["curve"]) > 1 else ([], [])
                ax.plot(t, b, marker=".", label=f"{r['pattern']} ({r['val_bpd']:.3f})")
        ax.set_title(f"{name} (n={next(r['n'] for r in records if r['data'] == name)})")
        ax.set_xlabel("training seconds")
        ax.set_ylabel("val bits/dim")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
