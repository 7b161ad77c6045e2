"""The training CLI's tokens/s against the bench loop's (bench/train.py) for the same model, batch,
precision (bf16), recompute setting, optimizer (fused AdamW, clipping 1.0) and compile mode, on one GPU.

    PYTHONPATH=src python3 bench/cli.py [--shape imagenet64] [--mode cudagraphs] [--batch 2] [--recompute false] \
        [--repeats 2] [--warmup-steps 15] [--window 20] [--windows 3]

* bench loop: ``bench/train.py``'s sparse arm (its warm-up, CUDA-event timing over repeats, no Lightning);
* CLI: ``python -m sparse_transformer.train exp=<shape>`` (bench/ddp.py's command: a local text, dropout
  off, csv logger) with ``model.compile=true model.compile_mode=<mode>`` and the same batch and
  recompute setting; tokens/s is the median over the throughput callback's windows after warm-up
  (one synchronisation per window), over ``--repeats`` runs.

Target (issue 14): CLI ≥ 90 % of the bench loop at a step of ≥ 50 ms. Writes
``bench/results/cli-<card>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ddp  # noqa: E402
import train  # noqa: E402
from attention import card_name, commit  # noqa: E402
from sparse_transformer import files  # noqa: E402

TARGET = 0.9


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="imagenet64", help="a bench/train.py shape that is also an experiment: imagenet64, enwik8")
    ap.add_argument("--mode", default="cudagraphs", choices=train.MODES[1:], help="model.compile_mode (both sides)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--recompute", default="false", choices=["true", "false"])
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--repeats", type=int, default=2, help="CLI runs (each logs --windows windows)")
    ap.add_argument("--warmup-steps", type=int, default=15)
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--bench-steps", type=int, default=10)
    ap.add_argument("--run-timeout", type=int, default=400)
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--tag", default="")
    ap.add_argument("overrides", nargs="*", help="key=value for the CLI runs")
    args = ap.parse_args(argv)
    if args.shape not in train.SHAPES:
        ap.error(f"--shape {args.shape}: one of {', '.join(train.SHAPES)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench/cli.py needs a CUDA GPU")
    rc = args.recompute == "true"
    spec = train.SHAPES[args.shape]
    bench_args = argparse.Namespace(backend=args.backend, steps=args.bench_steps, repeats=3, max_timed_s=30.0, profile_steps=0)
    torch.backends.cuda.matmul.allow_tf32 = True
    bench = train.run_arm(args.shape, spec, False, args.mode, args.batch, rc, bench_args)
    train.release("cuda")
    print(f"bench loop: {bench['tokens_per_s']:,} tokens/s, step {1e3 * bench['step_s']:.1f} ms "
          f"(repeats {bench['step_s_runs']}), backend {bench['backend']}", flush=True)

    cli_argv = ["--gpus", "1", "--exp", args.shape, "--batch", str(args.batch), "--warmup-steps", str(args.warmup_steps),
                "--window", str(args.window), "--windows", str(args.windows),
                "--run-timeout", str(args.run_timeout),
                "model.compile=true", f"model.compile_mode={args.mode}", f"model.recompute={args.recompute}",
                f"attention.backend={args.backend}", *args.overrides]
    dargs = ddp.parse_args(cli_argv)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dargs.cache_dir = tmp / "data"
        dargs.text = ddp.build_text(tmp / "torch-sources.txt", dargs.text_mb)
        for rep in range(args.repeats):
            runs.append(ddp.run(args.shape, 1, args.batch, dargs, tmp, True, rep))
            print(ddp._line(runs[-1]), flush=True)
    ok = [r["tokens_per_s"] for r in runs if "tokens_per_s" in r]
    cli = statistics.median(ok) if ok else None
    windows = [w["tokens_per_s"] for r in runs for w in r.get("windows", [])]
    ratio = round(cli / bench["tokens_per_s"], 3) if cli else None
    rec = dict(card=torch.cuda.get_device_name(), torch=torch.__version__, commit=commit(), shape=args.shape,
               mode=args.mode, batch=args.batch, recompute=rc, backend=args.backend,
               bench_tokens_per_s=bench["tokens_per_s"], bench_step_ms=round(1e3 * bench["step_s"], 2),
               bench_step_s_runs=bench["step_s_runs"], bench_backend=bench["backend"],
               cli_tokens_per_s=round(cli) if cli else None, cli_runs=[round(x) for x in ok],
               cli_windows=[round(x) for x in windows],
               cli_window_spread=round((max(windows) - min(windows)) / statistics.median(windows), 4) if windows else None,
               cli_errors=[r["error"] for r in runs if "error" in r], cli_over_bench=ratio, target=TARGET,
               meets_target=None if ratio is None else ratio >= TARGET and bench["step_s"] >= 0.05,
               cli_command=ddp.command(args.shape, 1, args.batch, dargs, Path("RUN_DIR"), True)[3:])
    path = Path(args.out) / f"cli-{card_name()}{args.tag}.json"
    files.write_json(path, rec)
    print(f"\n| shape | mode | batch | recompute | bench loop tokens/s (step ms) | CLI tokens/s (runs) | CLI ÷ bench (target {TARGET}) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.shape} | {args.mode} | {args.batch} | {rc} | {bench['tokens_per_s']:,} ({rec['bench_step_ms']}) | "
          f"{'–' if cli is None else format(round(cli), ',d')} ({', '.join(format(x, ',d') for x in rec['cli_runs'])}) | "
          f"{ratio}{'' if rec['meets_target'] is None else (' ✓' if rec['meets_target'] else ' ✗')} |")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
