"""What the sweep tests share: a sweep file written from parameters, and a stand-in for the
training process that writes the run's summary.json as train.py would."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from sparse_transformer.config import load_config
from sparse_transformer.sweeping.command import train_args
from sparse_transformer.sweeping.runner import RUN_ENV

CMD = ["${env}", "${interpreter}", "-m", "sparse_transformer.train", "exp=default", "${args_no_hyphens}"]
# Constant parameters that make a trial tiny (a sweep may fix any config key this way).
TINY = {"model.n_layer": 2, "model.d_model": 32, "model.n_head": 2, "data.seq_len": 64, "attention.stride": 8,
        "data.batch_size": 4, "data.val_windows": 4, "trainer.max_steps": 4, "optim.warmup_steps": 1,
        "trainer.enable_progress_bar": False, "callbacks.samples.length": 8, "logger.kind": "none"}


def make_sweep(tmp_path, parameters, method="grid", metric="val/bpd", name="s", **extra) -> str:
    doc = {"method": method, "metric": {"name": metric, "goal": "minimize"}, "parameters": parameters,
           "command": CMD, **extra}
    path = Path(tmp_path) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def const(d: dict) -> dict:
    return {k: {"value": v} for k, v in d.items()}


class FakeTrain:
    """Stands in for subprocess.run: records the command; writes summary.json as train.py would
    (``metric_of(lr)`` gives val/bpd, default 5 + 1000·|lr - 2e-3|; ``fail_lr`` exits 1)."""

    def __init__(self, fail_lr=None, metric_of=None):
        self.commands, self.fail_lr = [], fail_lr
        self.metric_of = metric_of or (lambda lr: 5 + abs(lr - 2e-3) * 1000)

    def __call__(self, cmd, env, stdout, stderr):
        self.commands.append(cmd)
        cfg, _ = load_config(train_args(cmd))  # what the trial would train
        run = Path(env[RUN_ENV])
        if cfg.optim.lr == self.fail_lr:
            stdout.write("Traceback ...\nRuntimeError: diverged\n")
            return subprocess.CompletedProcess(cmd, 1)
        run.mkdir(parents=True)
        metrics = {"val/bpd": self.metric_of(cfg.optim.lr), "train/bpd": 5.0}
        (run / "summary.json").write_text(json.dumps({"metrics": metrics}))
        return subprocess.CompletedProcess(cmd, 0)


def no_trial(*a, **k):
    raise AssertionError("a trial ran")
