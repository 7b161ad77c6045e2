"""Training subprocesses for the resume and DDP tests: a tiny model on a small slice of the
default text (11 batches of 8 windows an epoch), the CSV logger writing every step."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TINY = ["exp=default", "model.n_layer=2", "model.d_model=32", "model.n_head=2", "data.seq_len=64", "attention.stride=8",
        "data.batch_size=8", "data.val_windows=4", "data.max_bytes=6000", "optim.warmup_steps=3",
        "trainer.enable_progress_bar=false", "logger.kind=csv", "trainer.log_every_n_steps=1",
        "callbacks.samples.at_end=false", "callbacks.attention_maps.enabled=false", "imports=[tests.fault_hooks]"]
EPOCH = 11  # training batches per epoch: ceil(5400 train bytes / 64) = 85 windows, 8 a batch


def env(extra: dict | None = None) -> dict:
    # src and the repo first; an existing PYTHONPATH after them (the GPU machine's carried packages)
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    e = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1",
         "WANDB_MODE": "offline", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    for k in list(e):
        if k.startswith("ST_HOOK_") or k == "SPARSE_TRANSFORMER_RUN_DIR":
            del e[k]
    e.update({k: str(v) for k, v in (extra or {}).items()})
    return e


def command(data: Path, *args: str, run: Path | None = None) -> list[str]:
    return [sys.executable, "-m", "sparse_transformer.train", *TINY, f"data.cache_dir={data}",
            *([f"run_dir={run}"] if run else []), *args]


def train(data: Path, *args: str, run: Path | None = None, hooks: dict | None = None, cwd=None,
          timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command(data, *args, run=run), env=env(hooks), cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=timeout)


def start(data: Path, *args: str, run: Path | None = None, hooks: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(command(data, *args, run=run), env=env(hooks), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Until ``path`` exists (the hook reached its step); fails if the process ended first."""
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"training ended (rc {proc.returncode}) before the hook's step:\n{err[-3000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.05)


def ok(res: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert res.returncode == 0, f"rc {res.returncode}\n{res.stderr[-4000:]}"
    return res


def curve(run: Path, key: str = "train/loss") -> dict[int, float]:
    """{logged step: value} from the run's metrics.csv (the last row of a step wins)."""
    out = {}
    with open(run / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row.get(key) not in (None, ""):
                out[int(row["step"])] = float(row[key])
    return out


def max_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b), f"steps differ: {sorted(set(a) ^ set(b))}"
    return max(0.0 if (math.isnan(a[k]) and math.isnan(b[k])) else abs(a[k] - b[k]) for k in a)
