import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sparse_transformer.config import load_config
from sparse_transformer.cli.train import main

TINY = ["model.n_layer=2", "model.d_model=32", "model.n_head=2", "data.seq_len=64", "attention.stride=8",
        "data.batch_size=4", "logger.kind=none", "trainer.enable_progress_bar=false", "data.val_windows=4"]


def _args(tmp_path, *extra):
    return ["exp=default", *TINY, f"run_dir={tmp_path}/run", f"data.cache_dir={tmp_path}/data", *extra]


def test_fast_dev_run_of_the_default_experiment(tmp_path):
    summary = main(["exp=default", "trainer.fast_dev_run=true", f"run_dir={tmp_path}/run",
                    f"data.cache_dir={tmp_path}/data", "logger.kind=none"])
    assert summary["steps"] == 1
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["exp"] == "default" and cfg["attention"]["pattern"] == "strided"


@pytest.mark.gpu
@pytest.mark.parametrize("precision,clip,strategy", [("bf16-mixed", 1.0, "auto"), ("16-mixed", 1.0, "auto"),
                                                     ("bf16-mixed", 0.0, "auto"), ("bf16-mixed", 1.0, "fsdp")])
def test_training_on_a_gpu_with_mixed_precision_and_clipping(tmp_path, precision, clip, strategy):
    # Lightning refuses clipping with a fused AdamW under mixed precision, and clipping by norm under
    # FSDP: the module clips itself (fused AdamW throughout), the real `make train` path on a GPU
    summary = main(_args(tmp_path, "trainer.accelerator=gpu", "trainer.devices=1", f"trainer.precision={precision}",
                         f"trainer.strategy={strategy}", f"optim.grad_clip={clip}", "trainer.max_steps=20",
                         "optim.warmup_steps=5", "optim.lr=3e-3"))
    assert summary["steps"] == 20
    assert math.isfinite(summary["val_bpd_end"]) and summary["val_bpd_end"] < summary["val_bpd_start"] - 0.5


@pytest.mark.parametrize("backend", ["flex", "triton"])
def test_an_explicit_backend_that_cannot_run_here_is_one_line_before_anything_is_written(tmp_path, backend, capsys,
                                                                                         monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the tests' interpreter would let triton run on a CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        main(_args(tmp_path, f"attention.backend={backend}"))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert err[0].startswith(f"error: attention.backend={backend}") and "attention.backend=auto" in err[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra,message", [
    (["model.n_head=2", "attention.summary_heads=2"], "attention.summary_heads=2 exceeds the 1 heads that take a summary"),
    (["model.n_head=4", "attention.summary_heads=4"], "attention.summary_heads=4 exceeds the 2 heads that take a summary"),
])
def test_a_fixed_stack_that_leaves_pairs_unreachable_is_refused(tmp_path, capsys, extra, message):
    """Multi-head fixed gives summary heads (h >= H/2) slice h % summary_heads: with more slices than
    summary heads, some slice is no head's, and its cells reach no later block at any depth."""
    with pytest.raises(SystemExit) as e:
        main(_args(tmp_path, "attention.pattern=fixed", "attention.summary=2", "attention.integration=multihead", *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "run").exists()


def test_the_resolved_config_is_printed_compactly():
    from sparse_transformer.cli.train import config_lines

    cfg, _ = load_config(["exp=default", "model.n_layer=3", "attention.layout=[stride,local]"])
    lines = config_lines(cfg, width=100)
    assert lines[0].startswith("exp=default seed=")
    assert all(len(line) <= 100 for line in lines) and len(lines) < 30
    text = "\n".join(lines)
    assert "model:     n_layer=3 " in text and "layout=[stride,local]" in text and "warmup_steps=" in text
    assert "sample:" not in text and "eval:" not in text  # the other commands' options


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_run_prints_its_config_and_no_noise(tmp_path):
    """The real command with the W&B logger (offline): the config and a model summary without FLOPs
    at the start; no litlogger tip, no W&B 'anonymous' warning, no _pytree deprecation line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    env.pop("WANDB_SILENT", None)
    r = subprocess.run([sys.executable, "-m", "sparse_transformer.train", *_args(tmp_path, "logger.kind=wandb",
                        "trainer.max_steps=2", "optim.warmup_steps=1", "data.max_bytes=20000",
                        "callbacks.attention_maps.enabled=false", "trainer.enable_progress_bar=true")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "model:     n_layer=2 " in r.stdout and "Total params" in out
    for noise in ("Tip:", "litlogger", "anonymous", "_pytree", "LeafSpec", "FLOPs", "Total Flops"):
        assert noise not in out, noise


@pytest.mark.parametrize("error,asked", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 139.80 GiB of "
                            "which 1.25 GiB is free. Including non-PyTorch memory, this process has 138.5 GiB memory in "
                            "use. Of the allocated memory 130.1 GiB is allocated by PyTorch, and 6.2 GiB is reserved by "
                            "PyTorch but unallocated. If reserved but unallocated memory is large try setting "
                            "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."),
     "tried to allocate 2.00 GiB (GPU 0 has a total capacity of 139.80 GiB of which 1.25 GiB is free)"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
                  "to allocate 4000000000000 bytes. Error code 12 (Cannot allocate memory)"),
     "tried to allocate 4000000000000 bytes"),
])
def test_out_of_memory_during_training_is_one_line_naming_the_keys_that_reduce_it(tmp_path, capsys, monkeypatch,
                                                                                   error, asked):
    from sparse_transformer.training.module import SparseTransformerLM

    def step(self, batch, batch_idx):
        raise error

    monkeypatch.setattr(SparseTransformerLM, "training_step", step)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(_args(tmp_path, "trainer.max_steps=3", "callbacks.samples.at_end=false"))
    err = capsys.readouterr().err.strip().splitlines()
    text = "\n".join(err)  # (in-process, Lightning's own log handler may hold an earlier test's closed stream)
    assert e.value.code == 1 and "OutOfMemoryError" not in text and "RuntimeError" not in text, text  # no traceback
    assert err[-1] == (f"error: out of memory during training: {asked}; reduce data.batch_size=4 "
                       f"(trainer.accumulate_grad_batches keeps the global batch), set model.recompute=true (now false) "
                       f"or shorten data.seq_len=64")


def test_other_runtime_errors_keep_their_traceback(tmp_path, monkeypatch):
    """A bug is not bad input: it is not squeezed into one line."""
    from sparse_transformer.training.module import SparseTransformerLM

    def step(self, batch, batch_idx):
        raise RuntimeError("a bug")

    monkeypatch.setattr(SparseTransformerLM, "training_step", step)
    with pytest.raises(RuntimeError, match="a bug"):
        main(_args(tmp_path, "trainer.max_steps=3"))
