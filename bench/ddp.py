"""Multi-GPU DDP through the real training command: scaling efficiency and equal-global-batch losses.

    PYTHONPATH=src python3 bench/ddp.py --gpus 1,2,4 [--exp enwik8] [--batch 2] [--steps 60] \
        [key=value ...]        # extra overrides for every run, e.g. data.cache_dir=gpu_data

Every run is ``python -m sparse_transformer.train`` (what ``make train EXP=... ARGS="trainer.devices=k"``
runs), so Lightning's own launcher, DDP strategy, bf16-mixed and ``ThroughputMonitor`` are measured:

* weak scaling: ``--batch`` windows per GPU on k GPUs; efficiency = tokens/s(k) / (k · tokens/s(1));
* equal global batch: k GPUs × ``--batch`` against one GPU × (k · ``--batch``), same seed and steps,
  dropout off: each rank reads its share of the same windows (data/base.py RankShard), so the loss
  curves should agree up to bf16 summation order.

Writes ``bench/results/ddp-<card>.json`` (card, torch, commit, settings, per-run records, derived
figures) and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from attention import card_name, commit  # noqa: E402


def run(gpus: int, batch: int, args, extra: list[str], tmp: Path) -> dict:
    tag = f"g{gpus}-b{batch}"
    out = tmp / tag
    cmd = [sys.executable, "-m", "sparse_transformer.train", f"exp={args.exp}", f"run_dir={out}", f"seed={args.seed}",
           f"trainer.devices={gpus}", f"trainer.strategy={'ddp' if gpus > 1 else 'auto'}", f"data.batch_size={batch}",
           f"trainer.max_steps={args.steps}", "trainer.max_epochs=-1", f"trainer.val_check_interval={10 * args.steps}",
           "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "trainer.checkpoint_every_n_steps=null",
           "model.dropout=0.0", f"optim.warmup_steps={args.warmup}", f"optim.lr={args.lr}", "logger.kind=csv",
           "callbacks.samples.at_end=false", "callbacks.attention_maps.enabled=false",
           f"callbacks.throughput.window={args.window}", f"callbacks.throughput.peak_flops={args.peak}", *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    print(f"--- {tag}: {' '.join(cmd[3:])}", flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, text=True, capture_output=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-6000:], sep="\n", flush=True)
        return dict(gpus=gpus, batch=batch, error=f"exit {proc.returncode}", wall_s=round(wall, 1))
    s = json.loads((out / "summary.json").read_text())
    m = s["metrics"]
    per_gpu = m.get("train/device/items_per_sec")  # Lightning adds train/items_per_sec (rank 0's × world) for k > 1
    curve = {}
    with open(out / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get("train/loss"):
                curve[int(row["step"])] = float(row["train/loss"])
    return dict(gpus=gpus, batch_per_gpu=batch, global_batch=gpus * batch, steps=s["steps"], wall_s=round(wall, 1),
                tokens_per_s=m.get("train/items_per_sec", per_gpu and per_gpu * gpus), tokens_per_s_per_gpu=per_gpu,
                mfu=m.get("train/device/mfu"), val_bpd_start=s["val_bpd_start"], val_bpd_end=s["val_bpd_end"],
                params=s["params"], loss_curve=[curve[k] for k in sorted(curve)])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", default="1,2", help="GPU counts, comma-separated (1 is always run)")
    ap.add_argument("--exp", default="enwik8", help="experiment YAML (conf/exp/<name>.yaml)")
    ap.add_argument("--batch", type=int, default=2, help="windows per GPU")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--window", type=int, default=20, help="ThroughputMonitor window (batches)")
    ap.add_argument("--peak", type=float, default=989e12, help="dense bf16 peak FLOP/s per GPU (H100/H200 SXM)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("overrides", nargs="*", help="key=value for every run")
    args = ap.parse_args(argv)
    have = torch.cuda.device_count()
    counts = sorted({1, *(int(k) for k in args.gpus.split(","))})
    if have < max(counts):
        raise SystemExit(f"bench/ddp.py: --gpus asks for {max(counts)} GPUs, this machine has {have}")
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in counts:  # weak scaling: the same windows per GPU
            records.append(run(k, args.batch, args, args.overrides, Path(tmp)))
        for k in counts[1:]:  # equal global batch on one GPU
            records.append(run(1, k * args.batch, args, args.overrides, Path(tmp)))
    by = {(r["gpus"], r.get("batch_per_gpu")): r for r in records}
    base = by.get((1, args.batch), {})
    derived = []
    for k in counts[1:]:
        multi, single = by.get((k, args.batch), {}), by.get((1, k * args.batch), {})
        d = dict(gpus=k)
        if multi.get("tokens_per_s") and base.get("tokens_per_s"):
            d["scaling_efficiency"] = round(multi["tokens_per_s"] / (k * base["tokens_per_s"]), 3)
        if multi.get("val_bpd_end") is not None and single.get("val_bpd_end") is not None:
            d["val_bpd_k_gpus"], d["val_bpd_one_gpu"] = multi["val_bpd_end"], single["val_bpd_end"]
            a, b = multi["loss_curve"], single["loss_curve"]
            d["max_abs_train_loss_diff"] = round(max(abs(x - y) for x, y in zip(a, b)), 4) if a and b else None
        derived.append(d)
    meta = dict(card=torch.cuda.get_device_name(), gpus_on_host=have, torch=torch.__version__, commit=commit(),
                exp=args.exp, batch_per_gpu=args.batch, steps=args.steps, overrides=args.overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"ddp-{card_name()}.json"
    path.write_text(json.dumps(dict(meta=meta, runs=records, derived=derived), indent=1))
    print(f"\nDDP — {meta['card']} ×{have}, torch {meta['torch']}, exp {args.exp}, {args.steps} steps")
    print("| GPUs | batch/GPU | global batch | tokens/s | tokens/s/GPU | val bpd start → end |")
    print("|---|---|---|---|---|---|")
    for r in records:
        if "error" in r:
            print(f"| {r['gpus']} | {r['batch']} | | {r['error']} | | |")
            continue
        print(f"| {r['gpus']} | {r['batch_per_gpu']} | {r['global_batch']} | {r['tokens_per_s'] or 0:,.0f} | "
              f"{r['tokens_per_s_per_gpu'] or 0:,.0f} | {r['val_bpd_start']:.3f} → {r['val_bpd_end']:.3f} |")
    for d in derived:
        print(d)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
