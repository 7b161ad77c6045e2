"""Multi-GPU DDP through the real training command: weak-scaling efficiency and equal-global-batch losses.

    PYTHONPATH=src python3 bench/ddp.py [--gpus 2] [--exp enwik8,imagenet64] [--batch 2] [--repeats 3] \
        [--warmup-steps 10] [--window 10] [--windows 3] [key=value ...]   # extra overrides for every run

Every run is ``python -m sparse_transformer.train`` (what ``make train EXP=... ARGS="trainer.devices=k"``
runs), so Lightning's launcher, DDP strategy, bf16-mixed and the CLI's throughput callback are measured:

* throughput: the callback skips the first ``callbacks.throughput.warmup`` steps (``--warmup-steps``:
  compilation, autotuning, allocator and NCCL warm-up), then synchronises once per window of
  ``callbacks.throughput.window`` steps and logs ``train/device/items_per_sec`` (tokens/s per device) and
  ``train/items_per_sec`` (all devices) to metrics.csv. A run's figure is the median of its windows; a
  setting's the median over ``--repeats`` runs (interleaved, so drift hits every setting alike), with
  the spread (max − min) / median and every run's and window's value;
* weak scaling: ``--batch`` windows per GPU on k GPUs; efficiency = median tokens/s(k) / (k · median
  tokens/s(1)), target >= 0.9 on 2 GPUs;
* equal global batch: k GPUs × ``--batch`` against one GPU × (k · ``--batch``), same seed and steps,
  dropout off: each rank reads its share of the same windows (data/base.py RankShard), so the loss
  curves should agree up to bf16 summation order. These two are runs of their own that log the loss
  every step (``--curve-log-every``); the throughput runs log once per window (``--log-every``), as a
  per-step log reads the loss on the host every step (a synchronisation that a launch-bound eager
  step pays in throughput).

Compilation is an override like any other: ``model.compile=true model.compile_mode=model``.

Data: a local text (``--text``; by default the installed torch package's Python sources, which any
machine with torch has, concatenated to ``--text-mb`` MB), read as raw bytes (data.format=raw: no
``datasets`` library). Image experiments keep their model and n on it (imagenet64: data.shape
[64, 64, 3]). The command needs what the CLI needs (omegaconf, lightning).

Writes ``bench/results/ddp-<card>.json`` (card, torch, commit, settings, per-run records, derived
figures) after every run, and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from attention import card_name, commit  # noqa: E402
from sparse_transformer import files  # noqa: E402

TARGET = 0.9  # 2-GPU weak-scaling efficiency (issue 14)
# what makes an experiment run on a local text with its own model and sequence length
EXP_DATA = {"imagenet64": ["data.modality=text", "data.shape=[64,64,3]"]}


def build_text(path: Path, mb: float) -> Path:
    """The installed torch package's Python sources, in sorted order, up to ``mb`` MB: a local text
    of a few MB on any machine that has torch."""
    limit, size = int(mb * 2**20), 0
    with open(path, "wb") as out:
        for f in sorted(Path(torch.__file__).parent.rglob("*.py")):
            data = f.read_bytes()
            out.write(data[: limit - size])
            size += min(len(data), limit - size)
            if size >= limit:
                break
    return path


def callback_has_warmup() -> bool:
    """Whether this tree's CLI knows ``callbacks.throughput.warmup`` (windows after warm-up only)."""
    try:
        from sparse_transformer.config import ThroughputConfig
    except ImportError as e:
        raise SystemExit(f"bench/ddp.py runs the training CLI, which needs {e.name} here (shared/gpu/README.md: carry it as a wheel)")
    return any(f.name == "warmup" for f in fields(ThroughputConfig))


def command(exp: str, gpus: int, batch: int, args, run_dir: Path, warmup_key: bool, curve: bool = False) -> list[str]:
    steps = args.warmup_steps + args.windows * args.window
    log_every = args.curve_log_every if curve else (args.log_every or args.window)
    return [sys.executable, "-m", "sparse_transformer.train", f"exp={exp}", f"run_dir={run_dir}", f"seed={args.seed}",
            f"trainer.accelerator={args.accelerator}", f"trainer.devices={gpus}",
            f"trainer.strategy={'ddp' if gpus > 1 else 'auto'}", f"data.batch_size={batch}",
            f"trainer.max_steps={steps}", "trainer.max_epochs=-1", f"trainer.val_check_interval={10 * steps}",
            f"trainer.log_every_n_steps={log_every}", "trainer.enable_progress_bar=false",
            "trainer.checkpoint_every_n_steps=null", "model.dropout=0.0", f"optim.warmup_steps={args.lr_warmup}",
            f"optim.lr={args.lr}", "logger.kind=csv", "callbacks.samples.at_end=false",
            "callbacks.attention_maps.enabled=false", f"callbacks.throughput.window={args.window}",
            *([f"callbacks.throughput.warmup={args.warmup_steps}"] if warmup_key else []),
            f"callbacks.throughput.peak_flops={args.peak}", "data.source=local", f"data.path={args.text}",
            "data.format=raw", f"data.cache_dir={args.cache_dir}", f"data.val_windows={args.val_windows}",
            *EXP_DATA.get(exp, []), *args.overrides]


def read_metrics(path: Path, gpus: int, warmup_steps: int, window: int, warmup_key: bool) -> tuple[list[dict], dict]:
    """Per-window throughput rows and the per-step training loss from a run's metrics.csv.

    With ``callbacks.throughput.warmup`` every logged train window follows warm-up. Without it (an
    older callback logs a rolling window every step), only windows wholly after warm-up are kept,
    every ``window``-th, so they do not overlap."""
    windows, loss = [], {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = int(float(row["step"])) if row.get("step") else None
            if row.get("train/loss") and step is not None:
                loss[step] = float(row["train/loss"])
            dev = row.get("train/device/items_per_sec")
            if dev:
                total = row.get("train/items_per_sec")
                windows.append(dict(step=step, tokens_per_s=float(total) if total else float(dev) * gpus,
                                    tokens_per_s_per_gpu=float(dev),
                                    mfu=float(row["train/device/mfu"]) if row.get("train/device/mfu") else None))
    if not warmup_key:
        first = warmup_steps + window - 1  # the first 0-based step whose rolling window is past warm-up
        windows = [w for w in windows if w["step"] is not None and w["step"] >= first and (w["step"] - first) % window == 0]
    return windows, loss


def run(exp: str, gpus: int, batch: int, args, tmp: Path, warmup_key: bool, repeat: int, curve: bool = False) -> dict:
    tag = f"{exp}-g{gpus}-b{batch}-r{repeat}{'-curve' if curve else ''}"
    out = tmp / tag
    cmd = command(exp, gpus, batch, args, out, warmup_key, curve)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    print(f"--- {tag}: {' '.join(cmd[3:])}", flush=True)
    base = dict(exp=exp, gpus=gpus, batch_per_gpu=batch, global_batch=gpus * batch, repeat=repeat, curve=curve)
    t0 = time.time()
    # its own session: on a timeout the whole group goes, Lightning's other ranks included (no orphan holds a GPU)
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=args.run_timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return dict(base, error=f"timed out after {args.run_timeout} s")
    wall = time.time() - t0
    if proc.returncode != 0:
        print(stdout[-3000:], stderr[-6000:], sep="\n", flush=True)
        return dict(base, error=f"exit {proc.returncode}: {(stderr.strip().splitlines() or [''])[-1][:200]}",
                    wall_s=round(wall, 1))
    s = json.loads((out / "summary.json").read_text())
    windows, loss = read_metrics(out / "metrics.csv", gpus, args.warmup_steps, args.window, warmup_key)
    rec = dict(base, steps=s["steps"], wall_s=round(wall, 1), windows=windows,
               val_bpd_start=s["val_bpd_start"], val_bpd_end=s["val_bpd_end"], params=s["params"],
               loss_curve=[[k, loss[k]] for k in sorted(loss)])
    if not windows:
        rec["error"] = "no throughput window logged after warm-up (more steps: --windows, or a smaller --warmup-steps)"
        return rec
    rec["tokens_per_s"] = statistics.median(w["tokens_per_s"] for w in windows)
    rec["tokens_per_s_per_gpu"] = statistics.median(w["tokens_per_s_per_gpu"] for w in windows)
    mfus = [w["mfu"] for w in windows if w["mfu"] is not None]
    rec["mfu"] = statistics.median(mfus) if mfus else None
    return rec


def settings(records: list[dict]) -> list[dict]:
    """Per (exp, gpus, batch per GPU): the median over repeats of each run's median window, the
    spread (max − min) / median and every run's figure (the loss-curve runs are not counted)."""
    groups: dict = {}
    for r in records:
        if r.get("curve"):
            continue
        groups.setdefault((r["exp"], r["gpus"], r["batch_per_gpu"]), []).append(r)
    out = []
    for (exp, gpus, batch), rs in groups.items():
        ok = [r["tokens_per_s"] for r in rs if "tokens_per_s" in r]
        med = statistics.median(ok) if ok else None
        out.append(dict(exp=exp, gpus=gpus, batch_per_gpu=batch, global_batch=gpus * batch, runs=len(rs), ok_runs=len(ok),
                        tokens_per_s=round(med) if med else None, tokens_per_s_per_gpu=round(med / gpus) if med else None,
                        spread=round((max(ok) - min(ok)) / med, 4) if med else None,
                        tokens_per_s_runs=[round(x) for x in ok], errors=[r.get("error") or r["skipped"] for r in rs if "error" in r or "skipped" in r]))
    return out


def derive(records: list[dict], table: list[dict], batch: int, counts: list[int]) -> list[dict]:
    """Per experiment and k > 1: weak-scaling efficiency from medians against the target, and the
    equal-global-batch comparison (the loss-curve runs: k GPUs × batch against one GPU × k·batch)."""
    by = {(t["exp"], t["gpus"], t["batch_per_gpu"]): t for t in table}
    out = []
    for exp in dict.fromkeys(t["exp"] for t in table):
        one = by.get((exp, 1, batch), {})
        for k in counts[1:]:
            multi = by.get((exp, k, batch), {})
            d = dict(exp=exp, gpus=k, target_efficiency=TARGET if k == 2 else None)
            if multi.get("tokens_per_s") and one.get("tokens_per_s"):
                d["scaling_efficiency"] = round(multi["tokens_per_s"] / (k * one["tokens_per_s"]), 3)
                d["meets_target"] = d["scaling_efficiency"] >= TARGET if k == 2 else None
            a = next((r for r in records if r.get("curve") and (r["exp"], r["gpus"], r["batch_per_gpu"]) == (exp, k, batch)), {})
            b = next((r for r in records if r.get("curve") and (r["exp"], r["gpus"], r["batch_per_gpu"]) == (exp, 1, k * batch)), {})
            if a.get("val_bpd_end") is not None and b.get("val_bpd_end") is not None:
                d["val_bpd_k_gpus"], d["val_bpd_one_gpu"] = a["val_bpd_end"], b["val_bpd_end"]
                la, lb = dict(map(tuple, a["loss_curve"])), dict(map(tuple, b["loss_curve"]))
                common = sorted(set(la) & set(lb))
                d["train_loss_steps_compared"] = len(common)
                d["max_abs_train_loss_diff"] = round(max(abs(la[s] - lb[s]) for s in common), 4) if common else None
            out.append(d)
    return out


def write(path: Path, meta: dict, records: list[dict], batch: int, counts: list[int]) -> tuple[list, list]:
    table = settings(records)
    derived = derive(records, table, batch, counts)
    files.write_json(path, dict(meta=meta, settings=table, derived=derived, runs=records))  # a cut run leaves the last whole file
    return table, derived


def report(meta: dict, table: list[dict], derived: list[dict]) -> None:
    print(f"\nDDP — {meta['card']} ×{meta['gpus_on_host']}, torch {meta['torch']}, {meta['steps']} steps per run "
          f"({meta['warmup_steps']} warm-up + {meta['windows']} windows of {meta['window']}), {meta['repeats']} repeats")
    print("| exp | GPUs | batch/GPU | global batch | tokens/s (median) | spread | tokens/s/GPU | runs |")
    print("|---|---|---|---|---|---|---|---|")
    for t in table:
        runs = ", ".join(f"{x:,d}" for x in t["tokens_per_s_runs"]) + ("; " + "; ".join(t["errors"]) if t["errors"] else "")
        print(f"| {t['exp']} | {t['gpus']} | {t['batch_per_gpu']} | {t['global_batch']} | "
              f"{'–' if t['tokens_per_s'] is None else format(t['tokens_per_s'], ',d')} | "
              f"{'–' if t['spread'] is None else format(100 * t['spread'], '.1f') + '%'} | "
              f"{'–' if t['tokens_per_s_per_gpu'] is None else format(t['tokens_per_s_per_gpu'], ',d')} | {runs} |")
    print("\n| exp | GPUs | weak-scaling efficiency (target) | val bpd k GPUs vs 1 GPU, equal global batch | max |Δ train loss| (steps) |")
    print("|---|---|---|---|---|")
    for d in derived:
        eff = d.get("scaling_efficiency")
        tgt = d.get("target_efficiency")
        verdict = "" if d.get("meets_target") is None else (" ✓" if d["meets_target"] else " ✗")
        val = (f"{d['val_bpd_k_gpus']:.5f} vs {d['val_bpd_one_gpu']:.5f}" if "val_bpd_k_gpus" in d else "–")
        print(f"| {d['exp']} | {d['gpus']} | {'–' if eff is None else eff} ({tgt or '–'}){verdict} | {val} | "
              f"{d.get('max_abs_train_loss_diff', '–')} ({d.get('train_loss_steps_compared', 0)}) |")


def plan(args) -> list[tuple[str, int, int, int, bool]]:
    """(exp, GPUs, batch per GPU, repeat, loss curve) in run order: the first repeat of every
    experiment with its equal-global-batch loss-curve runs (k GPUs × batch vs one GPU × k·batch),
    then the other repeats; repeats interleave settings and experiments, so drift (and a time
    budget) hits them alike."""
    out = []
    for rep in range(args.repeats):
        for exp in args.exp:
            out += [(exp, k, args.batch, rep, False) for k in args.counts]
            if rep == 0:
                for k in args.counts[1:]:
                    out += [(exp, k, args.batch, 0, True), (exp, 1, k * args.batch, 0, True)]
    return out


def _csv(values: list[str]) -> list[str]:
    return [x.strip() for v in values for x in v.split(",") if x.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", default="2", help="GPU counts, comma-separated (1 is always run)")
    ap.add_argument("--exp", action="append", help="experiment(s) (conf/exp/<name>.yaml), repeatable or "
                    "comma-separated; default enwik8,imagenet64")
    ap.add_argument("--batch", type=int, default=2, help="windows per GPU")
    ap.add_argument("--repeats", type=int, default=3, help="runs per setting (>= 3 for a spread)")
    ap.add_argument("--warmup-steps", type=int, default=10, help="steps before the first timed window (callbacks.throughput.warmup)")
    ap.add_argument("--window", type=int, default=10, help="steps per throughput window (callbacks.throughput.window)")
    ap.add_argument("--windows", type=int, default=3, help="timed windows per run: max_steps = warm-up + windows × window")
    ap.add_argument("--log-every", type=int, default=None, help="trainer.log_every_n_steps of the throughput runs (default: --window)")
    ap.add_argument("--curve-log-every", type=int, default=1, help="trainer.log_every_n_steps of the loss-curve runs")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--lr-warmup", type=int, default=10, help="optim.warmup_steps")
    ap.add_argument("--peak", type=float, default=989e12, help="dense bf16 peak FLOP/s per GPU (H100/H200 SXM)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text", default="auto", help="a local text file for every run (auto: torch's Python sources)")
    ap.add_argument("--text-mb", type=float, default=16.0, help="size of the auto text")
    ap.add_argument("--val-windows", type=int, default=16, help="data.val_windows: validation windows at start and end")
    ap.add_argument("--time-budget", type=float, default=None, help="seconds: runs not started by then are recorded as skipped")
    ap.add_argument("--run-timeout", type=int, default=300, help="seconds before a run is stopped and recorded as an error")
    ap.add_argument("--accelerator", default="gpu", choices=["gpu", "cpu"], help=argparse.SUPPRESS)  # cpu: the tests' smoke run
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--tag", default="", help="suffix of the output file name")
    ap.add_argument("overrides", nargs="*", help="key=value for every run")
    args = ap.parse_args(argv)
    args.exp = _csv(args.exp or ["enwik8,imagenet64"])
    try:
        args.counts = sorted({1, *(int(k) for k in _csv([args.gpus]))})
    except ValueError:
        ap.error(f"--gpus {args.gpus}: comma-separated GPU counts, e.g. 2 or 2,4")
    if min(args.counts) < 1 or args.batch < 1 or args.repeats < 1 or args.window < 2 or args.windows < 1 \
            or args.warmup_steps < 0 or (args.log_every or 1) < 1 or args.curve_log_every < 1:
        ap.error("--gpus, --batch, --repeats, --windows, --log-every must be >= 1, --window >= 2, --warmup-steps >= 0")
    bad = [x for x in args.overrides if "=" not in x]
    if bad:
        ap.error(f"overrides must be key=value, got {' '.join(bad)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    have = torch.cuda.device_count() if args.accelerator == "gpu" else os.cpu_count()
    if have < max(args.counts):
        raise SystemExit(f"bench/ddp.py: --gpus asks for {max(args.counts)} devices, this machine has {have}")
    warmup_key = callback_has_warmup()
    if not warmup_key:
        print("note: this tree's CLI has no callbacks.throughput.warmup; using its rolling windows past warm-up", flush=True)
    card = torch.cuda.get_device_name() if args.accelerator == "gpu" else "cpu"
    steps = args.warmup_steps + args.windows * args.window
    meta = dict(card=card, gpus_on_host=have, torch=torch.__version__, commit=commit(), exps=args.exp, counts=args.counts,
                batch_per_gpu=args.batch, steps=steps, warmup_steps=args.warmup_steps, window=args.window,
                windows=args.windows, repeats=args.repeats, log_every_n_steps=args.log_every or args.window,
                curve_log_every_n_steps=args.curve_log_every, text=args.text,
                text_mb=args.text_mb if args.text == "auto" else None, val_windows=args.val_windows,
                callback_warmup_key=warmup_key, overrides=args.overrides, target_efficiency_2_gpus=TARGET)
    path = Path(args.out) / f"ddp-{card_name() if args.accelerator == 'gpu' else 'cpu'}{args.tag}.json"
    records: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        args.cache_dir = tmp / "data"
        args.text = build_text(tmp / "torch-sources.txt", args.text_mb) if args.text == "auto" else Path(args.text).resolve()
        t_start = time.time()
        for exp, gpus, batch, rep, curve in plan(args):
            if args.time_budget is not None and time.time() - t_start > args.time_budget:
                records.append(dict(exp=exp, gpus=gpus, batch_per_gpu=batch, global_batch=gpus * batch, repeat=rep,
                                    curve=curve, skipped=f"time budget of {args.time_budget:g} s spent"))
            else:
                records.append(run(exp, gpus, batch, args, tmp, warmup_key, rep, curve))
            print(_line(records[-1]), flush=True)
            write(path, meta, records, args.batch, args.counts)
    table, derived = write(path, meta, records, args.batch, args.counts)
    report(meta, table, derived)
    print(f"wrote {path}")


def _line(r: dict) -> str:
    head = (f"    {r['exp']} {r['gpus']} GPU(s) × batch {r['batch_per_gpu']} "
            f"({'loss curve' if r.get('curve') else 'repeat ' + str(r['repeat'])}):")
    if "error" in r or "skipped" in r:
        return f"{head} {r.get('error') or 'skipped: ' + r['skipped']}"
    ws = ", ".join(f"{w['tokens_per_s']:,.0f}" for w in r["windows"])
    mfu = f", MFU {100 * r['mfu']:.1f}%" if r.get("mfu") is not None and not math.isnan(r["mfu"]) else ""
    return f"{head} {r['tokens_per_s']:,.0f} tokens/s (windows: {ws}){mfu}; {r['wall_s']} s wall"


if __name__ == "__main__":
    main()
