"""A/B of one of the triton backend's environment switches (e.g. SPARSE_TRANSFORMER_TRITON_FULL_TILES,
..._PERSISTENT, ..._BAND, ..._SHORT_ROWS) on bench/attention.py's arms, in one process: for each shape
and pattern the values alternate, in reverse order every other round (A B, B A, ...), so drift of the
card (clocks, temperature) falls on all alike. The backend reads these switches at every call and
autotunes each variant under its own key; SPARSE_TRANSFORMER_TRITON_CONFIGS is read once per process
and cannot be A/B-timed here.

    PYTHONPATH=src python3 bench/env_ab.py --env SPARSE_TRANSFORMER_TRITON_FULL_TILES [--values 0,1] \
        [--shapes 16384:64,65536:64,16384:32] [--patterns local,stride,strided] [--rounds 2] [--tag full-tiles]

Prints per (shape, pattern) the median fwd and fwd+bwd ms of each value, eager and replayed from a
CUDA graph (bench/attention.py's two timings), and the relative difference of the outputs against
the first value's; writes ``ab-<tag>-<card>.json`` under --out (records and summary).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import attention as A  # noqa: E402  (bench/attention.py: shapes, arms, timing)
import torch  # noqa: E402

TIMINGS = ("fwd_ms", "fwdbwd_ms", "fwd_graph_ms", "fwdbwd_graph_ms")
ONCE_PER_PROCESS = ("SPARSE_TRANSFORMER_TRITON_CONFIGS",)  # read when the kernels are first built


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", required=True, help="the environment variable to switch")
    ap.add_argument("--values", type=A._csv(str), default=["0", "1"], help="its values, the first the reference (default 0,1)")
    ap.add_argument("--shapes", type=A._csv(str), default=["16384:64", "65536:64", "16384:32"], help="n:d, comma-separated")
    ap.add_argument("--patterns", type=A._csv(str), default=["local", "stride", "strided"])
    ap.add_argument("--backend", default="triton")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dtype", default="bf16", choices=list(A.DTYPES))
    ap.add_argument("--tag", default=None, help="file name tag (default: the variable without the backend's prefix)")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args(argv)
    try:
        args.shapes = [tuple(int(x) for x in s.split(":")) for s in args.shapes]
    except ValueError:
        ap.error(f"--shapes {','.join(args.shapes)!r}: each n:d, e.g. 16384:64")
    bad = [p for p in args.patterns if p not in A.PATTERNS]
    if bad or len(args.values) < 2 or args.rounds < 1:
        ap.error(f"--patterns from {', '.join(A.PATTERNS)}, at least two --values and one round")
    if args.env in ONCE_PER_PROCESS:
        ap.error(f"--env {args.env} is read once per process; time its values in separate runs of bench/attention.py")
    args.tag = args.tag or args.env.removeprefix("SPARSE_TRANSFORMER_TRITON_").lower().replace("_", "-")
    return args


def summarise(records: list[dict], values: list[str]) -> list[dict]:
    """Per (n, d, pattern): the median of each timing over the rounds, for each value."""
    rows = []
    for key in dict.fromkeys((r["n"], r["head_dim"], r["pattern"]) for r in records):
        row = dict(n=key[0], head_dim=key[1], pattern=key[2])
        for v in values:
            here = [r for r in records if (r["n"], r["head_dim"], r["pattern"]) == key and r["value"] == v and "error" not in r]
            for t in TIMINGS:
                got = [r[t] for r in here if r.get(t) is not None]
                row[f"{t}[{v}]"] = round(statistics.median(got), 4) if got else None
            errs = [r["error"] for r in records if (r["n"], r["head_dim"], r["pattern"]) == key and r["value"] == v and "error" in r]
            if errs:
                row[f"error[{v}]"] = errs[0]
            diffs = [r["out_rel_diff"] for r in here if r.get("out_rel_diff") is not None]
            if diffs:
                row[f"out_rel_diff[{v}]"] = max(diffs)
        rows.append(row)
    return rows


def main(argv=None, *, env: A.Env | None = None, tokens: int = A.TOKENS, heads: int = A.HEADS) -> dict:
    args = parse_args(argv)
    if env is None:
        if not torch.cuda.is_available():
            raise SystemExit("bench/env_ab.py needs a CUDA GPU")
        env = A.Env()
    A.setup_torch(env)
    old = os.environ.get(args.env)
    records, t0 = [], time.time()
    try:
        for n, d in args.shapes:
            shape = A.Shape(n, max(1, tokens // (heads * n)), heads, d, d, args.dtype)
            for pattern in args.patterns:
                ref = None
                for rnd in range(args.rounds):
                    for v in args.values if rnd % 2 == 0 else args.values[::-1]:
                        os.environ[args.env] = v
                        rec, out = A.run_arm(shape, pattern, args.backend, env)
                        rec.update(value=v, round=rnd)
                        if out is not None:  # against the first value's output (the reference)
                            out = out.float()
                            if ref is None and v == args.values[0]:
                                ref = out
                            if ref is not None:
                                rec["out_rel_diff"] = float((out - ref).norm() / ref.norm().clamp_min(1e-30))
                        del out
                        records.append(rec)
                        print(n, d, pattern, f"{args.env}={v}", f"round {rnd}",
                              *(f"{t} {rec.get(t)}" for t in TIMINGS), rec.get("error", ""), flush=True)
    finally:
        if old is None:
            os.environ.pop(args.env, None)
        else:
            os.environ[args.env] = old
    summary = summarise(records, args.values)
    for row in summary:
        print(row)
    meta = dict(card=torch.cuda.get_device_name() if env.cuda else "cpu", torch=torch.__version__, commit=A.commit(),
                env=args.env, values=args.values, rounds=args.rounds, backend=args.backend, seconds=round(time.time() - t0))
    result = dict(meta=meta, summary=summary, records=records)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"ab-{args.tag}-{A.card_name() if env.cuda else 'cpu'}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
