"""CPU: the `blocked` backend against the dense `reference`, forward + backward of one attention
call, time and peak memory (each measurement in a fresh process: ru_maxrss growth).

    PYTHONPATH=src python bench/cpu_backends.py [--lengths 4096,16384] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CODE = """
import resource, sys, time, torch
from sparse_transformer.attention import attend, layer_heads
torch.set_num_threads(2)
n, backend, pattern = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
heads = layer_heads(pattern, 1, 128, summary=32, integration="merged")
qkv = [torch.randn(1, 1, n, 64, requires_grad=True) for _ in range(3)]
attend(*[t[:, :, :256] for t in qkv], heads, backend=backend).sum().backward()  # warm up the code paths
base = rss()
t = time.perf_counter()
attend(*qkv, heads, backend=backend).sum().backward()
print(time.perf_counter() - t, rss() - base)
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lengths", default="4096,16384")
    ap.add_argument("--patterns", default="strided,fixed")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args(argv)
    src = str(Path(__file__).resolve().parents[1] / "src")
    recs = []
    for n in [int(x) for x in args.lengths.split(",")]:
        for pattern in args.patterns.split(","):
            for backend in ("reference", "blocked"):
                r = subprocess.run([sys.executable, "-c", CODE, str(n), backend, pattern], capture_output=True, text=True,
                                   env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"})
                if r.returncode:
                    rec = dict(n=n, pattern=pattern, backend=backend, error=r.stderr.strip().splitlines()[-1][:200])
                else:
                    secs, grown = r.stdout.split()
                    rec = dict(n=n, pattern=pattern, backend=backend, fwdbwd_s=round(float(secs), 3),
                               peak_mem_mb=round(int(grown) / 2**20, 1), n2_fp32_mb=round(n * n * 4 / 2**20, 1))
                recs.append(rec)
                print(rec, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cpu-backends.json").write_text(json.dumps(recs, indent=1))


if __name__ == "__main__":
    main()
